"""`specetl fetch` end to end: a real LocalCluster, the report, the CLI, SIGKILL and rerun."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fetch_support import FAST, SAMPLE_SDSS, leftovers, legacy_catalog, sample_rows

from cli import main
from etl.fetch import fetch
from etl.ledger import load_ledger
from etl.mirror import ArchiveMirror, Fault, FaultPlan


@pytest.fixture(name="legacy_catalog")
def legacy_catalog_fixture(tmp_path) -> Path:
    """The sample's run2d-26 galaxies, all marked science-primary so that ~30 are selected
    (a test input for the downloader; the science-primary cut itself is tested elsewhere)."""
    return legacy_catalog(tmp_path)


@pytest.mark.slow
def test_local_cluster_two_workers_with_faults(archive_server, release, tmp_path, legacy_catalog):
    archive_server.faults = FaultPlan(
        {
            "spec-0266-51602-0001.fits": [Fault("status", 404)] * 10,
            "spec-0266-51602-0013.fits": [Fault("status", 503, {"Retry-After": "0"})],
            "spec-0266-51630-0174.fits": [Fault("reset", at_bytes=1000)],
        }
    )
    data = tmp_path / "DATA"
    report = fetch(
        release,
        data,
        str(legacy_catalog),
        base_url=archive_server.base_url,
        workers=2,
        config=FAST,
        progress=False,
    )
    assert report.selected >= 25 and report.n_failed == 1
    assert report.downloaded == report.selected - 1
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    (missing,) = doc["failed_by_reason"]["missing upstream"]["objects"]
    assert (missing["plate"], missing["mjd"], missing["fiberid"]) == (266, 51602, 1)
    assert leftovers(data) == []
    _ledger_matches_files(data, report.downloaded)
    # rerun: only the failure is tried again
    archive_server.hits.clear()
    again = fetch(
        release,
        data,
        str(legacy_catalog),
        base_url=archive_server.base_url,
        workers=2,
        config=FAST,
        progress=False,
    )
    assert again.already_present == report.downloaded and again.downloaded == 0
    assert list(archive_server.hits) == [archive_server.url_path("26", 266, 51602, 1)]


def _ledger_matches_files(data: Path, n: int) -> None:
    """The ledger is compacted (no journal left) and lists exactly the verified files."""
    folder = data / "dr16" / "ledger"
    assert [p.name for p in folder.iterdir()] == ["ledger.npy"]
    ledger = load_ledger(folder)
    files = sorted((data / "dr16/spectra").rglob("spec-*.fits"))
    assert len(ledger) == len(files) == n
    for path in files:
        rel = path.relative_to(data / "dr16/spectra").as_posix()
        body = path.read_bytes()
        assert body == (SAMPLE_SDSS / rel).read_bytes()
        assert ledger[rel] == (len(body), hashlib.sha256(body).hexdigest())


def test_default_in_process_cluster_and_rerun(archive_server, release, tmp_path, legacy_catalog):
    data = tmp_path / "DATA"
    run = dict(base_url=archive_server.base_url, config=FAST, progress=False)
    report = fetch(release, data, str(legacy_catalog), **run)
    assert report.ok and report.downloaded == report.selected >= 25
    _ledger_matches_files(data, report.selected)
    archive_server.hits.clear()
    again = fetch(release, data, str(legacy_catalog), **run)
    assert (again.downloaded, again.already_present) == (0, report.selected)
    assert sum(archive_server.hits.values()) == 0


def test_cli_dry_run_downloads_nothing(archive_server, tmp_path, legacy_catalog):
    data = tmp_path / "DATA"
    res = CliRunner().invoke(
        main,
        [
            "fetch",
            "--data-dir",
            str(data),
            "--catalog",
            str(legacy_catalog),
            "--base-url",
            archive_server.base_url,
            "--limit",
            "5",
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["dry_run"] and doc["selected"] == 5 and doc["to_download"] == 5
    # HEAD requests measure the sizes (tests/test_disk_full.py); no file body is sent
    assert sum(archive_server.served.values()) == 0
    assert sum(archive_server.hits.values()) == 5


def test_cli_unknown_run2d_is_reported_and_exit_code_nonzero(archive_server, tmp_path):
    # sample/catalog.csv as it is: its BOSS galaxy is v5_11_0, absent from the dr16 table
    data = tmp_path / "DATA"
    rows = [r for r in sample_rows() if r["RUN2D"] == "v5_11_0"]
    for r in rows:
        r.update(CLASS="GALAXY", SCIENCEPRIMARY="1", ZWARNING="0", Z="0.1", Z_ERR="1e-5")
    path = tmp_path / "boss.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = CliRunner().invoke(
        main,
        [
            "fetch",
            "--data-dir",
            str(data),
            "--catalog",
            str(path),
            "--base-url",
            archive_server.base_url,
        ],
    )
    assert res.exit_code == 1
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["failed_by_reason"]["unknown run2d"]["count"] == len(rows)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_completes_without_redownloading(
    release, tmp_path, legacy_catalog
):
    data = tmp_path / "DATA"
    cmd = [
        sys.executable,
        "-c",
        "from cli import main; main()",
        "fetch",
        "--data-dir",
        str(data),
        "--catalog",
        str(legacy_catalog),
        "--workers",
        "1",
        "--connections",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with ArchiveMirror(SAMPLE_SDSS, release, latency=0.15) as mirror:
        cmd += ["--base-url", mirror.base_url]
        # own session: the kill takes the Dask worker processes down with the command
        proc = subprocess.Popen(
            cmd,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline and _ledgered(data) < 5:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        ledger = load_ledger(data / "dr16" / "ledger")
        spectra = data / "dr16" / "spectra"
        on_disk = [p.relative_to(spectra).as_posix() for p in spectra.rglob("spec-*.fits")]
        verified = [rel for rel in on_disk if rel in ledger]
        selected = json.loads((data / "dr16" / "selection.json").read_text())["selected"]
        assert 5 <= len(verified) < selected and len(ledger) == len(verified)
        mirror.hits.clear()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        for rel in verified:
            plate, mjd, fiberid = (int(x) for x in re.findall(r"\d+", Path(rel).name))
            assert mirror.hits[mirror.url_path("26", plate, mjd, fiberid)] == 0, rel
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["failed"] == 0 and doc["already_present"] >= len(verified)
    assert leftovers(data / "dr16" / "spectra") == []
    _ledger_matches_files(data, selected)


def _ledgered(data: Path) -> int:
    try:
        return len(load_ledger(data / "dr16" / "ledger"))
    except (OSError, ValueError):
        return 0  # the index is being replaced just now
