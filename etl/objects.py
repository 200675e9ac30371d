"""How a release names an object and where its spec-lite file lives (the ``[object]`` table).

The object key (plate, mjd, fiberid for SDSS-I–IV; field, mjd, catalogid for SDSS-V) and the
path template below a reduction's folder, plus the validators that keep every local path built
from ids made of integers and a run2d of ``[A-Za-z0-9_.]``: nothing a server or a catalogue sends
can steer where a file lands. :mod:`etl.release` loads the table into :class:`ObjectLayout`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RUN2D_RE = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class ObjectLayout:
    """How the release identifies an object and where its spec-lite file lives.

    ``key``: the object-key fields (lower case; catalogue columns in upper case), e.g.
    ``["plate", "mjd", "fiberid"]`` or ``["field", "mjd", "catalogid"]``. ``path``: the file's
    path below a reduction's folder, a format template of key and derived fields.
    ``derived``: extra template fields, each ``"<key field> // <divisor>"`` (integer division;
    the only form accepted, parsed without ``eval``), e.g. ``field_group = "field // 1000"``.
    """

    key: tuple[str, ...]
    path: str
    derived: Mapping[str, str]

    def __reduce__(self) -> tuple:
        # the manifest's tables are read-only mapping proxies, which do not pickle (Dask ships
        # the layout to workers): rebuild from a plain dict
        return (ObjectLayout, (self.key, self.path, dict(self.derived)))

    def fields(self, values: tuple[int, ...]) -> dict[str, int]:
        """Key and derived fields of one object (``values`` in key order)."""
        out = dict(zip(self.key, values, strict=True))
        for name, expr in self.derived.items():
            source, divisor = _parse_derived(expr)
            out[name] = out[source] // divisor
        return out


_DERIVED_RE = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*//\s*([1-9][0-9]*)\s*$")
_FIELD_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _parse_derived(expr: str) -> tuple[str, int]:
    m = _DERIVED_RE.match(expr)
    if not m:
        raise ValueError(f"derived field {expr!r} is not '<field> // <positive integer>'")
    return m.group(1), int(m.group(2))


def spec_lite_name(plate: int, mjd: int, fiberid: int) -> str:
    """File name of an SDSS-I–IV spec-lite file, e.g. ``spec-0266-51602-0001.fits``."""
    return f"spec-{plate:04d}-{mjd:05d}-{fiberid:04d}.fits"


def spec_lite_relpath(run2d: str, plate: int, mjd: int, fiberid: int) -> Path:
    """Local path of an SDSS-I–IV spec-lite file: ``<run2d>/<plate:04d>/spec-….fits``.

    The layout of the dr16/dr17 manifests' ``[object] path``; release-independent code uses
    :meth:`Release.spec_lite_relpath`.
    """
    run2d, plate, mjd, fiberid = validate_object_id(run2d, plate, mjd, fiberid)
    return Path(run2d) / f"{plate:04d}" / spec_lite_name(plate, mjd, fiberid)


def validate_object_id(run2d: Any, plate: Any, mjd: Any, fiberid: Any) -> tuple[str, int, int, int]:
    """Check and normalise an object's (run2d, plate, mjd, fiberid); raise ValueError if invalid."""
    out = [
        _valid_int(n, v, 10**6) for n, v in (("plate", plate), ("mjd", mjd), ("fiberid", fiberid))
    ]
    return (validate_run2d(run2d), *out)


def validate_run2d(run2d: Any) -> str:
    """A run2d usable as a folder name (``[A-Za-z0-9_.]``, not ``.``/``..``); else ValueError."""
    run2d = str(run2d).strip()
    if not _RUN2D_RE.match(run2d) or run2d in {".", ".."}:
        raise ValueError(f"invalid run2d {run2d!r}")
    return run2d


def _valid_int(name: str, value: Any, limit: int = 2**63) -> int:
    """A key value: an integer 0 < value < limit (floats only if integral); else ValueError."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"invalid {name} {value!r}")
    try:
        ivalue = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid {name} {value!r}") from None
    if not 0 < ivalue < limit:
        raise ValueError(f"invalid {name} {value!r}")
    return ivalue
