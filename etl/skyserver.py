"""SkyServer SQL as a catalogue source: keyset-paged queries through astroquery, parsed exactly.

SkyServer's ``SpecObjAll`` serves SDSS-I–IV (plate/mjd/fiberID keys); a release whose manifest has
no ``catalog.sql_table`` (DR19, DR20) makes ``--catalog sql`` an error naming the alternatives.
The answer's columns are SkyServer's spellings, mapped by :data:`etl.catalog.SOURCE_ALIASES`.
"""

from __future__ import annotations

import logging

import numpy as np

from etl.catalog import SDSS_KEY, CatalogError
from etl.release import Selection
from etl.tables import parse_csv_column

log = logging.getLogger(__name__)

#: What we ask SkyServer's SpecObjAll for (its spellings; see SOURCE_ALIASES), and (upper-cased)
#: what a valid answer must contain. SkyServer serves SDSS-I–IV only (plate/mjd/fiberID keys).
SQL_SELECT = (
    "specObjID, plate, mjd, fiberID, ra, dec, run2d, class, z, zErr, zWarning, sciencePrimary"
)
_SQL_EXPECTED = ("SPECOBJID", "PLATE", "MJD", "FIBERID", "RA", "DEC", "RUN2D", "CLASS", "Z", "ZERR")


class SqlError(CatalogError):
    """SkyServer did not answer a catalogue query with a table of the expected columns."""


def sql_page_query(
    cuts: Selection, after: int | None, page_size: int, table: str = "SpecObjAll"
) -> str:
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
        f"SELECT TOP {int(page_size)} {SQL_SELECT} FROM {table} "
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
    cols = {name: parse_csv_column([r[i] for r in rows], name) for i, name in enumerate(header)}
    # SkyServer's bigint is signed: ids of plates >= 8192 come back negative. Keep the signed
    # value for paging, store the unsigned one (the bit pattern SDSS defines).
    signed = [int(v) for v in cols["SPECOBJID"].tolist()]
    cols["SPECOBJID"] = np.array([str(v % 2**64) for v in signed], dtype=str)
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

    table = release.catalog.sql_table
    if not table or tuple(release.key) != SDSS_KEY:
        raise CatalogError(
            f"{release.name}: SkyServer has no table with this release's object key "
            f"({', '.join(release.key)}) and the cuts' columns; use --catalog specobj (the bulk "
            "summary file) or --catalog PATH"
        )
    after: int | None = None
    page = 0
    while True:
        sql = sql_page_query(release.selection, after, page_size, table)
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
