"""Pure science for DESI coadds: mask, join the three arms, resample onto the training grid.

1. :func:`masked_ivar` — the pipeline can leave IVAR > 0 where MASK != 0: zero it there (and
   where flux or ivar is not finite), so a flagged pixel never carries weight.
2. :func:`join_arms` — b, r and z sit on one linear lattice (3600 + 0.8 k Å, vacuum) and overlap
   at 5760–5800 and 7520–7620 Å; each overlap pixel is the inverse-variance weighted mean of the
   arms, its ivar their sum (as ``desispec.coaddition.coadd_cameras`` does).
3. :func:`resample` — flux-conserving rebin onto any set of output bin edges (the training grid's
   1e-4 dex pixels): each output pixel is the mean flux density over the parts of input pixels
   that fall in it, weighted by the overlap length, good (ivar > 0) pixels only; its variance is
   Σ w² σ² / (Σ w)². A bin less than half covered by good pixels gets ivar 0.

:class:`DesiPreprocessor` binds a release's grid, sky-line mask and normalisation window and
chains these with :func:`etl.spectrum.apply_masks` and :func:`etl.spectrum.normalise`, the SDSS
steps (docs/shard-format.md says why they apply to DESI as they are).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from etl.spectrum import Preprocessed, mask_and_normalise
from etl.telluric import release_telluric_mask

#: rows preprocessed together (the float64 temporaries of 256 rows are ~100 MB)
ROWS_AT_ONCE = 256
#: a bin needs this fraction of its width covered by good input pixels to keep its ivar
MIN_COVERAGE = 0.5


def masked_ivar(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """ivar with 0 wherever MASK != 0, ivar < 0, or flux/ivar not finite (float64)."""
    ivar = np.asarray(ivar, dtype=np.float64)
    bad = (np.asarray(mask) != 0) | ~np.isfinite(ivar) | ~np.isfinite(flux)
    with np.errstate(invalid="ignore"):
        bad |= ivar < 0
    return np.where(bad, 0.0, ivar)


def join_arms(
    waves: Sequence[np.ndarray],
    fluxes: Sequence[np.ndarray],
    ivars: Sequence[np.ndarray],
    tolerance: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join camera arms sharing one linear lattice; overlaps combined by inverse variance.

    ``fluxes``/``ivars``: per arm, (nspec, n_arm) or (n_arm,). Returns (wave, flux, ivar) on the
    union lattice. ValueError when the arms are not on one lattice (within ``tolerance`` Å).
    """
    step = float(np.median(np.diff(waves[0])))
    start = min(float(w[0]) for w in waves)
    stop = max(float(w[-1]) for w in waves)
    n = int(round((stop - start) / step)) + 1
    wave = start + step * np.arange(n)
    shape = np.atleast_2d(fluxes[0]).shape[:-1]
    num = np.zeros((*shape, n))
    den = np.zeros((*shape, n))
    single = np.zeros((*shape, n))  # flux of pixels no arm weighs (kept, ivar 0)
    for w, f, iv in zip(waves, fluxes, ivars, strict=True):
        idx = np.rint((np.asarray(w, dtype=np.float64) - start) / step).astype(np.int64)
        if np.any(np.abs(wave[idx] - w) > tolerance):
            raise ValueError("camera arms are not on one wavelength lattice")
        f = np.atleast_2d(np.asarray(f, dtype=np.float64))
        iv = np.atleast_2d(np.asarray(iv, dtype=np.float64))
        num[..., idx] += iv * np.where(iv > 0, f, 0.0)
        den[..., idx] += iv
        single[..., idx] = np.where(np.isfinite(f), f, 0.0)
    flux = np.where(den > 0, num / np.where(den > 0, den, 1.0), single)
    if np.ndim(fluxes[0]) == 1:
        return wave, flux[0], den[0]
    return wave, flux, den


def pixel_edges(centers: np.ndarray) -> np.ndarray:
    """Edges of pixels given their centres: midpoints, the ends extended by half a pixel."""
    c = np.asarray(centers, dtype=np.float64)
    mid = 0.5 * (c[1:] + c[:-1])
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def log_grid_edges(loglam0: float, dloglam: float, npix: int) -> np.ndarray:
    """Edges (Å) of the pixels of a log-linear grid (centre k at 10**(loglam0 + dloglam k))."""
    return 10.0 ** (loglam0 + dloglam * (np.arange(npix + 1) - 0.5))


def resample_plan(wave_in: np.ndarray, edges_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which input pixels overlap each output bin, and by how much (Å): ``(index, length)``,
    both (m, K) with K the most input pixels any bin overlaps (unused slots have length 0).
    Depends on the grids only, so one plan serves every spectrum on them."""
    e_in = pixel_edges(wave_in)
    e_out = np.asarray(edges_out, dtype=np.float64)
    m = len(e_out) - 1
    lo, hi = max(e_in[0], e_out[0]), min(e_in[-1], e_out[-1])
    if hi <= lo:
        return np.zeros((m, 1), dtype=np.int64), np.zeros((m, 1))
    # every breakpoint of either set: each segment lies in one input and one output pixel
    cuts = np.concatenate([e_in, e_out])
    cuts = np.unique(cuts[(cuts >= lo) & (cuts <= hi)])
    seg = np.diff(cuts)
    mid = 0.5 * (cuts[1:] + cuts[:-1])
    i = np.searchsorted(e_in, mid, side="right") - 1
    k = np.searchsorted(e_out, mid, side="right") - 1
    keep = seg > 0
    seg, i, k = seg[keep], i[keep], k[keep]
    bins, starts, counts = np.unique(k, return_index=True, return_counts=True)  # k is sorted
    slot = np.arange(len(k)) - np.repeat(starts, counts)
    index = np.zeros((m, int(counts.max())), dtype=np.int64)
    length = np.zeros((m, int(counts.max())))
    index[k, slot], length[k, slot] = i, seg
    return index, length


def resample(
    wave_in: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    edges_out: np.ndarray,
    plan: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Flux-conserving resample of (nspec, n) or (n,) spectra onto bins ``edges_out`` (Å).

    Output flux density = Σ w f / Σ w over good input pixels (w: the length of the input pixel
    inside the output bin); output ivar = (Σ w)² / Σ w² σ², and 0 where good pixels cover less
    than :data:`MIN_COVERAGE` of the bin or none at all. Bins outside the input range are 0, 0.
    ``plan``: :func:`resample_plan` of these grids, if already computed.
    """
    one = np.ndim(flux) == 1
    f = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    iv = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    index, length = plan if plan is not None else resample_plan(wave_in, edges_out)
    good = iv > 0
    var = np.where(good, 1.0 / np.where(good, iv, 1.0), 0.0)
    fg = np.where(good, f, 0.0)
    m = index.shape[0]
    sw = np.zeros((f.shape[0], m))
    swf = np.zeros_like(sw)
    sw2v = np.zeros_like(sw)
    for slot in range(index.shape[1]):  # K <= 4 here: a handful of whole-array passes
        at, w = index[:, slot], length[:, slot]
        ww = good[:, at] * w
        sw += ww
        swf += ww * fg[:, at]
        sw2v += ww * w * var[:, at]
    width = np.diff(np.asarray(edges_out, dtype=np.float64))
    ok = (sw >= MIN_COVERAGE * width) & (sw2v > 0)
    out_f = np.where(sw > 0, swf / np.where(sw > 0, sw, 1.0), 0.0)
    out_iv = np.where(ok, sw * sw / np.where(ok, sw2v, 1.0), 0.0)
    return (out_f[0], out_iv[0]) if one else (out_f, out_iv)


class DesiPreprocessor:
    """A DESI release's preprocessing: arms -> training grid -> sky mask -> normalise."""

    def __init__(self, release):
        self.grid = release.grid
        self.wave_obs = release.grid.wave_obs
        self.edges = log_grid_edges(self.grid.loglam0, self.grid.dloglam, self.grid.npix)
        self.telluric = release_telluric_mask(release)
        n = release.normalisation
        self.window = (n.restframe_min, n.restframe_max)
        self._plans: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def to_grid(
        self, arms: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(wave, flux, ivar, mask) per arm, (nspec, n) each -> (flux, ivar) on the grid
        (float32), :data:`ROWS_AT_ONCE` rows at a time so memory stays bounded per coadd."""
        nspec = np.atleast_2d(arms[0][1]).shape[0]
        flux_out = np.zeros((nspec, self.grid.npix), dtype=np.float32)
        ivar_out = np.zeros_like(flux_out)
        waves = [a[0] for a in arms]
        for lo in range(0, nspec, ROWS_AT_ONCE):
            part = slice(lo, lo + ROWS_AT_ONCE)
            fluxes = [np.asarray(np.atleast_2d(a[1])[part], dtype=np.float64) for a in arms]
            ivars = [
                masked_ivar(np.atleast_2d(a[1])[part], np.atleast_2d(a[2])[part],
                            np.atleast_2d(a[3])[part])
                for a in arms
            ]  # fmt: skip
            wave, flux, ivar = join_arms(waves, fluxes, ivars)
            key = (len(wave), float(wave[0]), float(wave[-1]))
            if key not in self._plans:  # one plan per input lattice (DESI has one)
                self._plans[key] = resample_plan(wave, self.edges)
            flux_out[part], ivar_out[part] = resample(
                wave, np.nan_to_num(flux), ivar, self.edges, self._plans[key]
            )
        return flux_out, ivar_out

    def finish(self, flux: np.ndarray, ivar: np.ndarray, z: float, obj: str) -> Preprocessed:
        """Sky-line mask and normalisation of one gridded spectrum (the SDSS steps)."""
        no_mask = np.zeros(len(flux), dtype=np.int32)  # MASK was applied per arm already
        return mask_and_normalise(
            flux, ivar, no_mask, self.telluric, self.wave_obs, z, self.window, obj
        )
