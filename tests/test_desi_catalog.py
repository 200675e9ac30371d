"""DESI manifests and catalogue selection on the real DESI fixtures (sample/desi/).

Every row the fixtures' README calls bad (negative TARGETID, SKY fibre, bad COADD_FIBERSTATUS,
ZWARN != 0, Z < 0) must be cut, and by the cut that names its problem.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from etl.catalog import CatalogError
from etl.desi.catalog import (
    LOCATION_STEP,
    DesiSelector,
    contract_columns,
    first_failed_cut,
    iter_desi_table,
    release_cuts,
)
from etl.release import ManifestError, load_release

DESI = Path(__file__).resolve().parent.parent / "sample" / "desi"

TID = "TARGETID > 0"
OBJ = "OBJTYPE == 'TGT'"
STATUS = "FIBERSTATUS == 0"


@pytest.fixture(scope="module")
def dr1():
    return load_release("desi-dr1")


def test_manifests_name_the_desi_layout(dr1):
    edr = load_release("desi-edr")
    assert edr.archive.specprod == "fuji" and dr1.archive.specprod == "iron"
    assert dr1.key == ("targetid", "survey", "program")
    assert dr1.coadd_url("special", "dark", 27247) == (
        "https://data.desi.lbl.gov/public/dr1/spectro/redux/iron/healpix/"
        "special/dark/272/27247/coadd-special-dark-27247.fits"
    )
    assert edr.coadd_url("sv3", "dark", 26065, base_url="http://m/") == (
        "http://m/edr/spectro/redux/fuji/healpix/sv3/dark/260/26065/coadd-sv3-dark-26065.fits"
    )
    assert edr.sha256sum_url("sv3", "dark", 26065).endswith(
        "sv3/dark/260/26065/redux_fuji_healpix_sv3_dark_260_26065.sha256sum"
    )
    assert dr1.zall_url().endswith("/dr1/spectro/redux/iron/zcatalog/v1/zall-pix-iron.fits")
    # the HDUs training reads, and only those: no *_RESOLUTION, EXP_FIBERMAP, SCORES
    assert len(dr1.coadd.hdus) == 1 + 3 * 4 and not any("RESOLUTION" in h for h in dr1.coadd.hdus)
    # same [splits] as SDSS: an object observed by both lands in one split
    assert dr1.splits == load_release("dr16").splits
    with pytest.raises(ValueError, match="invalid survey"):
        dr1.coadd_relpath("../x", "dark", 1)


def test_a_bad_cut_in_a_manifest_is_named(tmp_path):
    text = (load_release("desi-edr").manifest_path).read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('op = ">", value = 0.0', 'op = "~", value = 0.0'))
    with pytest.raises(ManifestError, match=r"selection.cuts\[6\]: op '~'"):
        load_release(bad)


def _fibermap(name: str) -> dict:
    t = Table.read(DESI / name, hdu="FIBERMAP")
    return {n: np.asarray(t[n]) for n in t.colnames}


@pytest.mark.parametrize(
    "name, reasons",
    [
        # 2 negative TARGETID (OBJTYPE '', status 1, 1033), 1 SKY (status 520), 2 good targets
        ("coadd-sv3-dark-26065.fits", [TID, TID, "", OBJ, ""]),
        # negative TARGETIDs; a TGT with status 512; a good TGT
        ("coadd-5-169-thru20210419.fits", [TID, STATUS, TID, TID, ""]),
        ("coadd-special-dark-27247.fits", [""]),
    ],
)
def test_every_bad_fibermap_row_is_cut_for_its_reason(dr1, name, reasons):
    cat = contract_columns(_fibermap(name), name)
    assert first_failed_cut(cat, release_cuts(dr1)).tolist() == reasons


def test_redrock_rows_are_cut_for_their_reason(dr1):
    (chunk,) = iter_desi_table(DESI / "redrock-test.fits", dr1)
    cat = contract_columns(chunk)
    # a SKY fibre (also ZWARN 1); a galaxy at z 0.157; a "galaxy" at z = -1.1e-4
    assert first_failed_cut(cat, release_cuts(dr1)).tolist() == [OBJ, "", "Z > 0.0"]
    assert cat["ZWARNING"].tolist() == [1, 0, 0]  # the ZWARN cut alone would cut the sky row too
    sel = DesiSelector(dr1, "redrock-test.fits")
    sel.add(chunk)
    # the good galaxy is from a tile-based table: no healpix coadd holds it, said as such
    with pytest.raises(CatalogError, match=r"'has a healpix coadd .*' removed the last 1 of 3"):
        sel.result()


def test_healpix_redrock_selects_its_target_exactly(dr1):
    sel = DesiSelector(dr1, "redrock")
    for chunk in iter_desi_table(DESI / "redrock-special-dark-27247.fits", dr1):
        sel.add(chunk)
    cat, summary = sel.result()
    assert cat["TARGETID"].tolist() == [39089837499744649]
    assert (cat["SURVEY"][0], cat["PROGRAM"][0], int(cat["HEALPIX"][0])) == (
        "special",
        "dark",
        27247,
    )
    assert cat["Z"][0] == pytest.approx(0.0072697, abs=1e-7)
    assert summary["steps"][-2] == {"step": LOCATION_STEP, "rows": 1}
    assert "no primary flag" in summary["notes"][0]


def test_deltachi2_threshold_is_an_option(dr1):
    strict = dataclasses.replace(
        dr1, selection=dataclasses.replace(dr1.selection, deltachi2_min=1000.0)
    )
    sel = DesiSelector(strict, "redrock")
    for chunk in iter_desi_table(DESI / "redrock-special-dark-27247.fits", strict):
        sel.add(chunk)  # DELTACHI2 724.5
    with pytest.raises(CatalogError, match="DELTACHI2 > 1000.0' removed the last 1"):
        sel.result()


def _zall_from_real_rows(path: Path) -> Path:
    """A zall-format table (one HDU, DESI's column names) of the real redrock rows: REDSHIFTS
    and FIBERMAP columns side by side, SURVEY/PROGRAM/HEALPIX from the header where the file
    has them (empty / -1 where it does not)."""
    rows = []
    for name in (
        "redrock-test.fits",
        "redrock-special-dark-27247.fits",
        "redrock-4-80613-thru20210324.fits",
    ):
        with fits.open(DESI / name) as h:
            z, fm, hdr = Table(h["REDSHIFTS"].data), Table(h["FIBERMAP"].data), h[0].header
            t = Table()
            for col in ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE", "DELTACHI2"):
                t[col] = z[col]
            for col in ("OBJTYPE", "COADD_FIBERSTATUS", "TARGET_RA", "TARGET_DEC"):
                t[col] = fm[col]
            t["SURVEY"] = [hdr.get("SURVEY", "")] * len(t)
            t["PROGRAM"] = [hdr.get("PROGRAM", "")] * len(t)
            t["HEALPIX"] = np.full(len(t), hdr.get("HPXPIXEL", -1), dtype=np.int32)
            rows.append(t)
    from astropy.table import vstack

    out = vstack(rows)
    out.meta["EXTNAME"] = "ZCATALOG"
    out.write(path)
    return path


def test_zall_format_table_streams_in_chunks(dr1, tmp_path):
    zall = _zall_from_real_rows(tmp_path / "zall-pix-test.fits")
    chunks = list(iter_desi_table(zall, dr1, chunk_rows=2))
    assert len(chunks) == 3  # 5 rows, 2 at a time: streamed, not read whole
    sel = DesiSelector(dr1, zall.name)
    for c in chunks:
        sel.add(c)
    cat, summary = sel.result()
    assert cat["TARGETID"].tolist() == [39089837499744649]
    after = {s["step"]: s["rows"] for s in summary["steps"]}
    assert after[OBJ] == 4 and after["Z > 0.0"] == 3 and after[LOCATION_STEP] == 1


def test_a_table_without_a_cut_column_is_one_error(dr1, tmp_path):
    t = Table({"TARGETID": [1], "Z": [0.1]})
    t.write(tmp_path / "thin.fits")
    sel = DesiSelector(dr1, "thin.fits")
    with pytest.raises(CatalogError, match=r"thin.fits: missing column\(s\) CLASS, DEC"):
        for c in iter_desi_table(tmp_path / "thin.fits", dr1):
            sel.add(c)
