"""The DESI catalogue: zall-pix or redrock tables -> the selected objects, cuts as data.

Every source column is found through the alias table, :data:`etl.catalog.DESI_ALIASES`
(DESI's SPECTYPE, ZWARN, ZCAT_PRIMARY, COADD_FIBERSTATUS, HPXPIXEL, TARGET_RA/DEC are
spellings there); this module only uses the contract names below. ``catalog.fits`` of a DESI
release holds one row per selected (TARGETID, SURVEY, PROGRAM):

============= ======= ===========================================================================
TARGETID      int64   DESI's target id (positive for a real target; exact in int64)
SURVEY        str     cmx, sv1, sv2, sv3, main, special
PROGRAM       str     backup, bright, dark, other
HEALPIX       int64   nside 64 nested pixel: with SURVEY and PROGRAM it names the coadd file
RA, DEC       float64 the target's catalogue position (degrees)
Z, Z_ERR      float64 redrock redshift and error
ZWARNING      int64   0 = no problem flagged
CLASS         str     GALAXY / QSO / STAR
SPECPRIMARY   int8    1 / 0 (zall's ZCAT_PRIMARY), -1 where the source has no flag
OBJTYPE       str     TGT for a target fibre
FIBERSTATUS   int64   the coadd's fibre status (0 = good)
DELTACHI2     float64 redrock's chi2 gap to the next solution
============= ======= ===========================================================================

A cut whose column the source lacks is an error naming it, with one exception: a redrock file
has no primary flag (it is one coadd, each target once), so the primary cut is skipped there and
the summary says so. A row without SURVEY/PROGRAM/HEALPIX (a tile-based redrock table) cannot
name a healpix coadd: the last step removes it, counted as such.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from etl.catalog import (
    DESI_ALIASES,
    DESI_POSITION_PAIRS,
    CatalogError,
    _position,
    emptied_by,
)
from etl.desi.manifest import Cut, DesiRelease

#: contract column -> dtype (the names are keys of DESI_ALIASES, plus RA/DEC)
DESI_COLUMNS: Mapping[str, str] = {
    "TARGETID": "int64",
    "SURVEY": "str",
    "PROGRAM": "str",
    "HEALPIX": "int64",
    "RA": "float64",
    "DEC": "float64",
    "Z": "float64",
    "Z_ERR": "float64",
    "ZWARNING": "int64",
    "CLASS": "str",
    "SPECPRIMARY": "int8",
    "OBJTYPE": "str",
    "FIBERSTATUS": "int64",
    "DELTACHI2": "float64",
}
#: columns that say which coadd holds an object
LOCATION = ("SURVEY", "PROGRAM", "HEALPIX")
LOCATION_STEP = "has a healpix coadd (SURVEY, PROGRAM, HEALPIX)"
NO_PRIMARY = "the table has no primary flag (one redrock file): every row counts as primary"
_OPS = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

Catalog = dict[str, np.ndarray]


def contract_columns(columns: Mapping[str, object], source: str = "catalogue") -> Catalog:
    """The contract columns a source table provides (any alias spelling), decoded; the others
    are absent from the result (not filled)."""
    by_upper = {str(n).upper(): n for n, v in columns.items() if v is not None}
    out: Catalog = {}
    for name, dtype in DESI_COLUMNS.items():
        if name in ("RA", "DEC"):
            continue
        hit = next((by_upper[a] for a in DESI_ALIASES[name] if a in by_upper), None)
        if hit is None:
            continue
        values = np.asarray(columns[hit])
        try:
            if dtype == "str":
                if values.dtype.kind == "S":
                    values = np.char.decode(values, "ascii")
                out[name] = np.char.strip(values.astype(str))
            elif name == "SPECPRIMARY":
                out[name] = (values.astype(np.int64) != 0).astype(np.int8)
            elif dtype == "int64" and values.dtype.kind == "f":
                raise CatalogError(f"{source}: {hit} is floating point; ids would lose digits")
            else:
                out[name] = values.astype(dtype)
        except (TypeError, ValueError) as err:
            raise CatalogError(f"{source}: column {hit}: {err}") from None
    pairs = [(by_upper[r], by_upper[d]) for r, d in DESI_POSITION_PAIRS if {r, d} <= set(by_upper)]
    if pairs:
        out["RA"], out["DEC"] = _position(
            columns, [p[0] for p in pairs], [p[1] for p in pairs], source
        )
    return out


def release_cuts(release: DesiRelease) -> list[Cut]:
    """The manifest's cuts in order, plus the DELTACHI2 threshold when it is set."""
    cuts = list(release.selection.cuts)
    if release.selection.deltachi2_min > 0:
        cuts.append(Cut("DELTACHI2", ">", release.selection.deltachi2_min))
    return cuts


def cut_mask(cat: Mapping[str, np.ndarray], cut: Cut) -> np.ndarray:
    """Rows that pass one cut (pure)."""
    values = np.asarray(cat[cut.column])
    if cut.op == "true":
        return values == 1
    if values.dtype.kind == "U":
        return _OPS[cut.op](np.char.upper(values), str(cut.value).upper())
    with np.errstate(invalid="ignore"):  # NaN compares false: cut
        return _OPS[cut.op](values, cut.value)


def first_failed_cut(cat: Mapping[str, np.ndarray], cuts: list[Cut]) -> np.ndarray:
    """For each row, the label of the first cut it fails ('' if it fails none). Cuts whose
    column the table lacks are not judged (what a FIBERMAP alone can say, e.g.)."""
    n = len(next(iter(cat.values())))
    reason = np.full(n, "", dtype=object)
    for cut in cuts:
        if cut.column not in cat:
            continue
        fail = ~cut_mask(cat, cut) & (reason == "")
        reason[fail] = cut.label
    return reason.astype(str)


class DesiSelector:
    """Apply a DESI release's cuts chunk by chunk, counting rows after each; dedupe at the end.

    Memory: only rows that pass every cut are kept (~100 bytes each), so a zall file of any
    length is filtered in memory bounded by the chunk plus the selection.
    """

    def __init__(self, release: DesiRelease, source: str = "catalogue"):
        self.cuts = release_cuts(release)
        self.source = source
        self.rows_in = 0
        self.chunks = 0
        self.after: dict[str, int] = {}
        self.notes: list[str] = []
        self._kept: list[Catalog] = []

    def add(self, columns: Mapping[str, object]) -> None:
        cat = contract_columns(columns, self.source)
        have = sorted(str(n) for n in columns)
        needed = {"TARGETID", "Z", "RA", "DEC"} | {c.column for c in self.cuts}
        missing = sorted(needed - set(cat) - {"SPECPRIMARY"})
        if missing:
            raise CatalogError(
                f"{self.source}: missing column(s) {', '.join(missing)} (DESI spellings: "
                f"etl.catalog.DESI_ALIASES); the table has: {', '.join(have) or 'none'}"
            )
        n = len(cat["TARGETID"])
        if "SPECPRIMARY" not in cat:
            cat["SPECPRIMARY"] = np.full(n, -1, dtype=np.int8)
            if NO_PRIMARY not in self.notes:
                self.notes.append(NO_PRIMARY)
        for name, dtype in DESI_COLUMNS.items():  # location and extras a source may lack
            if name not in cat:
                fill = {"str": "", "int64": -1, "float64": np.nan}[dtype]
                cat[name] = np.full(n, fill, dtype=str if dtype == "str" else dtype)
        self.chunks += 1
        self.rows_in += n
        keep = np.ones(n, dtype=bool)
        for cut in self.cuts:
            if cut.column == "SPECPRIMARY" and NO_PRIMARY in self.notes:
                passed = np.ones(n, dtype=bool)
            else:
                passed = cut_mask(cat, cut)
            keep &= passed
            self.after[cut.label] = self.after.get(cut.label, 0) + int(keep.sum())
        keep &= has_location(cat)
        self.after[LOCATION_STEP] = self.after.get(LOCATION_STEP, 0) + int(keep.sum())
        if keep.any():
            # text as ASCII bytes while kept (a quarter of numpy's 4-byte unicode): ~95 B a row
            self._kept.append({k: _ascii(np.asarray(cat[k])[keep]) for k in DESI_COLUMNS})

    def result(self) -> tuple[Catalog, dict]:
        """The selection sorted by (TARGETID, SURVEY, PROGRAM), duplicates dropped; summary."""
        if not self.chunks:
            raise CatalogError(f"{self.source}: no table (the source returned nothing)")
        if not self._kept:
            raise CatalogError(f"{self.source}: selects nothing: {self._emptied_by()}")
        cat = {}
        for k in DESI_COLUMNS:  # column by column, freeing the pieces: peak ~ selection + 1 column
            cat[k] = np.concatenate([c.pop(k) for c in self._kept])
        self._kept = []
        order = np.lexsort((cat["PROGRAM"], cat["SURVEY"], cat["TARGETID"]))
        cat = {k: v[order] for k, v in cat.items()}
        first = np.ones(len(cat["TARGETID"]), dtype=bool)
        same = np.ones(len(first) - 1 if len(first) else 0, dtype=bool)
        for name in ("TARGETID", "SURVEY", "PROGRAM"):  # sorted: a repeat follows its first
            same &= cat[name][1:] == cat[name][:-1]
        first[1:] = ~same
        cat = {k: v[first] for k, v in cat.items()}
        cat = {k: v.astype(str) if v.dtype.kind == "S" else v for k, v in cat.items()}
        steps = [{"step": "rows in", "rows": self.rows_in}]
        steps += [{"step": name, "rows": rows} for name, rows in self.after.items()]
        steps.append({"step": "unique (targetid, survey, program)", "rows": int(first.sum())})
        summary = {"source": self.source, "steps": steps, "selected": int(first.sum())}
        if self.notes:
            summary["notes"] = list(self.notes)
        return cat, summary

    def _emptied_by(self) -> str:
        return emptied_by(self.rows_in, self.after)


def _ascii(values: np.ndarray) -> np.ndarray:
    return np.char.encode(values, "ascii", "replace") if values.dtype.kind == "U" else values


def has_location(cat: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows that name a healpix coadd (survey, program and a pixel)."""
    return (
        (np.char.str_len(cat["SURVEY"].astype(str)) > 0)
        & (np.char.str_len(cat["PROGRAM"].astype(str)) > 0)
        & (np.asarray(cat["HEALPIX"]) >= 0)
    )


# --- sources -------------------------------------------------------------------------------------


def _hdu_names(path: Path) -> list[str]:
    from astropy.io import fits

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        names = []
        for i, hdu in enumerate(hdul):
            names.append(hdu.name.upper())
            if i >= 4:  # a zall file has one table; a redrock file four
                break
        return names


def iter_desi_table(
    path: str | Path, release: DesiRelease, chunk_rows: int = 100_000
) -> Iterator[dict[str, np.ndarray]]:
    """Column chunks of a local zall- or redrock-format FITS table.

    zall (one table HDU): streamed forward in chunks, decoding only the columns the alias table
    knows (bounded memory, any size). redrock (REDSHIFTS + FIBERMAP, one coadd's targets): the
    two tables joined row by row on TARGETID, plus SURVEY/PROGRAM/HPXPIXEL from the primary
    header where the file has them (a healpix redrock file does; a tile one does not).
    """
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: no such catalogue file")
    try:
        names = _hdu_names(path)
    except (OSError, ValueError) as err:
        raise CatalogError(f"{path}: not a readable FITS file ({err})") from None
    if "REDSHIFTS" in names:
        yield _redrock_columns(path, names)
        return
    import gzip

    from etl.fitsread import FitsError, iter_table_rows

    with open(path, "rb") as raw:
        opener = gzip.open if raw.read(2) == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as stream:
            yield from iter_table_rows(stream, 1, sorted(desi_source_names()), chunk_rows)
    except (FitsError, EOFError, gzip.BadGzipFile) as err:
        raise CatalogError(f"{path}: HDU1 is not a readable binary table ({err})") from None


def desi_source_names() -> set[str]:
    """Every source column worth reading for a DESI catalogue (upper case)."""
    names = {n for aliases in DESI_ALIASES.values() for n in aliases}
    return names | {n for pair in DESI_POSITION_PAIRS for n in pair}


def _redrock_columns(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    from astropy.io import fits
    from astropy.table import Table

    wanted = desi_source_names()
    out: dict[str, np.ndarray] = {}
    with fits.open(path, memmap=True) as hdul:
        z = Table(hdul["REDSHIFTS"].data)
        for n in z.colnames:
            if n.upper() in wanted:
                out[n.upper()] = np.asarray(z[n])
        if "FIBERMAP" in names:
            fm = Table(hdul["FIBERMAP"].data)
            ids = np.asarray(fm[_col(fm.colnames, "TARGETID")])
            zid = np.asarray(z[_col(z.colnames, "TARGETID")])
            if len(ids) != len(zid) or np.any(ids != zid):
                raise CatalogError(f"{path}: FIBERMAP rows do not match REDSHIFTS rows")
            for n in fm.colnames:
                if n.upper() in wanted and n.upper() not in out:
                    out[n.upper()] = np.asarray(fm[n])
        header = hdul[0].header
        for contract in LOCATION:  # one value for the whole file, from its primary header
            if any(a in out for a in DESI_ALIASES[contract]):
                continue
            alias = next((a for a in DESI_ALIASES[contract] if a in header), None)
            if alias is not None:
                out[alias] = np.full(len(z), header[alias])
    return out


def _col(colnames: list[str], contract: str) -> str:
    by_upper = {c.upper(): c for c in colnames}
    for alias in DESI_ALIASES[contract]:
        if alias in by_upper:
            return by_upper[alias]
    raise CatalogError(f"no {contract} column")
