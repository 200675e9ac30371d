"""`workflows.spectra.preprocess_spectra`: spec-lite files outside the shards, ids by the release's key.

The ids, z and positions come from each real file's HDU 2 through etl.catalog's alias table, so
SDSS-V files (field/mjd/catalogid, 28-29-digit SPECOBJID) work exactly like SDSS-I–IV ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from etl.release import load_release
from workflows.spectra import preprocess_spectra

SAMPLE = Path(__file__).resolve().parent.parent / "sample"


def test_sdss_v_files_keep_their_exact_ids_and_key():
    files = sorted((SAMPLE / "sdss-v").rglob("spec-*.fits"))
    assert len(files) == 3
    rows, errors = preprocess_spectra(files, load_release("dr20"))
    assert errors == [] and len(rows) == 3
    for path, row in zip(files, rows, strict=True):
        with fits.open(path) as h:
            hdu2 = h[2].data[0]
            assert row["specobjid"] == str(hdu2["SPECOBJID"]).strip()
            assert len(row["specobjid"]) >= 28  # does not fit 64 bits
            assert (row["field"], row["mjd"], row["catalogid"]) == (
                int(hdu2["FIELD"]),
                int(hdu2["MJD"]),
                int(hdu2["CATALOGID"]),
            )
            assert row["z"] == np.float32(hdu2["Z"])
        assert row["flux"].shape == (4648,) and np.isfinite(row["flux"]).all()


def test_sdss_files_by_plate_mjd_fiber_and_a_catalogue_that_lacks_one(tmp_path):
    files = sorted((SAMPLE / "sdss" / "26" / "0266").glob("spec-*.fits"))[:3]
    rows, errors = preprocess_spectra(files, load_release("dr16"))
    assert not errors and [r["fiberid"] for r in rows] == [
        int(f.stem.split("-")[-1]) for f in files
    ]
    # a catalogue (real rows of sample/catalog.csv) without the first file's row
    lines = (SAMPLE / "catalog.csv").read_text().splitlines(keepends=True)
    first = files[0].stem.split("-")
    drop = f",{int(first[1])},{int(first[2])},{int(first[3])},"
    (tmp_path / "cat.csv").write_text("".join(ln for ln in lines if drop not in ln))
    rows, errors = preprocess_spectra(files, load_release("dr16"), tmp_path / "cat.csv")
    assert len(rows) == 2 and len(errors) == 1 and "not in catalogue" in errors[0]
