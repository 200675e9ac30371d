"""Shard files: write and read one HDF5 shard.

The format is documented in ``docs/shard-format.md``; the model's loader depends on it and
nothing else. Every write goes to a temporary name in the same folder and is renamed when the
file is complete and flushed, so a crash never leaves a half-written shard under a final name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from etl.release import Release

FORMAT = "specetl-shard"
#: 2: the split is keyed on the sky position (etl.splits), and rows carry ``ra``/``dec``.
#: Shards of an older version are rebuilt by build-shards, never mixed with new ones.
FORMAT_VERSION = 2
SPLITS = ("train", "valid", "test")
CHUNK_ROWS = 256

#: per-object datasets and their dtypes; flux/ivar are (N, npix), the rest (N,)
ROW_DATASETS: Mapping[str, str] = {
    "flux": "float32",
    "ivar": "float32",
    "z": "float32",
    "zerr": "float32",
    "norm": "float32",
    "specobjid": "uint64",
    "plate": "int32",
    "mjd": "int32",
    "fiberid": "int32",
    "ra": "float64",
    "dec": "float64",
}
#: datasets that shards of format version 1 lack (readers skip them there)
NEW_IN_V2 = ("ra", "dec")


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

    ``columns`` holds every dataset of :data:`ROW_DATASETS`, rows in the order to store them.
    ``compression`` is None, "lzf" or "gzip".
    """
    missing = sorted(set(ROW_DATASETS) - set(columns))
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
            out: dict[str, np.ndarray] = {
                name: h5[name][sel]
                for name in ROW_DATASETS
                if name in h5 or name not in NEW_IN_V2  # v1 shards have no ra/dec
            }
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
        self._scalars: dict[str, list[np.ndarray]] = {
            k: [] for k in ROW_DATASETS if k not in ("flux", "ivar")
        }
        self._h5 = h5py.File(self.tmp, "w")
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
        """Append a block of rows (every dataset of :data:`ROW_DATASETS`)."""
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
            data = np.asarray(columns[name], dtype=ROW_DATASETS[name])
            if data.shape != (n,):
                raise ValueError(f"ShardWriter: {name} has shape {data.shape}, expected {(n,)}")
            parts.append(data)
        self.rows += n

    def close(self) -> str:
        """Finish the file, rename it to its final name; return its sha256."""
        for name, parts in self._scalars.items():
            data = np.concatenate(parts) if parts else np.zeros(0, dtype=ROW_DATASETS[name])
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
        if self._h5.id.valid:
            self._h5.close()
        self.tmp.unlink(missing_ok=True)
