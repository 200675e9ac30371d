"""The downloader against a real HTTP server on 127.0.0.1: happy path and each fault alone."""

from __future__ import annotations

import hashlib
import socket
import time
import tracemalloc
from dataclasses import replace
from urllib.parse import urlsplit

import numpy as np
from fetch_support import FAST, SAMPLE_SDSS, job_named, leftovers, sample_jobs

from etl.download import DownloadConfig, Job, download_jobs
from etl.ledger import LEDGER_DTYPE, Ledger, LedgerWriter, compact_ledger, ledger_key, load_ledger
from etl.mirror import Fault, FaultPlan

ONE = "spec-0266-51602-0001.fits"


def _run(jobs, tmp_path, cfg=FAST):
    return download_jobs(jobs, tmp_path / "spectra", tmp_path / "ledger", cfg)


def test_happy_path_every_file_byte_identical(archive_server, release, tmp_path):
    jobs = sample_jobs(release, archive_server)
    assert len(jobs) >= 40
    result = _run(jobs, tmp_path)
    assert (result.downloaded, result.present, result.failed) == (len(jobs), 0, [])
    ledger = load_ledger(tmp_path / "ledger")
    for job in jobs:
        got = (tmp_path / "spectra" / job.relpath).read_bytes()
        assert got == (SAMPLE_SDSS / job.relpath).read_bytes()
        assert ledger[job.relpath] == (len(got), hashlib.sha256(got).hexdigest())
    assert leftovers(tmp_path) == []
    # keep-alive: far fewer TCP connections than files would show in the server; at least the
    # second pass must not touch the network for files that are on disk and verify.
    before = sum(archive_server.hits.values())
    again = _run(jobs, tmp_path)
    assert again.present == len(jobs) and sum(archive_server.hits.values()) == before


def _one(archive_server, release, tmp_path, faults, always=False, cfg=FAST):
    archive_server.faults = FaultPlan({ONE: faults}, always=always)
    job = job_named(sample_jobs(release, archive_server), ONE)
    t0 = time.perf_counter()
    result = _run([job], tmp_path, cfg)
    dest = tmp_path / "spectra" / job.relpath
    assert leftovers(tmp_path) == []
    return (
        result,
        dest,
        time.perf_counter() - t0,
        archive_server.hits[archive_server.url_path(job.run2d, *(v for _, v in job.key))],
    )


def _recovered(result, dest):
    assert result.downloaded == 1 and not result.failed
    assert dest.read_bytes() == (SAMPLE_SDSS / "26/0266" / ONE).read_bytes()


def _reported(result, dest, reason):
    assert result.downloaded == 0 and [o.reason for o in result.failed] == [reason]
    assert not dest.exists()


def test_503_with_retry_after_is_honoured(archive_server, release, tmp_path):
    f = Fault("status", 503, {"Retry-After": "1"}, b"busy")
    result, dest, seconds, hits = _one(archive_server, release, tmp_path, [f])
    _recovered(result, dest)
    assert hits == 2 and seconds >= 1.0  # waited as told, not the 0.05 s backoff


def test_503_forever_is_reported(archive_server, release, tmp_path):
    f = Fault("status", 503, {}, b"busy")
    result, dest, _, hits = _one(archive_server, release, tmp_path, [f], always=True)
    _reported(result, dest, "server error")
    assert hits == FAST.attempts


def test_retry_after_is_capped_by_the_config(archive_server, release, tmp_path):
    """urllib3's Retry honours Retry-After, but never longer than ``retry_after_max``."""
    f = Fault("status", 503, {"Retry-After": "100"}, b"busy")
    cfg = replace(FAST, retry_after_max=0.3)
    result, dest, seconds, hits = _one(archive_server, release, tmp_path, [f], cfg=cfg)
    _recovered(result, dest)
    assert hits == 2 and 0.3 <= seconds < 10


def test_refused_connection_is_retried_then_reported(archive_server, release, tmp_path):
    """No server at all: urllib3 retries the connection (attempts - 1 times, with backoff),
    then the file is one 'connection error', not attempts x attempts tries."""
    with socket.socket() as s:  # a port nobody listens on (bound, then closed)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = job_named(sample_jobs(release, archive_server), ONE)
    host = urlsplit(archive_server.base_url).netloc
    dead = job._replace(url=job.url.replace(host, f"127.0.0.1:{port}"))
    assert dead.url != job.url
    t0 = time.perf_counter()
    result = _run([dead], tmp_path)
    assert [(o.reason, o.attempts) for o in result.failed] == [("connection error", 1)]
    assert "Max retries exceeded" in result.failed[0].detail
    assert time.perf_counter() - t0 < 5


def test_connection_reset_mid_body_recovers(archive_server, release, tmp_path):
    result, dest, _, hits = _one(
        archive_server, release, tmp_path, [Fault("reset", at_bytes=20000)]
    )
    _recovered(result, dest)
    assert hits == 2


def test_body_shorter_than_content_length_recovers(archive_server, release, tmp_path):
    result, dest, _, hits = _one(archive_server, release, tmp_path, [Fault("short", at_bytes=8640)])
    _recovered(result, dest)
    assert hits == 2


def test_short_body_forever_leaves_no_partial_file(archive_server, release, tmp_path):
    f = Fault("short", at_bytes=8640)
    result, dest, _, _ = _one(archive_server, release, tmp_path, [f], always=True)
    assert result.failed[0].reason in ("truncated", "connection error")
    assert not dest.exists()


def test_wrong_object_is_rejected_then_recovered(archive_server, release, tmp_path):
    other = archive_server.url_path("26", 266, 51602, 13)
    result, dest, _, _ = _one(archive_server, release, tmp_path, [Fault("substitute", other=other)])
    _recovered(result, dest)


def test_wrong_object_forever_is_reported_after_one_retry(archive_server, release, tmp_path):
    other = archive_server.url_path("26", 266, 51602, 13)
    f = Fault("substitute", other=other)
    cfg = DownloadConfig(**{**FAST.__dict__, "attempts": 6})
    result, dest, _, hits = _one(archive_server, release, tmp_path, [f], always=True, cfg=cfg)
    _reported(result, dest, "wrong object")
    assert hits == 2  # one retry (a transient mirror fault?), not all 6 attempts
    assert "wrong object: HDU2 holds (plate, mjd, fiberid) (266, 51602, 13)" in (
        result.failed[0].detail
    )


def test_html_error_page_with_status_200_is_not_a_spectrum(archive_server, release, tmp_path):
    page = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
    f = Fault("status", 200, {"Content-Type": "text/html"}, page)
    cfg = DownloadConfig(**{**FAST.__dict__, "attempts": 6})
    result, dest, _, hits = _one(archive_server, release, tmp_path, [f], always=True, cfg=cfg)
    _reported(result, dest, "not a FITS file")
    assert hits == 2 and "not a FITS file (HTML page?)" in result.failed[0].detail
    result, dest, _, _ = _one(archive_server, release, tmp_path / "again", [f])
    _recovered(result, dest)


def test_404_is_missing_upstream_and_not_retried(archive_server, release, tmp_path):
    f = Fault("status", 404, {}, b"no such file")
    result, dest, _, hits = _one(archive_server, release, tmp_path, [f], always=True)
    _reported(result, dest, "missing upstream")
    assert hits == 1
    assert "specobjid" in result.failed[0].line() and ONE[:-5] in result.failed[0].line()


def test_slow_response_beyond_timeout(archive_server, release, tmp_path):
    f = Fault("delay", seconds=1.5)
    result, dest, _, hits = _one(archive_server, release, tmp_path, [f])
    _recovered(result, dest)
    assert hits == 2
    result, dest, _, _ = _one(archive_server, release, tmp_path / "b", [f], always=True)
    _reported(result, dest, "timeout")


def test_corrupt_local_file_is_replaced_not_trusted(archive_server, release, tmp_path):
    job = job_named(sample_jobs(release, archive_server), ONE)
    dest = tmp_path / "spectra" / job.relpath
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"SIMPLE  =                    T" + b" " * 100)
    result = _run([job], tmp_path)
    _recovered(result, dest)


# --- ledger ------------------------------------------------------------------------------------


def _job(i: int) -> Job:
    rel = f"26/{7000 + i // 500:04d}/spec-{7000 + i // 500:04d}-55000-{i % 500 + 1:04d}.fits"
    key = (("plate", 7000 + i // 500), ("mjd", 55000), ("fiberid", i % 500 + 1))
    return Job(str(10**17 + i), "26", key, "", rel)


def test_ledger_compaction_merges_atomically_and_idempotently(tmp_path):
    folder = tmp_path / "ledger"
    for batch in (range(0, 30), range(20, 50)):  # two writers; 20..29 written twice
        w = LedgerWriter(folder)
        for i in batch:
            w.add(_job(i), 1000 + i + (batch.start > 0), f"{i:064x}")
        w.close()
    with open(w.path, "a") as f:
        f.write('{"path": "26/7000/spec-torn')  # SIGKILL mid-line
    journal_copy = w.path.read_bytes()
    assert len(load_ledger(folder)) == 50
    assert compact_ledger(folder) == 50
    assert list(folder.glob("*.jsonl")) == [] and (folder / "ledger.npy").is_file()
    ledger = load_ledger(folder)
    assert len(ledger) == 50 and ledger.index.flags.writeable is False  # mapped, not loaded
    assert ledger[_job(25).relpath] == (1026, f"{25:064x}")  # the newer record wins
    assert ledger[_job(5).relpath] == (1005, f"{5:064x}")
    assert ledger.sizes([_job(49).relpath, "26/0001/nope.fits"]).tolist() == [1050, -1]
    # a crash after the index was replaced but before the journals were deleted: merge again
    w.path.write_bytes(journal_copy)
    assert compact_ledger(folder) == 50
    assert load_ledger(folder)[_job(25).relpath] == (1026, f"{25:064x}")
    assert [p.name for p in folder.iterdir()] == ["ledger.npy"]  # no temporary left


def test_ledger_lookup_memory_does_not_grow_with_the_index(tmp_path):
    n = 2_000_000  # ~96 MB index, as for 2M objects
    index = np.empty(n, LEDGER_DTYPE)
    index["key"] = np.sort(np.random.default_rng(1).integers(0, 2**64, n, dtype=np.uint64))
    index["size"] = 1234
    index["sha256"] = 7
    target = [_job(i).relpath for i in range(1000)]
    index["key"][:1000] = [ledger_key(r) for r in target]
    index.sort(order="key")
    (tmp_path / "ledger.npy").write_bytes(b"")
    np.save(tmp_path / "ledger.npy", index)
    del index
    tracemalloc.start()
    try:
        ledger = Ledger(tmp_path, journals=False)
        sizes = ledger.sizes(target)  # what one Dask task does for its partition
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (sizes == 1234).all() and len(ledger) == n
    assert peak < 2_000_000, peak  # the index is mapped, never copied into memory
