"""The paper's three losses, public and reusable with any autoencoder.

Conventions: N spectra per batch, M observed pixels, M' restframe pixels, S latent dimensions.
Fluxes are normalised (dimensionless, see the shard format); weights are inverse variances of
those normalised fluxes (0 = masked).

Restframe weights w' (used by `similarity_loss`) come from `restframe_weights`: the observed
inverse variances evaluated at the observed wavelength λ_rest·(1+z) of each restframe pixel, by
linear interpolation on the observed grid, and set to 0 where that wavelength is outside the
observed grid or next to a masked observed pixel. So w' says how well the *data* pin down the
model at each restframe wavelength, in the same units as the observed weights.
"""

from __future__ import annotations

import torch

from model.interp import interp1d


def _shape_error(loss: str, expected: str, **tensors: torch.Tensor) -> ValueError:
    """One line naming the loss, what it expects and the shapes it got."""
    got = ", ".join(f"{name} {tuple(t.shape)}" for name, t in tensors.items())
    return ValueError(f"{loss}: expected {expected}; got {got}")


def _weights_2d(
    loss: str, x: torch.Tensor, w: torch.Tensor, names: tuple[str, str]
) -> torch.Tensor:
    """``w`` as an (N, M) view: per-spectrum weights (N, M) as they are, one weight vector (M,)
    shared by every spectrum broadcast to (N, M) (a view: no copy). Raises ValueError otherwise."""
    xn, wn = names
    if x.ndim != 2:
        raise _shape_error(loss, f"{xn} of shape (N, M)", **{xn: x})
    if w.shape == x.shape:
        return w
    if w.ndim == 1 and w.shape[0] == x.shape[1]:
        return w.expand_as(x)
    raise _shape_error(loss, f"{wn} of shape (N, M) like {xn}, or (M,)", **{xn: x, wn: w})


def fidelity_loss(x: torch.Tensor, x_model: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """L_fid = 1/(2NM) Σ_i Σ_k w_ik (x_ik − x''_ik)².

    Args:
        x: (N, M) observed normalised flux.
        x_model: (N, M) the model on the observed grid (x'').
        w: (N, M) inverse-variance weights of `x` (0 = masked), or (M,) shared by all spectra.

    Returns:
        scalar tensor: half the mean weighted squared residual (≈ χ²/2 per pixel).

    Raises:
        ValueError: shapes that do not match (naming them).
    """
    if x_model.shape != x.shape:
        raise _shape_error("fidelity_loss", "x_model of the shape of x", x=x, x_model=x_model)
    w = _weights_2d("fidelity_loss", x, w, ("x", "w"))
    return (w * (x - x_model) ** 2).sum() / (2 * x.numel())


def _pairwise_weighted_sqdist(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """D_ij = Σ_k ω_ijk (x_ik − x_jk)² with ω_ijk = √(w_ik w_jk), via Gram matrices.

    Expanding the square, with r = √w:
        D_ij = (r_i·x_i²)·r_j + r_i·(r_j·x_j²) − 2 (r_i x_i)·(r_j x_j)
    i.e. three (N, M')×(M', N) matmuls: O(N·M' + N²) memory instead of the O(N²·M') of
    broadcasting `x[:, None] - x[None]`.
    """
    r = w.clamp(min=0).sqrt()
    rx = r * x
    rxx = rx * x
    d = rxx @ r.T + r @ rxx.T - 2 * (rx @ rx.T)
    # cancellation can leave tiny negatives where the true distance is ~0
    return d.clamp(min=0)


def similarity_loss(
    s: torch.Tensor, x_rest: torch.Tensor, w_rest: torch.Tensor, k0: float, k1: float
) -> torch.Tensor:
    """L_sim = 1/N² Σ_ij [sigmoid(k1 S_ij − k0) + sigmoid(−k1 S_ij − k0)],
    S_ij = ½|s_i − s_j|² − (1/M') Σ_k ω_ijk (x'_ik − x'_jk)².

    The spectral distance uses the pairwise weight ω_ijk = √(w'_ik w'_jk) (our reading of the
    paper's |w'⊙(x'_i − x'_j)|²): a pixel counts only where *both* spectra were observed, and
    the distance is a χ²-like mean over restframe pixels. It is computed through Gram matrices,
    never an N×N×M' tensor. The sum includes i = j (S_ii = 0), so the minimum is 2·sigmoid(−k0).

    Args:
        s: (N, S) latents.
        x_rest: (N, M') restframe model spectra x'.
        w_rest: (N, M') restframe weights w' (see `restframe_weights`), or (M',): one weight
            vector shared by every spectrum.
        k0: offset (the paper uses 2.5).
        k1: sharpness; annealed upward during training (k1 = 0 gives a constant loss).

    Returns:
        scalar tensor.

    Raises:
        ValueError: shapes that do not match (naming them).
    """
    # a shared (M',) weight becomes an (N, M') view, so the Gram form below sees rows of w'
    w_rest = _weights_2d("similarity_loss", x_rest, w_rest, ("x_rest", "w_rest"))
    if s.ndim != 2 or s.shape[0] != x_rest.shape[0]:
        raise _shape_error(
            "similarity_loss", "s of shape (N, S) with N the rows of x_rest", s=s, x_rest=x_rest
        )
    n, m_rest = x_rest.shape
    s = s.float()
    # S is tiny (2 by default), so broadcasting over latents is cheap and exact
    s_d = 0.5 * ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1)
    x_d = _pairwise_weighted_sqdist(x_rest.float(), w_rest.float()) / m_rest
    big_s = s_d - x_d
    return (torch.sigmoid(k1 * big_s - k0) + torch.sigmoid(-k1 * big_s - k0)).sum() / n**2


def consistency_loss(s: torch.Tensor, s_aug: torch.Tensor, sigma_s: float = 0.1) -> torch.Tensor:
    """L_c = 1/N Σ_i sigmoid(|s_i − s_aug,i|² / (2σ_s²)) − 0.5.

    Args:
        s: (N, S) latents of the spectra.
        s_aug: (N, S) latents of the same spectra moved to another redshift.
        sigma_s: latent distance (latent units) below which two spectra count as the same.

    Returns:
        scalar tensor in [0, 0.5); 0 when the latents agree exactly.

    Raises:
        ValueError: shapes that do not match (naming them).
    """
    if s.ndim != 2 or s_aug.shape != s.shape:
        raise _shape_error("consistency_loss", "s and s_aug both of shape (N, S)", s=s, s_aug=s_aug)
    d2 = ((s - s_aug) ** 2).sum(-1)
    return torch.sigmoid(d2 / (2 * sigma_s**2)).mean() - 0.5


def restframe_weights(
    w: torch.Tensor, z: torch.Tensor, wave_obs: torch.Tensor, wave_rest: torch.Tensor
) -> torch.Tensor:
    """Observed weights (N, M) → restframe weights w' (N, M') at λ_rest·(1+z).

    Linear interpolation of `w` on `wave_obs` (Å), zero outside the observed coverage; a
    restframe pixel whose neighbouring observed pixels include a masked one gets weight 0 (we
    interpolate the mask too and keep only fully valid pixels).
    """
    lam = wave_rest[None, :] * (1 + z[:, None])
    w_r = interp1d(lam, wave_obs, w)
    valid = interp1d(lam, wave_obs, (w > 0).to(w.dtype))
    return torch.where(valid > 1 - 1e-4, w_r, torch.zeros_like(w_r)).detach()
