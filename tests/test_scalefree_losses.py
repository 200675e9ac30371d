"""The scale-free similarity and consistency losses (model/scalefree.py) against the 2023 ones.

Each property here is one the 2023 equations do not have, so each test fails if the scale-free
loss falls back to absolute distances: rescaling the latents, gradients across a 100x mismatch of
scales, and a plain per-pair transcription of the equations.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.autoencoder import PRESETS, SpectrumAutoencoder, default_wave_obs
from model.losses import consistency_loss, similarity_loss
from model.objectives import step_losses
from model.scalefree import (
    NORM_WINDOW,
    WINDOW_MU,
    WINDOW_SIGMA,
    chi2_dissimilarity,
    latent_dissimilarity,
    scalefree_consistency,
    scalefree_similarity,
    window_dissimilarity,
)


def _batch(n: int = 12, m: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = torch.randn(n, m, generator=g, dtype=torch.float64).cumsum(-1) / 10 + 1
    w = torch.rand(n, m, generator=g, dtype=torch.float64) * 4 + 0.5
    w[torch.rand(n, m, generator=g) < 0.1] = 0  # masked pixels
    return s, x, w


def test_rescaling_the_latents_leaves_scale_free_losses_unchanged_and_2023_ones_not():
    s, x, w = _batch()
    d = chi2_dissimilarity(x, w)
    assert scalefree_similarity(100 * s, d, 5.0, 5.0).item() == pytest.approx(
        scalefree_similarity(s, d, 5.0, 5.0).item(), rel=1e-9
    )
    # rescaling the spectral side is as free
    assert scalefree_similarity(s, 100 * d, 5.0, 5.0).item() == pytest.approx(
        scalefree_similarity(s, d, 5.0, 5.0).item(), rel=1e-9
    )
    paper = similarity_loss(s, x, w, 2.5, 1.0).item()
    assert abs(similarity_loss(100 * s, x, w, 2.5, 1.0).item() - paper) > 0.05
    s_aug = s + 0.1 * torch.randn(
        s.shape, generator=torch.Generator().manual_seed(1), dtype=s.dtype
    )
    assert scalefree_consistency(100 * s, 100 * s_aug).item() == pytest.approx(
        scalefree_consistency(s, s_aug).item(), rel=1e-9
    )
    assert (
        abs(consistency_loss(100 * s, 100 * s_aug).item() - consistency_loss(s, s_aug).item()) > 0.1
    )


def test_latents_get_a_gradient_when_the_two_scales_differ_100x():
    s, x, w = _batch()
    s_small = (0.01 * s).requires_grad_(True)  # latents 100x closer together than the spectra
    d = 100 * latent_dissimilarity(torch.randn(s.shape, dtype=s.dtype))  # unrelated structure
    scalefree_similarity(s_small, d, 5.0, 5.0).backward()
    g_free = s_small.grad.abs().max().item() * 0.01  # gradient per unit of relative change of s
    s_paper = (0.01 * s).requires_grad_(True)
    similarity_loss(s_paper, 100 * x, w, 2.5, 1.0).backward()
    g_paper = s_paper.grad.abs().max().item() * 0.01
    assert g_free > 1e-3, g_free
    assert g_paper < 1e-8, g_paper  # the 2023 form is saturated: its sigmoid is flat there
    # consistency: latents 100x smaller than σ_s = 0.1 and shifted by a third of their spread
    # still get a gradient from the scale-free form, none to speak of from the 2023 one
    tiny = (1e-3 * s).requires_grad_(True)
    scalefree_consistency(tiny, 1e-3 * (s + 0.3 * s.std())).backward()
    tiny_2023 = (1e-3 * s).requires_grad_(True)
    consistency_loss(tiny_2023, 1e-3 * (s + 0.3 * s.std()), 0.1).backward()
    assert tiny.grad.abs().max().item() > 100 * tiny_2023.grad.abs().max().item()


def _plain_similarity(s, d_spec, k0, k1):
    n, dim = len(s), len(s[0])
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    d_lat = {(i, j): sum((s[i][a] - s[j][a]) ** 2 for a in range(dim)) / dim for i, j in pairs}
    mean_lat = sum(d_lat.values()) / len(pairs)
    mean_spec = sum(d_spec[i][j] for i, j in pairs) / len(pairs)
    total = 0.0
    for i, j in pairs:
        delta = d_lat[i, j] / mean_lat - d_spec[i][j] / mean_spec
        sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
        total += sig(k1 * delta - k0) + sig(-k1 * delta - k0)
    return total / len(pairs)


def _plain_chi2(x, w):
    n, m = len(x), len(x[0])
    out = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            num, cnt = 0.0, 0
            for k in range(m):
                if w[i][k] > 0 and w[j][k] > 0:
                    v = 1 / (1 / w[i][k] + 1 / w[j][k])
                    num += v * (x[i][k] - x[j][k]) ** 2
                    cnt += 1
            out[i][j] = num / max(cnt, 1)
    return out


def test_scale_free_losses_equal_a_plain_transcription():
    s, x, w = _batch(n=6, m=40, seed=3)
    d = chi2_dissimilarity(x, w)
    plain_d = _plain_chi2(x.tolist(), w.tolist())
    assert torch.allclose(d, torch.tensor(plain_d, dtype=d.dtype), rtol=1e-10, atol=1e-12)
    got = scalefree_similarity(s, d, 5.0, 2.0).item()
    assert got == pytest.approx(_plain_similarity(s.tolist(), plain_d, 5.0, 2.0), rel=1e-9)
    s_aug = s + 0.2
    var = (
        sum(
            sum((s[i, a].item() - s[:, a].mean().item()) ** 2 for i in range(6)) / 6
            for a in range(2)
        )
        / 2
    )
    plain_c = (
        sum(
            1 / (1 + math.exp(-sum((s[i, a] - s_aug[i, a]).item() ** 2 for a in range(2)) / var))
            - 0.5
            for i in range(6)
        )
        / 6
    )
    assert scalefree_consistency(s, s_aug).item() == pytest.approx(plain_c, rel=1e-9)


def test_window_dissimilarity_equals_a_plain_transcription():
    wave = torch.linspace(3000.0, 8000.0, 120, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 120, generator=g, dtype=torch.float64) + 0.5
    got = window_dissimilarity(x, wave)
    inside = [k for k in range(120) if NORM_WINDOW[0] <= wave[k] <= NORM_WINDOW[1]]
    gw = [math.exp(-0.5 * ((wave[k].item() - WINDOW_MU) / WINDOW_SIGMA) ** 2) for k in range(120)]
    meds = [x[i, inside].median().item() for i in range(4)]
    for i in range(4):
        for j in range(4):
            d = sum(
                gw[k] * (x[i, k].item() / meds[i] - x[j, k].item() / meds[j]) ** 2
                for k in range(120)
            ) / sum(gw)
            assert got[i, j].item() == pytest.approx(d, rel=1e-9, abs=1e-12)


def test_two_noisy_copies_of_one_spectrum_are_chi2_one_apart():
    """d^x is a reduced χ²: for two noisy draws of one spectrum its expectation is 1."""
    g = torch.Generator().manual_seed(7)
    truth = torch.rand(4000, dtype=torch.float64, generator=g) + 1
    w = torch.rand(2, 4000, dtype=torch.float64, generator=g) * 9 + 1
    x = truth + torch.randn(2, 4000, generator=g, dtype=torch.float64) / w.sqrt()
    assert chi2_dissimilarity(x, w)[0, 1].item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("sim_form", ["restframe", "observed"])
def test_step_losses_trains_the_scale_free_family(sim_form):
    """One optimiser step of a small model under each scale-free form: finite terms, the
    similarity weighted 3x and the consistency by its weight in the total, and a gradient
    reaching the encoder."""
    torch.manual_seed(0)
    wave = torch.tensor(default_wave_obs(), dtype=torch.float32)
    model = SpectrumAutoencoder(PRESETS["cpu-small"], wave.numpy())
    g = torch.Generator().manual_seed(0)
    batch = {
        "flux": 1 + 0.1 * torch.randn(8, len(wave), generator=g),
        "ivar": torch.full((8, len(wave)), 4.0),
        "z": torch.rand(8, generator=g) * 0.2,
    }
    parts = step_losses(
        model, model, batch, ("fidelity", "similarity", "consistency"), 5.0, 5.0,
        losses="scale-free", sim_form=sim_form,
        generator=torch.Generator().manual_seed(1), consistency_weight=7.0,
    )  # fmt: skip
    expect = parts["fidelity"] + parts["fidelity_aug"] + 3 * parts["similarity"]
    expect = expect + 7 * parts["consistency"]
    assert torch.isfinite(parts["total"])
    assert parts["total"].item() == pytest.approx(expect.item(), rel=1e-6)
    assert 2 * torch.sigmoid(torch.tensor(-5.0)).item() <= parts["similarity"].item() < 2
    parts["total"].backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and any(gr.abs().sum() > 0 for gr in grads)


def _flattened(squeeze: float, n: int = 256, seed: int = 1):
    """Latents wide along x and squeezed by `squeeze` along y, and augmented copies shifted
    along y by a tenth of the y spread: the redshift shift lies along the thin direction."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, squeeze])
    shift = torch.tensor([0.0, 0.1 * squeeze], dtype=torch.float64)
    return s, s + shift


def test_whitened_consistency_cannot_be_lowered_by_flattening_a_dimension():
    # the same *relative* shift along y, with y squeezed 1x, 10x, 100x: the mean-variance form
    # falls ~100x per decade of squeezing (the collapse the convergence study found); the
    # whitened one does not move
    mv = [float(scalefree_consistency(*_flattened(q))) for q in (1.0, 0.1, 0.01)]
    wh = [float(scalefree_consistency(*_flattened(q), norm="whitened")) for q in (1.0, 0.1, 0.01)]
    assert mv[0] / mv[2] > 1000
    assert max(wh) / min(wh) < 1.01
    # and it is the mean-variance form for isotropic latents (d² = |Δ|²/σ² there)
    s, s_aug = _flattened(1.0, n=20000)
    iso_mv = float(scalefree_consistency(s, s_aug))
    iso_wh = float(scalefree_consistency(s, s_aug, norm="whitened"))
    assert iso_wh == pytest.approx(iso_mv, rel=0.05)


def test_whitened_consistency_equals_a_plain_transcription_and_is_affine_invariant():
    s, _, _ = _batch(n=16)
    g = torch.Generator().manual_seed(3)
    s_aug = s + 0.2 * torch.randn(s.shape, generator=g, dtype=torch.float64)
    mean = [sum(float(s[i, d]) for i in range(16)) / 16 for d in range(2)]
    cov = [
        [
            sum((float(s[i, a]) - mean[a]) * (float(s[i, b]) - mean[b]) for i in range(16)) / 16
            for b in range(2)
        ]
        for a in range(2)
    ]
    ridge = (cov[0][0] + cov[1][1]) / 2 * 1e-6
    a, b, c = cov[0][0] + ridge, cov[0][1], cov[1][1] + ridge
    det = a * c - b * b
    total = 0.0
    for i in range(16):
        dx, dy = float(s[i, 0] - s_aug[i, 0]), float(s[i, 1] - s_aug[i, 1])
        d2 = (c * dx * dx - 2 * b * dx * dy + a * dy * dy) / det
        total += 1 / (1 + math.exp(-d2)) - 0.5
    got = scalefree_consistency(s, s_aug, norm="whitened")
    assert float(got) == pytest.approx(total / 16, rel=1e-9)
    # any invertible linear map of the latent space leaves it unchanged (up to the ridge)
    m = torch.tensor([[3.0, 1.0], [0.0, 0.05]], dtype=torch.float64)
    mapped = scalefree_consistency(s @ m.T, s_aug @ m.T, norm="whitened")
    assert float(mapped) == pytest.approx(float(got), rel=1e-2)
    with pytest.raises(ValueError, match="consistency norm"):
        scalefree_consistency(s, s_aug, norm="nope")
