"""DESI preprocessing on the real coadds (sample/desi/), held against independent code:
``desispec.coaddition.coadd_cameras`` for the arm join (when desispec is installed) and a plain
numpy cumulative-integral rebin for the flux-conserving resample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from etl.desi.coadd import read_coadd
from etl.desi.preprocess import (
    DesiPreprocessor,
    join_arms,
    log_grid_edges,
    masked_ivar,
    pixel_edges,
    resample,
)
from etl.release import load_release

DESI = Path(__file__).resolve().parent.parent / "sample" / "desi"
SV3 = DESI / "coadd-sv3-dark-26065.fits"
ARMS = ("B", "R", "Z")


@pytest.fixture(scope="module")
def sv3():
    return read_coadd(SV3, ARMS)


def test_mask_zeroes_ivar_even_where_the_pipeline_left_it(sv3):
    _w, flux, ivar, mask = sv3.arms["R"]
    assert (mask != 0).sum() == 16  # the fixture's README: 16 R pixels flagged
    # the flagged pixels' ivar as the pipeline can leave it (> 0): the good row's own ivar
    # moved under the flags of every row
    positive = np.broadcast_to(ivar[4], ivar.shape) + 1.0
    out = masked_ivar(flux, positive, mask)
    assert np.all(out[mask != 0] == 0) and np.all(out[mask == 0] == positive[mask == 0])


def test_join_matches_desispec_coadd_cameras(sv3):
    coaddition = pytest.importorskip("desispec.coaddition")
    from desispec.io import read_spectra

    spectra = read_spectra(str(SV3))
    for b in spectra.bands:  # the same masking on both sides: IVAR = 0 where MASK != 0
        spectra.ivar[b] = np.where(spectra.mask[b] != 0, 0.0, spectra.ivar[b])
    theirs = coaddition.coadd_cameras(spectra)
    (band,) = theirs.bands
    arms = [sv3.arms[a] for a in ARMS]
    wave, flux, ivar = join_arms(
        [a[0] for a in arms], [a[1] for a in arms], [masked_ivar(a[1], a[2], a[3]) for a in arms]
    )
    assert len(wave) == 7781 and np.allclose(wave, theirs.wave[band], atol=1e-6)
    assert np.allclose(ivar, theirs.ivar[band], rtol=1e-6, atol=0)
    good = ivar > 0
    assert good.sum() > 15000
    assert np.allclose(flux[good], theirs.flux[band][good], rtol=1e-5, atol=1e-6)


def _cumulative_rebin(wave, flux, edges_out):
    """Independent flux-conserving rebin: the running integral of the piecewise-constant flux
    density, read at the output edges (exact for piecewise-constant input)."""
    e = pixel_edges(wave)
    integral = np.concatenate([[0.0], np.cumsum(flux * np.diff(e))])
    return np.diff(np.interp(edges_out, e, integral)) / np.diff(edges_out)


def test_resample_matches_a_plain_numpy_rebin_on_a_real_spectrum(sv3):
    arms = [sv3.arms[a] for a in ARMS]
    wave, flux, ivar = join_arms(
        [a[0] for a in arms],
        [a[1][4] for a in arms],
        [masked_ivar(a[1][4], a[2][4], a[3][4]) for a in arms],
    )
    grid = load_release("desi-edr").grid
    edges = log_grid_edges(grid.loglam0, grid.dloglam, grid.npix)
    ours, our_ivar = resample(wave, flux, ivar, edges)
    ref = _cumulative_rebin(wave, flux, edges)
    # bins whose every input pixel is good and inside the input range
    e_in = pixel_edges(wave)
    bad_in = np.flatnonzero(ivar <= 0)
    touched = np.zeros(len(ours), dtype=bool)
    for i in bad_in:
        touched[
            max(0, np.searchsorted(edges, e_in[i]) - 1) : np.searchsorted(edges, e_in[i + 1])
        ] = True
    inside = (edges[:-1] >= e_in[0]) & (edges[1:] <= e_in[-1])
    clean = inside & ~touched
    assert clean.sum() > 4000
    assert np.allclose(ours[clean], ref[clean], rtol=1e-9, atol=1e-9)
    # flux conserved over the whole clean range
    w = np.diff(edges)
    assert np.sum(ours[clean] * w[clean]) == pytest.approx(np.sum(ref[clean] * w[clean]), rel=1e-12)
    assert np.all(our_ivar[clean] > 0)


def test_resample_propagates_ivar():
    # eight pixels of width 1 with ivar 4, two per output bin: mean of two -> ivar 8
    wave = np.arange(8) + 0.5
    flux = np.arange(8, dtype=float)
    ivar = np.full(8, 4.0)
    f, iv = resample(wave, flux, ivar, np.array([0.0, 2.0, 4.0, 6.0, 8.0]))
    assert f.tolist() == [0.5, 2.5, 4.5, 6.5] and np.allclose(iv, 8.0)
    # a bin with one good pixel of two: that pixel's flux, its ivar; a bin with none: ivar 0
    ivar[[2, 6, 7]] = 0.0
    f, iv = resample(wave, flux, ivar, np.array([0.0, 2.0, 4.0, 6.0, 8.0]))
    assert f[1] == 3.0 and iv[1] == 4.0 and iv[3] == 0.0


def test_a_real_galaxy_through_the_whole_preprocessing():
    release = load_release("desi-dr1")
    pre = DesiPreprocessor(release)
    coadd = read_coadd(DESI / "coadd-special-dark-27247.fits", ARMS)
    flux, ivar = pre.to_grid(coadd.arm_rows(coadd.rows_of(np.array([39089837499744649]))))
    out = pre.finish(flux[0], ivar[0], 0.0072697, "39089837499744649")  # its redrock Z
    assert out.flux.shape == (release.grid.npix,) and np.isfinite(out.norm) and out.norm > 0
    assert (out.ivar > 0).sum() > 0.9 * release.grid.npix - 200  # sky lines masked, little else
    assert not np.any(np.isnan(out.flux))


def test_reading_some_targets_of_a_real_coadd_gives_exactly_their_rows(sv3):
    """A shard that needs a few targets of a coadd reads only their rows: the same values as
    the whole file's rows, in the coadd's own order; a target the coadd lacks is simply absent."""
    want = sv3.targetid[[4, 1]]  # asked out of order
    part = read_coadd(SV3, ARMS, targetids=np.array([*want, 7]))
    assert part.targetid.tolist() == sv3.targetid[[1, 4]].tolist()
    for arm in ARMS:
        whole, some = sv3.arms[arm], part.arms[arm]
        assert np.array_equal(some[0], whole[0])  # the wavelengths are the arm's, unchanged
        for a, b in zip(some[1:], whole[1:], strict=True):
            assert a.shape == (2, len(whole[0])) and np.array_equal(a, b[[1, 4]])
    none = read_coadd(SV3, ARMS, targetids=np.array([7]))
    assert len(none.targetid) == 0 and none.arms["B"][1].shape == (0, len(sv3.arms["B"][0]))
