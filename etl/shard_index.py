"""The bookkeeping of a shards folder: index, journal, lock, sweep, verification.

What makes a rerun crash-safe:

- ``index.json`` is written last, atomically: it is the only list of valid shards. Changed
  shards go to *new* file names, so the previous index stays valid until the new one replaces
  it: a SIGKILL at any moment leaves either the old or the new index, each consistent.
- ``.journal.jsonl`` records each finished task (one fsynced line; a torn last line is ignored),
  so a killed build's finished shards are kept by the rerun.
- ``.lock`` (``flock``) keeps two builds out of one folder.
- after the index is committed, :func:`sweep` deletes the files it no longer lists.
- a full disk stops the build at once (:func:`stop_build_on_full_disk`): no temporary file remains,
  ``index.json`` is unchanged and ``build-report.json`` gains a ``stopped`` record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from etl.atomic import write_json_atomic
from etl.diskspace import DiskFull, is_disk_full
from etl.release import Release
from shardio import FORMAT_VERSION, SPLITS, ShardError

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
REPORT_NAME = "build-report.json"
JOURNAL_NAME = ".journal.jsonl"
LOCK_NAME = ".lock"
INDEX_FORMAT = "specetl-shard-index"
INDEX_FORMAT_VERSION = FORMAT_VERSION  # index and shards change version together
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")


class BuildError(RuntimeError):
    """The build cannot run (missing catalogue, locked folder, a failed task)."""


# --- index, journal, report ---------------------------------------------------------------------


def read_index(shards_dir: str | Path) -> dict:
    """Load ``index.json`` of a shards folder (ShardError if missing or not an index)."""
    path = Path(shards_dir) / INDEX_NAME
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ShardError(f"{path}: no index (run `specetl build-shards`)") from None
    except (OSError, ValueError) as err:
        raise ShardError(f"{path}: unreadable index ({err})") from None
    if doc.get("format") != INDEX_FORMAT:
        raise ShardError(f"{path}: not a specetl shard index")
    return doc


def settings_fingerprint(release: Release, compression: str | None) -> str:
    """sha256 of everything besides the objects that decides a shard's bytes."""
    from etl import __version__

    settings = {
        "manifest_sha256": release.manifest_sha256,
        "specetl_version": __version__,
        "format_version": INDEX_FORMAT_VERSION,
        "compression": compression or "none",
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def reusable_shards(
    previous: list[dict], old_report: dict, journal: list[dict]
) -> dict[str, tuple[dict, list[dict]]]:
    """fingerprint (``inputs_sha256``) -> (index entry, its rejected rows) of every shard a
    previous build finished: the previous index's entries (their rejections from its report)
    first, then those a killed build journalled. Whether each file is still intact is the
    caller's check (:func:`usable`)."""
    old_rejects: dict[str, list[dict]] = {}
    for r in old_report.get("rejected", []):
        old_rejects.setdefault(r.get("shard", ""), []).append(r)
    found: dict[str, tuple[dict, list[dict]]] = {}
    for e in previous:
        found.setdefault(e["inputs_sha256"], (e, old_rejects.get(e["path"], [])))
    for j in journal:
        found.setdefault(j["entry"]["inputs_sha256"], (j["entry"], j["rejected"]))
    return found


def read_journal(path: Path) -> list[dict]:
    """Results of a killed build's finished tasks; a torn last line is ignored."""
    out = []
    with contextlib.suppress(FileNotFoundError), open(path) as fh:
        for line in fh:
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def usable(shards_dir: Path, entry: dict, verify: bool = False) -> bool:
    """A previous shard is reusable if its file exists with the recorded size (and, with
    ``verify``, the recorded sha256).

    (Re-hashing every shard by default would make a no-op rerun read the whole dataset; the size
    check catches truncation, ``verify`` catches a flipped byte.)
    """
    if entry.get("rows") == 0:
        return True  # nothing on disk to check
    path = shards_dir / entry.get("path", "")
    try:
        if path.stat().st_size != entry["bytes"]:
            return False
    except (OSError, KeyError):
        return False
    if verify:
        from shardio import sha256_file

        if sha256_file(path) != entry.get("sha256"):
            log.warning("%s: sha256 differs from index.json; rebuilding it", path)
            return False
    return True


def verify_shards(shards_dir: str | Path) -> list[str]:
    """sha256 every shard listed in the index; return the problems (empty list: all good)."""
    from shardio import sha256_file

    shards_dir = Path(shards_dir)
    problems = []
    for e in read_index(shards_dir)["shards"]:
        path = shards_dir / e["path"]
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif sha256_file(path) != e["sha256"]:
            problems.append(f"{path}: sha256 differs from index.json")
    return problems


@contextlib.contextmanager
def locked(shards_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the shards folder for the whole build."""
    import fcntl

    shards_dir.mkdir(parents=True, exist_ok=True)
    with open(shards_dir / LOCK_NAME, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"{shards_dir}: another build-shards holds the lock") from None
        yield


def next_numbers(shards_dir: Path, known: list[dict]) -> dict[str, int]:
    """First unused shard number per split (above every file on disk and every known entry)."""
    nxt = dict.fromkeys(SPLITS, 0)
    names = [Path(e["path"]) for e in known]
    for split in SPLITS:
        d = shards_dir / split
        if d.is_dir():
            names += [Path(split) / p.name for p in d.iterdir()]
    for p in names:
        m = _SHARD_RE.match(p.name.lstrip(".").split(".h5")[0] + ".h5")
        if m and p.parent.name in nxt:
            nxt[p.parent.name] = max(nxt[p.parent.name], int(m.group(1)) + 1)
    return nxt


def sweep(shards_dir: Path, listed: set[str]) -> int:
    """Delete shard files and leftovers that the (new, committed) index does not list."""
    removed = 0
    for split in SPLITS:
        d = shards_dir / split
        if not d.is_dir():
            continue
        for p in d.iterdir():
            rel = f"{split}/{p.name}"
            if rel not in listed and p.is_file() and (".h5" in p.name):
                p.unlink(missing_ok=True)
                removed += 1
    return removed


def index_document(
    release: Release,
    shard_size: int,
    compression: str | None,
    shards: list[dict],
    empty: list[dict],
    **extra: object,
) -> dict:
    """The content of index.json for a build of ``release`` (any family: its name, key, grid and
    split scheme), ``extra`` fields (e.g. DESI's ``inputs_sha256``) before the shard lists."""
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_FORMAT_VERSION,
        "release": release.name,
        "manifest_sha256": release.manifest_sha256,
        "object_key": list(release.key),
        "npix": release.grid.npix,
        "shard_size": shard_size,
        "compression": compression,
        "split": split_key(release),
        **extra,
        "shards": shards,
        "empty": empty,
    }


def split_key(release: Release) -> dict:
    """What every object's split depends on (written to index.json)."""
    s = release.splits
    return {
        "key": "healpix",
        "order": "nested",
        "nside": s.nside,
        "salt": s.salt,
        "fractions": [s.train, s.valid, s.test],
        "repeat_radius_arcsec": s.repeat_radius,
    }


def stop_build_on_full_disk(
    shards_dir: Path, old_report: dict, err: OSError, finished: int, planned: int
) -> NoReturn:
    """Leave the folder consistent after a full disk, record the stop, raise one line."""
    removed = 0
    for split in SPLITS:  # temporaries of tasks cut short (finished shards stay: journal)
        d = shards_dir / split
        for p in d.iterdir() if d.is_dir() else ():
            if p.name.startswith(".") and p.name.endswith((".tmp", ".part")):
                p.unlink(missing_ok=True)
                removed += 1
    cause = str(err) if isinstance(err, DiskFull) else str(DiskFull(err.filename or shards_dir))
    detail = (
        f"build-shards stopped: {finished} of {planned} shard(s) to write were finished and are "
        f"kept for the rerun; index.json is unchanged and no partial file remains: free space "
        f"and rerun"
    )
    # build-report.json keeps describing the index it sits beside (still the old one)
    stop = {"cause": cause, "shards_finished": finished, "shards_planned": planned}
    try:
        write_json_atomic(shards_dir / REPORT_NAME, dict(old_report, stopped=stop))
    except OSError as again:
        if not is_disk_full(again):
            raise
        detail += "; build-report.json could not be updated"
    log.debug("removed %d temporary file(s) after the stop", removed)
    raise DiskFull(shards_dir, detail) from None
