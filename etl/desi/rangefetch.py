"""Fetch only the HDUs of a DESI coadd that training reads, by HTTP range, each one verified.

A healpix coadd holds every target of its pixel; most of its bytes are the three
``*_RESOLUTION`` HDUs and EXP_FIBERMAP, which specetl does not use. :func:`fetch_coadd` walks the
file's headers with small range reads (a header says how long its data is, so where the next
HDU starts), reads the data of the wanted HDUs only, and verifies every HDU it keeps against its
own FITS checksums: ``DATASUM`` (the ones'-complement sum of the data) and ``CHECKSUM`` (header
and data sum to -0). A mismatch is a corrupt transfer: retried, never kept.

What is stored (``DATA/<release>/coadds/<path>``, renamed into place only when complete) is the
primary HDU plus the wanted HDUs, byte for byte and in the file's order: a valid FITS file whose
HDUs still carry their checksums, so a rerun finds it and fetches nothing.

Where a wanted HDU carries no checksum, or the server does not honour Range, the whole file is
fetched instead and verified against the directory's ``.sha256sum`` list; without a list entry
nothing is kept (a file that cannot be verified is not stored).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etl.diskspace import is_disk_full
from etl.download import DownloadConfig, DownloadFailed, _backoff, _retries_exhausted, _short
from etl.fitsread import BLOCK, FitsError, _data_size, _padded, _parse_cards, _str

#: bytes first asked for when a header is read (an image HDU's header is one block); a longer
#: header (FIBERMAP's is 5-7 blocks) is read on in doubling steps
HEADER_READ = BLOCK


@dataclass
class CoaddFetch:
    """What fetching one coadd did: ``status`` ranges / whole / present / failed, or skipped (not
    tried: the disk filled up first); ``reason`` "disk full" when its file could not be written
    for want of space."""

    relpath: str
    status: str = "failed"
    bytes: int = 0  #: bytes received over the network, retries included
    requests: int = 0
    stored: int = 0  #: bytes of the stored file
    file_size: int = 0  #: the archive file's size (from Content-Range), 0 if unknown
    reason: str = ""
    detail: str = ""
    retries: int = 0
    hdus: list[str] = field(default_factory=list)


def ones_complement_sum(data: bytes | memoryview, start: int = 0) -> int:
    """FITS 32-bit ones'-complement sum of ``data`` (a multiple of 4 bytes), added to ``start``."""
    words = np.frombuffer(data, dtype=">u4")
    total = int(words.sum(dtype=np.uint64)) + start  # < 2**64 for HDUs below 16 GiB
    while total >> 32:
        total = (total & 0xFFFFFFFF) + (total >> 32)
    return total


def checksums(header: dict[str, str]) -> tuple[int | None, bool]:
    """(DATASUM as an integer or None, whether CHECKSUM is present)."""
    datasum = _str(header, "DATASUM").strip() if "DATASUM" in header else ""
    value = int(datasum) if datasum.isdigit() else None
    return value, "CHECKSUM" in header


def verify_hdu(raw_header: bytes, data: bytes, header: dict[str, str]) -> None:
    """Raise DownloadFailed (content) unless the HDU's DATASUM and CHECKSUM both hold."""
    datasum, has_checksum = checksums(header)
    if datasum is None or not has_checksum:
        raise ValueError("the HDU carries no DATASUM/CHECKSUM")
    got = ones_complement_sum(data)
    if got != datasum:
        raise DownloadFailed("corrupt HDU", f"DATASUM {datasum}, data sums to {got}", content=True)
    if ones_complement_sum(raw_header, got) != 0xFFFFFFFF:
        raise DownloadFailed("corrupt HDU", "CHECKSUM does not verify", content=True)


class RangeSource:
    """Range reads of one URL through a requests session, counting bytes and requests."""

    def __init__(self, session: object, url: str, cfg: DownloadConfig, result: CoaddFetch):
        self.session, self.url, self.cfg, self.result = session, url, cfg, result

    def read(self, start: int, length: int) -> bytes:
        """Bytes [start, start+length) (fewer only at the end of the file); DownloadFailed."""
        headers = {"Range": f"bytes={start}-{start + length - 1}"}
        r = _request(self.session, self.url, self.cfg, self.result, headers)
        if r.status_code in (404, 410):
            raise DownloadFailed("missing upstream", f"HTTP {r.status_code}", retryable=False)
        if r.status_code == 429 or r.status_code >= 500:
            # the session's urllib3 Retry already asked again (Retry-After honoured)
            raise DownloadFailed("server error", f"HTTP {r.status_code}", retryable=False)
        if r.status_code == 200:
            self.result.file_size = len(r.content)
            raise DownloadFailed(
                "no range support", "the server sent the whole file", retryable=False
            )
        if r.status_code != 206:
            raise DownloadFailed("http error", f"HTTP {r.status_code}", retryable=False)
        total = r.headers.get("Content-Range", "").rpartition("/")[2]
        if total.isdigit():
            self.result.file_size = int(total)
        expected = length if not total.isdigit() else min(length, int(total) - start)
        if len(r.content) != expected:
            raise DownloadFailed("truncated", f"{len(r.content)} of {expected} bytes")
        return r.content


def _read_header(src: RangeSource, offset: int) -> tuple[dict[str, str], bytes]:
    buf, ask = b"", HEADER_READ
    while True:
        buf += src.read(offset + len(buf), ask)
        ask *= 2
        for i in range(0, len(buf) - len(buf) % BLOCK, BLOCK):
            block = buf[i : i + BLOCK]
            j = block.find(b"END     ")
            while j != -1 and j % 80:
                j = block.find(b"END     ", j + 1)
            if j != -1:
                raw = buf[: i + BLOCK]
                return dict(_parse_cards(raw)), raw
        if len(buf) % BLOCK or not buf:
            raise DownloadFailed("truncated", f"no END card in the header at byte {offset}")


def _hdus_to_keep(
    src: RangeSource, wanted: tuple[str, ...]
) -> Iterator[tuple[int, dict, bytes, int]]:
    """Read headers from the start; yield (offset, header, raw header, padded data size) of the
    primary and of each wanted HDU, in file order, until every wanted HDU was seen."""
    offset, found = 0, set()
    while found != set(wanted):
        try:
            header, raw = _read_header(src, offset)
            size = _padded(_data_size(header))
        except (FitsError, ValueError, KeyError) as err:
            if src.result.file_size and offset >= src.result.file_size:
                missing = ", ".join(sorted(set(wanted) - found))
                raise DownloadFailed("missing HDU", missing, retryable=False) from None
            raise DownloadFailed(
                "corrupt HDU", f"unreadable header at byte {offset}: {err}", content=True
            ) from None
        name = _str(header, "EXTNAME").strip().upper() if offset else "PRIMARY"
        if offset == 0 or name in wanted:
            yield offset, header, raw, size
            if name in wanted:
                found.add(name)
        offset += len(raw) + size
        if src.result.file_size and offset >= src.result.file_size and found != set(wanted):
            missing = ", ".join(sorted(set(wanted) - found))
            raise DownloadFailed("missing HDU", missing, retryable=False)


def _walk(src: RangeSource, wanted: tuple[str, ...], kept: dict[int, bytes]) -> list[int]:
    """Keep (verified) the primary and the wanted HDUs.

    ``kept``: header offset -> verified HDU bytes, filled as pieces verify (a retry reuses them).
    Returns the offsets of the HDUs to store, in file order. ValueError when a wanted HDU has no
    checksum (the caller falls back to the whole file).
    """
    order = []
    for offset, header, raw, size in _hdus_to_keep(src, wanted):
        if offset not in kept:
            data = src.read(offset + len(raw), size) if size else b""
            verify_hdu(raw, data, header)
            kept[offset] = raw + data
        order.append(offset)
    return order


def planned_bytes(
    session: object, url: str, wanted: tuple[str, ...], cfg: DownloadConfig
) -> int | None:
    """Bytes :func:`fetch_coadd` would store for this coadd, from its headers alone (a few small
    range reads, no data): the primary plus the wanted HDUs, or the whole file where a wanted HDU
    has no checksum (then the whole file is fetched). None when the archive does not say."""
    result = CoaddFetch(url.rpartition("/")[2])
    src = RangeSource(session, url, cfg, result)
    total = 0
    try:
        for _, header, raw, size in _hdus_to_keep(src, wanted):
            datasum, has_checksum = checksums(header)
            if datasum is None or not has_checksum:  # fetch_coadd takes the whole file
                return result.file_size or None
            total += len(raw) + size
    except DownloadFailed as err:
        if err.reason == "no range support":  # fetch_coadd takes the whole file
            return result.file_size or None
        return None
    return total


def _store(dest: Path, pieces: list[bytes]) -> int:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with open(tmp, "wb") as f:
            for piece in pieces:
                f.write(piece)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return sum(len(p) for p in pieces)


def fetch_coadd(
    session: object,
    url: str,
    sha256sum_url: str,
    wanted: tuple[str, ...],
    dest: Path,
    cfg: DownloadConfig,
    whole_file: bool = False,
) -> CoaddFetch:
    """Fetch one coadd's wanted HDUs (or, if asked or needed, the whole verified file) to
    ``dest``; never raises for a per-file problem (the outcome says what happened)."""
    result = CoaddFetch(dest.name)
    if dest.is_file():
        result.status, result.stored = "present", dest.stat().st_size
        return result
    src = RangeSource(session, url, cfg, result)
    kept: dict[int, bytes] = {}
    for attempt in range(1, cfg.attempts + 1):
        try:
            if whole_file:
                data = _whole_file(session, url, sha256sum_url, cfg, result)
                result.stored = _store(dest, [data])
                result.status = "whole"
            else:
                order = _walk(src, wanted, kept)
                result.stored = _store(dest, [kept[o] for o in order])
                result.status, result.hdus = "ranges", list(wanted)
            return result
        except ValueError:  # a wanted HDU has no checksum: the whole file, by its sha256
            whole_file = True
            continue
        except DownloadFailed as err:
            if err.reason == "no range support" and not whole_file:
                whole_file = True  # the server ignores Range: the whole file, by its sha256
                continue
            result.reason, result.detail = err.reason, err.detail
            if not err.retryable or attempt == cfg.attempts:
                break
            result.retries += 1
            time.sleep(_backoff(attempt, err, cfg))
        except OSError as err:  # writing the file (a full disk stops the whole fetch)
            reason = "disk full" if is_disk_full(err) else "local I/O error"
            result.reason, result.detail = reason, _short(err)
            break
    result.status = "failed"
    return result


def _sha256_entry(text: str, name: str) -> str | None:
    """The sha256 a ``sha256sum`` listing gives for ``name`` (``<hex>  <name>`` lines)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name and len(parts[0]) == 64:
            return parts[0].lower()
    return None


def _request(
    session: object, url: str, cfg: DownloadConfig, result: CoaddFetch, headers=None
) -> object:
    """One GET, counted in ``result`` (requests, bytes); a timeout or a dropped connection is
    DownloadFailed (not retried again by us when urllib3's Retry already did)."""
    import requests

    result.requests += 1
    try:
        r = session.get(  # type: ignore[attr-defined]
            url, headers=headers, timeout=(cfg.connect_timeout, cfg.read_timeout)
        )
    except requests.Timeout as err:
        raise DownloadFailed("timeout", type(err).__name__) from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as err:
        raise DownloadFailed("connection error", _short(err), not _retries_exhausted(err)) from None
    result.bytes += len(r.content)
    return r


def _whole_file(
    session: object, url: str, sha256sum_url: str, cfg: DownloadConfig, result: CoaddFetch
) -> bytes:
    def get(u: str) -> bytes:
        r = _request(session, u, cfg, result)
        if r.status_code in (404, 410):
            raise DownloadFailed(
                "missing upstream", f"{u.rsplit('/', 1)[-1]}: HTTP {r.status_code}", retryable=False
            )
        if r.status_code == 429 or r.status_code >= 500:
            # the session's urllib3 Retry already asked again (Retry-After honoured)
            raise DownloadFailed("server error", f"HTTP {r.status_code}", retryable=False)
        if r.status_code != 200:
            raise DownloadFailed("http error", f"HTTP {r.status_code}", retryable=False)
        length = r.headers.get("Content-Length")
        if length is not None and len(r.content) != int(length):
            raise DownloadFailed("truncated", f"{len(r.content)} of {length} bytes")
        return r.content

    name = url.rsplit("/", 1)[-1]
    try:
        listing = get(sha256sum_url).decode("ascii", "replace")
    except DownloadFailed as err:
        if err.reason != "missing upstream":
            raise
        raise DownloadFailed(
            "unverifiable",
            "no DATASUM/CHECKSUM on a wanted HDU and no sha256sum list",
            retryable=False,
        ) from None
    expected = _sha256_entry(listing, name)
    if expected is None:
        raise DownloadFailed(
            "unverifiable", f"{name} is not in the sha256sum list", retryable=False
        )
    data = get(url)
    result.file_size = len(data)
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise DownloadFailed("sha256 mismatch", f"{got[:12]}… != {expected[:12]}…", content=True)
    return data
