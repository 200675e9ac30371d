"""Names that become paths, and paths that must stay under the folder the user named.

Data (a manifest's release name, a catalogue's run2d or key fields, a file name in a table, a
path stored in a run folder) decides where files are read and written, so it is validated where
it is read: a name is one path component of a small alphabet, and every path built from data is
checked to resolve inside its root (``--data-dir``, a run folder, ...). Both raise
:class:`UnsafePath`, a ``ValueError`` whose message names the value, what it is and why.

Pure functions over strings and paths: no I/O beyond ``Path.resolve`` (which follows symlinks
that already exist, so a link planted under the root cannot point a write outside it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: a name used as one folder or file name: letters, digits, ``_ . -``; not starting with ``.`` or
#: ``-`` (hidden files, options), so ``..``, ``/``, ``\`` and NUL can never appear
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class UnsafePath(ValueError):
    """A name or a path built from data would leave the folder it belongs in."""


def safe_name(value: object, what: str) -> str:
    """``value`` as a single path component (e.g. a release name), else :class:`UnsafePath`.

    ``what`` names the value in the message ("release name", "run2d").
    """
    text = str(value)
    if not _NAME_RE.match(text):
        raise UnsafePath(
            f"{what} {text!r} cannot name a folder: use letters, digits, '_', '.' or '-' "
            "(no '/', no leading '.' or '-', at most 128 characters)"
        )
    return text


def under(root: str | os.PathLike, *parts: str | os.PathLike) -> Path:
    """``root / parts...`` after checking that it resolves inside ``root``; else UnsafePath.

    The returned path is ``root / parts`` as given (not resolved), so messages and stored paths
    keep the user's spelling of ``root``.
    """
    base = Path(root)
    path = base.joinpath(*parts)
    resolved_root = base.resolve()
    resolved = path.resolve()
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise UnsafePath(f"{Path(*parts)} leaves {base}: refusing to use {resolved}")
    return path


def absolute(path: str | os.PathLike) -> str:
    """The absolute, normalised spelling of ``path`` (symlinks kept), for paths a file stores so
    that it means the same thing from any working directory."""
    return os.path.abspath(os.fspath(path))
