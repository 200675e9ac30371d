"""The selected catalogue: read/write ``DATA/<release>/catalog.fits`` and apply a release's cuts.

Column contract of catalog.fits (HDU1 binary table; every later step relies on it):

=========== ========= ===========================================
SPECOBJID   uint64    SDSS specObjID (never through float)
PLATE       int32
MJD         int32
FIBERID     int32
RUN2D       str       reduction; must be in the manifest's table
CLASS       str       GALAXY / QSO / STAR
Z           float64   redshift
Z_ERR       float64   redshift error (-1: failed fit)
ZWARNING    int32     0 = no problem flagged
=========== ========= ===========================================

In memory a catalogue is a ``dict[str, np.ndarray]`` with those upper-case keys: a few dozen
bytes per object, so even a 5M-object release fits comfortably (spectra never do).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from etl.release import Selection

CATALOG_COLUMNS: Mapping[str, str] = {
    "SPECOBJID": "uint64",
    "PLATE": "int32",
    "MJD": "int32",
    "FIBERID": "int32",
    "RUN2D": "str",
    "CLASS": "str",
    "Z": "float64",
    "Z_ERR": "float64",
    "ZWARNING": "int32",
}

Catalog = dict[str, np.ndarray]


class CatalogError(ValueError):
    """A catalogue table lacks required columns or cannot be read."""


def as_catalog(columns: Mapping[str, object], source: str = "catalogue") -> Catalog:
    """Coerce a column mapping (any key case) to the catalogue contract; extra columns dropped."""
    by_upper = {str(k).upper(): v for k, v in columns.items()}
    missing = [c for c in CATALOG_COLUMNS if c not in by_upper]
    if missing:
        raise CatalogError(f"{source}: missing column(s) {', '.join(missing)}")
    out: Catalog = {}
    for name, dtype in CATALOG_COLUMNS.items():
        values = np.asarray(by_upper[name])
        if dtype == "str":
            if values.dtype.kind == "S":
                values = np.char.decode(values, "ascii")
            out[name] = np.char.strip(values.astype(str))
        elif name == "SPECOBJID" and values.dtype.kind in "US":
            out[name] = np.array([int(v) for v in values.tolist()], dtype=np.uint64)
        elif name == "SPECOBJID" and values.dtype.kind == "f":
            raise CatalogError(f"{source}: SPECOBJID is floating point; ids would lose precision")
        else:
            out[name] = values.astype(dtype)
    return out


def write_catalog(catalog: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write a catalogue to FITS atomically (temporary name, then rename)."""
    from astropy.table import Table

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = Table({name: np.asarray(catalog[name]) for name in CATALOG_COLUMNS})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        table.write(tmp, format="fits", overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_catalog(path: str | Path) -> Catalog:
    """Read a catalogue written by :func:`write_catalog` (or any FITS table with its columns)."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: no catalogue (run `specetl fetch` first)")
    try:
        table = Table.read(path, format="fits", character_as_bytes=False)
    except (OSError, ValueError) as err:
        raise CatalogError(f"{path}: unreadable catalogue ({err})") from None
    return as_catalog({name: table[name] for name in table.colnames}, str(path))


def selection_masks(catalog: Mapping[str, np.ndarray], cuts: Selection) -> dict[str, np.ndarray]:
    """Boolean mask of each cut, in the order they are reported (cumulative counts use this)."""
    z, zerr = catalog["Z"], catalog["Z_ERR"]
    masks = {
        f"class == {cuts.class_}": np.char.upper(catalog["CLASS"].astype(str))
        == cuts.class_.upper(),
        f"{cuts.z_min:g} < z <= {cuts.z_max:g}": (z > cuts.z_min) & (z <= cuts.z_max),
        f"{cuts.z_err_min:g} < z_err < {cuts.z_err_max:g}": (zerr > cuts.z_err_min)
        & (zerr < cuts.z_err_max),
        f"zwarning == {cuts.zwarning}": catalog["ZWARNING"] == cuts.zwarning,
    }
    if cuts.science_primary:
        if "SCIENCEPRIMARY" not in catalog:
            raise CatalogError(
                "the release asks for science-primary spectra but the table has no SCIENCEPRIMARY column"
            )
        masks["science primary"] = np.asarray(catalog["SCIENCEPRIMARY"]).astype(bool)
    return masks
