"""The shard format: write and read HDF5 shards and their index (the one owner of the format).

The format is documented in ``docs/shard-format.md``. Both ``etl`` (the writer: build-shards)
and ``model`` (the readers: training, evaluate, embed) use this module, which imports neither
of them: numpy and h5py only. Every write goes to a temporary name in the same folder and is
renamed when the file is complete and flushed, so a crash never leaves a half-written shard
under a final name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from shardio.sink import FailSafeFile

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
#: per-object datasets a shard may have (absent: False for every row). ``synthetic``: the object
#: is SYNTHETIC (made by etl.synthetic, carried from its catalogue's SYNTHETIC column).
OPTIONAL_DATASETS: Mapping[str, str] = {"synthetic": "bool"}
#: the ``units`` attribute of each dataset (HDF5's usual name; FITS unit strings, which astropy
#: parses; "" = dimensionless). The object-key columns are ids ("").
DATASET_UNITS: Mapping[str, str] = {
    "flux": "",  # observed flux / norm
    "ivar": "",  # inverse variance of flux / norm
    "z": "",
    "zerr": "",
    "norm": "10**-17 erg/(s cm2 Angstrom)",
    "specobjid": "",
    "ra": "deg",
    "dec": "deg",
    "synthetic": "",
    "wave_obs": "Angstrom",
}
#: units of the file attributes that have one (the file attribute ``units``, as JSON)
ATTR_UNITS: Mapping[str, str] = {
    "loglam0": "log(Angstrom)",  # log10 of a wavelength in Angstrom
    "dloglam": "dex",  # a step in log10 wavelength
    "telluric_half_width": "Angstrom",
    "norm_restframe_min": "Angstrom",
    "norm_restframe_max": "Angstrom",
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
    if isinstance(raw, bytes):
        raw = raw.decode()
    return tuple(json.loads(raw)) if isinstance(raw, str) else tuple(str(k) for k in raw)


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
    """A shard file or index is missing, unreadable or does not match its index entry; the
    message names the file."""


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
            names = [*row_datasets(h5.attrs), *(k for k in OPTIONAL_DATASETS if k in h5)]
            out: dict[str, np.ndarray] = {name: h5[name][sel] for name in names}
            out["wave_obs"] = h5["wave_obs"][:]
            out["attrs"] = dict(h5.attrs)  # type: ignore[assignment]
    except FileNotFoundError:
        raise ShardError(f"{path}: shard is missing") from None
    except (OSError, KeyError) as err:
        raise ShardError(f"{path}: unreadable shard ({err})") from None
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (hex), read in blocks."""
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
        # HDF5 writes through a FailSafeFile, never to the disk itself: HDF5 (2.0 here) crashes
        # the process closing a file after a failed write (a full disk). The sink records the
        # failure and append()/close() raise it here. No chunk cache, so a failed chunk write
        # is met in the append() that made it, not at a later eviction or at close. At real
        # sizes that changes nothing: a 256-row chunk of float32 flux (4 MB) is larger than the
        # default 1 MB cache, so it bypassed the cache anyway.
        self._sink = FailSafeFile(self.tmp)
        self._h5: h5py.File | None = None
        try:
            self._h5 = h5py.File(self._sink, "w", rdcc_nbytes=0)
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
            for name in ("flux", "ivar", "wave_obs"):
                self._h5[name].attrs["units"] = DATASET_UNITS[name]
            self._h5.attrs.update(dict(attrs))
        except BaseException:
            # no `with` block owns the writer yet: give back the descriptor and the temp file
            self._discard()
            raise

    def append(self, columns: Mapping[str, np.ndarray]) -> None:
        """Append a block of rows (every per-row dataset, see :func:`row_datasets`, and the
        :data:`OPTIONAL_DATASETS` the first block has: every block then has the same)."""
        n = len(columns["specobjid"])
        optional = [k for k in OPTIONAL_DATASETS if k in columns]
        if not any(self._scalars.values()):  # the first block decides
            for k in optional:
                self.datasets[k] = OPTIONAL_DATASETS[k]
                self._scalars.setdefault(k, [])
        elif sorted(optional) != sorted(k for k in OPTIONAL_DATASETS if k in self._scalars):
            raise ValueError(
                f"ShardWriter: optional column(s) {optional} differ from the first block"
            )
        for name in ("flux", "ivar"):
            data = np.asarray(columns[name], dtype=ROW_DATASETS[name])
            if data.shape != (n, self.npix):
                raise ValueError(
                    f"ShardWriter: {name} has shape {data.shape}, expected {(n, self.npix)}"
                )
            ds = self._h5[name]
            ds.resize(self.rows + n, axis=0)
            ds[self.rows :] = data
            self._sink.raise_error()
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
            self._h5.create_dataset(name, data=data).attrs["units"] = DATASET_UNITS.get(name, "")
        self._h5.close()
        self._sink.fsync()  # raises the failed write's error, if one failed
        self._sink.close()
        digest = sha256_file(self.tmp)
        os.replace(self.tmp, self.path)
        return digest

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._discard()

    def _discard(self) -> None:
        """Close whatever is open and delete the temp file (a no-op after close())."""
        try:
            if self._h5 is not None and self._h5.id.valid:
                self._h5.close()
        finally:
            self._sink.close()
            self.tmp.unlink(missing_ok=True)
