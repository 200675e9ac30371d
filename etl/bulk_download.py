"""One large file fetched across runs: a release's bulk catalogue (SDSS specObj, DESI zall-pix).

Tens of GB that a dropped connection must not restart: the bytes so far stay in ``NAME.part``
and a rerun asks for the rest with an HTTP Range, through the same session, retries and disk-full
handling as the spectrum downloads (`etl.download`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

from etl.diskspace import DiskFull, is_disk_full
from etl.download import (
    DownloadConfig,
    DownloadFailed,
    _backoff,
    _retries_exhausted,
    _short,
    make_session,
)

log = logging.getLogger(__name__)


def download_resumable(
    url: str, dest: str | Path, cfg: DownloadConfig | None = None, chunk: int = 1 << 20
) -> Path:
    """Download one large file (the bulk specObj catalogue) resumably with HTTP Range.

    Bytes accumulate in ``<dest>.part``; an interrupted run continues where it stopped. The
    part file is renamed to ``dest`` only when its size equals the server's total size.
    """
    import requests

    cfg = cfg or DownloadConfig()
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    session = make_session(1, cfg)
    try:
        for attempt in range(1, cfg.attempts + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with session.get(  # type: ignore[attr-defined]
                    url,
                    headers=headers,
                    stream=True,
                    timeout=(cfg.connect_timeout, cfg.read_timeout),
                ) as r:
                    if r.status_code in (404, 410):
                        raise DownloadFailed(
                            "missing upstream", f"HTTP {r.status_code} {url}", False
                        )
                    if r.status_code == 416:  # already complete
                        total = have
                    elif r.status_code in (200, 206):
                        if r.status_code == 200:
                            have = 0  # server ignored Range: start over
                        total = have + int(r.headers.get("Content-Length", "-1"))
                        with open(part, "r+b" if have else "wb") as f:
                            f.seek(have)
                            f.truncate()
                            for data in r.iter_content(chunk):
                                f.write(data)
                            f.flush()
                            os.fsync(f.fileno())
                    else:
                        # 429/5xx: the adapter's Retry already asked again
                        raise DownloadFailed("server error", f"HTTP {r.status_code} {url}", False)
                if part.stat().st_size == total and total >= 0:
                    os.replace(part, dest)
                    return dest
                raise DownloadFailed("truncated", f"{part.stat().st_size} of {total} bytes")
            except requests.RequestException as err:
                failure = DownloadFailed(
                    "connection error", _short(err), not _retries_exhausted(err)
                )
            except DownloadFailed as err:
                failure = err
            except OSError as err:
                if is_disk_full(err):  # the .part stays: the rerun continues from its end
                    raise DiskFull(part, "the .part file is kept; free space and rerun") from None
                raise
            if not failure.retryable or attempt == cfg.attempts:
                raise failure
            time.sleep(_backoff(attempt, failure, cfg))
    finally:
        session.close()  # type: ignore[attr-defined]
    raise DownloadFailed("not attempted", url)  # pragma: no cover


def bulk_table_local(url: str, rel_dir: Path, config: DownloadConfig | None) -> Path:
    """A release's bulk catalogue file on disk (SDSS specObj, DESI zall-pix): a file:// URL is
    used in place, http(s) is downloaded resumably into ``rel_dir``. Raises CatalogError for a
    URL that does not name a FITS file."""
    from etl.catalog import CatalogError

    parts = urlsplit(url)
    if parts.scheme == "file":
        return Path(parts.path)
    name = Path(parts.path).name
    if not name.endswith((".fits", ".fits.gz")) or "/" in name or name.startswith("."):
        raise CatalogError(f"unexpected specObj URL {url}")
    log.info("downloading the bulk catalogue %s (resumable)", url)
    return download_resumable(url, rel_dir / name, config)
