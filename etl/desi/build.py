"""``specetl build-shards`` for a DESI release: fetched coadds -> shards of the same format.

The shards are planned from the catalogue alone (:func:`plan_shards`): each split's targets are
ordered by their coadd ((survey, program, healpix)) and TARGETID within it, and cut into shards
of at most ``shard_size`` rows. Each shard is then one task: it reads the coadds its rows are
in, runs them through :class:`etl.desi.preprocess.DesiPreprocessor` together (arm join and
resample are vectorised over rows) and writes the shard itself, on Dask workers or in this
process. Memory is one shard plus one coadd per worker whatever the catalogue's size, this
process only collects index entries, and the bytes do not depend on the number of workers.
Splits come from the same sky-cell key as SDSS (:func:`etl.splits.split_of`, the
manifest's ``[splits]``, identical to the SDSS manifests'), so a galaxy observed by both lands
in one split. Shards are format v2 (docs/shard-format.md) with the object key
(``targetid`` int64; ``survey``, ``program`` ASCII, listed by the ``object_key_text``
attribute) and ``specobjid`` = TARGETID as decimal text, so training and ``embed`` read them
unchanged.

Reruns write only what changed, as for SDSS. A rerun whose inputs (catalogue, stored coadds,
settings) are unchanged keeps every shard without planning. Otherwise the previous index's
shards are the plan's boundaries (each shard's ``first`` key), so targets a grown catalogue
gains change only the shards whose key range they fall into (a range grown past ``shard_size``
is cut again into equal pieces); each planned shard's fingerprint (its split, its targets'
catalogue columns, its coadds' size and mtime, the settings) is matched against the old index
and the journal of a build that was cut short, and only missing or changed shards are written,
under new file numbers. A killed build therefore resumes, a coadd that changed rewrites the
shards holding its targets, and the old index keeps describing intact files until the new one
replaces it (written last, atomically).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from etl.atomic import write_json_atomic
from etl.catalog import CatalogError
from etl.desi.catalog import DESI_COLUMNS
from etl.desi.coadd import CoaddArms, CoaddError, read_coadd
from etl.desi.fetch import coadd_groups
from etl.desi.manifest import CoaddLayout, DesiRelease
from etl.desi.preprocess import DesiPreprocessor
from etl.diskspace import is_disk_full
from etl.reports import BuildResult
from etl.shard_index import (
    INDEX_NAME,
    JOURNAL_NAME,
    REPORT_NAME,
    BuildError,
    index_document,
    locked,
    next_numbers,
    read_index,
    read_journal,
    reusable_shards,
    settings_fingerprint,
    stop_build_on_full_disk,
    sweep,
    usable,
)
from etl.shard_task import shard_attrs
from etl.spectrum import SpectrumRejected
from etl.splits import split_of
from shardio import SPLITS, ShardError, write_shard

log = logging.getLogger(__name__)


def read_desi_catalog(path: Path) -> dict[str, np.ndarray]:
    """``catalog.fits`` of a DESI release (written by :func:`etl.desi.fetch.build_desi_catalog`)."""
    from astropy.table import Table

    if not path.is_file():
        raise CatalogError(f"{path}: no catalogue (run `specetl fetch` first)")
    try:
        t = Table.read(path, format="fits", character_as_bytes=False)
    except (OSError, ValueError) as err:
        raise CatalogError(f"{path}: unreadable catalogue ({err})") from None
    missing = [c for c in DESI_COLUMNS if c not in t.colnames]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {', '.join(missing)}; run `specetl fetch`")
    return {c: np.asarray(t[c]) for c in DESI_COLUMNS}


def _fingerprint(release: DesiRelease, catalog_path: Path, coadds: list[Path], extra: str) -> str:
    h = hashlib.sha256()
    h.update(catalog_path.read_bytes())
    h.update(release.manifest_sha256.encode())
    h.update(extra.encode())
    for p in coadds:
        st = p.stat() if p.is_file() else None
        h.update(f"{p}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def build_desi_shards(
    release: DesiRelease,
    data_dir: str | Path,
    shard_size: int | None = None,
    compression: str = "none",
    rebuild: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    verify: bool = False,
) -> BuildResult:
    """Build ``DATA/<release>/shards/`` from ``catalog.fits`` and ``coadds/``.

    ``verify``: check the sha256 of every shard that would be kept; rewrite those that differ.
    Each shard is read, preprocessed and written by one task on Dask (``workers`` local
    processes, default the usable cores, or the cluster at ``scheduler``), in this process when
    ``workers`` is 1 and there is no scheduler; the shards are the same bytes either way.
    """
    t0 = time.perf_counter()
    root = Path(data_dir) / release.name
    shards_dir = root / "shards"
    shard_size = shard_size or release.shards.shard_size
    if shard_size <= 0:
        raise BuildError(f"shard size must be positive, got {shard_size}")
    catalog = read_desi_catalog(root / "catalog.fits")
    groups = coadd_groups(catalog)
    paths = {k: root / "coadds" / release.coadd_relpath(*k) for k in groups}
    comp = None if compression == "none" else compression
    fingerprint = _fingerprint(
        release, root / "catalog.fits", sorted(paths.values()), f"{shard_size}:{comp}"
    )
    with locked(shards_dir):
        old: dict = {}
        old_report: dict = {}
        if not rebuild:
            try:
                old = read_index(shards_dir)
            except ShardError:
                old = {}
            if old.get("inputs_sha256") == fingerprint and all(
                usable(shards_dir, e, verify) for e in old.get("shards", [])
            ):
                # what a build cut short left beside the index (files, journal) goes
                sweep(shards_dir, {e["path"] for e in old["shards"]})
                (shards_dir / JOURNAL_NAME).unlink(missing_ok=True)
                result = BuildResult.from_index(shards_dir)
                result.seconds = time.perf_counter() - t0
                return result
            with contextlib.suppress(OSError, ValueError):
                old_report = json.loads((shards_dir / REPORT_NAME).read_text())
        # the old index stays until the new one replaces it: new shards get file numbers it
        # does not list, so a build cut short (killed, a full disk) leaves it describing intact
        # files, and the rerun plans the same boundaries from it
        previous = old.get("shards", []) + old.get("empty", [])
        n = len(catalog["TARGETID"])
        split = split_of(catalog["RA"], catalog["DEC"], np.zeros(n, dtype=np.int64), release.splits)
        jobs = []
        for key, rows in groups.items():  # coadds in (survey, program, healpix) order
            rows = rows[np.argsort(catalog["TARGETID"][rows], kind="stable")]
            jobs.append(
                CoaddJob(
                    str(paths[key]),
                    release.coadd_relpath(*key),
                    rows,
                    catalog["TARGETID"][rows],
                    np.asarray(catalog["Z"][rows], dtype=np.float64),
                    key,
                )
            )
        plans = plan_shards(jobs, split, shard_size, previous)
        stamps = {str(p): _stamp(p) for p in paths.values()}
        # SDSS's settings (manifest, specetl and format versions, compression) and the size
        settings = f"{settings_fingerprint(release, comp)}:{shard_size}"  # type: ignore[arg-type]
        for plan in plans:
            plan.inputs_sha256 = _plan_fingerprint(plan, catalog, stamps, settings)
        journal_path = shards_dir / JOURNAL_NAME
        journal = [] if rebuild else read_journal(journal_path)
        kept = reusable_shards(previous, old_report, journal)
        result = BuildResult(shards_dir)

        # decided once: a kept plan takes its old file; the loop below pairs each other plan
        # with the next shard written, numbered above every file and entry known
        keep: dict[int, tuple] = {}
        for k, plan in enumerate(plans):
            hit = kept.get(plan.inputs_sha256)
            if hit and usable(shards_dir, hit[0], verify):
                plan.path, keep[k] = hit[0]["path"], hit
        todo = [p for k, p in enumerate(plans) if k not in keep]
        nxt = next_numbers(shards_dir, previous + [j["entry"] for j in journal])
        for plan in todo:
            plan.path = f"{plan.split}/shard-{nxt[plan.split]:05d}.h5"
            nxt[plan.split] += 1
            (shards_dir / plan.split).mkdir(parents=True, exist_ok=True)
        result.kept = len(keep)
        log.info(
            "%d shard(s) planned: %d unchanged, %d to write", len(plans), result.kept, len(todo)
        )
        entries: list[dict] = []
        empty: list[dict] = []  # shards whose every target was rejected: no file
        done = _written(release, catalog, todo, shards_dir, comp, workers, scheduler)
        finished = 0
        try:
            # closing(): a stop in this loop closes the Dask cluster the generator started
            with contextlib.closing(done), open(journal_path, "a") as journal_file:
                for k, plan in enumerate(tqdm(plans, unit="shard", desc="build-shards",
                                              disable=None if progress else True)):  # fmt: skip
                    if k in keep:
                        entry, rejects = keep[k]
                    else:
                        out = next(done)
                        entry = out.entry or _empty_entry(plan)
                        rejects = [_reject(catalog, i, r, d, plan.path) for i, r, d in out.rejected]
                        line = json.dumps({"entry": entry, "rejected": rejects})
                        journal_file.write(line + "\n")
                        journal_file.flush()
                        os.fsync(journal_file.fileno())
                        finished += 1
                    result.rejected += rejects
                    (entries if entry["rows"] else empty).append(entry)
                    result.accepted += entry["rows"]
        except OSError as err:
            if not is_disk_full(err):
                raise
            stop_build_on_full_disk(shards_dir, old_report, err, finished, len(todo))
        result.shards, result.written = entries, len(todo)
        result.seconds = time.perf_counter() - t0
        report = {
            "release": release.name,
            "catalogue_rows": n,
            "accepted": result.accepted,
            "rejected_count": len(result.rejected),
            "rejected_by_reason": result.rejected_by_reason,
            "shards": len(entries),
            "shards_written": result.written,
            "shards_kept": result.kept,
            "seconds": round(result.seconds, 3),
            "rejected": result.rejected,
        }
        index = index_document(
            release,  # type: ignore[arg-type]
            shard_size,
            compression,
            entries,
            empty,
            inputs_sha256=fingerprint,
        )
        # the report first, then the index (the commit point), then what it no longer lists
        write_json_atomic(shards_dir / REPORT_NAME, report)
        write_json_atomic(shards_dir / INDEX_NAME, index)
        sweep(shards_dir, {e["path"] for e in entries})
        journal_path.unlink(missing_ok=True)
    log.info("%s", result.summary())
    return result


@dataclass
class CoaddJob:
    """One coadd to preprocess: its file, its label, the catalogue rows it should hold, and its
    (survey, program, healpix)."""

    path: str
    label: str
    rows: np.ndarray  # catalogue row numbers, TARGETID order
    targetids: np.ndarray
    z: np.ndarray
    coadd: tuple[str, str, int] = ("", "", -1)  # unknown where no plan is made (embed)

    def take(self, at: np.ndarray) -> CoaddJob:
        """The same coadd with only the rows at positions ``at``."""
        return CoaddJob(
            self.path, self.label, self.rows[at], self.targetids[at], self.z[at], self.coadd
        )


@dataclass
class CoaddRows:
    """What one coadd gave: accepted rows (catalogue row numbers, flux, ivar on the release grid,
    normalisation) and the rejected ones as (row, reason, detail)."""

    rows: list[int] = field(default_factory=list)
    flux: np.ndarray | None = None
    ivar: np.ndarray | None = None
    norm: list[float] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def preprocess_coadd(pre: DesiPreprocessor, layout: CoaddLayout, job: CoaddJob) -> CoaddRows:
    """Read one coadd and preprocess its selected rows; a bad file or row is a rejection, never
    an exception. ``layout``: the release's coadd HDUs (``release.coadd``). A Dask task."""
    try:
        coadd = read_coadd(job.path, layout.arms, layout.table_hdu, job.targetids)
    except (CoaddError, OSError) as err:
        reason = "missing coadd" if not Path(job.path).is_file() else "unreadable coadd"
        return CoaddRows(rejected=[(int(i), reason, f"{job.label}: {err}") for i in job.rows])
    return preprocess_coadd_rows(pre, coadd, job)


def preprocess_coadd_rows(pre: DesiPreprocessor, coadd: CoaddArms, job: CoaddJob) -> CoaddRows:
    """:func:`preprocess_coadd` on a coadd already read (``job.path`` is not opened again)."""
    out = CoaddRows()
    at = coadd.rows_of(job.targetids)
    out.rejected = [(int(i), "not in coadd", job.label) for i in job.rows[at < 0]]
    keep = at >= 0
    if not keep.any():
        return out
    grid_flux, grid_ivar = pre.to_grid(coadd.arm_rows(at[keep]))
    good = []
    kept = zip(job.rows[keep], job.targetids[keep], job.z[keep], strict=True)
    for j, (i, tid, z) in enumerate(kept):
        try:
            spec = pre.finish(grid_flux[j], grid_ivar[j], float(z), str(tid))
        except SpectrumRejected as err:
            out.rejected.append((int(i), err.reason, err.detail))
            continue
        grid_flux[j], grid_ivar[j] = spec.flux, spec.ivar
        out.rows.append(int(i))
        out.norm.append(float(spec.norm))
        good.append(j)
    out.flux, out.ivar = grid_flux[good], grid_ivar[good]
    return out


@dataclass
class ShardPlan:
    """One shard to write: its split, the coadds it reads, each with only the catalogue rows
    this shard takes from it (at most ``shard_size`` rows in all, coadds in (survey, program,
    healpix) order, TARGETID order within a coadd), and its path under the shards folder
    (given by the build: a kept shard's old file, or the next free number)."""

    split: str
    jobs: list[CoaddJob]
    path: str = ""
    inputs_sha256: str = ""  #: set by the build (:func:`_plan_fingerprint`)

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate([job.rows for job in self.jobs])

    @property
    def first(self) -> dict:
        """The key of the shard's first row: where its range starts, for the next build."""
        job = self.jobs[0]
        survey, program, healpix = job.coadd
        return {
            "survey": str(survey),
            "program": str(program),
            "healpix": int(healpix),
            "targetid": str(int(job.targetids[0])),  # text, as JSON readers lose big integers
        }


@dataclass
class ShardOutcome:
    """What one shard task did: its index entry (None when every row was rejected) and the
    rejected rows as (catalogue row, reason, detail)."""

    entry: dict | None
    rejected: list[tuple[int, str, str]]


RowKey = tuple[str, str, int, int]  #: (survey, program, healpix, TARGETID): the plan's order


def _start(entry: dict) -> RowKey | None:
    """Where a previous shard's range starts; None for an entry without a readable one (an
    older index, a hand-edited one): the plan then simply has one boundary fewer."""
    first = entry.get("first")
    try:
        return (str(first["survey"]), str(first["program"]), int(first["healpix"]),
                int(first["targetid"]))  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def plan_shards(
    jobs: list[CoaddJob], split: np.ndarray, shard_size: int, previous: list[dict] | None = None
) -> list[ShardPlan]:
    """Cut each split's catalogue rows into shards of at most ``shard_size`` rows.

    ``jobs``: every coadd's rows, coadds in (survey, program, healpix) order and TARGETID order
    within each. ``previous``: the index entries of an earlier build; where each of its shards
    started becomes a boundary, so rows it already had stay together and new rows change only
    the shards whose key range they fall into. Rows between two boundaries (all of a split's
    rows when there is no earlier build) are cut into ceil(n / shard_size) equal pieces, so
    none is tiny after a range grows. The plan depends on the catalogue and the previous index
    alone, not on which rows the preprocessing rejects or on which worker is fastest, so every
    shard can be written by its own task and the bytes are the same on one process or many.
    """
    plans: list[ShardPlan] = []
    for name in SPLITS:
        starts = sorted({k for e in previous or () if e.get("split") == name if (k := _start(e))})
        bounds = starts[1:]  # the first range also takes every row before it
        ranges: dict[int, list[CoaddJob]] = {}
        for job in jobs:
            mine = np.flatnonzero(split[job.rows] == name)
            if not len(mine):
                continue
            lo = bisect.bisect_left(bounds, (*job.coadd, -math.inf))
            hi = bisect.bisect_left(bounds, (*job.coadd, math.inf))
            inside = np.array([b[3] for b in bounds[lo:hi]], dtype=np.int64)
            where = lo + np.searchsorted(inside, job.targetids[mine], side="right")
            for run in np.split(np.arange(len(mine)), np.flatnonzero(np.diff(where)) + 1):
                ranges.setdefault(int(where[run[0]]), []).append(job.take(mine[run]))
        for pieces in ranges.values():  # ascending: the jobs are in key order
            plans += [ShardPlan(name, part) for part in _cut_evenly(pieces, shard_size)]
    return plans


def _cut_evenly(pieces: list[CoaddJob], shard_size: int) -> list[list[CoaddJob]]:
    """Consecutive coadd pieces -> ceil(n / shard_size) shards of equal size (±1 row); a coadd
    that straddles a cut is read by both shards, each for its own rows."""
    n = sum(len(p.rows) for p in pieces)
    sizes = [len(a) for a in np.array_split(np.arange(n), -(-n // shard_size))]
    shards: list[list[CoaddJob]] = [[]]
    room = sizes.pop(0)
    for piece in pieces:
        at = np.arange(len(piece.rows))
        while len(at):
            if room == 0:
                shards.append([])
                room = sizes.pop(0)
            take, at = at[:room], at[room:]
            shards[-1].append(piece.take(take))
            room -= len(take)
    return shards


def write_planned_shard(
    pre: DesiPreprocessor,
    layout: CoaddLayout,
    plan: ShardPlan,
    columns: dict[str, np.ndarray],
    shards_dir: str,
    wave_obs: np.ndarray,
    attrs: dict,
    compression: str | None,
) -> ShardOutcome:
    """Preprocess a shard's rows coadd by coadd and write the shard (atomically). A Dask task.

    ``columns``: the catalogue columns of ``plan.rows``, in that order. Memory is this shard's
    rows plus one coadd. A full disk raises OSError (the writer leaves no partial file)."""
    rejected: list[tuple[int, str, str]] = []
    kept: list[int] = []
    flux: list[np.ndarray] = []
    ivar: list[np.ndarray] = []
    norm: list[float] = []
    for job in plan.jobs:
        out = preprocess_coadd(pre, layout, job)
        rejected += out.rejected
        if out.rows:
            kept += out.rows
            flux.append(out.flux)
            ivar.append(out.ivar)
            norm += out.norm
    if not kept:
        return ShardOutcome(None, rejected)
    where = {int(r): k for k, r in enumerate(plan.rows)}
    at = np.array([where[r] for r in kept])
    ids = columns["TARGETID"][at]
    data = {
        "flux": np.concatenate(flux).astype(np.float32, copy=False),
        "ivar": np.concatenate(ivar).astype(np.float32, copy=False),
        "z": columns["Z"][at],
        "zerr": columns["Z_ERR"][at],
        "norm": np.asarray(norm, dtype=np.float32),
        "specobjid": ids.astype(str),
        "ra": columns["RA"][at],
        "dec": columns["DEC"][at],
        "targetid": ids.astype(np.int64),
        "survey": columns["SURVEY"][at].astype("S16"),
        "program": columns["PROGRAM"][at].astype("S16"),
    }
    target = Path(shards_dir) / plan.path
    digest = write_shard(target, data, wave_obs, attrs, compression)
    entry = {
        "path": plan.path,
        "split": plan.split,
        "rows": len(at),
        "sha256": digest,
        "bytes": target.stat().st_size,
        "specobjid_min": str(ids.min()),
        "specobjid_max": str(ids.max()),
        "first": plan.first,
        "candidates": len(plan.rows),
        "inputs_sha256": plan.inputs_sha256,
    }
    return ShardOutcome(entry, rejected)


def _attrs(release: DesiRelease, split: str) -> dict:
    attrs = shard_attrs(release, split)  # type: ignore[arg-type]
    attrs["object_key_text"] = json.dumps(["survey", "program"])
    return attrs


_SHARD_COLUMNS = ("TARGETID", "Z", "Z_ERR", "RA", "DEC", "SURVEY", "PROGRAM")


def _written(
    release: DesiRelease,
    catalog: dict,
    plans: list[ShardPlan],
    shards_dir: Path,
    compression: str | None,
    workers: int | None,
    scheduler: str | None,
) -> Iterator[ShardOutcome]:
    """:func:`write_planned_shard` of every plan, yielded in the plans' order.

    The workers read, preprocess and write; this process only hands out plans and collects
    index entries, so it is not the bottleneck however many workers there are. On Dask at most
    two shards per worker are in flight or waiting to be consumed, so memory stays flat."""
    pre = DesiPreprocessor(release)
    attrs = {name: _attrs(release, name) for name in SPLITS}

    def task_args(plan: ShardPlan) -> tuple:
        rows = plan.rows
        columns = {c: catalog[c][rows] for c in _SHARD_COLUMNS}
        return plan, columns, str(shards_dir), release.wave_obs, attrs[plan.split], compression

    if workers == 1 and not scheduler:
        for plan in plans:
            yield write_planned_shard(pre, release.coadd, *task_args(plan))
        return
    from distributed import Future

    from etl.cluster import dask_client
    from etl.shard_task import _same, _task_failure

    with dask_client(scheduler, workers) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        # a task's result, not scattered data: a worker that dies takes nothing with it
        pre_f = client.submit(_same, pre, pure=False)
        todo = iter(plans)
        inflight: deque[tuple[ShardPlan, Future]] = deque()

        def submit() -> None:
            plan = next(todo, None)
            if plan is not None:
                args = task_args(plan)
                fut = client.submit(write_planned_shard, pre_f, release.coadd, *args, pure=False)
                inflight.append((plan, fut))

        for _ in range(2 * n_workers):
            submit()
        while inflight:
            plan, fut = inflight.popleft()
            try:
                out = fut.result()
            except OSError as err:
                if is_disk_full(err):
                    raise
                raise BuildError(f"shard {plan.path}: {_task_failure(err)}") from err
            except Exception as err:
                raise BuildError(f"shard {plan.path}: {_task_failure(err)}") from err
            fut.release()
            submit()
            yield out


def _reject(catalog: dict, i: int, reason: str, detail: str, shard: str) -> dict:
    log.info("targetid %s: %s (%s)", catalog["TARGETID"][i], reason, detail)
    return {
        "targetid": str(catalog["TARGETID"][i]),
        "reason": reason,
        "detail": detail,
        "shard": shard,
    }


def _stamp(path: Path) -> str:
    """A coadd's size and mtime (-1 when missing): what says it changed without reading it."""
    st = path.stat() if path.is_file() else None
    return f"{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}"


def _plan_fingerprint(plan: ShardPlan, catalog: dict, stamps: dict[str, str], settings: str) -> str:
    """sha256 of what a shard is made of: its split, its targets' catalogue columns, its coadds'
    size and mtime, and the release's settings. A shard with the same fingerprint is kept."""
    h = hashlib.sha256(f"{settings}\n{plan.split}\n".encode())
    rows = plan.rows
    for column in _SHARD_COLUMNS:
        h.update(np.ascontiguousarray(catalog[column][rows]).tobytes())
    for job in plan.jobs:
        h.update(f"{job.label}:{stamps[job.path]}\n".encode())
    return h.hexdigest()


def _empty_entry(plan: ShardPlan) -> dict:
    """The record of a shard whose every target was rejected (no file)."""
    return {
        "path": plan.path,
        "split": plan.split,
        "rows": 0,
        "first": plan.first,
        "candidates": len(plan.rows),
        "inputs_sha256": plan.inputs_sha256,
    }
