"""Redshift augmentation: the same galaxy observed at another redshift (for the consistency loss)."""

from __future__ import annotations

import torch

from model.interp import interp1d


def redshift_augment(
    x: torch.Tensor,
    w: torch.Tensor,
    z: torch.Tensor,
    wave_obs: torch.Tensor,
    generator: torch.Generator | None = None,
    z_max: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move each spectrum to a new redshift z_new ~ U[0, z_max] on the same observed grid.

    Pixel k of the new spectrum sees restframe λ_k/(1+z_new), which the original observed at
    λ_k·(1+z)/(1+z_new); flux and weights are linearly interpolated there. Weights are zeroed
    where that wavelength is outside the original coverage or touches a masked original pixel,
    so no pixel of the copy claims data the original did not have. Flux is not rescaled: the
    spectra are normalised, and the latents should not depend on distance.

    Args:
        x: (N, M) normalised flux on `wave_obs`.
        w: (N, M) inverse-variance weights (0 = masked).
        z: (N,) redshifts of the originals.
        wave_obs: (M,) observed grid, Å.
        generator: seeded generator for z_new (on the same device as `x`); None = global RNG.
        z_max: upper end of the new-redshift range.

    Returns:
        x_new (N, M), w_new (N, M), z_new (N,).
    """
    n = x.shape[0]
    z_new = torch.rand(n, generator=generator, device=x.device, dtype=torch.float32) * z_max
    lam_src = wave_obs[None, :] * ((1 + z[:, None]) / (1 + z_new[:, None]))
    x_new = interp1d(lam_src, wave_obs, x)
    w_new = interp1d(lam_src, wave_obs, w)
    valid = interp1d(lam_src, wave_obs, (w > 0).to(w.dtype))
    w_new = torch.where(valid > 1 - 1e-4, w_new, torch.zeros_like(w_new))
    return x_new, w_new, z_new.to(z.dtype)
