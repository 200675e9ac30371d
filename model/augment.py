"""Redshift augmentation: the same galaxy observed at another redshift (for the consistency loss)."""

from __future__ import annotations

import torch

from model.interp import interp1d

#: how a spectrum is moved to its new redshift (see `redshift_augment`)
AUGMENT_MODES = ("interpolate", "pixel-shift")


def redshift_augment(
    x: torch.Tensor,
    w: torch.Tensor,
    z: torch.Tensor,
    wave_obs: torch.Tensor,
    generator: torch.Generator | None = None,
    z_max: float = 0.5,
    mode: str = "interpolate",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each spectrum to a new redshift z_new ~ U[0, z_max] on the same observed grid.

    Pixel k of the new spectrum sees restframe λ_k/(1+z_new), which the original observed at
    λ_k·(1+z)/(1+z_new). `mode`:

    - "interpolate": flux and weights are linearly interpolated there. A shift by a fraction f
      of a pixel convolves the flux with the kernel (1 − f, f): lines broaden by up to half a
      pixel in quadrature (~35 km/s on SDSS's 69 km/s pixels) and the noise is smoothed while
      the weights are not raised to match.
    - "pixel-shift": on a log-uniform grid (SDSS's: Δlog10 λ = 1e-4) a redshift is a whole
      number of pixels when (1+z_new)/(1+z) is a power of the pixel ratio, so z_new is rounded
      to the nearest such value (steps of ~2.3e-4 in 1+z) and the spectrum is moved by that
      many pixels: every pixel keeps its own flux and weight, line widths and noise untouched.
      A grid that is not log-uniform raises ValueError (every release's shards are log-uniform:
      DESI's linear pixels are rebinned onto SDSS's 1e-4 dex lattice by the ETL).

    Weights are zeroed where that wavelength is outside the original coverage or touches a
    masked original pixel, so no pixel of the copy claims data the original did not have. Flux
    is not rescaled: the spectra are normalised, and the latents should not depend on distance.

    Args:
        x: (N, M) normalised flux on `wave_obs`.
        w: (N, M) inverse-variance weights (0 = masked).
        z: (N,) redshifts of the originals.
        wave_obs: (M,) observed grid, Å.
        generator: seeded generator for z_new (on the same device as `x`); None = global RNG.
        z_max: upper end of the new-redshift range.
        mode: "interpolate" or "pixel-shift" (AUGMENT_MODES).

    Returns:
        x_new (N, M), w_new (N, M), z_new (N,).
    """
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown augmentation {mode!r}; choose from {AUGMENT_MODES}")
    n = x.shape[0]
    z_new = torch.rand(n, generator=generator, device=x.device, dtype=torch.float32) * z_max
    if mode == "pixel-shift":
        return _pixel_shift(x, w, z, z_new, wave_obs)
    lam_src = wave_obs[None, :] * ((1 + z[:, None]) / (1 + z_new[:, None]))
    x_new = interp1d(lam_src, wave_obs, x)
    w_new = interp1d(lam_src, wave_obs, w)
    valid = interp1d(lam_src, wave_obs, (w > 0).to(w.dtype))
    w_new = torch.where(valid > 1 - 1e-4, w_new, torch.zeros_like(w_new))
    return x_new, w_new, z_new.to(z.dtype)


def log_pixel(wave_obs: torch.Tensor) -> float:
    """ln(λ_{k+1}/λ_k) of a log-uniform grid; ValueError when the grid is not log-uniform."""
    ln = torch.log(wave_obs.double())
    step = ln.diff()
    # a float32 grid's log steps scatter by ~1e-3 of a step; a linear grid's by a factor ~2.6
    if len(step) == 0 or float((step - step.mean()).abs().max()) > 1e-2 * float(step.mean()):
        raise ValueError("pixel-shift augmentation needs a log-uniform wavelength grid")
    return float((ln[-1] - ln[0]) / (len(ln) - 1))


def _pixel_shift(
    x: torch.Tensor, w: torch.Tensor, z: torch.Tensor, z_new: torch.Tensor, wave_obs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each spectrum by the whole number of pixels nearest to z → z_new (see above)."""
    dln = log_pixel(wave_obs)
    ln1z = torch.log1p(z.double())
    k = torch.round((torch.log1p(z_new.double()) - ln1z) / dln)
    k = torch.where(ln1z + k * dln < 0, k + 1, k)  # rounding must not make z_new negative
    z_exact = torch.expm1(ln1z + k * dln)
    m = x.shape[1]
    src = torch.arange(m, device=x.device)[None, :] - k.long()[:, None]  # new pixel j ← j − k
    inside = (src >= 0) & (src < m)
    src = src.clamp(0, m - 1)
    x_new = torch.where(inside, x.gather(1, src), torch.zeros_like(x))
    w_new = torch.where(inside, w.gather(1, src), torch.zeros_like(w))
    return x_new, w_new, z_exact.to(z.dtype)
