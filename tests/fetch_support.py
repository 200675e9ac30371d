"""Helpers shared by the tests/test_fetch_*.py modules (the archive mirror and work lists)."""

from __future__ import annotations

import csv
from pathlib import Path

from etl.download import DownloadConfig, Job
from etl.mirror import ArchiveMirror
from etl.release import Release, UnknownRun2d, spec_lite_relpath

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample"
SAMPLE_SDSS = SAMPLE / "sdss"
SAMPLE_CATALOG = SAMPLE / "catalog.csv"

#: Small timeouts and backoffs so fault tests take fractions of a second (seconds).
FAST = DownloadConfig(
    connections=4,
    connect_timeout=2.0,
    read_timeout=0.5,
    attempts=3,
    backoff=0.05,
    backoff_max=0.2,
    retry_after_max=3.0,
)


def sample_rows() -> list[dict[str, str]]:
    with open(SAMPLE_CATALOG, newline="") as f:
        return list(csv.DictReader(f))


def sample_jobs(release: Release, mirror: ArchiveMirror) -> list[Job]:
    """One job per bundled file whose run2d the release knows, pointed at the mirror."""
    jobs = []
    for r in sample_rows():
        ids = (r["RUN2D"], int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"]))
        try:
            url = release.spec_lite_url(*ids, base_url=mirror.base_url)
        except UnknownRun2d:
            continue
        jobs.append(Job(int(r["SPECOBJID"]), *ids, url, spec_lite_relpath(*ids).as_posix()))
    return jobs


def job_named(jobs: list[Job], name: str) -> Job:
    return next(j for j in jobs if j.relpath.endswith(name))


def leftovers(folder: Path) -> list[Path]:
    """Temporary/partial files left anywhere below ``folder`` (must be none)."""
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".part", ".tmp"))]
