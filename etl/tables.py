"""Reading catalogue tables: FITS (plain or gzip), CSV and ECSV, in chunks of bounded memory.

Each reader yields ``{source column name: array}`` chunks with the columns the catalogue
contract can use (:func:`etl.catalog.source_names`, the alias table's spellings) decoded and
every other column of the table named (value None), so a missing-column error can list what the
table has. Values are exact: ids stay text or unsigned 64-bit integers, never floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from etl.catalog import POSITION_PAIRS, SDSS_KEY, SOURCE_ALIASES, CatalogError, source_names


def _int(text: str) -> int:
    text = text.strip()
    try:
        return int(text) if text else 0
    except ValueError:
        value = float(text)  # "3.0" from a spreadsheet: accepted only if integral
        if not value.is_integer():
            raise
        return int(value)


# --- reading tables ------------------------------------------------------------------------------


def iter_fits_columns(
    path: str | Path, key: Sequence[str] = SDSS_KEY, chunk_rows: int = 100_000
) -> Iterator[dict[str, np.ndarray]]:
    """Yield ``{COLUMN: array}`` chunks of HDU1 of a FITS table (plain or ``.gz``).

    Reads the file forward in chunks of ``chunk_rows`` whole rows and decodes only the columns
    the contract can use (:func:`source_names`), so peak memory is O(chunk_rows × row width)
    whatever the file's length (5M rows for the real specObj; the gzip-compressed SDSS-V
    ``spAll-lite`` is decompressed on the fly, never to disk or to memory as a whole). The first
    chunk is yielded even for a table with no rows, so its columns are checked.
    """
    import gzip

    from etl.fitsread import FitsError, iter_table_rows

    path = Path(path)
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    try:
        with opener(path, "rb") as stream:
            yield from iter_table_rows(stream, 1, sorted(source_names(key)), chunk_rows)
    except (FitsError, EOFError, gzip.BadGzipFile) as err:
        raise CatalogError(f"{path}: HDU1 is not a readable binary table ({err})") from None


def iter_table_columns(path: str | Path, key: Sequence[str] = SDSS_KEY, chunk_rows: int = 100_000):
    """Yield column chunks from a local FITS (optionally .gz), CSV or ECSV table."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(f"{path}: no such catalogue file")
    suffix = "".join(path.suffixes[-2:]).lower()
    if suffix.endswith((".fits", ".fit", ".fits.gz", ".fit.gz")):
        yield from iter_fits_columns(path, key, chunk_rows=chunk_rows)
    elif suffix.endswith(".ecsv"):
        from astropy.table import Table

        table = Table.read(path, format="ascii.ecsv")
        yield {n: np.asarray(table[n]) for n in table.colnames}
    elif suffix.endswith(".csv"):
        yield from _iter_csv(path, key, chunk_rows)
    else:
        raise CatalogError(f"{path}: unknown table format (use .fits, .fits.gz, .csv or .ecsv)")


def _iter_csv(path: Path, key: Sequence[str], chunk_rows: int):
    # The csv module keeps every value a string, so long ids never pass through float.
    import csv

    try:
        yield from _read_csv(path, key, chunk_rows)
    except (UnicodeDecodeError, csv.Error) as err:  # a binary file (an image, a FITS) named .csv
        raise CatalogError(f"{path}: not a readable CSV table ({err})") from None


def _read_csv(path: Path, key: Sequence[str], chunk_rows: int):
    import csv

    wanted = source_names(key)
    with open(path, newline="", encoding="utf-8") as f:
        lines = (line for line in f if not line.startswith("#"))
        reader = csv.reader(lines)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise CatalogError(f"{path}: empty CSV (no header line)") from None
        keep = [(i, h) for i, h in enumerate(header) if h.upper() in wanted]
        first = True
        while True:
            rows = [r for _, r in zip(range(chunk_rows), reader, strict=False)]
            if not rows and not first:
                return
            first = False
            if any(len(r) != len(header) for r in rows):
                raise CatalogError(f"{path}: a row has not {len(header)} fields")
            cols: dict = dict.fromkeys(header)  # unread columns still name themselves in errors
            cols.update((h, parse_csv_column([r[i] for r in rows], h)) for i, h in keep)
            yield cols
            if not rows:
                return


def parse_csv_column(values: list[str], name: str) -> np.ndarray:
    """A CSV column: ids and strings stay text; numbers parsed exactly (ints never via float)."""
    upper = name.upper()
    if upper in SOURCE_ALIASES["SPECOBJID"] or upper in ("RUN2D", "CLASS"):
        return np.array(values, dtype=str)
    if upper in SOURCE_ALIASES["SPECPRIMARY"]:
        return np.array(values, dtype=str)  # 0/1 or True/False: _flag reads both
    try:
        if upper in {n for pair in POSITION_PAIRS for n in pair} | {"Z", "Z_ERR", "ZERR"}:
            return np.array([float(v) if v.strip() else np.nan for v in values], dtype=np.float64)
        return np.array([_int(v) for v in values], dtype=np.int64)
    except ValueError as err:
        raise CatalogError(f"column {name}: {err}") from None
