"""Scale-free similarity and consistency losses: the 2023 losses with the latent scale set free.

The paper's similarity loss (`model.losses.similarity_loss`) matches *absolute* latent distances
½|s_i − s_j|² to χ²-like spectral distances, which ties the size of the latent space to the noise
of the data: with the latents ~0.1 apart and the spectra ~6 apart, k1·S_ij is far out on the
sigmoid and the term has almost no gradient. Its consistency loss measures |s − s_aug| against a
fixed σ_s, so a shift much larger than σ_s gets no gradient either, and shrinking the whole latent
space lowers it without making anything more invariant.

Here every distance is measured in units of its own batch scale, so only *relative* structure
matters (the idea of spender 0.3's losses; this is our own formulation):

- similarity: latent dissimilarity d^s_ij = |s_i − s_j|²/S and spectral dissimilarity d^x_ij are
  each divided by their mean over the batch's distinct pairs (i ≠ j; the means are not detached,
  so rescaling either side leaves the loss and its minimum unchanged). The loss is the mean over
  distinct pairs of sigmoid(k1·Δ − k0) + sigmoid(−k1·Δ − k0), Δ = d^s − d^x; its floor is
  2·sigmoid(−k0).
- consistency: |s_i − s_aug,i|² in units of the batch's latent spread (not detached: shrinking
  the latents cannot lower it), through sigmoid(·) − 0.5. Two units (`CONSISTENCY_NORMS`):
  ``mean-variance`` divides by the mean per-dimension variance (spender 0.3's choice), which a
  model can lower by flattening the latents along the direction redshift moves them (the
  convergence study measured exactly that, docs/convergence.md); ``whitened`` measures the shift
  against the batch covariance Σ, Δᵀ Σ⁻¹ Δ, so a shift along a thin direction costs as much as
  one of the same *relative* size along a wide one and collapsing a dimension cannot pay.

Two spectral dissimilarities for the similarity loss:

- ``observed``: the *data*, resampled to the restframe grid, compared over pixels both spectra
  observed, each pixel weighted by the χ² weight of a difference 1/(1/w_i + 1/w_j);
- ``restframe``: the *decoded* restframe spectra, each divided by its median in 4000–7000 Å,
  compared with one Gaussian window (μ 5000 Å, σ 2000 Å) for every pair: noise-free, and it
  covers wavelengths a galaxy was never observed at.

Conventions as in `model.losses`: N spectra, S latents, M' restframe pixels.
"""

from __future__ import annotations

import torch

from model.interp import interp1d

SIM_FORMS = ("restframe", "observed")
CONSISTENCY_NORMS = ("mean-variance", "whitened")
#: ridge of the whitened consistency's covariance, relative to its mean eigenvalue: keeps Σ⁻¹
#: finite for a batch whose latents happen to lie on a line
WHITEN_RIDGE = 1e-6
#: restframe window of the decoded-restframe form: median normalisation range and Gaussian weight
NORM_WINDOW = (4000.0, 7000.0)  # Å
WINDOW_MU, WINDOW_SIGMA = 5000.0, 2000.0  # Å


def _pair_mean(d: torch.Tensor) -> torch.Tensor:
    """Mean of an (N, N) symmetric matrix over distinct pairs i ≠ j."""
    n = d.shape[0]
    return (d.sum() - d.diagonal().sum()) / (n * (n - 1))


def latent_dissimilarity(s: torch.Tensor) -> torch.Tensor:
    """d^s_ij = |s_i − s_j|² / S for latents s (N, S): (N, N)."""
    return ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1) / s.shape[1]


def chi2_dissimilarity(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d^x_ij = Σ_k v_ijk (x_ik − x_jk)² / Σ_k [w_ik > 0][w_jk > 0], v_ijk = 1/(1/w_ik + 1/w_jk).

    v is the inverse variance of the difference of two noisy pixels, so d^x is the reduced χ² of
    "these two spectra are the same" over the pixels both observed (≈ 1 for two noisy copies of
    one spectrum). Broadcast over pairs in chunks of rows: O(chunk·N·M') memory.
    """
    n = x.shape[0]
    valid = (w > 0).to(x.dtype)
    inv = torch.where(w > 0, 1.0 / w.clamp(min=1e-30), torch.zeros_like(w))
    n_joint = valid @ valid.T
    out = torch.empty(n, n, dtype=x.dtype, device=x.device)
    chunk = max(1, 2**22 // max(1, n * x.shape[1]))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        both = valid[a:b, None, :] * valid[None, :, :]
        denom = inv[a:b, None, :] + inv[None, :, :]
        v = torch.where(both > 0, 1.0 / denom.clamp(min=1e-30), torch.zeros_like(denom))
        out[a:b] = (v * (x[a:b, None, :] - x[None, :, :]) ** 2).sum(-1)
    return out / n_joint.clamp(min=1)


def window_dissimilarity(x_rest: torch.Tensor, wave_rest: torch.Tensor) -> torch.Tensor:
    """Decoded-restframe dissimilarity: spectra divided by their median in `NORM_WINDOW`, squared
    differences weighted by a Gaussian window in wavelength, normalised by the window's sum."""
    inside = (wave_rest >= NORM_WINDOW[0]) & (wave_rest <= NORM_WINDOW[1])
    med = x_rest[:, inside].median(dim=1).values.abs().clamp(min=1e-6)
    xn = x_rest / med[:, None]
    g = torch.exp(-0.5 * ((wave_rest - WINDOW_MU) / WINDOW_SIGMA) ** 2).to(x_rest.dtype)
    r = g.sqrt()
    rx = xn * r
    sq = (rx**2).sum(-1)
    d = sq[:, None] + sq[None, :] - 2 * (rx @ rx.T)
    return d.clamp(min=0) / g.sum()


def observed_restframe(
    x: torch.Tensor,
    w: torch.Tensor,
    z: torch.Tensor,
    wave_obs: torch.Tensor,
    wave_rest: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The data on the restframe grid: flux and weights at λ_rest·(1+z), weight 0 outside the
    observed coverage or next to a masked pixel (as `model.losses.restframe_weights`)."""
    lam = wave_rest[None, :] * (1 + z[:, None])
    x_r = interp1d(lam, wave_obs, x)
    w_r = interp1d(lam, wave_obs, w)
    valid = interp1d(lam, wave_obs, (w > 0).to(w.dtype))
    w_r = torch.where(valid > 1 - 1e-4, w_r, torch.zeros_like(w_r))
    return x_r.detach(), w_r.detach()


def scalefree_similarity(
    s: torch.Tensor, d_spec: torch.Tensor, k0: float, k1: float
) -> torch.Tensor:
    """Scale-free L_sim from latents (N, S) and a spectral dissimilarity matrix (N, N).

    Both sides are divided by their own mean over distinct pairs, the diagonal is left out, and
    the result is the mean over distinct pairs of sigmoid(k1·Δ − k0) + sigmoid(−k1·Δ − k0).
    """
    n = s.shape[0]
    if d_spec.shape != (n, n):
        raise ValueError(
            f"scalefree_similarity: d_spec must be ({n}, {n}), got {tuple(d_spec.shape)}"
        )
    if n < 2:
        return s.sum() * 0.0  # no pair: nothing to match, keep the graph
    d_lat = latent_dissimilarity(s)
    d_spec = d_spec.to(d_lat.dtype)
    delta = d_lat / _pair_mean(d_lat).clamp(min=1e-12) - d_spec / _pair_mean(d_spec).clamp(
        min=1e-12
    )
    terms = torch.sigmoid(k1 * delta - k0) + torch.sigmoid(-k1 * delta - k0)
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    return terms[off].mean()


def scalefree_consistency(
    s: torch.Tensor, s_aug: torch.Tensor, norm: str = "mean-variance"
) -> torch.Tensor:
    """Scale-free L_c = 1/N Σ_i sigmoid(d²_i) − 0.5 with Δ_i = s_i − s_aug,i in units of the batch
    spread of `s` (not detached). `norm` "mean-variance": d²_i = |Δ_i|² / σ², σ² the mean
    per-dimension variance; "whitened": d²_i = Δ_iᵀ Σ⁻¹ Δ_i with Σ the batch covariance (plus
    a ridge of `WHITEN_RIDGE` × its mean eigenvalue). Both give |Δ|²/σ² for isotropic latents.
    In [0, 0.5); 0 when the latents agree."""
    if s.ndim != 2 or s_aug.shape != s.shape:
        raise ValueError(
            f"scalefree_consistency: s and s_aug must both be (N, S); got {tuple(s.shape)}, "
            f"{tuple(s_aug.shape)}"
        )
    if norm not in CONSISTENCY_NORMS:
        raise ValueError(f"unknown consistency norm {norm!r}; choose from {CONSISTENCY_NORMS}")
    delta = s - s_aug
    if norm == "mean-variance":
        var = s.var(dim=0, unbiased=False).mean().clamp(min=1e-12)
        d2 = (delta**2).sum(-1) / var
    else:
        centred = s - s.mean(dim=0)
        n_lat = s.shape[1]
        cov = centred.T @ centred / s.shape[0]
        ridge = (torch.diagonal(cov).mean() * WHITEN_RIDGE).clamp(min=1e-12)
        cov = cov + ridge * torch.eye(n_lat, dtype=s.dtype, device=s.device)
        # Δᵀ Σ⁻¹ Δ through a Cholesky solve: Σ is symmetric positive definite with the ridge
        chol = torch.linalg.cholesky(cov)
        white = torch.linalg.solve_triangular(chol, delta.T, upper=False)
        d2 = (white**2).sum(0)
    return torch.sigmoid(d2).mean() - 0.5
