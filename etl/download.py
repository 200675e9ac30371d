"""Download spec-lite files: pooled keep-alive HTTP, bounded concurrency, retries, verification.

One call of :func:`download_jobs` downloads a batch of files with ``connections`` threads sharing
one pooled ``requests`` session (keep-alive: no TCP/TLS handshake per file). Each file:

1. is skipped when the ledger already lists it with the size it has on disk;
2. otherwise is streamed to a temporary name in its destination folder, hashed on the way;
3. is verified: size == Content-Length, the FITS parses, HDU1 has the COADD columns, HDU2's
   object key (the release's key fields: PLATE/MJD/FIBERID, FIELD/MJD/CATALOGID) is the object
   asked for;
4. is fsynced and renamed into place (``os.replace``: atomic), then appended to the ledger.

So a crash at any moment leaves either no file or a verified one, never a partial file under the
final name. Retries: refused connections and 5xx/429 answers (Retry-After honoured) are retried
by urllib3's ``Retry`` in the session's adapter (:func:`make_session`), with exponential backoff
and jitter; what it cannot see once the headers are in (a read timeout, a connection reset or a
body shorter than its Content-Length) backs off the same way in :func:`_fetch_one`. Content that arrives whole but verifies wrong (another
object's FITS, an HTML page with status 200) is retried once, in case a mirror served a transient
error page, and then reported with the reason; it is not retried like a network error.
404/410 mean "missing upstream": recorded, not retried.

A full disk (ENOSPC/EDQUOT) is not a per-file failure: every remaining file would fail the same
way. The batch stops at once (files not started are cancelled, files in flight finish or fail),
leaves no partial file, and says so in :attr:`BatchResult.disk_full`; the caller stops the run.

Verified files are appended to the ledger (:mod:`etl.ledger`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from etl.atomic import fsync_dir
from etl.diskspace import DiskFull, is_disk_full
from etl.file_mirror import FileResponse
from etl.ledger import LedgerWriter
from etl.spectrum import SpectrumRejected, read_spec_lite

log = logging.getLogger(__name__)

_CHUNK = 1 << 16  # bytes per read from the socket


class Job(NamedTuple):
    """One file to fetch. ``relpath`` is built from validated ids (Release.spec_lite_relpath).

    ``key``: the object key as ``((field, value), ...)`` in the release's order, e.g.
    ``(("plate", 266), ("mjd", 51602), ("fiberid", 1))``; HDU2 must hold exactly these values.
    ``specobjid``: the release's exact id (decimal string).
    """

    specobjid: str
    run2d: str
    key: tuple[tuple[str, int], ...]
    url: str
    relpath: str

    @property
    def label(self) -> str:
        name = self.relpath.rsplit("/", 1)[-1].removesuffix(".fits")
        if not name:
            name = "-".join(str(v) for _, v in self.key)
        return f"{name} (run2d {self.run2d})"


@dataclass(frozen=True)
class DownloadConfig:
    """Politeness and patience. Times in seconds."""

    connections: int = 8  #: concurrent downloads per process (SDSS asks for few streams)
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  #: max silence between bytes, not total transfer time
    attempts: int = 6  #: tries per file for retryable failures
    backoff: float = 1.0  #: first retry delay; doubles per attempt, with jitter
    backoff_max: float = 120.0
    retry_after_max: float = 600.0  #: cap on a server's Retry-After


class DownloadFailed(Exception):
    """A file could not be fetched. ``reason`` is a short category used in the report."""

    def __init__(
        self,
        reason: str,
        detail: str = "",
        retryable: bool = True,
        content: bool = False,
    ):
        self.reason = reason
        self.content = content  #: arrived whole but is not the file asked for
        self.detail = detail
        self.retryable = retryable
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Outcome:
    """What happened to one job: ``status`` is downloaded / present / failed."""

    job: Job
    status: str
    reason: str = ""
    detail: str = ""
    size: int = 0
    attempts: int = 0

    def line(self) -> str:
        """One log line naming the object and the cause."""
        return f"{self.job.label} specobjid {self.job.specobjid}: {self.reason} ({self.detail})"


@dataclass
class BatchResult:
    """Summary of one batch (one Dask task): counts, bytes and the failures in full."""

    downloaded: int = 0
    present: int = 0
    bytes: int = 0
    failed: list[Outcome] = field(default_factory=list)
    not_attempted: int = 0  #: cancelled when the batch stopped on a full disk
    disk_full: str = ""  #: why the batch stopped early (one line), "" when it did not

    def add(self, o: Outcome) -> None:
        if o.status == "downloaded":
            self.downloaded += 1
            self.bytes += o.size
        elif o.status == "present":
            self.present += 1
        else:
            self.failed.append(o)

    @property
    def total(self) -> int:
        return self.downloaded + self.present + len(self.failed) + self.not_attempted


# --- one file ----------------------------------------------------------------------------------


def verify_spec_lite(path: Path, job: Job) -> None:
    """Raise :class:`DownloadFailed` unless ``path`` is a spec-lite file of ``job``'s object."""
    with open(path, "rb") as f:
        head = f.read(80)
    if not head.startswith(b"SIMPLE  ="):
        hint = " (HTML page?)" if head.lstrip()[:1] == b"<" else ""
        raise DownloadFailed(
            "not a FITS file", f"not a FITS file{hint}: starts {head[:40]!r}", content=True
        )
    names = tuple(k for k, _ in job.key)
    try:
        raw = read_spec_lite(path, with_ids=True, name=job.label, key=names)
    except SpectrumRejected as err:
        raise DownloadFailed("invalid FITS", err.detail or err.reason, content=True) from None
    got = tuple((raw.ids or {}).get(k) for k in names)
    want = tuple(v for _, v in job.key)
    if got != want:
        raise DownloadFailed(
            "wrong object",
            f"wrong object: HDU2 holds ({', '.join(names)}) {got}, asked for {want}",
            content=True,
        )


def _fetch_once(session: object, job: Job, dest: Path, cfg: DownloadConfig) -> tuple[int, str]:
    """One attempt: stream, check length, verify, fsync, rename. Returns (size, sha256)."""
    import requests

    tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
    try:
        with _get(session, job.url, cfg) as r:
            if r.status_code in (404, 410):
                raise DownloadFailed("missing upstream", f"HTTP {r.status_code}", retryable=False)
            if r.status_code == 429 or r.status_code >= 500:
                # the adapter's Retry already asked again `attempts` times
                raise DownloadFailed("server error", f"HTTP {r.status_code}", retryable=False)
            if r.status_code != 200:
                raise DownloadFailed("http error", f"HTTP {r.status_code}", retryable=False)
            expected = r.headers.get("Content-Length")
            digest = hashlib.sha256()
            size = 0
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                if expected is not None and size != int(expected):
                    raise DownloadFailed("truncated", f"{size} of {expected} bytes")
                f.flush()
                os.fsync(f.fileno())
        verify_spec_lite(tmp, job)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return size, digest.hexdigest()
    except requests.Timeout as err:
        raise DownloadFailed("timeout", type(err).__name__) from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        # retries_exhausted: urllib3's Retry already retried the connection; don't multiply it
        raise DownloadFailed("connection error", _short(err), not _retries_exhausted(err)) from None
    finally:
        tmp.unlink(missing_ok=True)


def _retries_exhausted(err: BaseException) -> bool:
    from urllib3.exceptions import MaxRetryError

    return any(isinstance(a, MaxRetryError) for a in err.args)


def _get(session: object, url: str, cfg: DownloadConfig):
    if url.startswith("file://"):
        return FileResponse(url)
    return session.get(  # type: ignore[attr-defined]
        url, stream=True, timeout=(cfg.connect_timeout, cfg.read_timeout)
    )


def _short(err: BaseException) -> str:
    text = str(err)
    return text if len(text) < 160 else text[:157] + "..."


def _backoff(attempt: int, err: DownloadFailed, cfg: DownloadConfig) -> float:
    """Delay before retry number ``attempt`` (1-based) of a read failure: exp + jitter."""
    delay = min(cfg.backoff_max, cfg.backoff * 2 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)  # jitter: retries of many files don't synchronise


def fetch_one(
    session: object, job: Job, spectra_dir: Path, cfg: DownloadConfig, ledger: LedgerWriter
) -> Outcome:
    """Download and verify one file with retries; never raises for a per-file problem.

    Raises :class:`DiskFull` when the disk (or quota) is full: that is no per-file problem.
    """
    try:
        return _fetch_one(session, job, spectra_dir, cfg, ledger)
    except OSError as err:
        if is_disk_full(err) and not isinstance(err, DiskFull):
            raise DiskFull(spectra_dir / job.relpath) from None
        raise


def _fetch_one(
    session: object, job: Job, spectra_dir: Path, cfg: DownloadConfig, ledger: LedgerWriter
) -> Outcome:
    dest = spectra_dir / job.relpath
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        # On disk but not in the ledger: renamed into place just before a crash, or placed by
        # hand. Verify it locally rather than downloading it again.
        try:
            verify_spec_lite(dest, job)
            data = dest.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            ledger.add(job, len(data), sha, dest.stat().st_mtime_ns)
            return Outcome(job, "present", size=len(data))
        except DownloadFailed as err:
            log.info("%s: local copy fails verification (%s); downloading again", job.label, err)
    last = DownloadFailed("not attempted")
    wrong_content = 0
    for attempt in range(1, cfg.attempts + 1):
        try:
            size, sha = _fetch_once(session, job, dest, cfg)
        except DownloadFailed as err:
            last = err
            # Wrong content twice is an answer, not a network hiccup: report it.
            wrong_content += err.content
            if not err.retryable or attempt == cfg.attempts or wrong_content >= 2:
                return Outcome(job, "failed", err.reason, err.detail, attempts=attempt)
            delay = _backoff(attempt, err, cfg)
            log.debug("%s: %s; retry %d in %.2f s", job.label, err, attempt, delay)
            time.sleep(delay)
        except OSError as err:  # local disk trouble: not the server's fault, do not hammer it
            if is_disk_full(err):
                raise  # not this file's problem: the batch stops (see fetch_one)
            return Outcome(job, "failed", "local I/O error", _short(err), attempts=attempt)
        else:
            ledger.add(job, size, sha, dest.stat().st_mtime_ns)
            return Outcome(job, "downloaded", size=size, attempts=attempt)
    return Outcome(job, "failed", last.reason, last.detail, attempts=cfg.attempts)


def _retry(cfg: DownloadConfig):
    """urllib3's Retry for what it can see before the body: refused connections and 429/5xx
    answers (Retry-After honoured, capped at ``cfg.retry_after_max``). Reads are not retried
    here (``read=False`` re-raises a read timeout as such); :func:`_fetch_one` retries them."""
    from urllib3.util.retry import Retry

    class CappedRetry(Retry):
        def get_retry_after(self, response):  # type: ignore[no-untyped-def]
            after = super().get_retry_after(response)
            return None if after is None else min(after, cfg.retry_after_max)

    return CappedRetry(
        total=None,
        connect=cfg.attempts - 1,
        read=False,
        status=cfg.attempts - 1,
        other=0,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=("GET", "HEAD"),
        backoff_factor=cfg.backoff,
        backoff_max=cfg.backoff_max,
        backoff_jitter=cfg.backoff / 2,  # retries of many files don't synchronise
        respect_retry_after_header=True,
        raise_on_status=False,  # the last answer comes back: its status is the report's reason
    )


def make_session(connections: int, cfg: DownloadConfig | None = None) -> object:
    """A ``requests`` session whose pool keeps ``connections`` keep-alive connections per host,
    retrying connections and 429/5xx answers with urllib3's Retry (:func:`_retry`)."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    retry = _retry(cfg or DownloadConfig())
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=connections, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = "specetl (+https://github.com/specetl)"
    return session


def download_jobs(
    jobs: Iterable[Job],
    spectra_dir: str | Path,
    ledger_dir: str | Path,
    cfg: DownloadConfig | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> BatchResult:
    """Download a batch with ``cfg.connections`` threads; one ledger file for the batch.

    On a full disk the batch stops: files not started are cancelled (``not_attempted``) and
    ``disk_full`` says where; the result is returned, not raised, so that a Dask task can hand it
    to the driver without a traceback per task.
    """
    cfg = cfg or DownloadConfig()
    spectra_dir = Path(spectra_dir)
    result = BatchResult()
    try:
        ledger = LedgerWriter(ledger_dir)
    except OSError as err:
        if not is_disk_full(err):
            raise
        result.disk_full, result.not_attempted = str(DiskFull(ledger_dir)), len(list(jobs))
        return result
    session = make_session(cfg.connections, cfg)
    full = threading.Event()  # set by the first thread that meets a full disk

    def one(job: Job) -> Outcome | None:
        if full.is_set():
            return None  # not attempted: files in flight finish (or fail alike), no new ones
        try:
            return fetch_one(session, job, spectra_dir, cfg, ledger)
        except DiskFull:
            full.set()
            raise

    try:
        with ThreadPoolExecutor(max_workers=cfg.connections) as pool:
            for fut in [pool.submit(one, j) for j in jobs]:
                try:
                    outcome = fut.result()
                except DiskFull as err:
                    result.disk_full = result.disk_full or str(err)
                    outcome = None
                if outcome is None:
                    result.not_attempted += 1
                    continue
                result.add(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
    finally:
        session.close()  # type: ignore[attr-defined]
        try:
            ledger.close()
        except OSError as err:  # the last journal line could not be flushed: a torn line
            if not is_disk_full(err):  # is ignored on reading; its file is re-verified
                raise
            result.disk_full = result.disk_full or str(DiskFull(ledger.path))
    return result
