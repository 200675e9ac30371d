"""``specetl fetch`` for a DESI release: select from zall/redrock, then fetch each coadd once.

Selected objects are grouped by the coadd that holds them (SURVEY, PROGRAM, HEALPIX); each
coadd is fetched once, by range reads of the HDUs training needs (:mod:`etl.desi.rangefetch`),
into ``DATA/<release>/coadds/<path>``, in threads (the work is I/O bound; a coadd's HDUs are
read over one keep-alive connection). Writes ``catalog.fits``, ``selection.json`` and
``fetch-report.json`` as the SDSS fetch does; a rerun finds the stored coadds and fetches
nothing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

import numpy as np
from tqdm import tqdm

from etl.atomic import write_json_atomic
from etl.bulk_download import bulk_table_local
from etl.catalog import CatalogError, commit_selection
from etl.desi.catalog import DesiSelector, iter_desi_table
from etl.desi.manifest import DesiRelease
from etl.desi.rangefetch import CoaddFetch, fetch_coadd
from etl.diskspace import DiskFull, is_disk_full
from etl.download import DownloadConfig, make_session
from etl.reports import FetchReport

log = logging.getLogger(__name__)


@dataclass
class DesiFetchReport(FetchReport):
    """A fetch report (:class:`etl.reports.FetchReport`) plus what the coadd reads cost."""

    coadds: int = 0
    requests: int = 0
    whole_file_bytes: int = 0  #: what fetching the same coadds whole would have cost
    by_mode: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        n = max(1, self.selected - self.n_failed)
        return super().to_dict() | {
            "coadds": self.coadds,
            "coadds_by_mode": self.by_mode,
            "http_requests": self.requests,
            "whole_file_bytes": self.whole_file_bytes,
            "bytes_per_selected_spectrum": round(self.bytes / n, 1),
        }


def build_desi_catalog(
    release: DesiRelease,
    data_dir: str | Path,
    source: str,
    base_url: str | None = None,
    limit: int | None = None,
    config: DownloadConfig | None = None,
) -> tuple[dict, dict]:
    """Select from the release's zall-pix file (``specobj``) or a local zall/redrock table."""
    rel_dir = Path(data_dir) / release.name
    rel_dir.mkdir(parents=True, exist_ok=True)
    if source == "sql":
        raise CatalogError(
            f"{release.name}: DESI has no SkyServer SQL; use --catalog specobj (the zall-pix "
            "file) or --catalog PATH (a zall- or redrock-format FITS table)"
        )
    if source == "specobj":
        label = release.zall_url(base_url)
        local = bulk_table_local(label, rel_dir, config)
    else:
        label, local = str(source), Path(source)
    selector = DesiSelector(release, label)
    for chunk in iter_desi_table(local, release):
        selector.add(chunk)
    catalog, summary = selector.result()
    return commit_selection(catalog, summary, rel_dir, limit, "TARGETID")


def coadd_groups(catalog: dict) -> dict[tuple[str, str, int], np.ndarray]:
    """(survey, program, healpix) -> the catalogue rows that coadd holds."""
    keys = list(zip(catalog["SURVEY"], catalog["PROGRAM"], catalog["HEALPIX"], strict=True))
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, (s, p, h) in enumerate(keys):
        groups.setdefault((str(s), str(p), int(h)), []).append(i)
    return {k: np.array(v) for k, v in sorted(groups.items())}


def fetch_desi(
    release: DesiRelease,
    data_dir: str | Path,
    catalog_source: str = "sql",
    base_url: str | None = None,
    limit: int | None = None,
    connections: int = 8,
    dry_run: bool = False,
    config: DownloadConfig | None = None,
    whole_files: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> DesiFetchReport:
    """Select, then fetch every coadd holding a selected object; write fetch-report.json.

    ``whole_files``: fetch each coadd whole, verified against its directory's sha256sum list,
    instead of the HDUs training reads. The coadds are fetched ``connections`` at a time by
    threads of this process, or, with ``workers`` (local processes) or ``scheduler`` (a Dask
    cluster, e.g. one worker per machine writing to a shared file system), in batches of
    :data:`BATCH` coadds, one Dask task each (:func:`fetch_coadds`), ``connections`` threads per
    task. Never raises for a per-coadd failure; a full disk stops the fetch (no new coadd
    starts) with one :class:`~etl.diskspace.DiskFull` line, the report saying what is left.
    """
    config = config or DownloadConfig()
    rel_dir = Path(data_dir) / release.name
    catalog, summary = build_desi_catalog(
        release, data_dir, catalog_source, base_url, limit, config
    )
    report = DesiFetchReport(release.name, catalog_source, selected=summary["selected"])
    groups = coadd_groups(catalog)
    report.coadds = len(groups)
    coadd_dir = rel_dir / "coadds"
    todo = {
        k: v for k, v in groups.items() if not (coadd_dir / release.coadd_relpath(*k)).is_file()
    }
    report.already_present = sum(len(v) for k, v in groups.items() if k not in todo)
    report.to_download = len(todo)
    report.dry_run = dry_run
    if dry_run:
        report.space = _dry_run_space(release, todo, rel_dir, base_url, config, connections,
                                      whole_files, shards_rows=summary["selected"])  # fmt: skip
        _write(report, rel_dir)
        return report
    t0 = time.perf_counter()
    keys = list(todo)
    args = (release, str(coadd_dir), base_url, config, connections, whole_files)
    if workers or scheduler:
        outcomes = _on_dask(keys, args, workers, scheduler)
    else:
        outcomes = iter_fetch_coadds(keys, *args)  # as they finish: the progress bar moves
    with tqdm(total=len(keys), unit="coadd", desc="fetch",
              disable=None if progress else True) as bar:  # fmt: skip
        for key, out in outcomes:
            bar.update()
            rows = todo[key]
            if out.status == "skipped" or out.reason == "disk full":  # left for the rerun
                report.not_attempted += 1
                if out.reason and not report.stopped:
                    report.stopped = str(DiskFull(coadd_dir, out.detail))
                continue
            report.requests += out.requests
            report.bytes += out.bytes
            report.whole_file_bytes += out.file_size
            report.by_mode[out.status] = report.by_mode.get(out.status, 0) + 1
            if out.status == "failed":
                log.warning("%s: %s (%s)", release.coadd_relpath(*key), out.reason, out.detail)
                for i in rows:
                    report.failed.setdefault(out.reason, []).append(
                        {
                            "targetid": str(catalog["TARGETID"][i]),
                            "survey": key[0],
                            "program": key[1],
                            "healpix": key[2],
                            "detail": out.detail,
                        }
                    )
            else:
                report.downloaded += len(rows)
    report.seconds = time.perf_counter() - t0
    if report.stopped:
        _stop_on_full_disk(report, rel_dir, coadd_dir)
    _write(report, rel_dir)
    return report


def _stop_on_full_disk(report: DesiFetchReport, rel_dir: Path, coadd_dir: Path) -> NoReturn:
    """Record the stop in fetch-report.json (if it still fits) and raise one line."""
    fetched = (
        report.to_download
        - report.not_attempted
        - len(
            {(r["survey"], r["program"], r["healpix"]) for v in report.failed.values() for r in v}
        )
    )
    detail = (
        f"fetch stopped after {fetched} coadd(s); {report.not_attempted} coadd(s) left. "
        "Stored coadds are kept and no partial file remains: free space and rerun"
    )
    try:
        _write(report, rel_dir)
    except OSError as err:
        if not is_disk_full(err):
            raise
        detail += "; fetch-report.json could not be written"
    raise DiskFull(coadd_dir, detail)


#: coadds per Dask task: a task lasts a minute or more at archive speeds, so the driver's round
#: trips are nothing, and a lost worker costs at most one batch's fetches again
BATCH = 32


def iter_fetch_coadds(
    keys: list[tuple[str, str, int]],
    release: DesiRelease,
    coadd_dir: str,
    base_url: str | None,
    config: DownloadConfig,
    connections: int,
    whole_files: bool,
) -> Iterator[tuple[tuple[str, str, int], CoaddFetch]]:
    """Fetch these coadds, ``connections`` at a time on one session; yield (key, outcome) in
    ``keys``' order as they finish. Never raises for a per-coadd failure; after a full disk the
    coadds not yet started are skipped. The whole fetch in-process, or a Dask task's batch
    (:func:`fetch_coadds`)."""
    session = make_session(connections, config)
    full = threading.Event()  # once the disk is full, the coadds not started are skipped

    def one(key: tuple[str, str, int]) -> CoaddFetch:
        if full.is_set():
            return CoaddFetch(release.coadd_relpath(*key), status="skipped")
        out = fetch_coadd(
            session,
            release.coadd_url(*key, base_url=base_url),
            release.sha256sum_url(*key, base_url=base_url),
            release.coadd.hdus,
            Path(coadd_dir) / release.coadd_relpath(*key),
            config,
            whole_file=whole_files,
        )
        if out.reason == "disk full":
            full.set()
        return out

    try:
        with ThreadPoolExecutor(max(1, connections)) as pool:
            yield from zip(keys, pool.map(one, keys), strict=True)
    finally:
        session.close()  # type: ignore[attr-defined]


def fetch_coadds(*args: object) -> list[tuple[tuple[str, str, int], CoaddFetch]]:
    """:func:`iter_fetch_coadds` as a list: a Dask task's result."""
    return list(iter_fetch_coadds(*args))  # type: ignore[arg-type]


def _on_dask(
    keys: list[tuple[str, str, int]], args: tuple, workers: int | None, scheduler: str | None
) -> Iterator[tuple[tuple[str, str, int], CoaddFetch]]:
    """:func:`fetch_coadds` over batches of :data:`BATCH` coadds, one task each, started as
    worker threads free up (:func:`etl.cluster.as_slots_free`); outcomes as batches finish. After
    a full disk no new batch starts, and the coadds of those never started come back skipped."""
    from etl.cluster import as_slots_free, dask_client

    batches = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
    if not batches:
        return
    with dask_client(scheduler, workers) as client:

        def submit(batch: list) -> object:
            return client.submit(fetch_coadds, batch, *args, pure=False)  # type: ignore[attr-defined]

        def disk_full(outcomes: list) -> bool:
            return any(out.reason == "disk full" for _, out in outcomes)

        for batch, outcomes in as_slots_free(client, submit, batches, disk_full):
            if outcomes is None:  # never started: left for the rerun
                yield from ((k, CoaddFetch("", status="skipped")) for k in batch)
            else:
                yield from outcomes


def _dry_run_space(
    release: DesiRelease,
    todo: dict[tuple[str, str, int], np.ndarray],
    rel_dir: Path,
    base_url: str | None,
    config: DownloadConfig,
    connections: int,
    whole_files: bool,
    shards_rows: int,
) -> dict:
    """The bytes the coadds still to fetch will take, from a seeded sample of up to 20 per
    (survey, program), against the free space. A sampled coadd costs what :func:`fetch_coadd`
    would store: its wanted HDUs, measured from its headers alone (one-block range reads), or
    with ``whole_files`` its size (HEAD)."""
    from etl.desi.rangefetch import planned_bytes
    from etl.diskspace import ESTIMATE_ATTEMPTS, SizeSample, space_report

    sizes = SizeSample()
    for key in todo:
        sizes.add(f"{key[0]}/{key[1]}", release.coadd_url(*key, base_url=base_url))
    config = replace(config, attempts=ESTIMATE_ATTEMPTS)
    session = make_session(connections, config)
    if whole_files:
        probe, method = None, f"HEAD Content-Length of up to {sizes.k} coadds per survey/program"
    else:

        def probe(url: str) -> int | None:
            return planned_bytes(session, url, release.coadd.hdus, config)

        method = (
            f"the wanted HDUs' sizes, from the headers of up to {sizes.k} coadds per "
            "survey/program (range reads, no data)"
        )
    try:
        return space_report(
            sizes, rel_dir, session, connections, config.connect_timeout,
            shards_bytes=shards_rows * release.grid.npix * 8,  # flux + ivar, float32
            probe=probe, method=method, group="survey_program",
        )  # fmt: skip
    finally:
        session.close()  # type: ignore[attr-defined]


def _write(report: DesiFetchReport, rel_dir: Path) -> None:
    write_json_atomic(rel_dir / "fetch-report.json", report.to_dict(), indent=2)
    log.info(
        "fetch: %s",
        json.dumps({k: v for k, v in report.to_dict().items() if k != "failed_by_reason"}),
    )
