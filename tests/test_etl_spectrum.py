"""Preprocessing on the bundled real spectra: grid placement, masks, normalisation, rejections."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from reference_impl import read_spec_lite_astropy

from etl.spectrum import (
    IVAR_FLOOR,
    Preprocessor,
    SpectrumRejected,
    read_spec_lite,
)
from etl.telluric import read_sky_lines, release_telluric_mask


@pytest.fixture(scope="module")
def prep(dr16):
    return Preprocessor(dr16)


def _by_name(sample, name):
    return next(o for o in sample if o.name == name)


def _independent_placement(path, wave_obs):
    """Match each file pixel to the grid pixel of nearest wavelength, by brute force, via astropy."""
    raw = read_spec_lite_astropy(path)
    wave_file = 10**raw.loglam
    flux = np.zeros(len(wave_obs))
    ivar = np.zeros(len(wave_obs))
    for j, w in enumerate(wave_file):
        k = int(np.argmin(np.abs(wave_obs - w)))
        # only a true match (well under half a pixel), i.e. inside the grid
        if abs(np.log10(wave_obs[k]) - raw.loglam[j]) < 0.1e-4:
            flux[k], ivar[k] = raw.flux[j], raw.ivar[j]
    return flux, ivar, raw


@pytest.mark.parametrize(
    "name",
    [
        "spec-0266-51602-0001.fits",  # SDSS legacy galaxy, starts inside the grid
        "spec-0412-52250-0129.fits",  # SDSS legacy galaxy
        "spec-4216-55477-0312.fits",  # BOSS (v5_13_2): runs past both ends of the grid
        "spec-3586-55181-0003.fits",  # BOSS (v5_11_0) galaxy
    ],
)
def test_grid_placement_matches_an_independent_computation(prep, sample, dr16, name):
    from etl.spectrum import place_on_grid

    obj = _by_name(sample, name)
    flux_ref, ivar_ref, raw = _independent_placement(obj.path, dr16.grid.wave_obs)
    flux, ivar, _ = place_on_grid(raw.loglam, raw.flux, raw.ivar, raw.and_mask, dr16.grid)
    assert np.array_equal(flux, flux_ref) and np.array_equal(ivar, ivar_ref)
    if obj.run2d.startswith("v5"):
        # BOSS overruns the SDSS grid: both ends were clipped, and every grid pixel is covered
        assert (
            10 ** raw.loglam[0] < dr16.grid.wave_obs[0]
            and 10 ** raw.loglam[-1] > dr16.grid.wave_obs[-1]
        )
        assert (ivar_ref != 0).sum() > 0.9 * dr16.grid.npix


def test_telluric_mask_is_453_pixels(dr16):
    mask = release_telluric_mask(dr16)
    assert mask.shape == (3921,) and mask.sum() == 453
    assert mask.mean() == pytest.approx(0.1155, abs=5e-5)
    # the brightest line inside the grid (OI 5578.9 Å... or brighter) is masked ±5 Å
    wave, inten = read_sky_lines(dr16.telluric.line_list, "nm")
    inside = (wave > dr16.grid.wave_obs[0]) & (wave < dr16.grid.wave_obs[-1])
    brightest = wave[inside][np.argmax(inten[inside])]
    near = np.abs(dr16.grid.wave_obs - brightest) <= 5.0
    assert mask[near].all()


def test_preprocessed_galaxy_properties(prep, sample, dr16):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")
    out = prep.preprocess_file(obj.path, obj.z, expect_id=(obj.plate, obj.mjd, obj.fiberid))
    assert out.flux.dtype == np.float32 and out.ivar.dtype == np.float32
    assert out.flux.shape == out.ivar.shape == (3921,)
    assert np.isfinite(out.flux).all() and np.isfinite(out.ivar).all()
    assert (out.ivar[release_telluric_mask(dr16)] == 0).all()
    # ivar is zero wherever the pipeline flagged a pixel
    raw = read_spec_lite(obj.path)
    from etl.spectrum import place_on_grid

    flux, ivar, and_mask = place_on_grid(raw.loglam, raw.flux, raw.ivar, raw.and_mask, dr16.grid)
    assert (out.ivar[(and_mask != 0) | (ivar <= IVAR_FLOOR)] == 0).all()
    # normalisation: the median of valid flux in restframe 5300-5850 Å is 1 afterwards
    rest = dr16.grid.wave_obs / (1 + obj.z)
    window = (rest >= 5300) & (rest <= 5850) & (out.ivar > 0)
    assert window.sum() > 50
    assert np.median(out.flux[window]) == pytest.approx(1.0, rel=1e-6)
    assert out.norm == pytest.approx(np.median(flux[window]), rel=1e-6)
    np.testing.assert_allclose(out.ivar[window], ivar[window] * out.norm**2, rtol=1e-6)


def test_every_accepted_galaxy_is_clean(prep, sample, dr16):
    accepted, rejected = 0, {}
    for obj in sample:
        if obj.cls != "GALAXY" or not 0 < obj.z <= 0.5:
            continue
        try:
            out = prep.preprocess_file(obj.path, obj.z)
        except SpectrumRejected as err:
            rejected[obj.name] = err.reason
            continue
        accepted += 1
        assert np.isfinite(out.flux).all() and (out.ivar >= 0).all() and out.norm > 0
    # real galaxies the ETL cannot use: BADFLAT (and_mask bit 2) on every pixel, and masked
    # normalisation windows (two of these also fail the z_err/zwarning cuts)
    assert rejected == {
        "spec-0431-51877-0640.fits": "empty mask",
        "spec-0432-51884-0138.fits": "no normalisation",
        "spec-1944-53385-0606.fits": "no normalisation",
        "spec-2342-53742-0288.fits": "no normalisation",
    }
    assert accepted == 112


def _reject(prep, path, z, expect=None):
    with pytest.raises(SpectrumRejected) as err:
        prep.preprocess_file(path, z, expect_id=expect)
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg  # one line naming the file
    return err.value


def test_real_z0_file_is_rejected(prep, sample):
    obj = _by_name(sample, "spec-0269-51581-0003.fits")  # z = 0, ZWARNING = 6: no data at all
    assert obj.z == 0.0
    err = _reject(prep, obj.path, obj.z)
    assert err.reason == "empty mask"


def _rewrite_coadd(src, dst, **changes):
    with fits.open(src) as hdul:
        data = hdul[1].data.copy()
        for column, fn in changes.items():
            data[column] = fn(data[column].copy(), 10 ** data["loglam"])
        hdus = [h.copy() for h in hdul]
        hdus[1] = fits.BinTableHDU(data, header=hdul[1].header, name="COADD")
        fits.HDUList(hdus).writeto(dst)
    return dst


def test_all_masked_normalisation_window(prep, sample, tmp_path):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")

    def flag_window(mask, wave):
        rest = wave / (1 + obj.z)
        mask[(rest >= 5290) & (rest <= 5860)] |= 1 << 23
        return mask

    path = _rewrite_coadd(obj.path, tmp_path / obj.name, and_mask=flag_window)
    err = _reject(prep, path, obj.z)
    assert err.reason == "no normalisation" and "5300-5850" in str(err)


def test_nan_injected_into_a_real_file(prep, sample, tmp_path):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")

    def some_nans(flux, wave):
        flux[100:140] = np.nan
        flux[3000] = np.inf  # outside the normalisation window
        return flux

    path = _rewrite_coadd(obj.path, tmp_path / obj.name, flux=some_nans)
    out = prep.preprocess_file(path, obj.z)
    assert np.isfinite(out.flux).all() and np.isfinite(out.ivar).all()
    clean = prep.preprocess_file(obj.path, obj.z)
    assert out.norm == clean.norm
    changed = np.flatnonzero(out.ivar != clean.ivar)
    assert (
        0 < len(changed) <= 41 and (out.ivar[changed] == 0).all() and (out.flux[changed] == 0).all()
    )

    # NaN over the whole normalisation window: nothing left to normalise by
    def nan_window(flux, wave):
        rest = wave / (1 + obj.z)
        flux[(rest >= 5290) & (rest <= 5860)] = np.nan
        return flux

    (tmp_path / "w").mkdir()
    path2 = _rewrite_coadd(obj.path, tmp_path / "w" / obj.name, flux=nan_window)
    assert _reject(prep, path2, obj.z).reason == "no normalisation"


def test_truncated_file(prep, sample, tmp_path):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")
    path = tmp_path / obj.name
    path.write_bytes(obj.path.read_bytes()[:60_000])
    err = _reject(prep, path, obj.z)
    assert err.reason == "unreadable" and "truncated" in str(err)


def test_file_without_hdu1(prep, sample, tmp_path):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")
    path = tmp_path / obj.name
    with fits.open(obj.path) as hdul:
        fits.HDUList([hdul[0].copy(), hdul[2].copy()]).writeto(path)
    err = _reject(prep, path, obj.z)
    assert err.reason == "unreadable" and "HDU1 lacks column(s) loglam" in str(err)


def test_missing_file_and_wrong_object(prep, sample, tmp_path):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")
    assert _reject(prep, tmp_path / obj.name, obj.z).reason == "not downloaded"
    err = _reject(prep, obj.path, obj.z, expect=(266, 51602, 108))
    assert err.reason == "id mismatch" and "(266, 51602, 107)" in str(err)


def test_misaligned_grid(prep, sample, tmp_path):
    obj = _by_name(sample, "spec-0266-51602-0107.fits")
    path = _rewrite_coadd(
        obj.path, tmp_path / obj.name, loglam=lambda ll, w: ll + np.float32(0.3e-4)
    )
    err = _reject(prep, path, obj.z)
    assert err.reason == "grid misaligned" and "0.30" in str(err) and "lattice" in str(err)


def test_astropy_and_fast_paths_give_identical_output(prep, sample):
    for obj in [o for o in sample if o.z > 0][:12]:
        a = prep.preprocess(read_spec_lite(obj.path), obj.z, obj.name)
        b = prep.preprocess(read_spec_lite_astropy(obj.path), obj.z, obj.name)
        assert (
            np.array_equal(a.flux, b.flux) and np.array_equal(a.ivar, b.ivar) and a.norm == b.norm
        )
