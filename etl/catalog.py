"""The selected catalogue: one column contract for every source, the cuts, ``catalog.fits``.

Every catalogue source (the bulk specObj or spAll file, SkyServer SQL, a user's CSV/ECSV/FITS)
is read through one alias table, :data:`SOURCE_ALIASES`: the only place in specetl that spells a
source column name. Catalogue contract v2 (``DATA/<release>/catalog.fits``, HDU1):

============= ========= ==========================================================================
SPECOBJID     str       the release's exact spectrum id, decimal (SDSS-V ids have 28-29 digits)
<key columns> int64     the release's object key (manifest ``[object] key``), upper case:
                        PLATE, MJD, FIBERID (SDSS-I–IV) or FIELD, MJD, CATALOGID (SDSS-V)
RA, DEC       float64   position, degrees (see the precedence below)
RUN2D         str       reduction; must be in the manifest's spec_lite table
CLASS         str       GALAXY / QSO / STAR
Z             float64   redshift
Z_ERR         float64   redshift error (-1: failed fit)
ZWARNING      int64     0 = no problem flagged
SPECPRIMARY   int8      science-primary flag: 1 / 0, or -1 when the source has no flag
============= ========= ==========================================================================

In memory a catalogue is a ``dict[str, np.ndarray]`` with those keys: a few dozen bytes per
object, so even a 5M-object release fits comfortably (spectra never do).

Aliases (source names match case-insensitively): ``SPECOBJID`` also ``SPECOBJ_ID``; ``Z_ERR`` also
``ZERR`` (SkyServer's zErr). Position: the first *pair* present of RACAT/DECCAT (SDSS-V catalogue
position), PLUG_RA/PLUG_DEC (fibre position: specObj, spAll), RA/DEC (SkyServer, user tables);
a row whose value there is missing or off the sky (NaN, -999) takes the next pair's, else NaN.
The science-primary flag is ``SPECPRIMARY`` (specObj, spAll, SDSS-V spAll-lite, HDU 2 of every
spec file) or ``SCIENCEPRIMARY`` (SkyServer's sciencePrimary): the same flag under two names. A
table with both is accepted only if they agree on every row (otherwise it is an error: which one
is right cannot be decided here). Ids: a string SPECOBJID (specObj's padded ``22A``, SDSS-V's
``29A``) is kept as its digits; an integer one (spAll's ``K``, SkyServer's signed bigint) is read
as unsigned 64-bit (ids above 2**63 arrive negative); FITS unsigned columns (TZERO = 2**63) are
decoded exactly; a floating-point id is an error (it has lost digits).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from etl.release import Selection

log = logging.getLogger(__name__)

#: The object key of SDSS-I–IV releases (manifests say it in ``[object] key``).
SDSS_KEY = ("plate", "mjd", "fiberid")

#: Contract column -> its source spellings (upper case), in precedence order.
SOURCE_ALIASES: Mapping[str, tuple[str, ...]] = {
    "SPECOBJID": ("SPECOBJID", "SPECOBJ_ID"),
    "RUN2D": ("RUN2D",),
    "CLASS": ("CLASS",),
    "Z": ("Z",),
    "Z_ERR": ("Z_ERR", "ZERR"),
    "ZWARNING": ("ZWARNING",),
    "SPECPRIMARY": ("SPECPRIMARY", "SCIENCEPRIMARY"),
}
#: Position columns: (RA, DEC) source pairs in precedence order.
POSITION_PAIRS: tuple[tuple[str, str], ...] = (
    ("RACAT", "DECCAT"),
    ("PLUG_RA", "PLUG_DEC"),
    ("RA", "DEC"),
)
#: The DESI family's contract column -> DESI's spellings (zall-pix ``ZCATALOG``, redrock
#: ``REDSHIFTS`` + ``FIBERMAP``, coadd headers), read by :mod:`etl.desi.catalog`. Kept apart from
#: :data:`SOURCE_ALIASES` so an SDSS table is never read through a DESI name (ZWARN for ZWARNING).
DESI_ALIASES: Mapping[str, tuple[str, ...]] = {
    "TARGETID": ("TARGETID",),
    "SURVEY": ("SURVEY",),
    "PROGRAM": ("PROGRAM",),
    "HEALPIX": ("HEALPIX", "HPXPIXEL"),  # HPXPIXEL: a healpix redrock/coadd file's header
    "CLASS": ("SPECTYPE",),
    "Z": ("Z",),
    "Z_ERR": ("ZERR",),
    "ZWARNING": ("ZWARN",),
    "SPECPRIMARY": ("ZCAT_PRIMARY",),
    "OBJTYPE": ("OBJTYPE",),
    "FIBERSTATUS": ("COADD_FIBERSTATUS",),
    "DELTACHI2": ("DELTACHI2",),
}
#: DESI's position: the target's catalogue RA/DEC.
DESI_POSITION_PAIRS: tuple[tuple[str, str], ...] = (("TARGET_RA", "TARGET_DEC"),)
#: dtype of each contract column (key columns are int64 and added per release).
_DTYPES: Mapping[str, str] = {
    "SPECOBJID": "str",
    "RA": "float64",
    "DEC": "float64",
    "RUN2D": "str",
    "CLASS": "str",
    "Z": "float64",
    "Z_ERR": "float64",
    "ZWARNING": "int64",
    "SPECPRIMARY": "int8",
}
#: Width used to order decimal ids numerically as strings (2**64 has 20 digits, SDSS-V 29).
ID_WIDTH = 32

Catalog = dict[str, np.ndarray]


class CatalogError(ValueError):
    """A catalogue table lacks required columns, cannot be read, or selects nothing."""


def catalog_columns(key: Sequence[str] = SDSS_KEY) -> dict[str, str]:
    """Contract columns (name -> dtype) of a release whose object key is ``key``."""
    cols = {"SPECOBJID": "str", **{k.upper(): "int64" for k in key}}
    cols.update((k, v) for k, v in _DTYPES.items() if k != "SPECOBJID")
    return cols


def source_names(key: Sequence[str] = SDSS_KEY) -> set[str]:
    """Every upper-case source column name worth reading for a release with object key ``key``."""
    names = {k.upper() for k in key}
    names.update(n for aliases in SOURCE_ALIASES.values() for n in aliases)
    names.update(n for pair in POSITION_PAIRS for n in pair)
    return names


def id_sort_key(ids: np.ndarray) -> np.ndarray:
    """Decimal id strings padded with zeros so that string order is numeric order."""
    return np.char.zfill(np.asarray(ids, dtype=str), ID_WIDTH)


def _ids(values: np.ndarray, source: str) -> np.ndarray:
    """SPECOBJID as exact decimal strings, whatever the source stored it as."""
    values = np.asarray(values)
    if values.dtype.kind == "S":
        values = np.char.decode(values, "ascii")
    if values.dtype.kind in "UO":
        out = np.char.strip(values.astype(str))
        bad = ~np.char.isdigit(out) if len(out) else np.zeros(0, bool)
        if bad.any():
            raise CatalogError(f"{source}: SPECOBJID {out[bad][0]!r} is not a decimal id")
        return np.char.lstrip(out, "0").astype(str)  # "0…0123" and "123" are one id
    if values.dtype.kind == "f":
        raise CatalogError(f"{source}: SPECOBJID is floating point; ids would have lost digits")
    if values.dtype.kind == "i":  # spAll's K, SkyServer's bigint: the bits are unsigned
        values = values.astype(np.int64).view(np.uint64)
    return values.astype(np.uint64).astype(str)


def _resolve(names: Sequence[str], key: Sequence[str], need_primary: bool) -> dict[str, list[str]]:
    """Contract column -> the source column name(s) that provide it; CatalogError if missing."""
    by_upper = {str(n).upper(): str(n) for n in names}
    found: dict[str, list[str]] = {}
    for col in ("SPECOBJID", *(k.upper() for k in key)):
        aliases = SOURCE_ALIASES.get(col, (col,))
        hit = [by_upper[a] for a in aliases if a in by_upper]
        if hit:
            found[col] = hit[:1]
    for col, aliases in SOURCE_ALIASES.items():
        hit = [by_upper[a] for a in aliases if a in by_upper]
        if hit and col not in found:
            found[col] = hit if col == "SPECPRIMARY" else hit[:1]
    pairs = [
        (by_upper[ra], by_upper[dec]) for ra, dec in POSITION_PAIRS if {ra, dec} <= set(by_upper)
    ]
    if pairs:  # every pair present, in precedence order (a later one fills a row's gap)
        found["RA"], found["DEC"] = [p[0] for p in pairs], [p[1] for p in pairs]
    required = [c for c in catalog_columns(key) if c != "SPECPRIMARY" or need_primary]
    missing = [c for c in required if c not in found]
    if missing:
        spell = {
            "RA": "RA (or RACAT, PLUG_RA)",
            "DEC": "DEC (or DECCAT, PLUG_DEC)",
            "SPECPRIMARY": "SPECPRIMARY (or SCIENCEPRIMARY)",
        }
        want = ", ".join(spell.get(c, c) for c in missing)
        have = ", ".join(str(n) for n in names) or "none"
        raise CatalogError(f"missing column(s) {want}; the table has: {have}")
    return found


def as_catalog(
    columns: Mapping[str, object],
    source: str = "catalogue",
    key: Sequence[str] = SDSS_KEY,
    need_primary: bool = False,
) -> Catalog:
    """Coerce a source table (any spelling of :data:`SOURCE_ALIASES`) to the contract."""
    try:
        found = _resolve(list(columns), key, need_primary)
    except CatalogError as err:
        raise CatalogError(f"{source}: {err}") from None
    out: Catalog = {}
    for name, dtype in catalog_columns(key).items():
        if name not in found:  # only SPECPRIMARY is optional: -1 = the source has no flag
            n = len(np.asarray(columns[found["SPECOBJID"][0]]))
            out[name] = np.full(n, -1, dtype=np.int8)
            continue
        if name == "RA":
            out["RA"], out["DEC"] = _position(columns, found["RA"], found["DEC"], source)
            continue
        if name == "DEC":
            continue
        values = np.asarray(columns[found[name][0]])
        if name == "SPECOBJID":
            out[name] = _ids(values, source)
        elif dtype == "str":
            if values.dtype.kind == "S":
                values = np.char.decode(values, "ascii")
            out[name] = np.char.strip(values.astype(str))
        elif name == "SPECPRIMARY":
            flags = [_flag(columns[c], source, c) for c in found[name]]
            if len(flags) == 2 and np.any(flags[0] != flags[1]):
                bad = int(np.count_nonzero(flags[0] != flags[1]))
                raise CatalogError(
                    f"{source}: {found[name][0]} and {found[name][1]} disagree on {bad} row(s); "
                    "keep one of the two columns"
                )
            out[name] = flags[0].astype(np.int8)
        else:
            try:
                out[name] = values.astype(dtype)
            except (TypeError, ValueError) as err:
                raise CatalogError(f"{source}: column {found[name][0]}: {err}") from None
    # the mark of a SYNTHETIC object (etl.synthetic's catalogues): kept where the source has it,
    # so it travels into the shards and the embedding; archive tables have no such column
    synthetic = [n for n in columns if str(n).upper() == "SYNTHETIC"]
    if synthetic:
        out["SYNTHETIC"] = _flag(columns[synthetic[0]], source, synthetic[0])
    return out


def _position(
    columns: Mapping[str, object], ras: list[str], decs: list[str], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """RA, DEC (degrees) from the first pair present; a row whose value is missing or outside
    the sky (NaN, or a sentinel such as -999 where an object has no catalogue position) takes the
    next pair's. Rows no pair places stay NaN."""
    try:
        ra = np.asarray(columns[ras[0]], dtype=np.float64).copy()
        dec = np.asarray(columns[decs[0]], dtype=np.float64).copy()
        for r_name, d_name in zip(ras[1:], decs[1:], strict=True):
            bad = ~_on_sky(ra, dec)
            if not bad.any():
                break
            ra[bad] = np.asarray(columns[r_name], dtype=np.float64)[bad]
            dec[bad] = np.asarray(columns[d_name], dtype=np.float64)[bad]
    except (TypeError, ValueError) as err:
        raise CatalogError(f"{source}: position column: {err}") from None
    bad = ~_on_sky(ra, dec)
    ra[bad], dec[bad] = np.nan, np.nan
    return ra, dec


def _on_sky(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (ra >= 0) & (ra <= 360) & (dec >= -90) & (dec <= 90)


def _flag(values: object, source: str, name: str) -> np.ndarray:
    """A science-primary flag as int8 1 / 0, keeping -1 (our "the source has no flag", as
    `write_catalog` writes it) so a catalogue read back says what it said when written."""
    values = np.asarray(values)
    if values.dtype.kind in "USO":
        text = np.char.strip(np.asarray(values, dtype=str))
        values = np.isin(np.char.lower(text), ("1", "t", "true"))
    numeric = np.asarray(values).astype(np.int64)
    return np.where(numeric == -1, -1, numeric != 0).astype(np.int8)


def write_catalog(catalog: Mapping[str, np.ndarray], path: str | Path) -> None:
    """Write a catalogue to FITS atomically (temporary name, then rename), every column with its
    unit, description and UCD (etl.fitsmeta), so STILTS/TOPCAT show what it is."""
    from astropy.io import fits
    from astropy.table import Table

    from etl.fitsmeta import CATALOG_COLUMNS, describe_columns

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # astropy writes an int8 column as FITS logical (L): SPECPRIMARY's -1 (no flag) would read
    # back as True. int16 (I) keeps -1, 0, 1.
    table = Table(
        {
            name: np.asarray(values).astype(np.int16)
            if np.asarray(values).dtype == np.int8
            else np.asarray(values)
            for name, values in catalog.items()
        }
    )
    hdu = fits.table_to_hdu(table)
    unknown = describe_columns(hdu.header, CATALOG_COLUMNS)
    if unknown:  # written all the same; tests/test_fits_outputs.py fails until it is described
        log.warning("%s: no unit/description for column(s) %s", path, ", ".join(unknown))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_catalog(path: str | Path, key: Sequence[str] = SDSS_KEY) -> Catalog:
    """Read a catalogue written by :func:`write_catalog` (or any FITS table with its columns)."""
    from astropy.table import Table

    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: no catalogue (run `specetl fetch` first)")
    try:
        table = Table.read(path, format="fits", character_as_bytes=False)
    except (OSError, ValueError) as err:
        raise CatalogError(f"{path}: unreadable catalogue ({err})") from None
    try:
        return as_catalog({n: np.asarray(table[n]) for n in table.colnames}, str(path), key)
    except CatalogError as err:  # e.g. written by an older specetl (no RA/DEC) or another release
        raise CatalogError(f"{err} (run `specetl fetch` again to rewrite it)") from None


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
        masks["science primary"] = np.asarray(catalog["SPECPRIMARY"]) == 1
    return masks


# --- selection ---------------------------------------------------------------------------------


class Selector:
    """Apply a release's cuts chunk by chunk, counting rows after each cut; dedupe at the end.

    Memory: only the rows that pass every cut are kept (a few dozen bytes each), so a source of
    any length is filtered in memory bounded by the chunk size plus the selection itself.
    """

    def __init__(self, cuts: Selection, source: str = "catalogue", key: Sequence[str] = SDSS_KEY):
        self.cuts = cuts
        self.source = source
        self.key = tuple(key)
        self.columns = catalog_columns(self.key)
        self.rows_in = 0
        self.chunks = 0
        self.after: dict[str, int] = {}
        self._kept: list[Catalog] = []

    def add(self, columns: Mapping[str, object]) -> None:
        """Add one chunk: a mapping of source column name (any spelling) -> array."""
        cat = as_catalog(columns, self.source, self.key, self.cuts.science_primary)
        self.chunks += 1
        n = len(cat["SPECOBJID"])
        self.rows_in += n
        keep = np.ones(n, dtype=bool)
        for name, mask in selection_masks(cat, self.cuts).items():
            keep &= mask
            self.after[name] = self.after.get(name, 0) + int(keep.sum())
        if keep.any():
            self._kept.append({k: v[keep] for k, v in cat.items()})

    def result(self) -> tuple[Catalog, dict]:
        """The selected catalogue (sorted by SPECOBJID, duplicates dropped) and its summary.

        Raises :class:`CatalogError` when the source gave no table, or nothing was selected:
        the message names the cut that removed the last rows.
        """
        if not self.chunks:
            raise CatalogError(f"{self.source}: no table (the source returned nothing)")
        if not self._kept:
            raise CatalogError(f"{self.source}: selects nothing: {self._emptied_by()}")
        cat = {k: np.concatenate([c[k] for c in self._kept]) for k in self.columns}
        _, first = np.unique(id_sort_key(cat["SPECOBJID"]), return_index=True)
        cat = {k: v[first] for k, v in cat.items()}  # np.unique sorts: output ordered by id
        steps = [{"step": "rows in", "rows": self.rows_in}]
        steps += [{"step": name, "rows": rows} for name, rows in self.after.items()]
        steps.append({"step": "unique specobjid", "rows": len(first)})
        return cat, {"source": self.source, "steps": steps, "selected": len(first)}

    def _emptied_by(self) -> str:
        return emptied_by(self.rows_in, self.after)


def emptied_by(rows_in: int, after: Mapping[str, int]) -> str:
    """Which cut removed the last rows of a selection (``after``: rows left after each cut)."""
    if not rows_in:
        return "the table has no rows"
    before = rows_in
    for name, rows in after.items():
        if rows == 0:
            return f"the cut '{name}' removed the last {before} of {rows_in} rows"
        before = rows
    return "no rows left"  # pragma: no cover


def commit_selection(
    catalog: dict, summary: dict, rel_dir: Path, limit: int | None, id_column: str
) -> tuple[dict, dict]:
    """Apply ``--limit``, then write DATA/<release>/catalog.fits and selection.json (every step's
    row count) and log the steps; the end of every release family's selection."""
    from etl.atomic import write_json_atomic

    if limit is not None and limit < len(catalog[id_column]):
        catalog = {k: v[:limit] for k, v in catalog.items()}
        summary["steps"].append({"step": f"--limit {limit}", "rows": limit})
        summary["selected"] = limit
    write_catalog(catalog, rel_dir / "catalog.fits")
    write_json_atomic(rel_dir / "selection.json", summary, indent=2)
    width = max(len(s["step"]) for s in summary["steps"])
    for step in summary["steps"]:
        log.info("selection: %-*s %10d rows", width, step["step"], step["rows"])
    return catalog, summary


def select(
    columns: Mapping[str, object],
    cuts: Selection,
    source: str = "catalogue",
    key: Sequence[str] = SDSS_KEY,
):
    """Select from one in-memory table; returns ``(catalog, summary)``."""
    sel = Selector(cuts, source, key)
    sel.add(columns)
    return sel.result()
