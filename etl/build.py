"""Build sharded HDF5 training data from a release's catalogue and fetched spec-lite files.

The plan is made on the driver from the catalogue alone (a few dozen bytes per object); the
work runs as a Dask graph with one task per output shard. A task receives only its own rows of
the catalogue, reads and preprocesses those spectra, and writes one shard file (temporary name,
then a no-clobber link to its final name). h5py objects never leave the task; the task returns
a small dict of metadata. ``index.json`` is written last, atomically: it is the only list of
valid shards.

Incremental builds: every shard carries ``inputs_sha256``, a fingerprint of its objects'
catalogue rows, their input files (size and mtime) and the preprocessing settings. A planned
shard whose fingerprint matches a shard of the previous index (or of the journal of a build that
was killed) whose file is present with the recorded size is kept; only the others are written.
Changed shards go to *new* file names, so the previous index stays valid until the new one
replaces it: a SIGKILL at any moment leaves either the old or the new index, each consistent.

Shard boundaries are stable across catalogue growth: each split's objects are sorted by
specobjid (numerically: ids are decimal strings, compared zero-padded) and assigned to the id
ranges of the previous index's shards; a range that grew past ``shard_size`` is cut into equal
pieces. New objects therefore touch only the shards whose range they fall into (for SDSS, new
plates have larger ids and land at the end).

Objects are identified by the release's object key (``[object] key`` of the manifest: plate, mjd,
fiberid for SDSS-I–IV; field, mjd, catalogid for SDSS-V); it names each input file and is
checked against the file's HDU 2, and it is stored per row in the shards (format v2).

A full disk stops the build at once (:class:`etl.diskspace.DiskFull`, one line): no new task
starts, tasks in flight finish or stop, every finished shard is in the journal (the rerun keeps
it), no temporary file remains, ``index.json`` is unchanged and ``build-report.json`` (still the
report of that index) gains a ``stopped`` record. A rerun after space is freed completes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np

from etl.atomic import fsync_dir, write_json_atomic
from etl.catalog import CatalogError, id_sort_key, read_catalog
from etl.diskspace import DiskFull, is_disk_full
from etl.release import ObjectLayout, Release
from etl.shards import CHUNK_ROWS, FORMAT_VERSION, SPLITS, ShardError, ShardWriter, shard_attrs
from etl.spectrum import Preprocessor, SpectrumRejected
from etl.splits import split_of, valid_position

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
REPORT_NAME = "build-report.json"
JOURNAL_NAME = ".journal.jsonl"
LOCK_NAME = ".lock"
INDEX_FORMAT = "specetl-shard-index"
INDEX_FORMAT_VERSION = FORMAT_VERSION  # index and shards change version together
COMPRESSIONS = ("none", "lzf", "gzip")
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")


def _task_columns(release: Release) -> tuple[str, ...]:
    """Catalogue columns a task needs (and nothing else: memory per task is bounded by its rows)."""
    return ("SPECOBJID", *(k.upper() for k in release.key), "RUN2D", "Z", "Z_ERR", "RA", "DEC")


class BuildError(RuntimeError):
    """The build cannot run (missing catalogue, locked folder, a failed task)."""


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


@dataclass
class BuildResult:
    """What a build did (also written, in more detail, to build-report.json)."""

    shards_dir: Path
    shards: list[dict] = field(default_factory=list)
    written: int = 0
    kept: int = 0
    accepted: int = 0
    rejected: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    #: format version of the shards this build replaced wholesale (None: same format or none)
    replaced_format_version: int | None = None

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejected).most_common())


# --- paths, fingerprints ------------------------------------------------------------------------


def release_dir(data_dir: str | Path, release: Release) -> Path:
    return Path(data_dir) / release.name


def settings_fingerprint(release: Release, compression: str | None) -> str:
    """sha256 of everything besides the objects that decides a shard's bytes."""
    from etl import __version__

    settings = {
        "manifest_sha256": release.manifest_sha256,
        "specetl_version": __version__,
        "format_version": INDEX_FORMAT_VERSION,
        "compression": compression or "none",
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


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
    rows = {name: np.asarray(catalog[name])[keep] for name in _task_columns(release)}
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


# --- the task (runs on a worker) ----------------------------------------------------------------


def build_one_shard(
    task: ShardTask,
    preprocessor: Preprocessor,
    attrs: Mapping[str, object],
    shards_dir: str,
    compression: str | None,
) -> dict:
    """Preprocess ``task``'s spectra and write its shard; return the index entry + rejections.

    Runs in a worker process. Writes ``<shards_dir>/<task.path>`` through a temporary file and a
    hard link that refuses to overwrite (two runs can never clobber each other's shard).
    A full disk is returned as ``{"disk_full": path}`` (no file left), not raised, so that the
    driver stops the build without a traceback from every worker.
    """
    try:
        return _build_one_shard(task, preprocessor, attrs, shards_dir, compression)
    except (OSError, RuntimeError) as err:  # h5py raises either
        if not is_disk_full(err):
            raise
        return {
            "entry": None,
            "rejected": [],
            "disk_full": str(Path(shards_dir) / task.path),  # where it was being written
        }


def _build_one_shard(
    task: ShardTask,
    preprocessor: Preprocessor,
    attrs: Mapping[str, object],
    shards_dir: str,
    compression: str | None,
) -> dict:
    rows = task.rows
    n = len(task)
    npix = len(preprocessor.wave_obs)
    final = Path(shards_dir) / task.path
    staging = final.with_name(f".{final.name}.{os.getpid()}.part")
    attrs = dict(attrs, split=task.split, inputs_sha256=task.inputs_sha256)
    comp = None if compression in (None, "none") else compression
    rejected: list[dict] = []
    kept: list[np.ndarray] = []
    writer: ShardWriter | None = None  # opened at the first accepted block
    block = CHUNK_ROWS  # memory per task: one block of rows, whatever the shard size
    with contextlib.ExitStack() as stack:
        for start in range(0, n, block):
            idx = np.arange(start, min(start + block, n))
            flux = np.zeros((len(idx), npix), dtype=np.float32)
            ivar = np.zeros((len(idx), npix), dtype=np.float32)
            norm = np.zeros(len(idx), dtype=np.float32)
            good = np.zeros(len(idx), dtype=bool)
            for j, i in enumerate(idx.tolist()):
                expect = task.key(i)
                path = task.file(i)
                try:
                    pre = preprocessor.preprocess_file(path, float(rows["Z"][i]), expect)
                except SpectrumRejected as err:
                    rejected.append(_rejection(rows, i, path, err.reason, err.detail))
                    continue
                flux[j], ivar[j], norm[j] = pre.flux, pre.ivar, pre.norm
                good[j] = True
            if not good.any():
                continue
            sel = idx[good]  # rows stay sorted by specobjid
            if writer is None:
                writer = stack.enter_context(
                    ShardWriter(staging, preprocessor.wave_obs, attrs, comp, min(n, CHUNK_ROWS))
                )
            writer.append(
                {
                    "flux": flux[good],
                    "ivar": ivar[good],
                    "norm": norm[good],
                    "z": rows["Z"][sel],
                    "zerr": rows["Z_ERR"][sel],
                    "specobjid": rows["SPECOBJID"][sel],
                    "ra": rows["RA"][sel],
                    "dec": rows["DEC"][sel],
                    **{k: rows[k.upper()][sel] for k in task.layout.key},
                }
            )
            kept.append(sel)
        digest, size = "", 0
        if writer is not None:  # a shard whose candidates were all rejected has no file
            digest = writer.close()
            try:
                _link_no_clobber(staging, final)
            finally:
                staging.unlink(missing_ok=True)
            size = final.stat().st_size
    keep = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    ids = rows["SPECOBJID"][keep]  # sorted by numeric id (planning)
    entry = {
        "path": task.path,
        "split": task.split,
        "rows": int(len(keep)),
        "sha256": digest,
        "bytes": size,
        "specobjid_min": str(ids[0]) if len(ids) else None,
        "specobjid_max": str(ids[-1]) if len(ids) else None,
        "candidate_min": task.candidate_min,
        "candidates": n,
        "inputs_sha256": task.inputs_sha256,
    }
    return {"entry": entry, "rejected": rejected}


def _link_no_clobber(src: Path, dst: Path) -> None:
    """Give ``src`` the name ``dst`` unless ``dst`` exists (then BuildError): no silent overwrite."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise BuildError(f"{dst}: exists already (is another build running?)") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # file systems without hard links: check-then-rename (the folder lock covers the race)
        if dst.exists():
            raise BuildError(f"{dst}: exists already (is another build running?)") from None
        os.replace(src, dst)
    fsync_dir(dst.parent)


# --- index, journal, report ---------------------------------------------------------------------


def read_index(shards_dir: str | Path) -> dict:
    """Load ``index.json`` of a shards folder (ShardError if missing or not an index)."""
    path = Path(shards_dir) / INDEX_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: no index (run `specetl build-shards`)") from None
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable index ({err})") from None
    if doc.get("format") != INDEX_FORMAT:
        raise ShardError(f"{path}: not a specetl shard index")
    return doc


def _read_journal(path: Path) -> list[dict]:
    """Results of a killed build's finished tasks; a torn last line is ignored."""
    out = []
    with contextlib.suppress(FileNotFoundError), open(path) as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def _usable(shards_dir: Path, entry: dict, verify: bool = False) -> bool:
    """A previous shard is reusable if its file exists with the recorded size (and, with
    ``verify``, the recorded sha256).

    (Re-hashing every shard by default would make a no-op rerun read the whole dataset; the size
    check catches truncation, ``verify`` catches a flipped byte.)
    """
    if entry.get("rows") == 0:
        return True  # nothing on disk to check
    path = shards_dir / entry.get("path", "")
    try:
        if path.stat().st_size != entry["bytes"]:
            return False
    except (OSError, KeyError):
        return False
    if verify:
        from etl.shards import sha256_file

        if sha256_file(path) != entry.get("sha256"):
            log.warning("%s: sha256 differs from index.json; rebuilding it", path)
            return False
    return True


def verify_shards(shards_dir: str | Path) -> list[str]:
    """sha256 every shard listed in the index; return the problems (empty list: all good)."""
    from etl.shards import sha256_file

    shards_dir = Path(shards_dir)
    problems = []
    for e in read_index(shards_dir)["shards"]:
        path = shards_dir / e["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != e["sha256"]:
            problems.append(f"{path}: sha256 differs from index.json")
    return problems


@contextlib.contextmanager
def _locked(shards_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the shards folder for the whole build."""
    import fcntl

    shards_dir.mkdir(parents=True, exist_ok=True)
    with open(shards_dir / LOCK_NAME, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"{shards_dir}: another build-shards holds the lock") from None
        yield


def _next_numbers(shards_dir: Path, known: list[dict]) -> dict[str, int]:
    """First unused shard number per split (above every file on disk and every known entry)."""
    nxt = dict.fromkeys(SPLITS, 0)
    names = [Path(e["path"]) for e in known]
    for split in SPLITS:
        d = shards_dir / split
        if d.is_dir():
            names += [Path(split) / p.name for p in d.iterdir()]
    for p in names:
        m = _SHARD_RE.match(p.name.lstrip(".").split(".h5")[0] + ".h5")
        if m and p.parent.name in nxt:
            nxt[p.parent.name] = max(nxt[p.parent.name], int(m.group(1)) + 1)
    return nxt


def _sweep(shards_dir: Path, listed: set[str]) -> int:
    """Delete shard files and leftovers that the (new, committed) index does not list."""
    removed = 0
    for split in SPLITS:
        d = shards_dir / split
        if not d.is_dir():
            continue
        for p in d.iterdir():
            rel = f"{split}/{p.name}"
            if rel not in listed and p.is_file() and (".h5" in p.name):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def _split_key(release: Release) -> dict:
    """What every object's split depends on (written to index.json)."""
    s = release.splits
    return {
        "key": "healpix",
        "order": "nested",
        "nside": s.nside,
        "salt": s.salt,
        "fractions": [s.train, s.valid, s.test],
        "repeat_radius_arcsec": s.repeat_radius,
    }


# --- the build ----------------------------------------------------------------------------------


def build_shards(
    release: Release,
    data_dir: str | Path,
    shard_size: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    compression: str = "none",
    rebuild: bool = False,
    progress: bool = True,
    verify: bool = False,
) -> BuildResult:
    """Build ``DATA/<release>/shards/`` from ``catalog.fits`` and ``spectra/``; see module doc.

    ``shard_size``: candidate objects per shard (default: the manifest's). ``workers``/
    ``scheduler``: a local cluster of that many processes, or an existing scheduler address.
    ``compression``: "none", "lzf" or "gzip". ``rebuild``: ignore previous shards.
    ``verify``: check the sha256 of every shard that would be kept; rebuild those that differ.
    """
    if compression not in COMPRESSIONS:
        raise BuildError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    t0 = time.perf_counter()
    root = release_dir(data_dir, release)
    shards_dir = root / "shards"
    shard_size = shard_size or release.shards.shard_size
    if shard_size <= 0:
        raise BuildError(f"shard size must be positive, got {shard_size}")
    try:
        catalog = read_catalog(root / "catalog.fits", release.key)
    except CatalogError as err:
        if "missing column" not in str(err):
            raise
        # e.g. a catalogue fetched before positions were required (the split needs RA/DEC)
        raise BuildError(f"{err}; run `specetl fetch` again to rewrite it") from None
    log.info("%s: %d objects in the catalogue", release.name, len(catalog["SPECOBJID"]))

    with _locked(shards_dir):
        previous: list[dict] = []
        old_report: dict = {}
        old_version = None
        if not rebuild:
            with contextlib.suppress(ShardError):
                old_index = read_index(shards_dir)
                old_version = old_index.get("format_version")
                previous = old_index["shards"] + old_index.get("empty", [])
            with contextlib.suppress(OSError, ValueError):
                old_report = json.loads((shards_dir / REPORT_NAME).read_text())
        replaced = old_version if old_version not in (None, INDEX_FORMAT_VERSION) else None
        if replaced is not None:
            # older shards were split by another key: never keep them next to new ones
            log.warning(
                "%s: shards are format v%s, this specetl writes v%d (split keyed on the sky "
                "position, rows carry ra/dec): rebuilding every shard",
                shards_dir,
                old_version,
                INDEX_FORMAT_VERSION,
            )
            previous, old_report = [], {}
        journal_path = shards_dir / JOURNAL_NAME
        journal = [] if rebuild else _read_journal(journal_path)
        tasks, rejected = plan_shards(
            catalog, release, root / "spectra", shard_size, compression, previous
        )
        del catalog  # the tasks hold what is still needed

        # reuse: previous index first, then shards a killed run finished (journal)
        reusable: dict[str, tuple[dict, list[dict]]] = {}
        old_rejects: dict[str, list[dict]] = {}
        for r in old_report.get("rejected", []):
            old_rejects.setdefault(r.get("shard", ""), []).append(r)
        for e in previous:
            reusable.setdefault(e["inputs_sha256"], (e, old_rejects.get(e["path"], [])))
        for j in journal:
            e = j["entry"]
            reusable.setdefault(e["inputs_sha256"], (e, j["rejected"]))

        result = BuildResult(shards_dir, replaced_format_version=replaced)
        todo: list[ShardTask] = []
        done: list[tuple[ShardTask, dict, list[dict]]] = []
        for task in tasks:
            hit = reusable.get(task.inputs_sha256)
            if hit and not rebuild and _usable(shards_dir, hit[0], verify):
                task.path = hit[0]["path"]
                done.append((task, hit[0], hit[1]))
            else:
                todo.append(task)
        result.kept = len(done)
        nxt = _next_numbers(shards_dir, previous + [j["entry"] for j in journal])
        for task in todo:
            task.path = f"{task.split}/shard-{nxt[task.split]:05d}.h5"
            nxt[task.split] += 1
            (shards_dir / task.split).mkdir(parents=True, exist_ok=True)
        log.info("%d shard(s) planned: %d unchanged, %d to write", len(tasks), len(done), len(todo))
        if todo:
            try:
                # closing(): a stop in this loop closes the cluster before the cleanup below
                with (
                    open(journal_path, "a") as jfh,
                    contextlib.closing(
                        _run_tasks(
                            todo, release, shards_dir, compression, workers, scheduler, progress
                        )
                    ) as results,
                ):
                    for task, out in results:
                        jfh.write(json.dumps(out) + "\n")
                        jfh.flush()
                        os.fsync(jfh.fileno())
                        done.append((task, out["entry"], out["rejected"]))
            except OSError as err:
                if not is_disk_full(err):
                    raise
                _stop_on_full_disk(shards_dir, old_report, err, len(done) - result.kept, len(todo))
        result.written = len(todo)

        # index: one entry per shard, in split then id order; shards without rows go to
        # "empty" (no file; kept only so that their inputs are not reprocessed every run)
        empty: list[dict] = []
        order = {name: i for i, name in enumerate(SPLITS)}
        done.sort(key=lambda d: (order[d[0].split], int(d[0].candidate_min)))
        for task, entry, rejects in done:
            for r in rejects:
                result.rejected.append(dict(r, shard=task.path))
            (result.shards if entry["rows"] else empty).append(entry)
        result.rejected = rejected + result.rejected
        result.accepted = sum(e["rows"] for e in result.shards)
        index = {
            "format": INDEX_FORMAT,
            "format_version": INDEX_FORMAT_VERSION,
            "release": release.name,
            "manifest_sha256": release.manifest_sha256,
            "object_key": list(release.key),
            "npix": release.grid.npix,
            "shard_size": shard_size,
            "compression": compression,
            "split": _split_key(release),
            "shards": result.shards,
            "empty": empty,
        }
        result.seconds = time.perf_counter() - t0
        report = {
            "release": release.name,
            "catalogue_rows": sum(len(d[0]) for d in done) + len(rejected),
            "accepted": result.accepted,
            "rejected_count": len(result.rejected),
            "rejected_by_reason": result.rejected_by_reason,
            "shards": len(result.shards),
            "shards_written": result.written,
            "shards_kept": result.kept,
            "seconds": round(result.seconds, 3),
            "replaced_format_version": result.replaced_format_version,
            "rejected": result.rejected,
        }
        # the report first, then the index (the commit point), then clean up what it replaced
        write_json_atomic(shards_dir / REPORT_NAME, report)
        write_json_atomic(shards_dir / INDEX_NAME, index)
        removed = _sweep(shards_dir, {e["path"] for e in result.shards})
        journal_path.unlink(missing_ok=True)
        if removed:
            log.info("removed %d superseded or unfinished shard file(s)", removed)
    log.info(
        "%s: %d accepted in %d shard(s) (%d written, %d unchanged), %d rejected, %.1f s",
        release.name,
        result.accepted,
        len(result.shards),
        result.written,
        result.kept,
        len(result.rejected),
        result.seconds,
    )
    for reason, count in result.rejected_by_reason.items():
        log.info("  rejected, %s: %d", reason, count)
    return result


def _stop_on_full_disk(
    shards_dir: Path, old_report: dict, err: OSError, finished: int, planned: int
) -> NoReturn:
    """Leave the folder consistent after a full disk, record the stop, raise one line."""
    removed = 0
    for split in SPLITS:  # temporaries of tasks cut short (finished shards stay: journal)
        d = shards_dir / split
        for p in d.iterdir() if d.is_dir() else ():
            if p.name.startswith(".") and p.name.endswith((".tmp", ".part")):
                p.unlink(missing_ok=True)
                removed += 1
    cause = str(err) if isinstance(err, DiskFull) else str(DiskFull(err.filename or shards_dir))
    detail = (
        f"build-shards stopped: {finished} of {planned} shard(s) to write were finished and are "
        f"kept for the rerun; index.json is unchanged and no partial file remains: free space "
        f"and rerun"
    )
    # build-report.json keeps describing the index it sits beside (still the old one)
    stop = {"cause": cause, "shards_finished": finished, "shards_planned": planned}
    try:
        write_json_atomic(shards_dir / REPORT_NAME, dict(old_report, stopped=stop))
    except OSError as again:
        if not is_disk_full(again):
            raise
        detail += "; build-report.json could not be updated"
    log.debug("removed %d temporary file(s) after the stop", removed)
    raise DiskFull(shards_dir, detail) from None


def _run_tasks(
    todo: list[ShardTask],
    release: Release,
    shards_dir: Path,
    compression: str,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> Iterator[tuple[ShardTask, dict]]:
    """Run the shard tasks on Dask; yield (task, result) as each finishes.

    At most two tasks per worker are in flight, so the scheduler never holds more than a few
    shards' worth of catalogue rows however large the catalogue (memory stays flat).
    """
    from distributed import as_completed
    from tqdm import tqdm

    from etl.cluster import dask_client

    pre = Preprocessor(release)
    with dask_client(scheduler, workers) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        pre_f = client.scatter(pre, broadcast=True)
        # the Release itself holds mapping proxies (not picklable): ship the attrs it implies
        attrs = shard_attrs(release, "")
        queue = list(reversed(todo))
        futures = {}

        def submit() -> object:
            task = queue.pop()
            fut = client.submit(
                build_one_shard,
                task,
                pre_f,
                attrs,
                str(shards_dir),
                compression,
                key=f"shard-{task.path}-{task.inputs_sha256[:12]}",
                pure=False,
            )
            futures[fut.key] = task
            return fut

        pending = as_completed([submit() for _ in range(min(len(queue), 2 * n_workers))])
        bar = tqdm(
            total=len(todo), unit="shard", disable=None if progress else True, desc="build-shards"
        )
        stop = ""  # a full disk: submit nothing more, let the tasks in flight finish, then raise
        try:
            for fut in pending:
                task = futures.pop(fut.key)
                try:
                    out = fut.result()
                except BuildError:
                    raise
                except Exception as err:
                    raise BuildError(f"shard {task.path}: task failed ({err})") from err
                fut.release()
                bar.update(1)
                if out.get("disk_full"):
                    stop = stop or out["disk_full"]
                    queue.clear()
                    continue
                if queue:
                    pending.add(submit())
                yield task, out
        finally:
            bar.close()
        if stop:
            raise DiskFull(stop)
