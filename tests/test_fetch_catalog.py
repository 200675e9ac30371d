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
from astropy.io import fits
from astropy.table import Table
from fetch_support import FAST, SAMPLE_CATALOG, sample_rows
from real_tables import expected_ids

from etl.catalog import Selector, read_catalog, select
from etl.fetch import build_catalog
from etl.mirror import ArchiveMirror
from etl.skyserver import SqlError, parse_skyserver_csv
from etl.tables import iter_fits_columns

DATA = Path(__file__).parent / "data" / "fetch"


def _expected_ids(release) -> list[str]:
    """Selection computed directly from the CSV rows (real HDU 2 values), independent of
    etl.catalog; exact decimal ids in numeric order."""
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
    return [str(i) for i in sorted(ids)]


def _sample_table() -> Table:
    t = Table.read(SAMPLE_CATALOG, format="ascii.csv")
    t["SPECOBJID"] = np.array([int(r["SPECOBJID"]) for r in sample_rows()], dtype=np.uint64)
    return t


def test_local_csv_selection_and_summary(release, tmp_path):
    cat, summary = build_catalog(release, tmp_path, str(SAMPLE_CATALOG))
    assert cat["SPECOBJID"].dtype.kind == "U"  # contract v2: exact decimal strings
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert cat["RA"].dtype == np.float64 and cat["PLATE"].dtype == np.int64
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

SKY_COLS = "specObjID,plate,mjd,fiberID,ra,dec,run2d,class,z,zErr,zWarning,sciencePrimary"


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
                    "SPECOBJID,PLATE,MJD,FIBERID,RA,DEC,RUN2D,CLASS,Z,Z_ERR,ZWARNING,SCIENCEPRIMARY"
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
    but class and redshift, position 0/0 (see tests/data/fetch/README.md)."""
    with open(DATA / "skyserver-qso-300.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        dict(SPECOBJID=r["specobjID"], PLATE=r["plate"], MJD=r["mjd"], FIBERID=r["fiberID"],
             RA="0.0", DEC="0.0", RUN2D="26", CLASS="QSO", Z=r["z"], Z_ERR="1e-05", ZWARNING="0",
             SCIENCEPRIMARY="1")
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
    assert not {r["SPECOBJID"] for r in qso} & set(cat["SPECOBJID"].tolist())
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


# --- bulk specObj / spAll made of real rows ------------------------------------------------------


def test_real_row_tables_keep_the_archive_formats(tmp_path):
    from real_tables import SAMPLE_SDSS, spall_table, specobj_table

    so = fits.open(specobj_table().write(tmp_path / "so.fits"))[1]
    sa = fits.open(spall_table().write(tmp_path / "sa.fits"))[1]
    first = sorted((SAMPLE_SDSS / "103").rglob("spec-*.fits"))[0]  # rows in run2d, path order
    with fits.open(first) as one:
        assert [(c.name, c.format) for c in so.columns] == [
            (c.name, c.format) for c in one[2].columns
        ]
        for name in so.columns.names:  # the first row is that file's HDU 2 row, value for value
            assert str(so.data[name][0]) == str(one[2].data[name][0]), name
    assert so.name == "SPECOBJ" and len(so.columns) == 126 and len(so.data) == 135
    assert so.columns["SPECOBJID"].format == "22A" and so.columns["SPECPRIMARY"].format == "B"
    assert "SCIENCEPRIMARY" not in so.columns.names  # the bulk file's name is SPECPRIMARY
    assert sa.name == "SPALL" and sa.columns["SPECOBJID"].bzero == 2**63
    assert int(np.max(sa.data["SPECOBJID"])) > 2**63  # plates >= 8192


def test_specobj_bulk_download_resumes_and_selects(release, tmp_path):
    """The real-format specObj file served at the manifest's bulk URL under --base-url."""
    from real_tables import specobj_table

    src = specobj_table().write(tmp_path / "specObj-dr16.fits")
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
    expected = expected_ids(src, release.selection)
    assert len(expected) > 50 and cat["SPECOBJID"].tolist() == expected
    assert summary["steps"][0]["rows"] == 135
    rows = {r["SPECOBJID"]: r for r in sample_rows()}  # RA/DEC there = HDU 2's PLUG_RA/PLUG_DEC
    want_ra = [float(rows[i]["RA"]) for i in cat["SPECOBJID"].tolist()]
    assert np.allclose(cat["RA"], want_ra, rtol=0, atol=1e-6)


def _qso_release(base, tmp_path):
    """``base``'s manifest selecting quasars instead of galaxies (same file, one value changed)."""
    from etl.release import load_release

    text = base.manifest_path.read_text().replace('class = "GALAXY"', 'class = "QSO"')
    lines = base.manifest_path.parent / "lines"
    path = tmp_path / f"{base.name}-qso.toml"
    path.write_text(text.replace('line_list = "lines/', f'line_list = "{lines}/'))
    return load_release(path)


@pytest.mark.parametrize("signed", [False, True], ids=["tzero-uint64", "signed-int64"])
def test_spall_ids_above_2_63_survive(dr17, tmp_path, signed):
    from real_tables import spall_table

    path = spall_table(signed_ids=signed).write(tmp_path / "spAll.fits")
    with fits.open(path) as hdul:
        assert (np.asarray(hdul[1].data["SPECOBJID"]).astype(float) < 0).any() == signed
    release = _qso_release(dr17, tmp_path)
    cat, _ = build_catalog(release, tmp_path / "DATA", str(path))
    expected = expected_ids(path, release.selection)
    assert cat["SPECOBJID"].tolist() == expected
    assert any(int(i) > 2**63 for i in expected)


@pytest.mark.parametrize("fmt", ["specobj", "spall"])
def test_each_real_format_as_a_local_catalog(release, tmp_path, fmt):
    from real_tables import spall_table, specobj_table

    table = specobj_table() if fmt == "specobj" else spall_table(signed_ids=True)
    path = table.write(tmp_path / f"{fmt}.fits")
    cat, _ = build_catalog(release, tmp_path / "DATA", str(path))
    expected = expected_ids(path, release.selection)
    assert expected and cat["SPECOBJID"].tolist() == expected


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
@pytest.mark.parametrize("gz", [False, True], ids=["fits", "fits.gz"])
def test_specobj_filter_memory_does_not_grow_with_rows(release, tmp_path, gz):
    import gzip
    import shutil

    from real_tables import repeat_rows, specobj_table

    table = specobj_table()
    small = repeat_rows(table, 150).write(tmp_path / "small.fits")  # ~20k rows
    large = repeat_rows(table, 1500).write(tmp_path / "large.fits")  # ~200k rows, ~250 MB
    if gz:
        for p in (small, large):
            with open(p, "rb") as src, gzip.open(f"{p}.gz", "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
            p.unlink()
        small, large = Path(f"{small}.gz"), Path(f"{large}.gz")
    peak_small = _peak_bytes(small, release.selection)
    peak_large = _peak_bytes(large, release.selection)
    assert peak_large < 1.3 * peak_small + 1_000_000, (peak_small, peak_large)
    assert peak_large < 30_000_000


def test_select_in_memory_matches(release):
    rows = sample_rows()
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    cols = {k: np.array(v) for k, v in cols.items()}
    cols["SCIENCEPRIMARY"] = cols["SCIENCEPRIMARY"].astype(int)
    for k in ("Z", "Z_ERR", "RA", "DEC"):
        cols[k] = cols[k].astype(float)
    cat, _ = select(cols, release.selection)
    assert cat["SPECOBJID"].tolist() == _expected_ids(release)
    assert csv  # the module reads CSVs through fetch_support
