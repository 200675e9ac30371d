"""The sha256 ledger of a release's verified spec-lite files (``DATA/<release>/ledger/``).

A file is listed only after :mod:`etl.download` verified it and renamed it into place, so the
ledger is what a fetch may skip and what a later run trusts. It has two parts:

- ``ledger.npy``: the compacted index, one fixed 56-byte record per verified file (64-bit key of
  its relative path, size, raw sha256, the file's mtime in ns when verified), sorted by key. Readers map it (``mmap``) and binary-search
  it, so a 5M-object ledger costs ~240 MB on disk and next to nothing in a reader's memory.
- ``*.jsonl``: append-only journals, one per writer (one per Dask task), each line fsynced, so
  concurrent writers never share a file and a torn last line (SIGKILL mid-write) is ignored.

:func:`compact_ledger` merges the journals into a new index (temporary file, fsync,
``os.replace``) and only then deletes them; the driver runs it when a fetch starts and ends. A
crash anywhere in between leaves the old index plus journals that the next compaction merges
again (merging is idempotent: the newest record of a key wins).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import numpy as np

from etl.atomic import fsync_dir


class Verified(Protocol):
    """What the ledger records of a downloaded file (etl.download.Job has it): the ledger does
    not import the downloader, which writes to it."""

    relpath: str
    specobjid: object


log = logging.getLogger(__name__)

LEDGER_INDEX = "ledger.npy"
#: One record per verified file: 8 + 8 + 32 + 8 bytes. ``mtime_ns`` lets a rerun tell a file
#: changed since it was verified (re-hashed then); 0 means unknown (an index of the older format).
LEDGER_DTYPE = np.dtype(
    [("key", "<u8"), ("size", "<i8"), ("sha256", "u1", (32,)), ("mtime_ns", "<i8")]
)
_LEDGER_DTYPE_V1 = np.dtype([("key", "<u8"), ("size", "<i8"), ("sha256", "u1", (32,))])


def ledger_key(relpath: str) -> int:
    """64-bit key of a relative path (blake2b). A collision (~1e-6 at 5M files) could only make
    one file look verified at another's size: it would be re-fetched or re-verified, not trusted
    blindly, because files under final names are only ever verified ones."""
    return int.from_bytes(hashlib.blake2b(relpath.encode(), digest_size=8).digest(), "little")


def _iter_journal(path: Path) -> Iterable[tuple[str, int, str, int]]:
    """(relpath, size, sha256 hex, mtime_ns) per intact line; torn lines (crash mid-write)
    skipped; mtime_ns 0 where a line of an older version has none."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
                sha = str(rec["sha256"])
                if len(bytes.fromhex(sha)) != 32:
                    continue
                yield str(rec["path"]), int(rec["size"]), sha, int(rec.get("mtime_ns", 0))
            except (ValueError, KeyError, TypeError):
                continue


def _journals(folder: Path) -> list[Path]:
    """Journal files, oldest first (by last write), so that the newest record of a path wins."""
    found = []
    for path in folder.glob("*.jsonl"):
        try:
            found.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue
    return [p for *_, p in sorted(found)]


def _load_index(folder: Path) -> np.ndarray:
    path = folder / LEDGER_INDEX
    if not path.exists():
        return np.empty(0, LEDGER_DTYPE)
    try:
        index = np.load(path, mmap_mode="r")
    except ValueError:  # an empty array cannot be mapped
        index = np.load(path)
    if index.dtype == _LEDGER_DTYPE_V1:  # written before mtimes were kept: mtime unknown
        old, index = index, np.zeros(len(index), LEDGER_DTYPE)
        for name in _LEDGER_DTYPE_V1.names:
            index[name] = old[name]
    if index.dtype != LEDGER_DTYPE:
        raise ValueError(f"{path}: not a ledger index (dtype {index.dtype})")
    return index


class Ledger:
    """Read view of a ledger folder: the mapped index plus (optionally) unmerged journals.

    Dask tasks open it with ``journals=False``: after the start-of-run compaction the journals
    hold only what this run's tasks are writing, which no task needs to read.
    """

    def __init__(self, folder: str | Path, journals: bool = True):
        self.folder = Path(folder)
        self.index = _load_index(self.folder)
        self.recent: dict[int, tuple[int, str, int]] = {}
        if journals:
            for path in _journals(self.folder):
                for rel, size, sha, mtime in _iter_journal(path):
                    self.recent[ledger_key(rel)] = (size, sha, mtime)

    def _find(self, key: int) -> int:
        keys = self.index["key"]
        i = int(np.searchsorted(keys, np.uint64(key)))
        return i if i < len(keys) and int(keys[i]) == key else -1

    def get(self, relpath: str) -> tuple[int, str] | None:
        """(size, sha256 hex) of a verified file, or None."""
        key = ledger_key(relpath)
        if key in self.recent:
            return self.recent[key][:2]
        i = self._find(key)
        if i < 0:
            return None
        rec = self.index[i]
        return int(rec["size"]), bytes(rec["sha256"]).hex()

    def __getitem__(self, relpath: str) -> tuple[int, str]:
        got = self.get(relpath)
        if got is None:
            raise KeyError(relpath)
        return got

    def __contains__(self, relpath: object) -> bool:
        return isinstance(relpath, str) and self.get(relpath) is not None

    def __len__(self) -> int:
        extra = sum(1 for k in self.recent if self._find(k) < 0)
        return len(self.index) + extra

    def sizes(self, relpaths: list[str]) -> np.ndarray:
        """Verified size of each path (-1: not in the ledger); one vectorised index lookup."""
        return self.stats(relpaths)[0]

    def stats(self, relpaths: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(size, mtime_ns) of each path when verified: size -1 where not in the ledger, mtime 0
        where unknown; one vectorised index lookup."""
        sizes = np.full(len(relpaths), -1, dtype=np.int64)
        mtimes = np.zeros(len(relpaths), dtype=np.int64)
        if not relpaths:
            return sizes, mtimes
        keys = np.fromiter((ledger_key(r) for r in relpaths), np.uint64, len(relpaths))
        if len(self.index):
            pos = np.searchsorted(self.index["key"], keys)
            pos = np.minimum(pos, len(self.index) - 1)
            hit = self.index["key"][pos] == keys
            sizes[hit] = self.index["size"][pos[hit]]
            mtimes[hit] = self.index["mtime_ns"][pos[hit]]
        for i, k in enumerate(keys.tolist()):
            if k in self.recent:
                sizes[i], _, mtimes[i] = self.recent[k]
        return sizes, mtimes


def load_ledger(folder: str | Path) -> Ledger:
    """Everything verified so far (index + unmerged journals)."""
    return Ledger(folder)


def compact_ledger(folder: str | Path) -> int:
    """Merge the journals into the index atomically, then delete them; return the file count.

    Only the journals are parsed into memory; the old index is mapped. Peak memory is about one
    copy of the merged index (~240 MB at 5M files), transiently, in the driver.
    """
    folder = Path(folder)
    journals = _journals(folder)
    old = _load_index(folder)
    if not journals:
        return len(old)
    latest: dict[int, tuple[int, str, int]] = {}
    for path in journals:
        for rel, size, sha, mtime in _iter_journal(path):
            latest[ledger_key(rel)] = (size, sha, mtime)
    new = np.empty(len(latest), LEDGER_DTYPE)
    if latest:
        new["key"] = np.fromiter(latest, np.uint64, len(latest))
        new["size"] = [v[0] for v in latest.values()]
        new["mtime_ns"] = [v[2] for v in latest.values()]
        new["sha256"] = np.frombuffer(
            b"".join(bytes.fromhex(v[1]) for v in latest.values()), np.uint8
        ).reshape(-1, 32)
    new.sort(order="key")
    del latest
    if len(old):  # drop old records superseded by a journal, then merge two sorted runs
        pos = np.minimum(np.searchsorted(new["key"], old["key"]), max(len(new) - 1, 0))
        keep = ~(new["key"][pos] == old["key"]) if len(new) else np.ones(len(old), bool)
        merged = np.concatenate([old[keep], new])
        merged = merged[np.argsort(merged["key"], kind="stable")]
    else:
        merged = new
    tmp = folder / f".{LEDGER_INDEX}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, merged)
            f.flush()
            os.fsync(f.fileno())
        del old  # release the mapping before replacing the file it maps
        os.replace(tmp, folder / LEDGER_INDEX)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(folder)
    for path in journals:
        path.unlink(missing_ok=True)
    fsync_dir(folder)
    log.debug("ledger: merged %d journal(s); %d verified files", len(journals), len(merged))
    return len(merged)


class LedgerWriter:
    """Append verified files to this writer's own JSONL journal; each line fsynced before return."""

    def __init__(self, folder: str | Path, name: str | None = None):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name or uuid.uuid4().hex}.jsonl"
        self._lock = threading.Lock()
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def add(self, job: Verified, size: int, sha256: str, mtime_ns: int = 0) -> None:
        """Record a verified file; ``mtime_ns``: its mtime as verified (0: unknown)."""
        line = json.dumps(
            {
                "path": job.relpath,
                "size": size,
                "sha256": sha256,
                "specobjid": str(job.specobjid),
                "mtime_ns": mtime_ns,
            }
        )
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()
