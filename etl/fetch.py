"""``specetl fetch``: select the catalogue, then download every selected spectrum with Dask.

Layout under ``DATA/<release>/``:

- ``catalog.fits`` (the selected catalogue) and ``selection.json`` (rows after each cut);
- ``spectra/<run2d>/<path>``, ``<path>`` the manifest's ``[object] path`` (SDSS-I–IV:
  ``<plate:04d>/spec-<plate>-<mjd>-<fiberid>.fits``; DR20: ``015XXX/015023/59232/spec-….fits``);
- ``ledger/`` (verified files with size and sha256: a compacted index plus per-task journals,
  merged when a run starts and ends; see :mod:`etl.ledger`);
- ``fetch-report.json`` (selected, downloaded, already present, failed by reason with ids;
  for a dry run the estimated bytes to download against the free space; ``stopped`` when a full
  disk stopped the run).

The download is a Dask graph: the selected catalogue is cut into row ranges, one task per range.
Each task builds its own work list (URLs, paths), looks its objects up in the mapped ledger index,
skips what is verified and on disk, and downloads the rest with its own pooled session. The
driver holds only the catalogue columns (tens of bytes per object), watches the futures complete
(progress bar) and writes the report; it never builds a 5M-entry work list or ledger dict.

Where tasks run: by default an in-process Dask cluster with :data:`DEFAULT_TASKS` threads (one
task per thread, each with ``connections`` downloads): downloading is I/O bound and releases the
GIL, and the cluster starts in a fraction of a second instead of the seconds it takes to spawn
worker processes that import numpy/Dask again. ``workers=N`` starts N worker processes instead
(one task each); ``scheduler=tcp://…`` uses a running cluster.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import numpy as np

from etl.atomic import write_json_atomic
from etl.bulk_download import bulk_table_local
from etl.catalog import (
    Catalog,
    Selector,
    commit_selection,
)
from etl.diskspace import ESTIMATE_ATTEMPTS, DiskFull, SizeSample, is_disk_full, space_report
from etl.download import (
    BatchResult,
    DownloadConfig,
    Job,
    Outcome,
    download_jobs,
    make_session,
)
from etl.ledger import Ledger, compact_ledger
from etl.paths import safe_name, under
from etl.release import Release, UnknownRun2d
from etl.reports import FetchReport as FetchReport  # re-exported: etl.fetch's API
from etl.skyserver import iter_sql_pages
from etl.tables import iter_fits_columns, iter_table_columns

log = logging.getLogger(__name__)

#: Concurrent tasks of the default in-process cluster: 2 x 8 connections = 16 streams, the same
#: total as the former default of 2 worker processes on a 2-core machine, but no longer growing
#: with the core count (politeness towards the archive).
DEFAULT_TASKS = 2


def _job_columns(release: Release) -> tuple[str, ...]:
    """Catalogue columns a download task needs: the id, run2d and the release's key."""
    return ("SPECOBJID", "RUN2D", *(k.upper() for k in release.key))


# --- catalogue ---------------------------------------------------------------------------------


def build_catalog(
    release: Release,
    data_dir: str | Path,
    source: str = "sql",
    base_url: str | None = None,
    limit: int | None = None,
    skyserver_url: str | None = None,
    sql_options: dict | None = None,
    config: DownloadConfig | None = None,
) -> tuple[Catalog, dict]:
    """Select the release's spectra from ``source`` (``sql``, ``specobj`` or a table path).

    Writes ``DATA/<release>/catalog.fits`` and ``selection.json``; returns both. Raises
    :class:`CatalogError` when the table lacks a required column or the cuts leave nothing (the
    message names the cut that removed the last rows); nothing is written then.
    """
    rel_dir = under(data_dir, safe_name(release.name, "release name"))
    rel_dir.mkdir(parents=True, exist_ok=True)
    chunks: Iterable[dict]
    if source == "sql":
        label = f"SkyServer SQL (DR{release.catalog.data_release})"
        chunks = iter_sql_pages(release, skyserver_url=skyserver_url, **(sql_options or {}))
    elif source == "specobj":
        url = release.specobj_url(base_url)
        label = url
        local = bulk_table_local(url, rel_dir, config)
        chunks = iter_fits_columns(local, release.key)
    else:
        label = str(source)
        chunks = iter_table_columns(source, release.key)
    selector = Selector(release.selection, label, release.key)
    for chunk in chunks:
        selector.add(chunk)
    catalog, summary = selector.result()
    return commit_selection(catalog, summary, rel_dir, limit, "SPECOBJID")


# --- plan --------------------------------------------------------------------------------------


def plan_jobs(
    release: Release,
    part: Catalog,
    spectra_dir: Path,
    ledger: Ledger,
    base_url: str | None,
) -> tuple[list[Job], BatchResult]:
    """Jobs for the objects of ``part`` not yet verified, plus a result holding the objects
    already present and those with ids that cannot name a file (reported as failures)."""
    done = BatchResult()
    jobs = []
    ids, run2ds, *keys = (np.asarray(part[k]).tolist() for k in _job_columns(release))
    candidates = []
    for specobjid, run2d, *key in zip(ids, run2ds, *keys, strict=True):
        named = tuple(zip(release.key, key, strict=True))
        try:
            url = release.spec_lite_url(run2d, *key, base_url=base_url)
            relpath = release.spec_lite_relpath(run2d, *key).as_posix()
        except (UnknownRun2d, ValueError) as err:
            reason = "unknown run2d" if isinstance(err, UnknownRun2d) else "invalid id"
            done.add(
                Outcome(Job(str(specobjid), str(run2d), named, "", ""), "failed", reason, str(err))
            )
            continue
        candidates.append(Job(str(specobjid), run2d, named, url, relpath))
    sizes, mtimes = ledger.stats([j.relpath for j in candidates])
    for job, known, mtime in zip(candidates, sizes.tolist(), mtimes.tolist(), strict=True):
        if known >= 0 and _still_verified(spectra_dir / job.relpath, known, mtime, ledger, job):
            done.add(Outcome(job, "present", size=known))
            continue
        jobs.append(job)
    return jobs, done


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _still_verified(path: Path, size: int, mtime_ns: int, ledger: Ledger, job: Job) -> bool:
    """Whether a file the ledger lists is still the file it verified.

    Same size and mtime: trusted without reading it (a rerun of a million files stays a stat
    each). A different mtime (or an entry of an older ledger without one, 0, is trusted on size
    as before): the file is hashed again; if its sha256 differs from the ledger's it is deleted
    and downloaded again; if it is the same, the download step records it with its new mtime.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        return False  # in the ledger but deleted since: fetch again
    if st.st_size != size:
        path.unlink(missing_ok=True)  # truncated or replaced: never keep a file of another size
        log.warning("%s: size changed since it was verified; downloading it again", path)
        return False
    if mtime_ns == 0 or st.st_mtime_ns == mtime_ns:
        return True
    recorded = ledger.get(job.relpath)
    if recorded is None or _sha256(path) != recorded[1]:
        path.unlink(missing_ok=True)
        log.warning(
            "%s: changed since it was verified (sha256 differs); downloading it again", path
        )
    return False  # the same bytes are re-recorded with their new mtime by the download step


def fetch_partition(
    release: Release,
    part: Catalog,
    spectra_dir: str,
    ledger_dir: str,
    base_url: str | None,
    cfg: DownloadConfig,
) -> BatchResult:
    """One Dask task: plan this row range against the ledger index, download what is missing."""
    ledger = Ledger(ledger_dir, journals=False)  # journals now are this run's own writes
    jobs, result = plan_jobs(release, part, Path(spectra_dir), ledger, base_url)
    del ledger
    if jobs:
        got = download_jobs(jobs, spectra_dir, ledger_dir, cfg)
        result.downloaded += got.downloaded
        result.present += got.present
        result.bytes += got.bytes
        result.failed += got.failed
        result.not_attempted, result.disk_full = got.not_attempted, got.disk_full
    return result


def partition(
    catalog: Catalog, tasks: int, connections: int, columns: Iterable[str] | None = None
) -> list[Catalog]:
    """Cut the catalogue into row ranges: enough per task to keep its connections busy, enough
    tasks to balance the workers (4 per worker) and show progress, at most 1000 rows per task."""
    n = len(catalog["SPECOBJID"])
    if not n:
        return []
    size = max(4 * connections, min(1000, math.ceil(n / (4 * max(1, tasks)))))
    cols = list(columns or catalog)
    return [{k: catalog[k][i : i + size] for k in cols} for i in range(0, n, size)]


# --- run ---------------------------------------------------------------------------------------


def fetch(
    release: Release,
    data_dir: str | Path,
    catalog_source: str = "sql",
    base_url: str | None = None,
    limit: int | None = None,
    workers: int | None = None,
    connections: int = 8,
    scheduler: str | None = None,
    dry_run: bool = False,
    config: DownloadConfig | None = None,
    skyserver_url: str | None = None,
    sql_options: dict | None = None,
    progress: bool = True,
    whole_files: bool = False,
) -> FetchReport:
    """Select and download; write ``fetch-report.json``; return the report (never raises for a
    per-file failure; :class:`CatalogError` when no catalogue can be built).

    A full disk stops the run at once: the report records the stop, then :class:`DiskFull`
    (an ``OSError``) is raised with one line. Verified files stay; a rerun completes the rest.
    A dry run measures the bytes still to download against the free space (``report.space``).
    A DESI release goes to :func:`etl.desi.fetch.fetch_desi` (``whole_files``: whole coadds,
    verified by their sha256sum list, instead of range reads of the HDUs training needs).
    """
    if getattr(release, "family", "") == "desi":  # coadds of many targets, read by range
        from etl.desi.fetch import fetch_desi

        return fetch_desi(
            release, data_dir, catalog_source, base_url, limit, connections, dry_run, config,
            whole_files=whole_files, workers=workers, scheduler=scheduler, progress=progress,
        )  # fmt: skip
    from etl.cluster import dask_client

    config = config or DownloadConfig()
    if connections != config.connections:
        config = DownloadConfig(**{**config.__dict__, "connections": connections})
    rel_dir = under(data_dir, safe_name(release.name, "release name"))
    ledger_dir = rel_dir / "ledger"
    ledger_dir.mkdir(parents=True, exist_ok=True)
    verified = compact_ledger(ledger_dir)  # journals of an interrupted run join the index
    catalog, _summary = build_catalog(
        release, data_dir, catalog_source, base_url, limit, skyserver_url, sql_options, config
    )
    report = FetchReport(release.name, catalog_source, selected=len(catalog["SPECOBJID"]))
    spectra_dir = rel_dir / "spectra"
    n_tasks = workers or DEFAULT_TASKS
    parts = partition(catalog, n_tasks, config.connections, _job_columns(release))
    del catalog
    log.info("%d selected; the ledger lists %d verified files", report.selected, verified)
    if dry_run:
        report.dry_run = True
        ledger = Ledger(ledger_dir)
        sizes = SizeSample()
        for part in parts:
            jobs, done = plan_jobs(release, part, spectra_dir, ledger, base_url)
            report.to_download += len(jobs)
            report.already_present += done.present
            for o in done.failed:
                report.add_failure(o)
            for job in jobs:
                sizes.add(job.run2d, job.url)
        _dry_run_space(report, release, sizes, rel_dir, config)
        doc = report.to_dict() | {"to_download": report.to_download}
        write_json_atomic(rel_dir / "fetch-report.json", doc, indent=2)
        return report
    if parts:
        if scheduler:
            cluster = dask_client(scheduler)
        elif workers:
            cluster = dask_client(None, workers)  # worker processes
        else:
            cluster = dask_client(None, threads=DEFAULT_TASKS)  # in-process, threads
        try:
            with cluster as client:
                t0 = time.perf_counter()  # download phase only: cluster start-up is not download
                for result in _run_partitions(
                    client, release, parts, spectra_dir, ledger_dir, base_url, config, progress
                ):
                    report.downloaded += result.downloaded
                    report.already_present += result.present
                    report.bytes += result.bytes
                    for o in result.failed:
                        log.warning("%s", o.line())
                        report.add_failure(o)
                    report.stopped = report.stopped or result.disk_full
                report.seconds = time.perf_counter() - t0
        finally:
            _compact_unless_full(ledger_dir)
    report.to_download = report.selected - report.already_present
    if report.stopped:  # going on cannot help: what was not tried is left for the rerun
        report.not_attempted = report.to_download - report.downloaded - report.n_failed
        _stop_on_full_disk(report, rel_dir)
    write_json_atomic(rel_dir / "fetch-report.json", report.to_dict(), indent=2)
    log.info(
        "fetch: %d downloaded, %d already present, %d failed (report: %s)",
        report.downloaded,
        report.already_present,
        report.n_failed,
        rel_dir / "fetch-report.json",
    )
    return report


def _dry_run_space(
    report: FetchReport, release: Release, sizes: SizeSample, rel_dir: Path, cfg: DownloadConfig
) -> None:
    """Estimate the bytes still to download (HEAD on a sample) against the free space."""
    # shards hold flux and ivar as float32 per pixel per object: an upper bound (rejects shrink it)
    shards_bytes = (report.selected - report.n_failed) * release.grid.npix * 8
    session = make_session(cfg.connections, replace(cfg, attempts=ESTIMATE_ATTEMPTS))
    try:
        report.space = space_report(
            sizes, rel_dir, session, cfg.connections, cfg.connect_timeout, shards_bytes
        )
    finally:
        session.close()  # type: ignore[attr-defined]


def _compact_unless_full(ledger_dir: Path) -> None:
    """Merge the journals; on a full disk leave them for the next run to merge (consistent)."""
    try:
        compact_ledger(ledger_dir)
    except OSError as err:
        if not is_disk_full(err):
            raise
        log.warning("ledger: journals not merged (disk full); the next run merges them")


def _stop_on_full_disk(report: FetchReport, rel_dir: Path) -> NoReturn:
    """Record the stop in fetch-report.json (if it still fits) and raise one line."""
    left = report.to_download - report.downloaded - report.n_failed
    detail = (
        f"fetch stopped after {report.downloaded} download(s); {left} file(s) left. Verified "
        f"files are kept and no partial file remains: free space and rerun"
    )
    try:
        write_json_atomic(rel_dir / "fetch-report.json", report.to_dict(), indent=2)
    except OSError as err:
        if not is_disk_full(err):
            raise
        detail += "; fetch-report.json could not be written"
    raise DiskFull(rel_dir / "spectra", detail)


def _run_partitions(
    client: object,
    release: Release,
    parts: list[Catalog],
    spectra_dir: Path,
    ledger_dir: Path,
    base_url: str | None,
    config: DownloadConfig,
    progress: bool,
) -> Iterable[BatchResult]:
    """One task per partition (:func:`etl.cluster.as_slots_free`); yield results as tasks
    finish, with a progress bar. A result that reports a full disk stops the run at once: nothing
    new is submitted, and the few tasks in flight (which meet the same full disk within a file)
    are waited for, so that nothing is still writing when the fetch returns. Partitions never
    run yield nothing.
    """
    from tqdm import tqdm

    from etl.cluster import as_slots_free

    def submit(part: Catalog) -> object:
        return client.submit(  # type: ignore[attr-defined]
            fetch_partition,
            release,
            part,
            spectra_dir=str(spectra_dir),
            ledger_dir=str(ledger_dir),
            base_url=base_url,
            cfg=config,
            pure=False,
        )

    total = sum(len(p["SPECOBJID"]) for p in parts)
    with tqdm(
        total=total, unit="file", desc="fetch", disable=None if progress else True, smoothing=0.1
    ) as bar:
        for _, result in as_slots_free(client, submit, parts, lambda r: bool(r.disk_full)):
            if result is not None:
                bar.update(result.total)
                yield result
