"""Interpolation vs numpy.interp; the three losses vs direct transcriptions of the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.interp import interp1d
from model.losses import (
    consistency_loss,
    fidelity_loss,
    restframe_weights,
    similarity_loss,
)


def test_interp_matches_numpy_per_row_and_zero_outside():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(0, 10, 50))
    y = rng.normal(size=(3, 50))
    xq = rng.uniform(-2, 12, size=(3, 200))
    got = interp1d(torch.tensor(xq), torch.tensor(x), torch.tensor(y)).numpy()
    for i in range(3):
        want = np.interp(xq[i], x, y[i], left=0.0, right=0.0)
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)
    # exact end points are inside
    ends = interp1d(torch.tensor([[x[0], x[-1]]]), torch.tensor(x), torch.tensor(y[:1]))
    np.testing.assert_allclose(ends.numpy()[0], [y[0, 0], y[0, -1]])


def test_interp_gradient():
    x = torch.linspace(0, 1, 20, dtype=torch.float64)
    y = torch.randn(2, 20, dtype=torch.float64, requires_grad=True)
    xq = torch.rand(2, 30, dtype=torch.float64) * 1.2 - 0.1
    assert torch.autograd.gradcheck(lambda y: interp1d(xq, x, y), (y,))


def _naive_similarity(s, x, w, k0, k1):
    """Direct transcription with the N×N×M' tensor (small N only)."""
    n, m = x.shape
    s_term = 0.5 * ((s[:, None, :] - s[None, :, :]) ** 2).sum(-1)
    omega = torch.sqrt(w[:, None, :] * w[None, :, :])
    x_term = (omega * (x[:, None, :] - x[None, :, :]) ** 2).sum(-1) / m
    big_s = s_term - x_term
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += torch.sigmoid(k1 * big_s[i, j] - k0) + torch.sigmoid(-k1 * big_s[i, j] - k0)
    return total / n**2


@pytest.mark.parametrize("k1", [0.3, 1.0, 5.0])
def test_similarity_gram_equals_naive(k1):
    g = torch.Generator().manual_seed(1)
    n, m = 9, 300
    s = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = 1 + 0.3 * torch.randn(n, m, generator=g, dtype=torch.float64)
    w = torch.rand(n, m, generator=g, dtype=torch.float64) * 50
    w[w < 10] = 0  # masked pixels
    got = similarity_loss(s, x, w, 2.5, k1)
    want = _naive_similarity(s, x, w, 2.5, k1)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_similarity_minimum_and_gradient():
    s = torch.zeros(4, 2, requires_grad=True)
    x = torch.ones(4, 100)
    w = torch.ones(4, 100)
    loss = similarity_loss(s, x, w, 2.5, 1.0)
    assert float(loss.detach()) == pytest.approx(
        2 * torch.sigmoid(torch.tensor(-2.5)).item(), rel=1e-6
    )
    s2 = torch.randn(4, 2, requires_grad=True)
    similarity_loss(s2, torch.randn(4, 100), w, 2.5, 1.0).backward()
    assert torch.isfinite(s2.grad).all()


def test_fidelity_and_consistency_transcriptions():
    g = torch.Generator().manual_seed(2)
    x, xm, w = (torch.rand(5, 40, generator=g, dtype=torch.float64) for _ in range(3))
    want = sum(w[i, k] * (x[i, k] - xm[i, k]) ** 2 for i in range(5) for k in range(40)) / (
        2 * 5 * 40
    )
    torch.testing.assert_close(fidelity_loss(x, xm, w), want)
    s, sa = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    want_c = (
        sum(torch.sigmoid(((s[i] - sa[i]) ** 2).sum() / (2 * 0.1**2)) for i in range(6)) / 6 - 0.5
    )
    torch.testing.assert_close(consistency_loss(s, sa, 0.1), want_c)
    assert float(consistency_loss(s, s)) == 0.0


def test_restframe_weights_cover_only_observed_range():
    wave_obs = torch.linspace(4000, 8000, 401, dtype=torch.float64)
    wave_rest = torch.linspace(2000, 9000, 701, dtype=torch.float64)
    w = torch.full((2, 401), 4.0, dtype=torch.float64)
    w[1, 200] = 0  # one masked pixel
    z = torch.tensor([0.0, 0.5], dtype=torch.float64)
    wr = restframe_weights(w, z, wave_obs, wave_rest)
    lam = wave_rest[None] * (1 + z[:, None])
    inside = (lam >= 4000) & (lam <= 8000)
    assert (wr[~inside] == 0).all()
    assert torch.allclose(wr[0][inside[0]], torch.tensor(4.0, dtype=torch.float64))
    near = (lam[1] > 5990) & (lam[1] < 6010)  # neighbours of the masked observed pixel
    assert (wr[1][near] == 0).all()


def test_similarity_with_one_weight_vector_for_all_spectra_equals_naive():
    """A restframe weight of shape (M',) is one vector shared by every spectrum: same value as
    that vector repeated per spectrum, as the naive formula, and no deprecation warning."""
    import warnings

    g = torch.Generator().manual_seed(3)
    n, m = 7, 120
    s = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = 1 + 0.3 * torch.randn(n, m, generator=g, dtype=torch.float64)
    w1 = torch.rand(m, generator=g, dtype=torch.float64) * 50
    w1[w1 < 10] = 0
    wn = w1.expand(n, m).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the old x.T on a 1-D tensor warned (and was wrong)
        got = similarity_loss(s, x, w1, 2.5, 1.0)
    torch.testing.assert_close(got, similarity_loss(s, x, wn, 2.5, 1.0))
    want = _naive_similarity(s, x, wn, 2.5, 1.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fidelity_loss(x, x.flip(0), w1), fidelity_loss(x, x.flip(0), wn))


@pytest.mark.parametrize(
    "call, names",
    [
        (lambda: fidelity_loss(torch.ones(4, 10), torch.ones(4, 9), torch.ones(4, 10)),
         ("fidelity_loss", "x (4, 10)", "x_model (4, 9)")),
        (lambda: fidelity_loss(torch.ones(4, 10), torch.ones(4, 10), torch.ones(3, 10)),
         ("fidelity_loss", "x (4, 10)", "w (3, 10)")),
        (lambda: fidelity_loss(torch.ones(4, 10), torch.ones(4, 10), torch.ones(4)),
         ("fidelity_loss", "w (4,)")),
        (lambda: similarity_loss(torch.ones(4, 2), torch.ones(4, 10), torch.ones(11), 2.5, 1.0),
         ("similarity_loss", "x_rest (4, 10)", "w_rest (11,)")),
        (lambda: similarity_loss(torch.ones(4, 2), torch.ones(4, 10), torch.ones(10, 4), 2.5, 1.),
         ("similarity_loss", "w_rest (10, 4)")),
        (lambda: similarity_loss(torch.ones(5, 2), torch.ones(4, 10), torch.ones(4, 10), 2.5, 1.),
         ("similarity_loss", "s (5, 2)", "x_rest (4, 10)")),
        (lambda: similarity_loss(torch.ones(4, 2), torch.ones(40), torch.ones(40), 2.5, 1.0),
         ("similarity_loss", "x_rest (40,)")),
        (lambda: consistency_loss(torch.ones(4, 2), torch.ones(4, 3)),
         ("consistency_loss", "s (4, 2)", "s_aug (4, 3)")),
        (lambda: consistency_loss(torch.ones(4, 2), torch.ones(2)),
         ("consistency_loss", "s_aug (2,)")),
    ],
)  # fmt: skip
def test_public_losses_name_mismatched_shapes(call, names):
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message
