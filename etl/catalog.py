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
RA          float64   right ascension of the object, degrees (PLUG_RA in specObj)
DEC         float64   declination of the object, degrees (PLUG_DEC in specObj)
=========== ========= ===========================================

RA/DEC place the object on the sky: the train/valid/test split is keyed on them
(:mod:`etl.splits`), so every source must provide them.

In memory a catalogue is a ``dict[str, np.ndarray]`` with those upper-case keys: a few dozen
bytes per object, so even a 5M-object release fits comfortably (spectra never do).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from etl.release import Selection

log = logging.getLogger(__name__)

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
    "RA": "float64",
    "DEC": "float64",
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


# --- selection ---------------------------------------------------------------------------------

#: Upper-cased source column names that mean a contract column (SkyServer spells zErr, ...).
#: An alias is used only when the source lacks the contract name itself (specObj has PLUG_RA).
_ALIASES = {"ZERR": "Z_ERR", "SPECOBJ_ID": "SPECOBJID", "PLUG_RA": "RA", "PLUG_DEC": "DEC"}
#: The columns a source must provide: the contract plus the science-primary flag.
SOURCE_COLUMNS = (*CATALOG_COLUMNS, "SCIENCEPRIMARY")


def _canonical(names: list[str]) -> dict[str, str]:
    """Source column name -> contract name, for the names that mean a contract column.

    A contract name present in the source wins over any alias of it (RA over PLUG_RA).
    """
    upper = {str(n): str(n).upper() for n in names}
    present = set(upper.values())
    out = {}
    for name, up in upper.items():
        canon = _ALIASES.get(up, up)
        if canon != up and canon in present:
            continue  # the source has the contract column itself
        out[name] = canon
    return out


def _upper(columns: Mapping[str, object]) -> dict[str, np.ndarray]:
    return {canon: columns[name] for name, canon in _canonical(list(columns)).items()}


class Selector:
    """Apply a release's cuts chunk by chunk, counting rows after each cut; dedupe at the end.

    Memory: only the rows that pass every cut are kept (a few dozen bytes each), so a source of
    any length is filtered in memory bounded by the chunk size plus the selection itself.
    """

    def __init__(self, cuts: Selection, source: str = "catalogue"):
        self.cuts = cuts
        self.source = source
        self.rows_in = 0
        self.after: dict[str, int] = {}
        self._kept: list[Catalog] = []

    def add(self, columns: Mapping[str, object]) -> None:
        """Add one chunk: a mapping of column name (any case) -> array."""
        cols = _upper(columns)
        cat = as_catalog(cols, self.source)
        if "SCIENCEPRIMARY" in cols:
            cat["SCIENCEPRIMARY"] = np.asarray(cols["SCIENCEPRIMARY"]).astype(np.int64) != 0
        n = len(cat["SPECOBJID"])
        self.rows_in += n
        keep = np.ones(n, dtype=bool)
        for name, mask in selection_masks(cat, self.cuts).items():
            keep &= mask
            self.after[name] = self.after.get(name, 0) + int(keep.sum())
        self._kept.append({k: cat[k][keep] for k in CATALOG_COLUMNS})

    def result(self) -> tuple[Catalog, dict]:
        """The selected catalogue (sorted by SPECOBJID, duplicates dropped) and its summary."""
        if self._kept:
            cat = {k: np.concatenate([c[k] for c in self._kept]) for k in CATALOG_COLUMNS}
        else:
            cat = as_catalog({k: np.zeros(0, dtype=object) for k in CATALOG_COLUMNS}, self.source)
            cat = {k: v.astype(_empty_dtype(k)) for k, v in cat.items()}
        _, first = np.unique(cat["SPECOBJID"], return_index=True)
        cat = {k: v[first] for k, v in cat.items()}  # np.unique sorts: output ordered by id
        steps = [{"step": "rows in", "rows": self.rows_in}]
        steps += [{"step": name, "rows": rows} for name, rows in self.after.items()]
        steps.append({"step": "unique specobjid", "rows": len(first)})
        return cat, {"source": self.source, "steps": steps, "selected": len(first)}


def _empty_dtype(name: str) -> str:
    kind = CATALOG_COLUMNS[name]
    return "U1" if kind == "str" else kind


def select(columns: Mapping[str, object], cuts: Selection, source: str = "catalogue"):
    """Select from one in-memory table; returns ``(catalog, summary)``."""
    sel = Selector(cuts, source)
    sel.add(columns)
    return sel.result()


def iter_fits_columns(
    path: str | Path, columns: tuple[str, ...] = SOURCE_COLUMNS, chunk_rows: int = 100_000
):
    """Yield ``{COLUMN: array}`` chunks of HDU1 of a FITS table, reading only ``columns``.

    The table is memory-mapped as a NumPy record array (no astropy FITS_rec conversion of whole
    columns), and each chunk copies just the wanted fields of ``chunk_rows`` rows, so peak memory
    is O(chunk_rows × wanted columns) whatever the file's length (5M rows × ~200 columns for the
    real specObj). Columns are matched case-insensitively; missing optional ones are skipped.
    """
    from astropy.io import fits

    path = Path(path)
    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
            raise CatalogError(f"{path}: HDU1 is not a binary table")
        hdu = hdul[1]
        cols = hdu.columns
        nrows = int(hdu.header["NAXIS2"])
        offset = int(hdu.fileinfo()["datLoc"])
        raw_dtype = cols.dtype.newbyteorder(">")
        by_name = {c.name: c for c in cols}
        wanted = [
            (canon, by_name[n])
            for n, canon in _canonical(list(by_name)).items()
            if canon in columns
        ]
    if nrows == 0:
        return
    table = np.memmap(path, dtype=raw_dtype, mode="r", offset=offset, shape=(nrows,))
    try:
        for start in range(0, nrows, chunk_rows):
            rows = table[start : start + chunk_rows]
            out: dict[str, np.ndarray] = {}
            for name, col in wanted:
                values = np.array(rows[col.name])  # copy: detaches the chunk from the map
                if col.bzero not in (None, "", 0) or col.bscale not in (None, "", 1):
                    values = _unscale(values, col)
                out[name] = values
            yield out
    finally:
        del table


def _unscale(values: np.ndarray, col: object) -> np.ndarray:
    """Apply TZERO/TSCAL. Unsigned integers are stored signed + TZERO = 2**(bits-1) (uint64 ids)."""
    bzero, bscale = col.bzero or 0, col.bscale or 1  # type: ignore[attr-defined]
    native = values.astype(values.dtype.newbyteorder("="))
    if native.dtype.kind == "i" and bscale == 1 and bzero == 2 ** (8 * native.dtype.itemsize - 1):
        unsigned = np.dtype(f"u{native.dtype.itemsize}")
        # x + 2**(bits-1) modulo 2**bits is x XOR the sign bit: exact, no float round trip.
        return native.view(unsigned) ^ unsigned.type(bzero)
    return native * bscale + bzero


def iter_table_columns(path: str | Path, chunk_rows: int = 100_000):
    """Yield column chunks from a local FITS, CSV or ECSV table (column names any case)."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: no such catalogue file")
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".fits", ".fit", ".fits.gz")):
        yield from iter_fits_columns(path, chunk_rows=chunk_rows)
    elif suffix.endswith(".ecsv"):
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv")
        yield {n: np.asarray(table[n]) for n in table.colnames}
    elif suffix.endswith(".csv"):
        yield from _iter_csv(path, chunk_rows)
    else:
        raise CatalogError(f"{path}: unknown table format (use .fits, .csv or .ecsv)")


def _iter_csv(path: Path, chunk_rows: int):
    # The csv module keeps every value a string, so 19-digit specObjIDs never pass through float.
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        reader = csv.reader(lines)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise CatalogError(f"{path}: empty CSV") from None
        canon = _canonical(header)
        keep = [(i, canon[h]) for i, h in enumerate(header) if canon.get(h) in SOURCE_COLUMNS]
        while True:
            rows = [r for _, r in zip(range(chunk_rows), reader, strict=False)]
            if not rows:
                return
            yield {name: _parse_csv_column([r[i] for r in rows], name) for i, name in keep}


def _parse_csv_column(values: list[str], name: str) -> np.ndarray:
    kind = CATALOG_COLUMNS.get(name, "int64")
    if kind == "str" or name == "SPECOBJID":
        return np.array(values, dtype=str)
    try:
        if kind.startswith("float"):
            return np.array([float(v) if v.strip() else np.nan for v in values])
        return np.array([int(float(v)) if v.strip() else 0 for v in values], dtype=np.int64)
    except ValueError as err:
        raise CatalogError(f"column {name}: {err}") from None


# --- SkyServer SQL -----------------------------------------------------------------------------

#: What we ask SkyServer for, and (upper-cased) what a valid answer must contain.
SQL_SELECT = (
    "specObjID, plate, mjd, fiberID, run2d, class, z, zErr, zWarning, sciencePrimary, ra, dec"
)
_SQL_EXPECTED = (
    *("SPECOBJID", "PLATE", "MJD", "FIBERID", "RUN2D", "CLASS", "Z", "ZERR", "ZWARNING"),
    *("RA", "DEC"),
)


class SqlError(CatalogError):
    """SkyServer did not answer a catalogue query with a table of the expected columns."""


def sql_page_query(cuts: Selection, after: int | None, page_size: int) -> str:
    """One keyset page: ids above ``after`` in id order, with the cuts pushed to the server.

    The cuts are applied again client-side (same code for every source); pushing them to the
    server only saves transfer. ``after`` is SkyServer's *signed* bigint specObjID.
    """
    where = [
        f"class = '{cuts.class_}'",
        f"z > {cuts.z_min!r}",
        f"z <= {cuts.z_max!r}",
        f"zErr > {cuts.z_err_min!r}",
        f"zErr < {cuts.z_err_max!r}",
        f"zWarning = {int(cuts.zwarning)}",
    ]
    if cuts.science_primary:
        where.append("sciencePrimary = 1")
    if after is not None:
        where.insert(0, f"specObjID > {int(after)}")
    return (
        f"SELECT TOP {int(page_size)} {SQL_SELECT} FROM SpecObjAll "
        f"WHERE {' AND '.join(where)} ORDER BY specObjID"
    )


def parse_skyserver_csv(text: str) -> tuple[dict[str, np.ndarray], int | None]:
    """Parse SkyServer's CSV answer; return (columns, largest signed specObjID or None).

    Raises :class:`SqlError` when the answer lacks the expected columns: SkyServer reports
    errors as HTML pages (status 200), which a lenient parser would turn into a one-column table.
    """
    import csv

    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    header = [h.strip().upper() for h in next(csv.reader(lines[:1]), [])]
    missing = [c for c in _SQL_EXPECTED if c not in header]
    if missing:
        first = (lines[0] if lines else "<empty>")[:80]
        raise SqlError(
            f"SkyServer answer lacks column(s) {', '.join(missing)}; it starts {first!r}"
        )
    rows = list(csv.reader(lines[1:]))
    if any(len(r) != len(header) for r in rows):
        raise SqlError("SkyServer answer has rows of the wrong width (truncated?)")
    cols = {
        name: _parse_csv_column([r[i] for r in rows], _ALIASES.get(name, name))
        for i, name in enumerate(header)
    }
    # SkyServer's bigint is signed: ids of plates >= 8192 come back negative. Keep the signed
    # value for paging, store the unsigned one (the bit pattern SDSS defines).
    signed = [int(v) for v in cols["SPECOBJID"].tolist()]
    cols["SPECOBJID"] = np.array([v % 2**64 for v in signed], dtype=np.uint64)
    return cols, (max(signed) if signed else None)


def iter_sql_pages(
    release,
    page_size: int = 200_000,
    attempts: int = 5,
    backoff: float = 5.0,
    timeout: float = 600.0,
    skyserver_url: str | None = None,
):
    """Yield column chunks of the release's spectra from SkyServer, one keyset page at a time.

    Uses astroquery's client (``SDSS.query_sql_async`` with the manifest's ``data_release``) and
    parses the CSV ourselves so that 64-bit ids never pass through a float. Each page is retried
    with exponential backoff on timeouts, HTTP errors and error pages. ``page_size`` stays below
    SkyServer's ~500k row cap. ``skyserver_url`` replaces ``https://skyserver.sdss.org``.
    """
    import contextlib
    import random
    import time

    import requests
    from astroquery.sdss import SDSS, conf

    after: int | None = None
    page = 0
    while True:
        sql = sql_page_query(release.selection, after, page_size)
        for attempt in range(1, attempts + 1):
            try:
                ctx = (
                    conf.set_temp("skyserver_baseurl", skyserver_url.rstrip("/"))
                    if skyserver_url
                    else contextlib.nullcontext()
                )
                with ctx:
                    resp = SDSS.query_sql_async(
                        sql, data_release=release.catalog.data_release, timeout=timeout, cache=False
                    )
                resp.raise_for_status()
                cols, last = parse_skyserver_csv(resp.text)
                break
            except (requests.RequestException, SqlError) as err:
                if attempt == attempts:
                    raise SqlError(
                        f"SkyServer page {page + 1} failed {attempts} times: {err}"
                    ) from None
                delay = backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
                log.warning("SkyServer page %d: %s; retrying in %.1f s", page + 1, err, delay)
                time.sleep(delay)
        page += 1
        n = len(cols["SPECOBJID"])
        log.info("SkyServer page %d: %d rows", page, n)
        if n:
            yield cols
        if n < page_size or last is None:
            return
        after = last
