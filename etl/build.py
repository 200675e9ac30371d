"""``specetl build-shards``: the driver that plans, runs and commits a shard build.

Build sharded HDF5 training data from a release's catalogue and fetched spec-lite files. The
work is split in three modules, each one job:

- :mod:`etl.plan`: catalogue rows -> shard tasks (split, order, stable boundaries, fingerprints);
- :mod:`etl.shard_task`: the per-shard Dask task (preprocess, write, link) and the loop that
  runs the tasks;
- :mod:`etl.shard_index`: the bookkeeping that makes a rerun crash-safe (index, journal, lock,
  sweep, verification, the stop on a full disk).

This module composes them: read the catalogue, plan, keep every planned shard whose fingerprint
matches a shard of the previous index (or of the journal of a build that was killed) whose file
is present with the recorded size, write the others, then write the report and the index.

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
import json
import logging
import os
import time
from pathlib import Path

from etl.atomic import write_json_atomic
from etl.catalog import CatalogError, read_catalog
from etl.diskspace import is_disk_full
from etl.plan import ShardTask, plan_shards, release_dir
from etl.release import Release
from etl.reports import BuildResult as BuildResult  # re-exported: etl.build's API
from etl.shard_index import (
    INDEX_FORMAT_VERSION,
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
    verify_shards,
)
from etl.shard_task import build_one_shard, run_tasks
from shardio import SPLITS, ShardError

log = logging.getLogger(__name__)

COMPRESSIONS = ("none", "lzf", "gzip")

__all__ = [
    "COMPRESSIONS",
    "INDEX_NAME",
    "REPORT_NAME",
    "JOURNAL_NAME",
    "BuildError",
    "BuildResult",
    "ShardTask",
    "build_one_shard",
    "build_shards",
    "plan_shards",
    "read_index",
    "release_dir",
    "settings_fingerprint",
    "verify_shards",
]


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
    if getattr(release, "family", "") == "desi":  # coadds of many targets: etl/desi/build.py
        from etl.desi.build import build_desi_shards

        return build_desi_shards(
            release,  # type: ignore[arg-type]
            data_dir,
            shard_size,
            compression,
            rebuild,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            verify=verify,
        )
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

    with locked(shards_dir):
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
        journal = [] if rebuild else read_journal(journal_path)
        tasks, rejected = plan_shards(
            catalog, release, root / "spectra", shard_size, compression, previous
        )
        del catalog  # the tasks hold what is still needed

        # reuse: previous index first, then shards a killed run finished (journal)
        reusable = reusable_shards(previous, old_report, journal)

        result = BuildResult(shards_dir, replaced_format_version=replaced)
        todo: list[ShardTask] = []
        done: list[tuple[ShardTask, dict, list[dict]]] = []
        for task in tasks:
            hit = reusable.get(task.inputs_sha256)
            if hit and not rebuild and usable(shards_dir, hit[0], verify):
                task.path = hit[0]["path"]
                done.append((task, hit[0], hit[1]))
            else:
                todo.append(task)
        result.kept = len(done)
        nxt = next_numbers(shards_dir, previous + [j["entry"] for j in journal])
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
                        run_tasks(
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
                stop_build_on_full_disk(
                    shards_dir, old_report, err, len(done) - result.kept, len(todo)
                )
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
        index = index_document(release, shard_size, compression, result.shards, empty)
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
        removed = sweep(shards_dir, {e["path"] for e in result.shards})
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
