"""A full disk: `fetch --dry-run` measures what is still to download against the free space;
`fetch` and `build-shards` stop at once on ENOSPC with one line, leave nothing partial, keep the
ledger / index consistent, record the stop in their report, exit 1, and a rerun completes.

ENOSPC is injected at the write (an `open` whose writes fail like a full device after a byte
budget; a ShardWriter whose appends fail after some shards) and, where this process may mount
file systems (root), also met on a real tmpfs that is too small.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from fetch_support import SAMPLE_SDSS, leftovers, legacy_catalog
from test_build_shards import layout_sample

from cli import main
from etl.build import read_index, verify_shards
from etl.catalog import read_catalog
from etl.ledger import load_ledger
from etl.release import spec_lite_relpath
from shardio import ShardWriter

# --- helpers ------------------------------------------------------------------------------------


def selected_files(data: Path) -> list[str]:
    """Relative paths of the files of the objects the fetch selected (its catalog.fits)."""
    cat = read_catalog(data / "dr16" / "catalog.fits")
    ids = zip(cat["RUN2D"], cat["PLATE"], cat["MJD"], cat["FIBERID"], strict=True)
    return sorted(
        spec_lite_relpath(str(r), int(p), int(m), int(f)).as_posix() for r, p, m, f in ids
    )


class FullDisk:
    """Writes through the patched `open` succeed until ``budget`` bytes are spent, then fail as a
    full device does: the write that crosses the budget writes what fits and raises ENOSPC, and
    every later write raises at once (deleting a file gives nothing back: the disk stays full)."""

    def __init__(self, budget: int):
        self.left = budget
        self.refused = 0
        self.lock = threading.Lock()

    def open(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        return _Limited(f, self) if any(c in mode for c in "wax+") else f


class _Limited:
    def __init__(self, f, disk: FullDisk):
        self._f, self._disk = f, disk

    def write(self, data):
        disk = self._disk
        with disk.lock:
            if len(data) > disk.left:
                part, disk.left = data[: disk.left], 0
                disk.refused += 1
                if part:
                    self._f.write(part)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self._f.name))
            disk.left -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fetch_args(data: Path, catalog: Path, base_url: str, *extra: str) -> list[str]:
    return ["fetch", "--data-dir", str(data), "--catalog", str(catalog), "--base-url", base_url,
            "--connections", "2", *extra]  # fmt: skip


def _assert_ledger_consistent(data: Path) -> list[str]:
    """Every ledgered file is on disk with its recorded size and sha256, and every file under a
    final name is a whole sample file (verified or not yet ledgered, never partial)."""
    spectra = data / "dr16" / "spectra"
    ledger = load_ledger(data / "dr16" / "ledger")
    on_disk = sorted(p.relative_to(spectra).as_posix() for p in spectra.rglob("spec-*.fits"))
    for rel in on_disk:
        assert (spectra / rel).read_bytes() == (SAMPLE_SDSS / rel).read_bytes(), rel
    for rel in on_disk:
        if rel in ledger:
            body = (spectra / rel).read_bytes()
            assert ledger[rel] == (len(body), hashlib.sha256(body).hexdigest())
    assert len(ledger) <= len(on_disk)
    return on_disk


# --- fetch --dry-run ----------------------------------------------------------------------------


def test_dry_run_measures_bytes_to_download_against_free_space(
    archive_server, tmp_path, monkeypatch
):
    catalog = legacy_catalog(tmp_path)
    data = tmp_path / "DATA"
    res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url, "--dry-run"))
    assert res.exit_code == 0, res.output
    rels = selected_files(data)
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    space = doc["disk_space"]
    truth = sum((SAMPLE_SDSS / rel).stat().st_size for rel in rels)
    assert doc["to_download"] == len(rels) > 20
    # 20 of the ~30 files measured (HEAD only, nothing downloaded), scaled to all of them
    assert space["estimate"]["by_run2d"]["26"] == {
        "files": len(rels),
        "sampled": 20,
        "mean_file_bytes": pytest.approx(truth / len(rels), rel=0.02),
    }
    assert space["to_download_bytes_estimate"] == pytest.approx(truth, rel=0.02)
    assert sum(archive_server.hits.values()) == 20 and sum(archive_server.served.values()) == 0
    assert not (data / "dr16" / "spectra").exists()
    assert space["free_bytes"] == pytest.approx(shutil.disk_usage(tmp_path).free, rel=0.05)
    assert space["fits"] is True and space["warning"] is None
    assert "dry run: " in res.output and "to download" in res.output

    # the same catalogue against a disk with half the room: a clear warning and exit code 1
    monkeypatch.setattr("etl.diskspace.free_bytes", lambda path: truth // 2)
    res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url, "--dry-run"))
    assert res.exit_code == 1
    (warning,) = [ln for ln in res.output.splitlines() if "WARNING" in ln]
    assert "will not fit" in warning and f"{len(rels)} file(s)" in warning
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["disk_space"]["fits"] is False


def test_a_dry_run_against_a_failing_archive_asks_each_file_twice_and_says_unknown(tmp_path, dr16):
    """Every request answered 503: the estimate asks each sampled file twice (one retry, not a
    download's six tries with backoff), reports the size as unknown and still exits cleanly."""
    from etl.diskspace import ESTIMATE_ATTEMPTS
    from etl.mirror import ArchiveMirror, Fault

    catalog = legacy_catalog(tmp_path)
    data = tmp_path / "DATA"
    down = Fault("status", 503)
    with ArchiveMirror(SAMPLE_SDSS, dr16, faults=lambda path, attempt: down) as m:
        res = CliRunner().invoke(main, _fetch_args(data, catalog, m.base_url, "--dry-run"))
        hits = dict(m.hits)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "file(s) to download, ~?;" in res.output
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["disk_space"]["to_download_bytes_estimate"] is None
    assert "could not measure" in doc["disk_space"]["warning"]
    assert ESTIMATE_ATTEMPTS == 2 and len(hits) == 20 and set(hits.values()) == {2}


def test_estimate_from_file_urls_and_unmeasured_reductions(tmp_path):
    """file:// archives are measured with stat; a reduction none of whose sampled files answers
    takes the mean of the others; nothing measured at all is "unknown", never 0."""
    from etl.diskspace import SizeSample, space_report

    files = sorted((SAMPLE_SDSS / "26").rglob("spec-*.fits"))[:30]
    sample = SizeSample(k=10, seed=1)
    for f in files:
        sample.add("26", f.resolve().as_uri())
    sample.add("v5_13_0", (tmp_path / "absent.fits").as_uri())
    assert sample.counts == {"26": 30, "v5_13_0": 1} and len(sample.urls["26"]) == 10
    assert len(set(sample.urls["26"])) == 10  # a sample without repeats
    doc = space_report(sample, tmp_path, session=None, shards_bytes=0)
    per = doc["estimate"]["by_run2d"]
    mean_26 = per["26"]["mean_file_bytes"]
    assert per["v5_13_0"] == {"files": 1, "sampled": 0, "mean_file_bytes": mean_26}
    truth = sum(f.stat().st_size for f in files)
    assert doc["to_download_bytes_estimate"] == pytest.approx(truth + mean_26, rel=0.02)
    assert doc["fits"] is True and doc["warning"] is None

    nothing = SizeSample()
    nothing.add("26", (tmp_path / "absent.fits").as_uri())
    doc = space_report(nothing, tmp_path, session=None)
    assert doc["to_download_bytes_estimate"] is None and doc["fits"] is None
    assert doc["warning"].startswith("could not measure")


# --- fetch: injected ENOSPC ---------------------------------------------------------------------


def test_fetch_stops_once_on_a_full_disk_and_the_rerun_completes(
    archive_server, tmp_path, monkeypatch, caplog
):
    catalog = legacy_catalog(tmp_path)
    data = tmp_path / "DATA"
    disk = FullDisk(budget=5 * 175_000)  # about five spec-lite files
    monkeypatch.setattr("etl.download.open", disk.open, raising=False)
    monkeypatch.setattr("etl.ledger.open", disk.open, raising=False)  # the ledger journals
    with caplog.at_level(logging.INFO):
        res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url))
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if "disk full" in ln]
    assert line.startswith("Error: disk full") and "free space and rerun" in line
    # one stop, not one error per remaining file
    assert not [r for r in caplog.records if "local I/O error" in r.getMessage()]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1
    rels = selected_files(data)
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["stopped"].startswith("disk full") and doc["not_attempted"] > 0
    assert doc["selected"] == len(rels) and doc["failed"] == 0
    # stopped at once: only the files in flight (2 tasks x 2 connections) were asked for after
    assert sum(archive_server.served.values()) <= doc["downloaded"] + 4 + 4
    assert leftovers(data) == []
    stopped_with = _assert_ledger_consistent(data)
    assert 1 <= doc["downloaded"] <= len(stopped_with) < len(rels)

    monkeypatch.undo()  # space freed
    # the dry run now measures only what is missing
    res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url, "--dry-run"))
    assert res.exit_code == 0, res.output
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    ledger = load_ledger(data / "dr16" / "ledger")
    unverified = [r for r in rels if r not in ledger]  # a file renamed into place as the
    assert doc["to_download"] == len(unverified)  # journal filled up counts until verified
    truth = sum((SAMPLE_SDSS / rel).stat().st_size for rel in unverified)
    assert doc["disk_space"]["to_download_bytes_estimate"] == pytest.approx(truth, rel=0.02)
    missing = [r for r in rels if r not in stopped_with]

    archive_server.served.clear()
    res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url))
    assert res.exit_code == 0, res.output
    doc = json.loads((data / "dr16" / "fetch-report.json").read_text())
    assert doc["stopped"] is None and doc["failed"] == 0
    assert doc["downloaded"] + doc["already_present"] == len(rels)
    assert sum(archive_server.served.values()) == len(missing)  # the rest is not fetched again
    assert _assert_ledger_consistent(data) == sorted(rels)
    assert len(load_ledger(data / "dr16" / "ledger")) == len(rels)
    assert leftovers(data) == []


# --- build-shards: injected ENOSPC --------------------------------------------------------------


@pytest.fixture(scope="module")
def thread_cluster():
    """An in-process Dask cluster, so that the patched writer is the one the tasks use."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        yield cluster.scheduler_address


def test_build_stops_once_on_a_full_disk_and_the_rerun_completes(
    tmp_path, monkeypatch, thread_cluster, caplog
):
    layout_sample(tmp_path)
    shards = tmp_path / "dr16" / "shards"
    real_append = ShardWriter.append
    appends = {"n": 0}
    lock = threading.Lock()

    def append_until_full(self, columns):
        with lock:
            appends["n"] += 1
            full = appends["n"] > 3
        if full:  # the disk filled up while this block was written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.tmp))
        return real_append(self, columns)

    monkeypatch.setattr(ShardWriter, "append", append_until_full)
    args = ["build-shards", "--data-dir", str(tmp_path), "--shard-size", "16",
            "--scheduler", thread_cluster]  # fmt: skip
    with caplog.at_level(logging.INFO):
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if "disk full" in ln]
    assert line.startswith("Error: disk full") and "index.json is unchanged" in line
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    report = json.loads((shards / "build-report.json").read_text())
    stop = report["stopped"]
    assert stop["cause"].startswith("disk full") and 1 <= stop["shards_finished"] <= 3
    assert not (shards / "index.json").exists()  # the first build: no index yet, none half-made
    assert not [p for p in shards.rglob(".*") if p.name not in (".lock", ".journal.jsonl")]
    journal = (shards / ".journal.jsonl").read_text().splitlines()
    assert len(journal) == stop["shards_finished"]  # finished shards are kept for the rerun

    monkeypatch.undo()  # space freed
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"{stop['shards_finished']} unchanged" in res.output
    assert verify_shards(shards) == []
    report = json.loads((shards / "build-report.json").read_text())
    assert "stopped" not in report
    listed = {e["path"] for e in read_index(shards)["shards"]}
    assert {f"{p.parent.name}/{p.name}" for p in shards.glob("*/*")} == listed


# --- a real file system that is too small (root only) -------------------------------------------


@pytest.fixture
def tmpfs():
    """mount(path, size) a real tmpfs; resize(path, size) frees space. Skips cleanly where this
    process may not mount file systems (not root, a container without the capability)."""
    mounted: list[Path] = []
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small file system needs root")

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    def resize(path: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    yield mount, resize
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False)


@pytest.mark.slow
def test_fetch_on_a_real_small_file_system(archive_server, tmp_path, tmpfs):
    mount, resize = tmpfs
    catalog = legacy_catalog(tmp_path)
    data = mount(tmp_path / "DATA", "1200k")
    res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    rels = selected_files(data)
    (line,) = [ln for ln in res.output.splitlines() if "disk full" in ln]
    assert line.startswith("Error: disk full")
    assert leftovers(data) == []
    stopped_with = _assert_ledger_consistent(data)
    assert 0 < len(stopped_with) < len(rels)
    resize(data, "64m")
    res = CliRunner().invoke(main, _fetch_args(data, catalog, archive_server.base_url))
    assert res.exit_code == 0, res.output
    assert _assert_ledger_consistent(data) == sorted(rels)
    assert len(load_ledger(data / "dr16" / "ledger")) == len(rels) and leftovers(data) == []


# HDF5 2.0 crashed the process closing a file after a failed write: a worker died and the build
# said "task failed (cancelled)" at 600k and 900k here (where the device fills differs by size)
@pytest.mark.slow
@pytest.mark.parametrize("size", ["600k", "900k"])
def test_build_on_a_real_small_file_system(tmp_path, tmpfs, size):
    """Shards on a tmpfs too small for them, written by a worker *process* through h5py."""
    mount, resize = tmpfs
    layout_sample(tmp_path)
    shards = mount(tmp_path / "dr16" / "shards", size)
    args = ["build-shards", "--data-dir", str(tmp_path), "--shard-size", "8", "--workers", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if "disk full" in ln]
    assert line.startswith("Error: disk full")
    assert not (shards / "index.json").exists()
    assert not [p for p in shards.rglob(".*") if p.name not in (".lock", ".journal.jsonl")]
    finished = json.loads((shards / "build-report.json").read_text())["stopped"]
    resize(shards, "64m")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert f"{finished['shards_finished']} unchanged" in res.output
    assert verify_shards(shards) == []
    listed = {e["path"] for e in read_index(shards)["shards"]}
    assert {f"{p.parent.name}/{p.name}" for p in shards.glob("*/*")} == listed


def test_desi_build_on_a_real_small_file_system(tmp_path, tmpfs):
    """DESI shards (SYNTHETIC coadds of real spectra, built on a Dask worker) on a tmpfs too small
    for them: one "disk full" line, no index over files the build did not finish, no partial
    file; with space, the rerun builds every target."""
    from desi_support import synthetic_sky

    from etl.fetch import fetch
    from etl.mirror import ArchiveMirror
    from etl.release import load_release

    mount, resize = tmpfs
    dr1 = load_release("desi-dr1")
    data = tmp_path / "data"
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        zall = synthetic_sky(dr1, n_coadds=4, per_coadd=6, tmp=tmp_path, mirror=m)
        zall.write(tmp_path / "zall-SYNTHETIC.fits")
        catalog = str(tmp_path / "zall-SYNTHETIC.fits")
        assert fetch(dr1, data, catalog_source=catalog, base_url=m.base_url).ok
    shards = mount(data / "desi-dr1" / "shards", "300k")  # ~140 kB a 4-row shard
    args = ["build-shards", "--release", "desi-dr1", "--data-dir", str(data)]
    args += ["--shard-size", "4", "--workers", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if "disk full" in ln]
    assert line.startswith("Error: disk full") and "rerun" in line
    assert not (shards / "index.json").exists()
    assert not [p for p in shards.rglob(".*") if p.name not in (".lock", ".journal.jsonl")]
    finished = (shards / ".journal.jsonl").read_text().splitlines()
    resize(shards, "64m")
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"{len(zall)} spectra in ")
    assert finished and f"{len(finished)} unchanged" in res.output  # kept, not rewritten
    assert verify_shards(shards) == []
    listed = {e["path"] for e in read_index(shards)["shards"]}
    assert {f"{p.parent.name}/{p.name}" for p in shards.glob("*/*")} == listed


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["threads", "dask"])
def test_desi_fetch_on_a_real_small_file_system(tmp_path, tmpfs, caplog, monkeypatch, workers):
    """SYNTHETIC coadds of real spectra (~435 kB each as stored) onto a tmpfs that holds two,
    fetched in this process or by two Dask workers (one coadd per task): one "disk full" line,
    not one error per coadd; the coadds stored are whole, valid FITS with their checksums, no
    partial file remains; with space, the rerun fetches only the rest."""
    from astropy.io import fits
    from desi_support import synthetic_sky

    from etl.mirror import ArchiveMirror
    from etl.release import load_release

    monkeypatch.setattr("etl.desi.fetch.BATCH", 1)
    mount, resize = tmpfs
    dr1 = load_release("desi-dr1")
    data = tmp_path / "data"
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        zall = synthetic_sky(dr1, n_coadds=5, per_coadd=3, tmp=tmp_path, mirror=m)
        zall.write(tmp_path / "zall-SYNTHETIC.fits")
        coadds = mount(data / "desi-dr1" / "coadds", "1000k")
        args = ["fetch", "--release", "desi-dr1", "--data-dir", str(data), "--catalog",
                str(tmp_path / "zall-SYNTHETIC.fits"), "--base-url", m.base_url,
                "--connections", "1", *workers]  # fmt: skip
        with caplog.at_level(logging.INFO):
            res = CliRunner().invoke(main, args)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        (line,) = [ln for ln in res.output.splitlines() if "disk full" in ln]
        assert line.startswith("Error: disk full") and "free space and rerun" in line
        assert not [r for r in caplog.records if "local I/O error" in r.getMessage()]
        doc = json.loads((data / "desi-dr1" / "fetch-report.json").read_text())
        stored = sorted(coadds.rglob("coadd-*.fits"))
        assert doc["stopped"].startswith("disk full") and doc["failed"] == 0
        assert 0 < len(stored) < 5 and doc["not_attempted"] == 5 - len(stored)
        assert not [p for p in coadds.rglob(".*") if p.is_file()]  # no partial file
        for p in stored:
            with fits.open(p, checksum=True) as h:
                assert [x.name for x in h][1:] == list(dr1.coadd.hdus)
        first = {p: p.stat().st_mtime_ns for p in stored}
        resize(coadds, "64m")
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
    doc = json.loads((data / "desi-dr1" / "fetch-report.json").read_text())
    assert doc["stopped"] is None and doc["already_present"] == 3 * len(stored)
    assert len(list(coadds.rglob("coadd-*.fits"))) == 5 and doc["downloaded"] == len(
        zall
    ) - 3 * len(stored)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # kept, not fetched again


_WRITE_UNTIL_FULL = """
import errno, sys
import numpy as np
from shardio import ShardWriter
out, rows = sys.argv[1], int(sys.argv[2])
wave = np.linspace(3784.0, 9332.0, 3921)
block = {"flux": np.ones((rows, 3921), "f4"), "ivar": np.ones((rows, 3921), "f4"),
         "z": np.zeros(rows, "f4"), "zerr": np.zeros(rows, "f4"), "norm": np.ones(rows, "f4"),
         "specobjid": np.arange(rows).astype("S32"), "ra": np.zeros(rows), "dec": np.zeros(rows),
         **{k: np.arange(rows) for k in ("plate", "mjd", "fiberid")}}
try:
    with ShardWriter(out, wave, {}, None, rows) as w:
        for _ in range(100):
            w.append(block)
        w.close()
except OSError as err:
    print("ENOSPC" if err.errno == errno.ENOSPC else "other", err.filename)
"""


@pytest.mark.parametrize("rows", [1, 7, 64])
def test_shard_writer_survives_a_device_filling_under_hdf5(tmp_path, tmpfs, rows):
    """The device fills under HDF5's own writes (a real tmpfs), at a chunk write or at the
    metadata, by the block size: the writer raises ENOSPC naming its file, in Python, and leaves
    nothing; the process lives (a subprocess, so that a crash fails this test, not the run)."""
    mount, _ = tmpfs
    folder = mount(tmp_path / "small", "1m")
    res = subprocess.run(
        [sys.executable, "-c", _WRITE_UNTIL_FULL, str(folder / "s.h5"), str(rows)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    word, name = res.stdout.split()
    assert word == "ENOSPC" and Path(name).parent == folder, res.stdout
    assert list(folder.iterdir()) == []


def test_a_shard_writer_that_fails_to_open_leaves_no_file_and_no_descriptor(tmp_path):
    """HDF5 refusing the header (here an attribute it has no type for) raises before any `with`
    owns the writer: the temp file and its descriptor must go with the error."""
    import numpy as np

    def open_fds() -> set[str]:
        return set(os.listdir("/proc/self/fd"))

    wave = np.linspace(3784.0, 9332.0, 3921)
    before = open_fds()
    with pytest.raises(TypeError):
        ShardWriter(tmp_path / "s.h5", wave, {"release": None})
    assert list(tmp_path.iterdir()) == []
    assert open_fds() <= before


def test_disk_full_is_recognised_as_python_and_hdf5_say_it():
    from etl.diskspace import DiskFull, is_disk_full

    h5_message = (  # the shape of h5py's message when HDF5's write fails (seen on a tmpfs)
        "Can't decrement id ref count (file write failed: time = …, filename = 'x.h5', "
        "file descriptor = 3, errno = 28, error message = 'No space left on device', …)"
    )
    assert is_disk_full(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "x"))
    assert is_disk_full(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "x"))  # a full quota
    assert is_disk_full(RuntimeError(h5_message)) and is_disk_full(OSError(h5_message))
    assert is_disk_full(DiskFull("DATA"))
    assert not is_disk_full(OSError(errno.EACCES, os.strerror(errno.EACCES), "x"))
    assert not is_disk_full(ValueError(os.strerror(errno.ENOSPC)))
    assert str(DiskFull("DATA", "rerun")) == "disk full: no space left on the device of DATA; rerun"
