"""Shard files: write and read one HDF5 shard.

The format is documented in ``docs/shard-format.md``; the model's loader depends on it and
nothing else. Every write goes to a temporary name in the same folder and is renamed when the
file is complete and flushed, so a crash never leaves a half-written shard under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from etl.release import Release

FORMAT = "specetl-shard"
#: 2: exact string ids, the release's object key, per-row ``ra``/``dec``, and the split keyed
#: on the sky position (etl.splits). build-shards rebuilds shards of an older version rather
#: than mixing them with new ones.
FORMAT_VERSION = 2
SPLITS = ("train", "valid", "test")
CHUNK_ROWS = 256
#: dtype of ``specobjid`` in v2: the release's exact id as fixed-length ASCII digits
ID_DTYPE = "S32"

#: per-object datasets every v2 shard has and their dtypes; flux/ivar are (N, npix), the rest
#: (N,). The object-key columns (int64, named by the file attribute ``object_key``) come on top.
ROW_DATASETS: Mapping[str, str] = {
    "flux": "float32",
    "ivar": "float32",
    "z": "float32",
    "zerr": "float32",
    "norm": "float32",
    "specobjid": ID_DTYPE,
    "ra": "float64",
    "dec": "float64",
}
#: v1 shards (uint64 specobjid, plate/mjd/fiberid int32), still readable by :func:`read_shard`
V1_DATASETS: Mapping[str, str] = {
    **{k: v for k, v in ROW_DATASETS.items() if k not in ("ra", "dec")},
    "specobjid": "uint64",
    "plate": "int32",
    "mjd": "int32",
    "fiberid": "int32",
}


def object_key(attrs: Mapping[str, object]) -> tuple[str, ...]:
    """The object-key columns of a shard from its attributes (v1 shards: plate, mjd, fiberid)."""
    raw = attrs.get("object_key")
    if raw is None:
        return ("plate", "mjd", "fiberid")
    return tuple(json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)))


#: dtype of an object-key column that is text (DESI's SURVEY and PROGRAM)
KEY_TEXT_DTYPE = "S16"


def row_datasets(attrs: Mapping[str, object]) -> dict[str, str]:
    """Per-row datasets (name -> dtype) of a shard with these attributes."""
    if int(attrs.get("format_version", FORMAT_VERSION)) < 2:  # type: ignore[call-overload]
        return dict(V1_DATASETS)
    # key columns are int64, except those the attribute object_key_text lists (ASCII)
    raw = attrs.get("object_key_text")
    text = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)) if raw else []
    key = {k: KEY_TEXT_DTYPE if k in text else "int64" for k in object_key(attrs)}
    return {**ROW_DATASETS, **key}


class ShardError(ValueError):
    """A shard file is missing, unreadable or does not match its index entry."""


def shard_attrs(release: Release, split: str) -> dict[str, object]:
    """File attributes of a shard of ``release`` (provenance and preprocessing settings)."""
    from etl import __version__

    g, t, n = release.grid, release.telluric, release.normalisation
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "release": release.name,
        "split": split,
        "loglam0": g.loglam0,
        "dloglam": g.dloglam,
        "npix": g.npix,
        "object_key": json.dumps(list(release.key)),
        "telluric_top_n": t.top_n,
        "telluric_half_width": t.half_width,
        "telluric_line_list": t.line_list.name,
        "norm_restframe_min": n.restframe_min,
        "norm_restframe_max": n.restframe_max,
        "specetl_version": __version__,
        "manifest_sha256": release.manifest_sha256,
    }


def write_shard(
    path: str | Path,
    columns: Mapping[str, np.ndarray],
    wave_obs: np.ndarray,
    attrs: Mapping[str, object],
    compression: str | None = None,
) -> str:
    """Write one shard atomically (temp file, fsync, rename); return its sha256.

    ``columns`` holds every per-row dataset (:func:`row_datasets` of ``attrs``: the
    :data:`ROW_DATASETS` plus the object-key columns), rows in the order to store them.
    ``compression`` is None, "lzf" or "gzip".
    """
    missing = sorted(set(row_datasets(attrs)) - set(columns))
    if missing:
        raise ValueError(f"write_shard: missing column(s) {', '.join(missing)}")
    n = len(columns["specobjid"])
    # one writer of the format: a shard written at once is a ShardWriter with a single block
    with ShardWriter(
        path, wave_obs, attrs, compression, chunk_rows=max(1, min(n, CHUNK_ROWS))
    ) as writer:
        writer.append(columns)
        return writer.close()


def read_shard(path: str | Path, rows: slice | None = None) -> dict[str, np.ndarray]:
    """Read a shard's datasets (optionally a row slice) and attributes (under key ``attrs``)."""
    path = Path(path)
    sel = rows if rows is not None else slice(None)
    try:
        with h5py.File(path, "r") as h5:
            names = row_datasets(h5.attrs)
            out: dict[str, np.ndarray] = {name: h5[name][sel] for name in names}
            out["wave_obs"] = h5["wave_obs"][:]
            out["attrs"] = dict(h5.attrs)  # type: ignore[assignment]
    except FileNotFoundError:
        raise ShardError(f"{path}: shard is missing") from None
    except (OSError, KeyError) as err:
        raise ShardError(f"{path}: unreadable shard ({err})") from None
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Write one shard block by block, so memory is one block, not one shard.

    The only writer of the shard format (:func:`write_shard` uses it too): rows go to a temporary file in the target
    folder; :meth:`close` writes the per-row scalars, fsyncs, hashes and renames, and returns
    the sha256. ``flux``/``ivar`` are resizable, chunked by ``chunk_rows`` whole rows.
    Use as a context manager; an exception before :meth:`close` removes the temporary file.
    """

    def __init__(
        self,
        path: str | Path,
        wave_obs: np.ndarray,
        attrs: Mapping[str, object],
        compression: str | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.npix = len(wave_obs)
        self.rows = 0
        self.datasets = row_datasets({**attrs, "format_version": FORMAT_VERSION})
        self._scalars: dict[str, list[np.ndarray]] = {
            k: [] for k in self.datasets if k not in ("flux", "ivar")
        }
        # no chunk cache: a write that fails (a full disk) then fails in append(), where it is
        # handled, not at a later cache eviction or at close, after which HDF5 (2.0 here) was
        # seen to crash the process. At real sizes nothing changes: a 256-row chunk of float32
        # flux (4 MB) is larger than the default 1 MB cache, so it bypassed the cache anyway.
        self._h5 = h5py.File(self.tmp, "w", rdcc_nbytes=0)
        for name in ("flux", "ivar"):
            self._h5.create_dataset(
                name,
                shape=(0, self.npix),
                maxshape=(None, self.npix),
                dtype=ROW_DATASETS[name],
                chunks=(max(1, chunk_rows), self.npix),
                compression=compression,
            )
        self._h5.create_dataset("wave_obs", data=np.asarray(wave_obs, dtype=np.float64))
        self._h5.attrs.update(dict(attrs))

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append a block of rows (every per-row dataset, see :func:`row_datasets`)."""
        n = len(columns["specobjid"])
        for name in ("flux", "ivar"):
            data = np.asarray(columns[name], dtype=ROW_DATASETS[name])
            if data.shape != (n, self.npix):
                raise ValueError(
                    f"ShardWriter: {name} has shape {data.shape}, expected {(n, self.npix)}"
                )
            ds = self._h5[name]
            ds.resize(self.rows + n, axis=0)
            ds[self.rows :] = data
        for name, parts in self._scalars.items():
            if name == "specobjid" and self.datasets[name] == ID_DTYPE:
                width = int(np.char.str_len(np.asarray(columns[name]).astype(str)).max(initial=0))
                if width > np.dtype(ID_DTYPE).itemsize:
                    raise ValueError(f"ShardWriter: a specobjid has {width} digits (max 32)")
            data = np.asarray(columns[name], dtype=self.datasets[name])
            if data.shape != (n,):
                raise ValueError(f"ShardWriter: {name} has shape {data.shape}, expected {(n,)}")
            parts.append(data)
        self.rows += n

    def close(self) -> str:
        """Finish the file, rename it to its final name; return its sha256."""
        for name, parts in self._scalars.items():
            data = np.concatenate(parts) if parts else np.zeros(0, dtype=self.datasets[name])
            self._h5.create_dataset(name, data=data)
        self._h5.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(self.tmp)
        os.replace(self.tmp, self.path)
        return digest

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._h5.id.valid:
                self._h5.close()
        except (OSError, RuntimeError):
            pass  # closing after a failed write (a full disk) can fail again; the file goes anyway
        finally:
            self.tmp.unlink(missing_ok=True)
