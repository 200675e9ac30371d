"""FITS column cards other tools read, for the tables both ``etl`` (``catalog.fits``) and
``model`` (embeddings) write: ``TUNITn`` (FITS standard), ``TCOMMn`` (a short description: the
HEASARC convention TOPCAT shows as "Description") and ``TUCDn`` (an IVOA UCD, e.g.
``pos.eq.ra``, by which TOPCAT recognises sky positions). astropy keeps a column's
``description`` only in a YAML comment block that STILTS, TOPCAT, fitsio and CFITSIO ignore.

Here because both writers need it and ``model`` never imports ``etl``; each side keeps its own
table of columns (``etl.fitsmeta``, ``model.fitsmeta``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple


class ColumnMeta(NamedTuple):
    """FITS metadata of one column: unit ("" = dimensionless), description, UCD ("" = none)."""

    unit: str
    description: str
    ucd: str = ""


def describe_columns(header, meta: Mapping[str, ColumnMeta]) -> list[str]:
    """Add TUNITn, TCOMMn and TUCDn to a binary-table `header` (astropy) for the columns `meta`
    knows; returns the names of the columns it does not know (the caller decides if that is an
    error). An existing TUNITn is replaced: the table says what its columns are."""
    unknown = []
    for i in range(1, int(header["TFIELDS"]) + 1):
        name = str(header[f"TTYPE{i}"]).strip()
        m = meta.get(name.upper())
        if m is None:
            unknown.append(name)
            continue
        # TUNIT/TUCD/TCOMM right after the column's TFORM (then TDIM, TZERO), where readers look
        after = f"TFORM{i}"
        for k in (f"TZERO{i}", f"TSCAL{i}", f"TDIM{i}"):
            after = k if k in header else after
        for key, value, comment in (
            (f"TUNIT{i}", m.unit, "physical unit of field"),
            (f"TUCD{i}", m.ucd, "IVOA UCD of field"),
            (f"TCOMM{i}", m.description, None),
        ):
            if key in header:
                del header[key]
            if value:
                header.insert(after, (key, value, comment), after=True)
                after = key
    return unknown
