"""Architecture sizes, the redshift transform and the redshift augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_impl import conv_block_reference_forward

from model.augment import redshift_augment
from model.autoencoder import PRESETS, SpectrumAutoencoder, default_wave_obs, redshift


def _galaxy(lam: torch.Tensor) -> torch.Tensor:
    """A smooth analytic 'restframe spectrum' (continuum + Hα/[OIII]-like lines), λ in Å."""
    cont = 1 + 0.2 * torch.tanh((lam - 4000) / 300)
    lines = 2 * torch.exp(-0.5 * ((lam - 6564.6) / 8) ** 2) + torch.exp(
        -0.5 * ((lam - 5008.2) / 8) ** 2
    )
    return cont + lines


def test_paper_encoder_size_and_shapes():
    m = SpectrumAutoencoder(PRESETS["paper"])
    n_enc = sum(p.numel() for p in m.encoder.parameters())
    assert 3.0e6 < n_enc < 3.4e6  # ~3.2M as the reference architecture
    assert m.wave_obs.shape == (3921,)
    assert float(m.wave_obs[0]) == np.float32(10**3.578)
    x = torch.randn(3, 3921)
    s, x_rest, x_obs = m(x, torch.ones_like(x), torch.tensor([0.0, 0.1, 0.5]))
    assert s.shape == (3, 2) and x_rest.shape == (3, 7000) and x_obs.shape == (3, 3921)
    small = SpectrumAutoencoder(PRESETS["cpu-small"])
    assert small.wave_rest.shape == m.wave_rest.shape


def test_redshifted_restframe_model_matches_spectrum_observed_at_z():
    m = SpectrumAutoencoder(PRESETS["cpu-small"])
    wave_rest = m.wave_rest.double()
    wave_obs = m.wave_obs.double()
    z = torch.tensor([0.0, 0.05, 0.2, 0.4], dtype=torch.float64)
    x_rest = _galaxy(wave_rest).expand(4, -1)
    got = redshift(x_rest, wave_rest, wave_obs, z)
    lam_rest = wave_obs[None] / (1 + z[:, None])
    want = _galaxy(lam_rest)
    covered = (lam_rest >= wave_rest[0]) & (lam_rest <= wave_rest[-1])
    # linear interpolation of ~1 Å sampled lines with σ = 8 Å: error well below 1%
    assert torch.allclose(got[covered], want[covered], rtol=0, atol=5e-3)
    assert (got[~covered] == 0).all()


def test_augmentation_moves_spectrum_to_new_redshift():
    wave_obs = torch.tensor(default_wave_obs())
    z = torch.tensor([0.1, 0.3], dtype=torch.float64)
    x = _galaxy(wave_obs[None] / (1 + z[:, None]))
    w = torch.ones_like(x)
    g = torch.Generator().manual_seed(0)
    xa, wa, za = redshift_augment(x, w, z, wave_obs, g)
    assert ((za >= 0) & (za <= 0.5)).all()
    want = _galaxy(wave_obs[None] / (1 + za[:, None]))
    ok = wa > 0
    assert ok.any(dim=1).all()
    assert torch.allclose(xa[ok], want[ok], atol=2e-2)
    # pixels whose source wavelength the original never observed carry no weight
    src = wave_obs[None] * (1 + z[:, None]) / (1 + za[:, None])
    assert (wa[(src < wave_obs[0]) | (src > wave_obs[-1])] == 0).all()
    # same seed, same draw
    xb, _, zb = redshift_augment(x, w, z, wave_obs, torch.Generator().manual_seed(0))
    assert torch.equal(za, zb) and torch.equal(xa, xb)


def _line_width_px(x: torch.Tensor, centre: int) -> torch.Tensor:
    """RMS width in pixels of the emission line around pixel `centre` (continuum 1 removed)."""
    k = torch.arange(centre - 12, centre + 13)
    f = (x[:, k] - 1).clamp(min=0)
    mean = (f * k).sum(1) / f.sum(1)
    return ((f * (k - mean[:, None]) ** 2).sum(1) / f.sum(1)).sqrt()


def test_pixel_shift_augmentation_keeps_line_widths_and_noise():
    """A half-pixel shift by interpolation broadens a narrow line; whole-pixel shifts move
    every pixel's own flux and weight, so line widths and noise are untouched."""
    wave_obs = torch.tensor(default_wave_obs())
    n, m = 400, len(wave_obs)
    rng = torch.Generator().manual_seed(1)
    z = torch.rand(n, generator=rng, dtype=torch.float64) * 0.3
    centre = 2000  # a line 1.2 pixels wide (σ ≈ 83 km/s, like a galaxy's) at pixel 2000
    k = torch.arange(m, dtype=torch.float64)
    x = 1 + 3 * torch.exp(-0.5 * ((k - centre) / 1.2) ** 2)
    x = x.expand(n, -1).clone()
    w = torch.full_like(x, 4.0)
    w[:, 100:110] = 0  # a masked stretch travels with its pixels
    xa, wa, za = redshift_augment(
        x, w, z, wave_obs, torch.Generator().manual_seed(0), 0.5, "pixel-shift"
    )
    shift = torch.round(torch.log((1 + za) / (1 + z)) / torch.log(wave_obs[1] / wave_obs[0]))
    # z_new is a whole number of pixels away, within [0, z_max]
    step = torch.log((1 + za) / (1 + z)) / torch.log(wave_obs[1] / wave_obs[0])
    assert torch.allclose(step, shift, atol=1e-6) and ((za >= 0) & (za <= 0.5 + 3e-4)).all()
    for i in range(5):
        s = int(shift[i])
        j = torch.arange(max(0, s), min(m, m + s))
        assert torch.equal(xa[i, j], x[i, j - s]) and torch.equal(wa[i, j], w[i, j - s])
        outside = torch.ones(m, dtype=torch.bool)
        outside[j] = False
        assert (wa[i, outside] == 0).all()
    # the line keeps its width; linear interpolation broadens it (by up to half a pixel)
    inside = shift.abs() < 1500
    moved = torch.stack([xa[i].roll(-int(shift[i])) for i in range(n)])[inside]
    assert torch.allclose(
        _line_width_px(moved, centre), torch.tensor(1.2, dtype=torch.float64), atol=0.02
    )
    xi, _, zi = redshift_augment(x, w, z, wave_obs, torch.Generator().manual_seed(0), 0.5)
    frac = torch.log((1 + zi) / (1 + z)) / torch.log(wave_obs[1] / wave_obs[0])
    near_half = ((frac - frac.round()).abs() > 0.4) & (frac.abs() < 1500)
    assert near_half.sum() > 10
    back = torch.stack([xi[i].roll(-int(frac[i].round())) for i in range(n)])[near_half]
    assert (_line_width_px(back, centre) > 1.25).all()
    # a grid that is not log-uniform (DESI's native one is linear in λ) is refused
    linear = torch.linspace(3600.0, 9800.0, m, dtype=torch.float64)
    with pytest.raises(ValueError, match="log-uniform"):
        redshift_augment(x, w, z, linear, None, 0.5, "pixel-shift")


def test_pool_first_conv_block_equals_the_textbook_order():
    from model.autoencoder import ConvBlock

    torch.manual_seed(0)
    for pool, length in ((5, 3921), (11, 785), (None, 72)):
        block = ConvBlock(3, 8, 5, pool, 0.0)
        # positive slopes (the usual case) and some negative ones (V-shaped PReLU)
        with torch.no_grad():
            block.act.weight.copy_(torch.linspace(-0.5, 0.5, 8))
        x = torch.randn(4, 3, length, requires_grad=True)
        fast = block(x)
        grads_fast = torch.autograd.grad(
            fast.square().sum(), [x, block.act.weight, block.conv.weight]
        )
        slow = conv_block_reference_forward(block, x)
        grads_slow = torch.autograd.grad(
            slow.square().sum(), [x, block.act.weight, block.conv.weight]
        )
        assert fast.shape == slow.shape
        torch.testing.assert_close(fast, slow, rtol=0, atol=0)
        for a, b in zip(grads_fast, grads_slow, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the reference implementation's positions: 3921 → 785 → 72
    m = SpectrumAutoencoder(PRESETS["paper"])
    h = m.encoder.conv(torch.randn(2, 1, 3921))
    assert h.shape == (2, 512, 72)
