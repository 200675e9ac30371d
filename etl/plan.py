"""Plan a shard build: catalogue rows -> shard tasks (split, order, boundaries, fingerprints).

The plan is made on the driver from the catalogue alone (a few dozen bytes per object). Each
object's split comes from its position on the sky (:mod:`etl.splits`); within a split, objects
are sorted by specobjid (numerically: ids are decimal strings, compared zero-padded) and
assigned to the id ranges of the previous index's shards; a range that grew past
``shard_size`` is cut into equal pieces. Shard boundaries are therefore stable across catalogue
growth: new objects touch only the shards whose range they fall into (for SDSS, new plates
have larger ids and land at the end).

Every task carries ``inputs_sha256``, a fingerprint of its objects' catalogue rows, their input
files (size and mtime) and the preprocessing settings; the driver (:mod:`etl.build`) keeps a
previous shard whose fingerprint matches. Rows with an invalid id, an invalid position or a
duplicate specobjid are rejected here, before any work.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etl.catalog import id_sort_key
from etl.paths import safe_name, under
from etl.release import ObjectLayout, Release
from etl.shard_index import settings_fingerprint
from etl.splits import split_of, valid_position
from shardio import SPLITS


def _task_columns(release: Release) -> tuple[str, ...]:
    """Catalogue columns a task needs (and nothing else: memory per task is bounded by its rows)."""
    return ("SPECOBJID", *(k.upper() for k in release.key), "RUN2D", "Z", "Z_ERR", "RA", "DEC")


@dataclass
class ShardTask:
    """One planned output shard: its rows of the catalogue and where it goes.

    ``rows`` holds only this shard's candidates (catalogue columns of :func:`_task_columns` plus
    the input files' ``SIZE`` and ``MTIME``), sorted by specobjid. File paths are derived from
    the ids in the task, not stored: ~300 bytes per object saved on the driver.
    """

    split: str
    rows: dict[str, np.ndarray]
    inputs_sha256: str
    spectra_dir: str
    layout: ObjectLayout
    path: str = ""  #: relative to the shards folder; set when the shard is (re)written

    def key(self, i: int) -> tuple[int, ...]:
        """Object key of row ``i`` (the release's key fields, in order)."""
        return tuple(int(self.rows[k.upper()][i]) for k in self.layout.key)

    def file(self, i: int) -> str:
        """Input spec-lite path of row ``i``."""
        # ids were validated while planning (Release.spec_lite_relpath); here only the string
        rel = self.layout.path.format(**self.layout.fields(self.key(i)))
        return os.path.join(self.spectra_dir, str(self.rows["RUN2D"][i]), rel)

    @property
    def candidate_min(self) -> str:
        return str(self.rows["SPECOBJID"][0])

    def __len__(self) -> int:
        return len(self.rows["SPECOBJID"])


# --- paths, fingerprints ------------------------------------------------------------------------


def release_dir(data_dir: str | Path, release: Release) -> Path:
    """DATA/<release>, checked to stay under DATA (UnsafePath otherwise)."""
    return under(data_dir, safe_name(release.name, "release name"))


def _stat_block(paths: list[str]) -> list[tuple[int, int]]:
    """(size in bytes, mtime in ns) of each path; (-1, -1) for a missing file."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append((-1, -1))
        else:
            out.append((st.st_size, st.st_mtime_ns))
    return out


def _take_stats(item: tuple[list[int], object], size: np.ndarray, mtime: np.ndarray) -> None:
    rows, future = item
    if rows:
        st = np.asarray(future.result(), dtype=np.int64).reshape(-1, 2)
        size[rows], mtime[rows] = st[:, 0], st[:, 1]


def _inputs_fingerprint(split: str, rows: Mapping[str, np.ndarray], settings: str) -> str:
    """sha256 over the split, settings and, per object, its id, key, position, z, z_err and
    file size/mtime (every catalogue value a shard stores or is read with)."""
    h = hashlib.sha256(f"{split}\0{settings}\0".encode())
    for name, values in rows.items():
        if name not in ("SPECOBJID", "RUN2D"):
            h.update(name.encode() + np.ascontiguousarray(values).tobytes())
    for name in ("SPECOBJID", "RUN2D"):
        h.update(("\0".join(rows[name].tolist()) + "\0").encode())
    return h.hexdigest()


# --- planning -----------------------------------------------------------------------------------


def _cut(ids: np.ndarray, lower_bounds: list[str], shard_size: int) -> list[np.ndarray]:
    """Row-index groups: bucket sorted ``ids`` by ``lower_bounds``, then cut big buckets evenly.

    ``ids`` and ``lower_bounds`` are :func:`~etl.catalog.id_sort_key` strings (numeric order).
    Bucket i holds ids in [lower_bounds[i], lower_bounds[i+1]); the first bucket also takes
    everything below. A bucket of n > shard_size ids becomes ceil(n / shard_size) equal pieces,
    so no shard exceeds shard_size and none is tiny after a split.
    """
    bounds = np.asarray(sorted(lower_bounds)[1:], dtype=ids.dtype)
    bucket = np.searchsorted(bounds, ids, side="right")
    groups: list[np.ndarray] = []
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]]) if len(ids) else []
    ends = list(starts[1:]) + [len(ids)] if len(ids) else []
    for start, end in zip(starts, ends, strict=True):
        n = end - start
        pieces = -(-n // shard_size)
        groups.extend(np.array_split(np.arange(start, end), pieces))
    return groups


def plan_shards(
    catalog: Mapping[str, np.ndarray],
    release: Release,
    spectra_dir: Path,
    shard_size: int,
    compression: str | None,
    previous: list[dict] | None = None,
) -> tuple[list[ShardTask], list[dict]]:
    """Split, order and cut the catalogue into shard tasks; return (tasks, early rejections).

    Each object's split comes from its position on the sky (:func:`etl.splits.split_of`:
    HEALPix cell, salt, fractions; repeat observations together), computed over the whole
    catalogue at once. Objects are ordered by split, then specobjid. ``previous`` (index
    entries of an earlier build) supplies the shard boundaries, so growth changes only the
    shards it lands in. Rows with an invalid id, an invalid position or a duplicate specobjid
    are rejected here, before any work.
    """
    n = len(catalog["SPECOBJID"])
    rejected: list[dict] = []
    size = np.full(n, -1, dtype=np.int64)
    mtime = np.full(n, -1, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    key_cols = [k.upper() for k in release.key]
    # stat in blocks on a thread pool (hides file-system latency, e.g. on network storage)
    # while holding only a block of path strings at a time
    block = 4096
    with ThreadPoolExecutor(16) as pool:
        pending = []
        for start in range(0, n, block):
            rows_ok, paths = [], []
            for i in range(start, min(start + block, n)):
                try:
                    key = (int(catalog[k][i]) for k in key_cols)
                    rel = release.spec_lite_relpath(catalog["RUN2D"][i], *key)
                except ValueError as err:
                    ok[i] = False
                    rejected.append(_rejection(catalog, i, "", "invalid id", str(err)))
                    continue
                paths.append(str(spectra_dir / rel))
                rows_ok.append(i)
            pending.append((rows_ok, pool.submit(_stat_block, paths)))
            while len(pending) > 32:  # bounded queue of blocks in flight
                _take_stats(pending.pop(0), size, mtime)
        for item in pending:
            _take_stats(item, size, mtime)
    bad_pos = ~valid_position(catalog["RA"], catalog["DEC"])
    for i in np.flatnonzero(bad_pos & ok):
        ok[i] = False
        detail = f"ra {catalog['RA'][i]!r}, dec {catalog['DEC'][i]!r} (degrees)"
        rejected.append(_rejection(catalog, i, "", "invalid position", detail))
    ids = id_sort_key(catalog["SPECOBJID"])
    order = np.argsort(ids, kind="stable")
    dup = np.zeros(n, dtype=bool)
    dup[order[1:]] = ids[order[1:]] == ids[order[:-1]]
    for i in np.flatnonzero(dup & ok):
        ok[i] = False
        rejected.append(_rejection(catalog, i, "", "duplicate id", "specobjid seen before"))

    keep = np.flatnonzero(ok)
    names = (*_task_columns(release), *(["SYNTHETIC"] if "SYNTHETIC" in catalog else []))
    rows = {name: np.asarray(catalog[name])[keep] for name in names}
    rows["SIZE"], rows["MTIME"] = size[keep], mtime[keep]
    sort_key = ids[keep]
    # the split: the object's place on the sky (repeats follow their earliest observation)
    mjd = rows["MJD"] if "MJD" in rows else np.zeros(len(keep), dtype=np.int64)
    split = split_of(rows["RA"], rows["DEC"], mjd, release.splits)
    settings = settings_fingerprint(release, compression)

    tasks: list[ShardTask] = []
    for name in SPLITS:
        sel = np.flatnonzero(split == name)
        sel = sel[np.argsort(sort_key[sel], kind="stable")]
        bounds = [""] + [
            str(id_sort_key([str(e["candidate_min"])])[0])
            for e in previous or ()
            if e["split"] == name
        ]
        for group in _cut(sort_key[sel], bounds, shard_size):
            part = {k: v[sel[group]] for k, v in rows.items()}
            fingerprint = _inputs_fingerprint(name, part, settings)
            tasks.append(ShardTask(name, part, fingerprint, str(spectra_dir), release.object))
    return tasks, rejected


def _rejection(
    catalog: Mapping[str, np.ndarray], i: int, file: str, reason: str, detail: str
) -> dict:
    keys = [k for k in catalog if k not in _NOT_KEY]
    return {
        "specobjid": str(catalog["SPECOBJID"][i]),
        **{k.lower(): int(catalog[k][i]) for k in keys},
        "file": str(file),
        "reason": reason,
        "detail": detail,
    }


#: catalogue columns that are not part of an object key (so the key columns are the rest)
_NOT_KEY = frozenset(
    ("SPECOBJID", "RUN2D", "CLASS", "Z", "Z_ERR", "ZWARNING", "RA", "DEC", "SPECPRIMARY")
    + ("SIZE", "MTIME")
)
