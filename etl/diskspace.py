"""Disk space: what a fetch still has to download, what DATA has free, and a full disk as a stop.

At DR16 scale (1–2 M spec-lite files, 200–400 GB) a full disk is a normal condition, not a
surprise. Two tools here:

- :func:`estimate_download` answers ``fetch --dry-run``'s question "will it fit?": the bytes still
  to download, measured by HEAD requests on a seeded random sample of the files still missing,
  per reduction (run2d), times the number of missing files of that reduction. A spec-lite file's
  size is set by its pixel count, which is nearly constant within a reduction (the bundled sample:
  run2d 26, 132 files, mean 173.5 kB, standard deviation 0.7 %; v5_13_2, 32 files, 217.5 kB,
  0.7 %), so :data:`SAMPLE_PER_RUN2D` requests per reduction pin the total to about a per cent.
  Sizes are measured, not tabulated, so a new release or mirror needs no table. A ``file://``
  archive is measured with ``stat``.
- :class:`DiskFull` is the one exception for "no space left" (ENOSPC, or EDQUOT for a quota):
  where going on cannot help, the pipelines stop at once with one line instead of failing every
  remaining file. :func:`is_disk_full` recognises the condition in an ``OSError``'s errno and in
  the messages h5py raises (HDF5 does not always pass the errno through).
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

#: errno values that mean "no room to write": the device is full, or the user's quota is.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Files whose size is measured per reduction (HEAD requests) by a dry run.
SAMPLE_PER_RUN2D = 20
#: tries per sampled URL of a dry run's estimate: one retry, so a dead archive costs a dry run
#: seconds (the estimate is then unknown), not the minutes a download's patience allows
ESTIMATE_ATTEMPTS = 2


class DiskFull(OSError):
    """No space left on the device being written (``path``): stop, free space, rerun."""

    def __init__(self, path: str | Path, detail: str = ""):
        super().__init__(errno.ENOSPC, "No space left on device", str(path))
        self.path = str(path)
        self.detail = detail

    def __str__(self) -> str:
        tail = f"; {self.detail}" if self.detail else ""
        return f"disk full: no space left on the device of {self.path}{tail}"

    def __reduce__(self) -> tuple:  # OSError's own pickling would call __init__ with its args
        return (type(self), (self.path, self.detail))


#: how the C libraries' messages say it when no errno reaches Python (HDF5 via h5py)
_NO_SPACE_TEXT = tuple(os.strerror(e) for e in sorted(NO_SPACE_ERRNOS))


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the device (or the quota) has no room left: an ``OSError`` with
    that errno, or an ``OSError``/``RuntimeError`` from h5py whose HDF5 message carries it."""
    if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
        return True
    return isinstance(err, OSError | RuntimeError) and any(s in str(err) for s in _NO_SPACE_TEXT)


def free_bytes(path: str | Path) -> int:
    """Bytes free to an unprivileged writer on the file system of ``path`` (or of its nearest
    existing parent, for a folder not created yet)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def human_bytes(n: float) -> str:
    """``1.2 GB`` style (decimal units, like df -H and the archive's own listings)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


@dataclass
class SizeSample:
    """Files still to download, counted per run2d, with a seeded reservoir sample of their URLs
    (Algorithm R: a uniform sample in one pass, memory bounded by ``k`` per run2d)."""

    k: int = SAMPLE_PER_RUN2D
    seed: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    urls: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, run2d: str, url: str) -> None:
        n = self.counts.get(run2d, 0) + 1
        self.counts[run2d] = n
        kept = self.urls.setdefault(run2d, [])
        if len(kept) < self.k:
            kept.append(url)
        else:
            j = self._rng.randrange(n)
            if j < self.k:
                kept[j] = url


def probe_size(session: object, url: str, timeout: float) -> int | None:
    """Size in bytes of the file at ``url`` (HEAD's Content-Length; ``stat`` for file://), or
    None when the server does not say."""
    if url.startswith("file://"):
        try:
            return Path(unquote(urlsplit(url).path)).stat().st_size
        except OSError:
            return None
    try:
        r = session.head(url, allow_redirects=True, timeout=timeout)  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001 - an estimate; any network failure is "unknown"
        log.debug("HEAD %s: %s", url, err)
        return None
    length = r.headers.get("Content-Length")
    if r.status_code != 200 or length is None or not length.isdigit():
        return None
    return int(length)


def estimate_download(
    sample: SizeSample,
    session: object,
    connections: int = 8,
    timeout: float = 10.0,
    probe: Callable[[str], int | None] | None = None,
    method: str | None = None,
    group: str = "run2d",
) -> dict:
    """Bytes still to download: per group (SDSS: run2d), the mean measured size times the files
    missing.

    ``probe``: bytes a URL will cost, or None when unknown (default: HEAD's Content-Length);
    ``method`` says how, for the report. A group none of whose sampled files answered takes the
    mean over all measured files; with nothing measured at all, ``bytes`` is None. Returns a
    JSON-ready dict.
    """
    if probe is None:

        def probe(url: str) -> int | None:
            return probe_size(session, url, timeout)

        method = method or f"HEAD Content-Length of up to {sample.k} random files per {group}"
    jobs = [(key, url) for key, urls in sample.urls.items() for url in urls]
    with ThreadPoolExecutor(max(1, min(connections, len(jobs) or 1))) as pool:
        sizes = list(pool.map(lambda j: probe(j[1]), jobs))
    measured: dict[str, list[int]] = {}
    for (key, _), size in zip(jobs, sizes, strict=True):
        if size is not None:
            measured.setdefault(key, []).append(size)
    every = [s for v in measured.values() for s in v]
    overall = sum(every) / len(every) if every else None
    per: dict[str, dict] = {}
    total: float | None = 0.0
    for key, n in sorted(sample.counts.items()):
        got = measured.get(key, [])
        mean = sum(got) / len(got) if got else overall
        per[key] = {"files": n, "sampled": len(got), "mean_file_bytes": mean}
        total = None if mean is None or total is None else total + mean * n
    return {
        "method": method,
        "bytes": None if total is None else int(round(total)),
        f"by_{group}": per,
    }


def space_report(
    sample: SizeSample,
    data_dir: str | Path,
    session: object,
    connections: int = 8,
    timeout: float = 10.0,
    shards_bytes: int = 0,
    probe: Callable[[str], int | None] | None = None,
    method: str | None = None,
    group: str = "run2d",
) -> dict:
    """What a dry run says about disk space: the estimate, the free space of ``data_dir``, whether
    the downloads fit (None: could not measure) and a one-line ``warning`` (None when all is well).

    ``shards_bytes``: an upper bound of the shards that will be built from these files, so the
    warning can also say when the downloads fit but the shards after them will not.
    """
    est = estimate_download(sample, session, connections, timeout, probe, method, group)
    free = free_bytes(data_dir)
    need = est["bytes"]
    files = sum(sample.counts.values())
    warning = None
    if need is None:
        warning = (
            f"could not measure the size of the {files} file(s) still to download (no answer "
            f"with a Content-Length); {data_dir} has {human_bytes(free)} free"
        )
    elif need > free:
        warning = (
            f"will not fit: {files} file(s) still to download, ~{human_bytes(need)}, but "
            f"{data_dir} has {human_bytes(free)} free (short by ~{human_bytes(need - free)})"
        )
    elif need + shards_bytes > free:
        warning = (
            f"the downloads fit (~{human_bytes(need)} of {human_bytes(free)} free in {data_dir}) "
            f"but the shards built from them need up to {human_bytes(shards_bytes)} more"
        )
    log.info(
        "dry run: %d file(s) to download, ~%s; %s free in %s",
        files,
        "?" if need is None else human_bytes(need),
        human_bytes(free),
        data_dir,
    )
    if warning:
        log.warning("dry run: %s", warning)
    return {
        "to_download_bytes_estimate": need,
        "shards_bytes_max": shards_bytes,
        "free_bytes": free,
        "fits": None if need is None else need <= free,
        "estimate": est,
        "warning": warning,
    }


def dry_run_line(to_download: int, space: dict, data_dir: str | Path) -> str:
    """`fetch --dry-run`'s one-line summary of a :func:`space_report`."""
    need = space.get("to_download_bytes_estimate")
    return (
        f"dry run: {to_download} file(s) to download, "
        f"~{'?' if need is None else human_bytes(need)}; "
        f"{human_bytes(space.get('free_bytes', 0))} free in {data_dir}"
    )
