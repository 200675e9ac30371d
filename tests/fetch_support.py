"""Helpers shared by the tests/test_fetch_*.py modules (the archive mirror and work lists)."""

from __future__ import annotations

import csv
from pathlib import Path

from etl.download import DownloadConfig, Job
from etl.mirror import ArchiveMirror
from etl.release import Release, UnknownRun2d

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
        key = tuple((k, int(r[k.upper()])) for k in release.key)
        values = [v for _, v in key]
        try:
            url = release.spec_lite_url(r["RUN2D"], *values, base_url=mirror.base_url)
        except UnknownRun2d:
            continue
        relpath = release.spec_lite_relpath(r["RUN2D"], *values).as_posix()
        jobs.append(Job(r["SPECOBJID"], r["RUN2D"], key, url, relpath))
    return jobs


def job_named(jobs: list[Job], name: str) -> Job:
    return next(j for j in jobs if j.relpath.endswith(name))


def leftovers(folder: Path) -> list[Path]:
    """Temporary/partial files left anywhere below ``folder`` (must be none)."""
    return [p for p in folder.rglob("*") if p.is_file() and p.name.endswith((".part", ".tmp"))]


def legacy_catalog(tmp_path: Path) -> Path:
    """The sample's run2d-26 rows, all marked science-primary, as TMP/legacy.csv: a catalogue
    input for the downloader tests."""
    rows = [r for r in sample_rows() if r["RUN2D"] == "26"]
    for r in rows:
        r["SCIENCEPRIMARY"] = "1"
    path = tmp_path / "legacy.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
