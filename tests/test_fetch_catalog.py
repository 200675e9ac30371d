"""Catalogue sources and selection: local tables, SkyServer SQL (loopback), bulk specObj FITS."""

from __future__ import annotations

import csv
import re
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from astropy.table import Table
from fetch_support import FAST, SAMPLE_CATALOG, sample_rows

from etl.catalog import (
    CatalogError,
    Selector,
    SqlError,
    iter_fits_columns,
    parse_skyserver_csv,
    read_catalog,
    select,
)
from etl.fetch import build_catalog
from etl.mirror import ArchiveMirror

DATA = Path(__file__).parent / "data" / "fetch"


def _expected_ids(release) -> list[int]:
    """Selection computed directly from the CSV rows, independent of etl.catalog."""
    s = release.selection
    ids = {
        int(r["SPECOBJID"])
        for r in sample_rows()
        if r["CLASS"] == s.class_
        and s.z_min < float(r["Z"]) <= s.z_max
        and s.z_err_min < float(r["Z_ERR"]) < s.z_err_max
        and int(r["ZWARNING"]) == s.zwarning
        and (int(r["SCIENCEPRIMARY"]) == 1 or not s.science_primary)
    }
    return sorted(ids)


def _sample_table() -> Table:
    t = Table.read(SAMPLE_CATALOG, format="ascii.csv")
    t["SPECOBJID"] = np.array([int(r["SPECOBJID"]) for r in sample_rows()], dtype=np.uint64)
    return t


def test_local_csv_selection_and_summary(release, tmp_path):
    cat, summary = build_catalog(release, tmp_path, str(SAMPLE_CATALOG))
    assert cat["SPECOBJID"].dtype == np.uint64
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    steps = [s["rows"] for s in summary["steps"]]
    assert steps[0] == len(sample_rows()) and steps == sorted(steps, reverse=True)
    assert read_catalog(tmp_path / "dr16" / "catalog.fits")["SPECOBJID"].tolist() == _expected_ids(
        release
    )
    assert (tmp_path / "dr16" / "selection.json").is_file()


@pytest.mark.parametrize("fmt", ["fits", "ecsv"])
def test_local_fits_and_ecsv_any_case_and_duplicates(release, tmp_path, fmt):
    t = _sample_table()
    for name in t.colnames:
        t.rename_column(name, name.lower())
    from astropy.table import vstack

    t = vstack([t, t[:10]])  # duplicates of the same specobjid are dropped
    path = tmp_path / f"cat.{fmt}"
    t.write(path, format="fits" if fmt == "fits" else "ascii.ecsv")
    cat, summary = build_catalog(release, tmp_path, str(path))
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert summary["steps"][0]["rows"] == len(sample_rows()) + 10


def test_uint64_ids_above_2_63_survive_fits(release, tmp_path):
    t = _sample_table()[:3]
    big = np.array([2**63 + 5, 2**64 - 1, 12345], dtype=np.uint64)
    t["SPECOBJID"] = big
    t.write(tmp_path / "big.fits")
    (chunk,) = list(iter_fits_columns(tmp_path / "big.fits"))
    assert chunk["SPECOBJID"].dtype == np.uint64 and chunk["SPECOBJID"].tolist() == big.tolist()


def test_recorded_skyserver_answer_without_columns_is_an_error():
    # A real SkyServer answer (astroquery's test data): a valid table, but not a specObj one.
    with pytest.raises(SqlError, match="lacks column"):
        parse_skyserver_csv((DATA / "xid_sp.txt").read_text())
    with pytest.raises(SqlError, match="lacks column"):
        parse_skyserver_csv("<html><body>Server Error in '/' Application.</body></html>")


# --- SkyServer on loopback ---------------------------------------------------------------------

SKY_COLS = "specObjID,plate,mjd,fiberID,run2d,class,z,zErr,zWarning,sciencePrimary,ra,dec"


class FakeSkyServer:
    """Answers astroquery's SQL search with real rows (sample/catalog.csv), keyset-paged.

    Understands only ``TOP n`` and ``specObjID > x`` (the cuts in the WHERE clause are ignored,
    so the client-side cuts are what is tested). ``faults`` is a list consumed per request:
    "html" (error page, status 200), "slow" (answer after 2 s), "500".
    """

    def __init__(self, rows: list[dict[str, str]] | None = None):
        rows = list(rows or sample_rows())
        rows.sort(key=lambda r: int(r["SPECOBJID"]))
        self.rows = rows
        self.queries: list[str] = []
        self.faults: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                q = parse_qs(urlsplit(self.path).query)
                sql = q["cmd"][0]
                outer.queries.append(sql)
                fault = outer.faults.pop(0) if outer.faults else None
                if fault == "slow":
                    time.sleep(2.0)
                if fault == "500":
                    return self._send(500, b"oops")
                if fault == "html":
                    return self._send(200, b"<html><body>Query timed out</body></html>")
                top = int(re.search(r"TOP (\d+)", sql).group(1))
                after = re.search(r"specObjID > (-?\d+)", sql)
                lo = int(after.group(1)) if after else -(2**63)
                page = [r for r in outer.rows if int(r["SPECOBJID"]) > lo][:top]
                keys = (
                    "SPECOBJID,PLATE,MJD,FIBERID,RUN2D,CLASS,Z,Z_ERR,ZWARNING,SCIENCEPRIMARY,RA,DEC"
                )
                lines = ["#Table1", SKY_COLS]
                lines += [",".join(r[k] for k in keys.split(",")) for r in page]
                self._send(200, ("\n".join(lines) + "\n").encode())

            def _send(self, status, body):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def skyserver():
    with FakeSkyServer() as server:
        yield server


SQL_FAST = {"page_size": 10, "attempts": 3, "backoff": 0.05, "timeout": 0.5}


def _qso_rows() -> list[dict[str, str]]:
    """300 real SkyServer quasar rows (ids intact); missing columns filled to pass every cut
    but class and redshift (see tests/data/fetch/README.md)."""
    with open(DATA / "skyserver-qso-300.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        dict(SPECOBJID=r["specobjID"], PLATE=r["plate"], MJD=r["mjd"], FIBERID=r["fiberID"],
             RUN2D="26", CLASS="QSO", Z=r["z"], Z_ERR="1e-05", ZWARNING="0", SCIENCEPRIMARY="1",
             RA="0", DEC="0")
        for r in rows
    ]  # fmt: skip


def test_sql_paging_and_cuts_over_real_quasar_rows(release, tmp_path):
    qso = _qso_rows()
    assert len(qso) == 300 and len({r["SPECOBJID"] for r in qso}) == 300
    with FakeSkyServer(sample_rows() + qso) as server:
        options = SQL_FAST | {"page_size": 50}
        cat, summary = build_catalog(
            release, tmp_path, "sql", skyserver_url=server.url, sql_options=options
        )
        queries = server.queries
        ids = [int(r["SPECOBJID"]) for r in server.rows]
    n_rows = len(sample_rows()) + 300
    assert len(queries) == n_rows // 50 + 1  # sample + quasar rows in pages of 50, keyset-paged
    for q, last in zip(queries[1:], ids[49::50], strict=True):
        assert f"specObjID > {last} " in q and q.endswith("ORDER BY specObjID")
    steps = {s["step"]: s["rows"] for s in summary["steps"]}
    assert summary["steps"][0]["rows"] == n_rows
    # the quasars all fall to the class cut (and would to z: 2 < z < 3); galaxies are selected
    assert steps["class == GALAXY"] == sum(r["CLASS"] == "GALAXY" for r in sample_rows())
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert not {int(r["SPECOBJID"]) for r in qso} & set(cat["SPECOBJID"].tolist())
    assert all(float(r["Z"]) > release.selection.z_max for r in qso)


def test_sql_paging_and_cuts(release, tmp_path, skyserver):
    cat, summary = build_catalog(
        release, tmp_path, "sql", skyserver_url=skyserver.url, sql_options=SQL_FAST
    )
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert len(skyserver.queries) == len(sample_rows()) // 10 + 1  # pages of 10
    assert summary["steps"][0]["rows"] == len(sample_rows())
    first, second = skyserver.queries[:2]
    assert "specObjID >" not in first and "ORDER BY specObjID" in first
    assert f"specObjID > {skyserver.rows[9]['SPECOBJID']}" in second
    for clause in ("class = 'GALAXY'", "zWarning = 0", "sciencePrimary = 1", "zErr < 0.0001"):
        assert clause in first


def test_sql_html_error_page_500_and_timeout_are_retried(release, tmp_path, skyserver):
    skyserver.faults = ["html", None, "slow", None, "500"]
    cat, _ = build_catalog(
        release, tmp_path, "sql", skyserver_url=skyserver.url, sql_options=SQL_FAST
    )
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)


def test_sql_error_page_forever_fails_loudly(release, tmp_path, skyserver):
    skyserver.faults = ["html"] * 10
    with pytest.raises(SqlError, match="lacks column"):
        build_catalog(release, tmp_path, "sql", skyserver_url=skyserver.url, sql_options=SQL_FAST)
    assert not (tmp_path / "dr16" / "catalog.fits").exists()


# --- bulk specObj ------------------------------------------------------------------------------


def _specobj_fits(path: Path, copies: int = 1, extra_cols: int = 0) -> None:
    """A specObj-like table: the real rows (+ optional copies as STARs) and filler columns."""
    t = _sample_table()
    n = len(t) * copies
    cols = {name: np.resize(np.asarray(t[name]), n) for name in t.colnames}
    cols["SPECOBJID"] = cols["SPECOBJID"] + np.repeat(np.arange(copies, dtype=np.uint64), len(t))
    cls = cols["CLASS"].astype("U6")
    cls[len(t) :] = "STAR"  # copies fail the class cut: the selection stays small
    cols["CLASS"] = cls
    for i in range(extra_cols):
        cols[f"FILLER{i}"] = np.zeros(n)
    Table(cols).write(path, overwrite=True)


def test_specobj_bulk_download_resumes_and_selects(release, tmp_path):
    src = tmp_path / "specObj-dr16.fits"
    _specobj_fits(src, copies=3)
    with ArchiveMirror(None, release) as mirror:
        url = release.specobj_url(mirror.base_url)
        mirror.add_file(urlsplit(url).path.removeprefix("/sas"), src)
        data_dir = tmp_path / "DATA"
        part = data_dir / "dr16" / "specObj-dr16.fits.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(src.read_bytes()[:10000])  # an interrupted earlier download
        cat, summary = build_catalog(
            release, data_dir, "specobj", base_url=mirror.base_url, config=FAST
        )
    assert (data_dir / "dr16" / "specObj-dr16.fits").read_bytes() == src.read_bytes()
    assert not part.exists()
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert summary["steps"][0]["rows"] == len(sample_rows()) * 3


def _peak_bytes(path: Path, cuts) -> int:
    tracemalloc.start()
    try:
        sel = Selector(cuts)
        for chunk in iter_fits_columns(path, chunk_rows=5_000):
            sel.add(chunk)
        sel.result()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_specobj_filter_memory_does_not_grow_with_rows(release, tmp_path):
    small, large = tmp_path / "small.fits", tmp_path / "large.fits"
    _specobj_fits(small, copies=300, extra_cols=20)  # ~20k rows
    _specobj_fits(large, copies=3000, extra_cols=20)  # ~200k rows, ~40 MB
    peak_small = _peak_bytes(small, release.selection)
    peak_large = _peak_bytes(large, release.selection)
    assert large.stat().st_size > 9 * small.stat().st_size
    assert peak_large < 1.3 * peak_small + 1_000_000, (peak_small, peak_large)
    assert peak_large < 0.25 * large.stat().st_size


def test_select_in_memory_matches(release):
    rows = sample_rows()
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols = {k: np.array(v) for k, v in cols.items()}
    cols["SCIENCEPRIMARY"] = cols["SCIENCEPRIMARY"].astype(int)
    for k in ("Z", "Z_ERR"):
        cols[k] = cols[k].astype(float)
    cat, _ = select(cols, release.selection)
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert csv  # the module reads CSVs through fetch_support


def test_positions_from_plug_ra_dec_and_ra_dec_wins(release, tmp_path):
    # specObj spells the position PLUG_RA/PLUG_DEC (as in the real specObj rows); SkyServer ra/dec
    t = _sample_table()
    t.rename_columns(["RA", "DEC"], ["PLUG_RA", "PLUG_DEC"])
    t.write(tmp_path / "plug.fits")
    (chunk,) = list(iter_fits_columns(tmp_path / "plug.fits"))
    want = {int(r["SPECOBJID"]): (float(r["RA"]), float(r["DEC"])) for r in sample_rows()}
    got = dict(
        zip(chunk["SPECOBJID"].tolist(), zip(chunk["RA"], chunk["DEC"], strict=True), strict=True)
    )
    assert got == want
    t["RA"] = t["PLUG_RA"] + 1.0  # both spellings present: the contract's own name is used
    t.write(tmp_path / "both.fits")
    (chunk,) = list(iter_fits_columns(tmp_path / "both.fits"))
    assert np.allclose(chunk["RA"], np.asarray(t["PLUG_RA"]) + 1.0)
    cat, _ = build_catalog(release, tmp_path, str(tmp_path / "plug.fits"))
    assert cat["RA"].dtype == np.float64
    assert [want[i] for i in cat["SPECOBJID"].tolist()] == list(
        zip(cat["RA"], cat["DEC"], strict=True)
    )
    t.remove_columns(["RA", "PLUG_RA"])
    t.write(tmp_path / "nora.fits")
    with pytest.raises(CatalogError, match="missing column.*RA"):
        build_catalog(release, tmp_path, str(tmp_path / "nora.fits"))
