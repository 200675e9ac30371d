"""Crash-safe small writes shared by the ETL steps: nothing appears under a final name half-written."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """fsync a folder so a rename inside it survives a power cut (best effort where unsupported)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: str | Path, doc: object, indent: int = 1) -> None:
    """Write ``doc`` as JSON to a temporary name beside ``path``, fsync, rename, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=indent)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
