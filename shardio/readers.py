"""Reading a shards folder (what training, evaluate and embed need): the shards of a split as
``index.json`` lists them (sha256-verified), the wavelength grid, and rows of any format version
with exact string ids. Part of the one shard-format package (:mod:`shardio`); numpy and h5py only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from shardio.format import ShardError, object_key, sha256_file

#: the object key of v1 shards (before the key was a file attribute)
V1_OBJECT_KEY = ("plate", "mjd", "fiberid")


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    rows: int


def index_path(shards_dir: str | Path) -> Path:
    return Path(shards_dir) / "index.json"


def index_sha256(shards_dir: str | Path) -> str:
    """sha256 of index.json's bytes: fingerprints exactly which shards a run was trained on."""
    return hashlib.sha256(index_path(shards_dir).read_bytes()).hexdigest()


def list_shards(shards_dir: str | Path, split: str, verify: bool = True) -> list[ShardInfo]:
    """The shards of `split` listed in index.json; with `verify`, check each file's sha256.

    Raises:
        ShardError: index.json missing/invalid, a shard missing or not matching its sha256.
    """
    ip = index_path(shards_dir)
    try:
        index = json.loads(ip.read_text())
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot read shard index {ip}: {e}") from e
    out = []
    for entry in index.get("shards", []):
        if entry.get("split") != split:
            continue
        path = Path(shards_dir) / entry["path"]
        if not path.is_file():
            raise ShardError(f"shard {path} is listed in {ip} but missing")
        if verify and entry.get("sha256"):
            digest = sha256_file(path)
            if digest != entry["sha256"]:
                raise ShardError(
                    f"shard {path} is corrupt: sha256 {digest[:12]}… != {entry['sha256'][:12]}… "
                    f"in {ip}; rebuild it with `specetl build-shards`"
                )
        out.append(ShardInfo(path, int(entry["rows"])))
    if not out:
        raise ShardError(f"no '{split}' shards in {ip}")
    return out


def read_wave_obs(shard: ShardInfo | Path) -> np.ndarray:
    """The observed-frame wavelength grid (Å, float64) stored in a shard."""
    path = shard.path if isinstance(shard, ShardInfo) else Path(shard)
    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["wave_obs"][:], dtype=np.float64)
    except (OSError, KeyError) as e:
        raise ShardError(f"cannot read shard {path}: {e}") from e


def specobjid_strings(values: np.ndarray) -> np.ndarray:
    """Exact decimal strings of specobjids: v2 stores ASCII bytes, v1 uint64 (no float detour)."""
    if values.dtype.kind == "S":
        return np.char.strip(values.astype("U"))
    if values.dtype.kind == "U":
        return np.char.strip(values)
    return np.array([str(int(v)) for v in values.tolist()], dtype="U")


def read_rows(path: Path, start: int, stop: int) -> dict[str, np.ndarray]:
    """Rows ``start:stop`` of a shard (any version): flux, ivar, z, specobjid as exact strings,
    the object-key columns (int64, or str for a text key such as DESI's survey and program),
    ra/dec where stored, and ``_key`` (the key's names)."""
    try:
        with h5py.File(path, "r") as f:
            keys = list(object_key(f.attrs))
            out = {
                "flux": f["flux"][start:stop],
                "ivar": f["ivar"][start:stop],
                "z": f["z"][start:stop].astype(np.float32),
                "specobjid": specobjid_strings(f["specobjid"][start:stop]),
            }
            for k in keys:
                v = f[k][start:stop]  # int64, or ASCII for a text key (DESI survey, program)
                out[k] = np.char.strip(v.astype("U")) if v.dtype.kind == "S" else v.astype(np.int64)
            for k in ("ra", "dec"):
                if k in f:
                    out[k] = f[k][start:stop].astype(np.float64)
            if "synthetic" in f:  # only etl.synthetic's shards have the dataset
                out["synthetic"] = f["synthetic"][start:stop].astype(bool)
            out["_key"] = np.array(keys)
            return out
    except (OSError, KeyError, ValueError) as e:
        raise ShardError(f"cannot read shard {path} rows {start}:{stop}: {e}") from e
