"""``specetl fetch``: select the catalogue, then download every selected spectrum with Dask.

Layout under ``DATA/<release>/``:

- ``catalog.fits`` (the selected catalogue) and ``selection.json`` (rows after each cut);
- ``spectra/<run2d>/<plate:04d>/spec-<plate>-<mjd>-<fiberid>.fits``;
- ``ledger/*.jsonl`` (verified files with size and sha256; see :mod:`etl.download`);
- ``fetch-report.json`` (selected, downloaded, already present, failed by reason with ids).

The download is a Dask graph: the work list is cut into partitions, one task per partition, and
each task downloads its files with its own pooled session. The driver only plans, watches the
futures complete (progress bar) and writes the report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from etl.catalog import (
    Catalog,
    CatalogError,
    Selector,
    iter_fits_columns,
    iter_sql_pages,
    iter_table_columns,
    write_catalog,
)
from etl.download import (
    BatchResult,
    DownloadConfig,
    Job,
    Outcome,
    download_jobs,
    download_resumable,
    load_ledger,
)
from etl.release import Release, UnknownRun2d, spec_lite_relpath

log = logging.getLogger(__name__)


@dataclass
class FetchReport:
    """What a fetch did; ``ok`` is False when any selected object failed."""

    release: str
    catalog_source: str
    selected: int = 0
    downloaded: int = 0
    already_present: int = 0
    to_download: int = 0
    bytes: int = 0
    seconds: float = 0.0  #: wall time of the download phase
    dry_run: bool = False
    failed: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return sum(len(v) for v in self.failed.values())

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    def add_failure(self, o: Outcome) -> None:
        j = o.job
        self.failed.setdefault(o.reason, []).append(
            {
                "specobjid": str(j.specobjid),
                "run2d": j.run2d,
                "plate": j.plate,
                "mjd": j.mjd,
                "fiberid": j.fiberid,
                "detail": o.detail,
            }
        )

    def to_dict(self) -> dict:
        rate = self.downloaded / self.seconds if self.seconds > 0 else 0.0
        return {
            "release": self.release,
            "catalog_source": self.catalog_source,
            "dry_run": self.dry_run,
            "selected": self.selected,
            "downloaded": self.downloaded,
            "already_present": self.already_present,
            "failed": self.n_failed,
            "failed_by_reason": {
                k: {"count": len(v), "objects": v} for k, v in self.failed.items()
            },
            "bytes_downloaded": self.bytes,
            "download_seconds": round(self.seconds, 3),
            "files_per_second": round(rate, 2),
        }


def _write_json(obj: object, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


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

    Writes ``DATA/<release>/catalog.fits`` and ``selection.json``; returns both.
    """
    rel_dir = Path(data_dir) / release.name
    rel_dir.mkdir(parents=True, exist_ok=True)
    chunks: Iterable[dict]
    if source == "sql":
        label = f"SkyServer SQL (DR{release.catalog.data_release})"
        chunks = iter_sql_pages(release, skyserver_url=skyserver_url, **(sql_options or {}))
    elif source == "specobj":
        url = release.specobj_url(base_url)
        label = url
        local = _specobj_local(url, rel_dir, config)
        chunks = iter_fits_columns(local)
    else:
        label = str(source)
        chunks = iter_table_columns(source)
    selector = Selector(release.selection, label)
    for chunk in chunks:
        selector.add(chunk)
    catalog, summary = selector.result()
    if limit is not None and limit < len(catalog["SPECOBJID"]):
        catalog = {k: v[:limit] for k, v in catalog.items()}
        summary["steps"].append({"step": f"--limit {limit}", "rows": limit})
        summary["selected"] = limit
    write_catalog(catalog, rel_dir / "catalog.fits")
    _write_json(summary, rel_dir / "selection.json")
    for step in summary["steps"]:
        log.info("selection: %-28s %10d rows", step["step"], step["rows"])
    return catalog, summary


def _specobj_local(url: str, rel_dir: Path, config: DownloadConfig | None) -> Path:
    """The bulk specObj file on disk: a file:// URL is used in place, http(s) is downloaded."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(parts.path)
    name = Path(parts.path).name
    if not name.endswith(".fits") or "/" in name or name.startswith("."):
        raise CatalogError(f"unexpected specObj URL {url}")
    log.info("downloading the bulk catalogue %s (resumable)", url)
    return download_resumable(url, rel_dir / name, config)


# --- plan --------------------------------------------------------------------------------------


def plan_jobs(
    release: Release,
    catalog: Catalog,
    spectra_dir: Path,
    ledger: dict[str, tuple[int, str]],
    base_url: str | None,
    report: FetchReport,
) -> list[Job]:
    """Jobs for every selected object not yet verified; bad ids are recorded as failures."""
    jobs = []
    cols = [catalog[k].tolist() for k in ("SPECOBJID", "RUN2D", "PLATE", "MJD", "FIBERID")]
    for specobjid, run2d, plate, mjd, fiberid in zip(*cols, strict=True):
        try:
            url = release.spec_lite_url(run2d, plate, mjd, fiberid, base_url)
            relpath = spec_lite_relpath(run2d, plate, mjd, fiberid).as_posix()
        except (UnknownRun2d, ValueError) as err:
            reason = "unknown run2d" if isinstance(err, UnknownRun2d) else "invalid id"
            job = Job(int(specobjid), str(run2d), int(plate), int(mjd), int(fiberid), "", "")
            o = Outcome(job, "failed", reason, str(err))
            log.warning("%s", o.line())
            report.add_failure(o)
            continue
        known = ledger.get(relpath)
        if known is not None:
            try:
                if (spectra_dir / relpath).stat().st_size == known[0]:
                    report.already_present += 1
                    continue
            except FileNotFoundError:
                pass  # in the ledger but deleted since: fetch again
        jobs.append(Job(int(specobjid), run2d, plate, mjd, fiberid, url, relpath))
    return jobs


def partition(jobs: list[Job], workers: int, connections: int) -> list[list[Job]]:
    """Cut the work into tasks: enough per task to keep its connections busy, enough tasks to
    balance the workers (4 per worker) and show progress, at most 1000 files per task."""
    if not jobs:
        return []
    size = max(4 * connections, min(1000, math.ceil(len(jobs) / (4 * max(1, workers)))))
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


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
) -> FetchReport:
    """Select and download; write ``fetch-report.json``; return the report (never raises for a
    per-file failure; :class:`CatalogError` when no catalogue can be built)."""
    from etl.cluster import dask_client, usable_cores

    config = config or DownloadConfig()
    if connections != config.connections:
        config = DownloadConfig(**{**config.__dict__, "connections": connections})
    rel_dir = Path(data_dir) / release.name
    catalog, _summary = build_catalog(
        release, data_dir, catalog_source, base_url, limit, skyserver_url, sql_options, config
    )
    report = FetchReport(release.name, catalog_source, selected=len(catalog["SPECOBJID"]))
    spectra_dir = rel_dir / "spectra"
    ledger_dir = rel_dir / "ledger"
    jobs = plan_jobs(release, catalog, spectra_dir, load_ledger(ledger_dir), base_url, report)
    report.to_download = len(jobs)
    log.info(
        "%d selected, %d already verified, %d to download",
        report.selected,
        report.already_present,
        len(jobs),
    )
    if dry_run:
        report.dry_run = True
        _write_json(report.to_dict() | {"to_download": len(jobs)}, rel_dir / "fetch-report.json")
        return report
    if jobs:
        n_workers = workers or usable_cores()
        parts = partition(jobs, n_workers, config.connections)
        with dask_client(scheduler, n_workers) as client:
            t0 = time.perf_counter()  # download phase only: cluster start-up is not download
            for result in _run_partitions(client, parts, spectra_dir, ledger_dir, config, progress):
                report.downloaded += result.downloaded
                report.already_present += result.present
                report.bytes += result.bytes
                for o in result.failed:
                    log.warning("%s", o.line())
                    report.add_failure(o)
        report.seconds = time.perf_counter() - t0
    _write_json(report.to_dict(), rel_dir / "fetch-report.json")
    log.info(
        "fetch: %d downloaded, %d already present, %d failed (report: %s)",
        report.downloaded,
        report.already_present,
        report.n_failed,
        rel_dir / "fetch-report.json",
    )
    return report


def _run_partitions(
    client: object,
    parts: list[list[Job]],
    spectra_dir: Path,
    ledger_dir: Path,
    config: DownloadConfig,
    progress: bool,
) -> Iterable[BatchResult]:
    """Submit one task per partition; yield results as tasks finish, with a progress bar."""
    from distributed import as_completed
    from tqdm import tqdm

    futures = client.map(  # type: ignore[attr-defined]
        download_jobs,
        parts,
        spectra_dir=str(spectra_dir),
        ledger_dir=str(ledger_dir),
        cfg=config,
        pure=False,
    )
    total = sum(len(p) for p in parts)
    with tqdm(total=total, unit="file", desc="fetch", disable=not progress, smoothing=0.1) as bar:
        for future in as_completed(futures):
            result = future.result()
            bar.update(result.total)
            yield result
