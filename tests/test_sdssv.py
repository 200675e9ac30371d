"""SDSS-V (DR19/DR20): objects keyed by field/mjd/catalogid, 28-29-digit ids, gzip summary table.

Everything here runs on the three real SDSS-V quasar files bundled in ``sample/sdss-v/`` (DR20
archive layout) and on their real HDU 2 rows; ``tests/data/sdss-v/dr20-qso.toml`` is DR20's
manifest with cuts that select quasars.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import h5py
import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner
from real_tables import SAMPLE_SDSSV, sdssv_spall_table
from reference_impl import read_spec_lite_astropy

from cli import main
from etl.catalog import CatalogError
from etl.fetch import build_catalog
from etl.mirror import ArchiveMirror
from etl.release import load_release
from etl.spectrum import Preprocessor, read_spec_lite
from shardio import read_shard

TEST_MANIFEST = Path(__file__).parent / "data" / "sdss-v" / "dr20-qso.toml"
FILES = sorted(SAMPLE_SDSSV.rglob("spec-*.fits"))


def _hdu2() -> list[dict]:
    """Each bundled file's HDU 2 values (astropy), the independent truth of these tests."""
    out = []
    for path in FILES:
        with fits.open(path) as hdul:
            row = hdul[2].data[0]
            out.append({k: row[k] for k in ("FIELD", "MJD", "CATALOGID", "SPECOBJID", "RACAT",
                                              "DECCAT", "Z", "CLASS", "RUN2D")} | {"path": path})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def dr20qso():
    return load_release(TEST_MANIFEST)


def test_manifests_describe_the_documented_layouts():
    dr19, dr20 = load_release("dr19"), load_release("dr20")
    for r in (dr19, dr20):
        assert r.key == ("field", "mjd", "catalogid") and r.grid.npix == 4648
    row = _hdu2()[0]
    key = (int(row["FIELD"]), int(row["MJD"]), int(row["CATALOGID"]))
    sas = "https://data.sdss.org/sas"
    assert dr19.spec_lite_url("v6_1_3", *key) == (
        f"{sas}/dr19/spectro/boss/redux/v6_1_3/spectra/lite/015023/59232/"
        "spec-015023-59232-4555307714.fits"
    )
    assert dr20.spec_lite_url("v6_2_1", *key) == (
        f"{sas}/dr20/spectro/boss/redux/v6_2_1/spectra/daily/lite/015XXX/015023/59232/"
        "spec-015023-59232-4555307714.fits"
    )
    assert dr19.specobj_url() == f"{sas}/dr19/spectro/boss/redux/v6_1_3/spAll-lite-v6_1_3.fits.gz"
    # the bundled tree is in the DR20 layout: each file sits where the manifest says
    for r in _hdu2():
        rel = dr20.spec_lite_relpath(
            r["RUN2D"], int(r["FIELD"]), int(r["MJD"]), int(r["CATALOGID"])
        )
        assert SAMPLE_SDSSV / rel == r["path"]


def test_sdssv_grid_is_the_files_own_lattice(dr20qso):
    for path in FILES:
        raw = read_spec_lite(path, key=dr20qso.key)
        assert len(raw.loglam) == 4648
        k = (raw.loglam - dr20qso.grid.loglam0) / dr20qso.grid.dloglam
        assert np.allclose(k, np.arange(4648), atol=0.01)  # every pixel kept, none clipped


def test_upper_case_coadd_and_spall_key_read_like_astropy(dr20qso):
    for r in _hdu2():
        fast = read_spec_lite(r["path"], key=dr20qso.key)
        ref = read_spec_lite_astropy(r["path"], key=dr20qso.key)
        for name in ("loglam", "flux", "ivar", "and_mask"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(ref, name))
        assert fast.ids == ref.ids == {
            "field": int(r["FIELD"]), "mjd": int(r["MJD"]), "catalogid": int(r["CATALOGID"])
        }  # fmt: skip


def test_sql_is_refused_for_sdssv_with_the_reason(tmp_path):
    res = CliRunner().invoke(
        main, ["fetch", "--release", "dr19", "--data-dir", str(tmp_path), "--catalog", "sql"]
    )
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "SkyServer has no table" in res.output and "--catalog specobj" in res.output


def _gz(src: Path, dest: Path) -> Path:
    with open(src, "rb") as f, gzip.open(dest, "wb") as g:
        shutil.copyfileobj(f, g)
    return dest


def test_gzip_spall_lite_and_exact_ids(dr20qso, tmp_path):
    table = sdssv_spall_table().write(tmp_path / "spall.fits")
    gz = _gz(table, tmp_path / "spAll-lite-v6_2_1.fits.gz")
    cat, summary = build_catalog(dr20qso, tmp_path / "DATA", str(gz))
    want = sorted(_hdu2(), key=lambda r: int(r["SPECOBJID"]))
    assert cat["SPECOBJID"].tolist() == [r["SPECOBJID"].strip() for r in want]
    assert [len(i) for i in cat["SPECOBJID"]] == [len(r["SPECOBJID"].strip()) for r in want]
    assert cat["CATALOGID"].tolist() == [int(r["CATALOGID"]) for r in want]
    assert cat["RA"].tolist() == [float(r["RACAT"]) for r in want]  # RACAT wins over PLUG_RA
    assert summary["selected"] == 3


def test_fetch_then_build_shards_through_the_cli_on_the_dr20_layout(dr20qso, tmp_path):
    """The loopback mirror serves the real files in the DR20 layout and the real rows as the
    gzip-compressed summary at the manifest's URL; `specetl fetch --catalog specobj` then
    `specetl build-shards`: the shards carry each object's exact id and field/mjd/catalogid."""
    gz = _gz(sdssv_spall_table().write(tmp_path / "t.fits"), tmp_path / "spAll-lite.fits.gz")
    data = tmp_path / "DATA"
    runner = CliRunner()
    with ArchiveMirror(SAMPLE_SDSSV, dr20qso) as mirror:
        assert len(mirror.routes) == 3
        mirror.add_file(urlsplit(dr20qso.specobj_url(mirror.base_url)).path[4:], gz)
        res = runner.invoke(
            main,
            ["fetch", "--release", str(TEST_MANIFEST), "--data-dir", str(data), "--catalog",
             "specobj", "--base-url", mirror.base_url],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        assert sum(mirror.served.values()) == 4  # the summary and three spectra
    report = json.loads((data / "dr20-qso" / "fetch-report.json").read_text())
    assert report["downloaded"] == 3 and report["failed"] == 0
    res = runner.invoke(
        main,
        ["build-shards", "--release", str(TEST_MANIFEST), "--data-dir", str(data), "--workers",
         "1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    shards = data / "dr20-qso" / "shards"
    index = json.loads((shards / "index.json").read_text())
    assert index["object_key"] == ["field", "mjd", "catalogid"] and index["format_version"] == 2
    got = {}
    for e in index["shards"]:
        d = read_shard(shards / e["path"])
        assert json.loads(d["attrs"]["object_key"]) == ["field", "mjd", "catalogid"]
        assert d["flux"].shape[1] == 4648
        for i, sid in enumerate(d["specobjid"].tolist()):
            got[sid.decode("ascii")] = (
                int(d["field"][i]), int(d["mjd"][i]), int(d["catalogid"][i]), float(d["ra"][i])
            )  # fmt: skip
        with h5py.File(shards / e["path"]) as h5:
            assert h5["specobjid"].dtype.kind == "S" and h5["catalogid"].dtype == np.int64
    want = {
        r["SPECOBJID"].strip(): (int(r["FIELD"]), int(r["MJD"]), int(r["CATALOGID"]),
                                 float(r["RACAT"]))
        for r in _hdu2()
    }  # fmt: skip
    assert got == want  # every quasar, with its exact 28-29-digit id
    pre = Preprocessor(dr20qso)
    assert pre.telluric.shape == (4648,)


def test_missing_key_column_names_the_release_key(dr20qso, tmp_path):
    # an SDSS-I-IV specObj-style table (no CATALOGID/FIELD) given to an SDSS-V release
    from real_tables import specobj_table

    path = specobj_table().write(tmp_path / "specobj.fits")
    with pytest.raises(CatalogError, match=r"missing column\(s\) FIELD, CATALOGID; the table has"):
        build_catalog(dr20qso, tmp_path / "DATA", str(path))


def test_a_row_without_catalogue_position_takes_the_fibre_position(dr20qso, tmp_path):
    table = sdssv_spall_table()
    table.rows["RACAT"][0] = -999.0  # injected: an object without a catalogue position
    table.rows["DECCAT"][0] = -999.0
    path = table.write(tmp_path / "spall.fits")
    with fits.open(path) as hdul:
        d = hdul[1].data
        plug = dict(zip(d["SPECOBJID"].tolist(), d["PLUG_RA"].tolist(), strict=True))
        cat_ra = dict(zip(d["SPECOBJID"].tolist(), d["RACAT"].tolist(), strict=True))
    cat, _ = build_catalog(dr20qso, tmp_path / "DATA", str(path))
    for sid, ra in zip(cat["SPECOBJID"].tolist(), cat["RA"].tolist(), strict=True):
        want = plug[sid] if cat_ra[sid] == -999.0 else cat_ra[sid]
        assert ra == want
    assert -999.0 in cat_ra.values()
