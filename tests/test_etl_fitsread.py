"""The fast FITS reader returns exactly what astropy returns, and fails loudly on bad files."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from reference_impl import read_spec_lite_astropy

from etl.catalog import read_catalog, write_catalog
from etl.fitsread import FitsError, FitsFile
from etl.spectrum import read_spec_lite


def test_every_bundled_file_equals_astropy(sample):
    for obj in sample:
        fast, ref = read_spec_lite(obj.path), read_spec_lite_astropy(obj.path)
        for name in ("loglam", "flux", "ivar", "and_mask"):
            a, b = getattr(fast, name), getattr(ref, name)
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), (obj.name, name)
        assert (fast.plate, fast.mjd, fast.fiberid) == (ref.plate, ref.mjd, ref.fiberid)
        assert (fast.plate, fast.mjd, fast.fiberid) == (obj.plate, obj.mjd, obj.fiberid)


def test_specobj_columns_of_every_kind_equal_astropy(sample):
    # HDU2 has ~200 columns of many TFORMs (strings, arrays, int16/32/64, floats)
    path = sample[0].path
    with fits.open(path) as hdul:
        ref = hdul[2].data
        names = ref.columns.names
        fast = FitsFile.read(path).table(2, names)
        for name in names:
            a, b = fast[name], ref[name]
            if b.dtype.kind in "SU":
                assert [str(x) for x in a] == [str(x).rstrip() for x in b], name
            else:
                assert np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True), name


def test_uint64_ids_survive_a_round_trip(tmp_path):
    ids = np.array([299489676975171584, 2**64 - 1, 1], dtype=np.uint64)
    cat = {
        "SPECOBJID": ids,
        "PLATE": np.array([266, 1, 2]),
        "MJD": np.array([51602, 1, 2]),
        "FIBERID": np.array([1, 2, 3]),
        "RUN2D": np.array(["26", "v5_13_0", "103"]),
        "CLASS": np.array(["GALAXY", "QSO", "STAR"]),
        "Z": np.array([0.1, 2.0, 0.0]),
        "Z_ERR": np.array([1e-5, -1.0, 2e-5]),
        "ZWARNING": np.array([0, 4, 0]),
        "RA": np.array([146.71421, 0.0, 359.9]),
        "DEC": np.array([-1.0413043, 90.0, -90.0]),
    }
    write_catalog(cat, tmp_path / "catalog.fits")
    assert np.array_equal(
        FitsFile.read(tmp_path / "catalog.fits").table(1, ["SPECOBJID"])["SPECOBJID"], ids
    )
    back = read_catalog(tmp_path / "catalog.fits")  # contract v2: exact decimal strings
    assert back["SPECOBJID"].tolist() == [str(i) for i in ids.tolist()]
    write_catalog(back, tmp_path / "again.fits")
    assert read_catalog(tmp_path / "again.fits")["SPECOBJID"].tolist() == back["SPECOBJID"].tolist()
    assert list(back["RUN2D"]) == ["26", "v5_13_0", "103"]


def test_truncated_file(sample, tmp_path):
    data = sample[0].path.read_bytes()
    path = tmp_path / "cut.fits"
    path.write_bytes(data[: 2880 * 8])
    with pytest.raises(FitsError, match="truncated"):
        FitsFile.read(path).table(1, ["flux"])


def test_not_a_fits_file(tmp_path):
    path = tmp_path / "page.fits"
    path.write_bytes(b"<html><body>Service unavailable</body></html>" * 100)
    with pytest.raises(FitsError, match="not a FITS file"):
        FitsFile.read(path)


def test_missing_hdu_and_column(sample, tmp_path):
    with fits.open(sample[0].path) as hdul:
        fits.HDUList([hdul[0].copy()]).writeto(tmp_path / "primary.fits")
    with pytest.raises(FitsError, match="HDU1 is missing"):
        FitsFile.read(tmp_path / "primary.fits").table(1, ["flux"])
    with pytest.raises(FitsError, match="lacks column"):
        FitsFile.read(sample[0].path).table(1, ["nonesuch"])
