"""The restframe encoder (`--encoder-frame restframe`) on real spectra of the bundled sample:
its input is the spectrum at λ/(1+z), a whole-pixel redshift copy feeds it the same pixels,
and a restframe run starts from an observed-frame one, saves, reloads and resumes as its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_model_fixtures import build_sample_shards

from model.augment import redshift_augment
from model.autoencoder import (
    PRESETS,
    ModelConfig,
    SpectrumAutoencoder,
    restframe_encoder_grid,
    to_restframe,
)
from model.embed import embed_shards, iter_shard_batches, read_embedding
from model.train import TrainConfig, TrainError, load_model, train

H_ALPHA = 6564.61  # Å, vacuum


def _restframe_model(seed: int = 0) -> SpectrumAutoencoder:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_dict({**PRESETS["cpu-small"].to_dict(), "encoder_frame": "restframe"})
    return SpectrumAutoencoder(cfg).eval()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_sample_shards(tmp_path_factory.mktemp("encoder_frame"))


@pytest.fixture(scope="module")
def rows(shards) -> dict[str, torch.Tensor]:
    got = next(iter(iter_shard_batches(shards, ["train"], 16)))
    return {
        "flux": torch.from_numpy(got["flux"]),
        "ivar": torch.from_numpy(got["ivar"]),
        "z": torch.as_tensor(got["z"], dtype=torch.float32),
    }


def test_restframe_grid_has_the_observed_step_and_the_decoder_span():
    cfg = PRESETS["cpu-small"]
    wave_obs = 10.0 ** (3.578 + 1e-4 * np.arange(3921))
    grid = restframe_encoder_grid(cfg, wave_obs)
    assert np.allclose(np.diff(np.log10(grid)), 1e-4)
    assert grid[0] == pytest.approx(cfg.wave_rest_min) and grid[-1] <= cfg.wave_rest_max
    assert cfg.wave_rest_max - grid[-1] < grid[-1] * (10**1e-4 - 1)  # no pixel short
    assert len(grid) == 5973


def test_restframe_input_is_the_spectrum_at_lambda_over_1_plus_z(rows):
    """Against a plain numpy transcription in linear λ, on real spectra; and a line put at
    Hα·(1+z) in the observed frame peaks at Hα in the restframe input."""
    m = _restframe_model()
    x, w, z = rows["flux"], rows["ivar"], rows["z"]
    got = to_restframe(x * (w > 0), m.wave_obs, m.wave_enc, z).numpy()
    wave_obs, grid = m.wave_obs.double().numpy(), m.wave_enc.numpy()
    for i in range(len(z)):
        lam = grid * (1 + float(z[i]))
        xi = (x[i] * (w[i] > 0)).double().numpy()
        want = np.where(
            (lam >= wave_obs[0]) & (lam <= wave_obs[-1]), np.interp(lam, wave_obs, xi), 0
        )
        # log- and linear-λ interpolation differ by the curvature of λ(log λ) inside one pixel
        assert np.abs(got[i] - want).max() < 2e-3 * np.abs(xi).max(), i
    z_line = torch.tensor([0.0, 0.1, 0.25])
    line = torch.exp(-0.5 * ((m.wave_obs[None] - H_ALPHA * (1 + z_line[:, None])) / 2.0) ** 2)
    peak = grid[to_restframe(line, m.wave_obs, m.wave_enc, z_line).argmax(dim=1).numpy()]
    assert np.abs(peak - H_ALPHA).max() < 1.0  # Å: half a restframe pixel at Hα is 0.76 Å
    # the observed-frame model puts them where they were observed
    assert np.ptp(m.wave_obs.numpy()[line.argmax(dim=1).numpy()]) > 0.2 * H_ALPHA


def test_a_whole_pixel_copy_feeds_the_restframe_encoder_the_same_pixels(rows):
    """Where both the spectrum and its copy (moved to z_new a whole number of pixels away) are
    observed, the restframe inputs agree to float rounding; the observed-frame inputs do not
    (they are the same spectrum on other pixels)."""
    m = _restframe_model()
    x, w, z = rows["flux"], rows["ivar"], rows["z"]
    gen = torch.Generator().manual_seed(3)
    xa, wa, za = redshift_augment(x, w, z, m.wave_obs, gen, 0.5, "pixel-shift")
    a = to_restframe(x * (w > 0), m.wave_obs, m.wave_enc, z)
    b = to_restframe(xa * (wa > 0), m.wave_obs, m.wave_enc, za)
    both = (a != 0) & (b != 0)
    assert both.sum() > 0.4 * both.numel()
    scale = x.abs().max()
    assert (a - b)[both].abs().max() < 1e-4 * scale
    assert (x - xa)[(w > 0) & (wa > 0)].abs().max() > 0.1 * scale
    # an interpolated copy blurs: its restframe input differs by more than rounding
    xi, wi, zi = redshift_augment(x, w, z, m.wave_obs, torch.Generator().manual_seed(3), 0.5)
    c = to_restframe(xi * (wi > 0), m.wave_obs, m.wave_enc, zi)
    assert (a - c)[both & (c != 0)].abs().max() > 1e-2 * scale


def test_only_the_restframe_encoder_reads_z(rows):
    x, w, z = rows["flux"], rows["ivar"], rows["z"]
    rest = _restframe_model()
    torch.manual_seed(0)
    observed = SpectrumAutoencoder(PRESETS["cpu-small"]).eval()
    with torch.no_grad():
        assert torch.equal(observed.encode(x, w, z), observed.encode(x, w, z + 0.1))
        assert torch.equal(observed.encode(x, w, z), observed.encoder(x, w))
        assert not torch.allclose(rest.encode(x, w, z), rest.encode(x, w, z + 0.1))
        # forward encodes through the same frame
        assert torch.equal(rest(x, w, z)[0], rest.encode(x, w, z))
    assert "wave_enc" not in rest.state_dict()  # derived, so checkpoints keep their keys
    with pytest.raises(ValueError, match="encoder_frame"):
        SpectrumAutoencoder(ModelConfig(encoder_frame="rest"))


def test_restframe_run_starts_from_an_observed_one_and_reloads_as_restframe(shards, tmp_path):
    base = dict(shards=str(shards), preset="cpu-small", batch_size=8, seed=1, progress=False)
    obs = dict(objective="fidelity", epochs=1, encoder_frame="observed")
    train(TrainConfig(**base, run=str(tmp_path / "obs"), **obs))
    rest_run = tmp_path / "rest"
    kw = dict(
        objective="consistency", epochs=2, init=str(tmp_path / "obs"), lr=3e-4,
        encoder_frame="restframe", augment="pixel-shift",
    )  # fmt: skip
    train(TrainConfig(**base, run=str(rest_run), **kw), stop_after_epoch=1)
    with pytest.raises(TrainError, match="encoder_frame"):  # --resume keeps the frame
        train(
            TrainConfig(
                **base, run=str(rest_run), resume=True, **{**kw, "encoder_frame": "observed"}
            )
        )
    train(TrainConfig(**base, run=str(rest_run), resume=True, **kw))
    model, ckpt = load_model(rest_run)
    assert ckpt["model_config"]["encoder_frame"] == "restframe" and model.wave_enc is not None
    # embed hands each row's z to the encoder, and says which frame made the latents
    cols, header = read_embedding(embed_shards(rest_run, tmp_path / "rest.fits", split="test"))
    assert header["ENCFRAME"] == "restframe"
    test = next(iter(iter_shard_batches(shards, ["test"], 1000)))
    with torch.no_grad():
        s = model.encode(
            torch.from_numpy(test["flux"]),
            torch.from_numpy(test["ivar"]),
            torch.as_tensor(test["z"], dtype=torch.float32),
        ).numpy()
    by_id = {str(int(i)): k for k, i in enumerate(test["specobjid"])}
    order = [by_id[str(i)] for i in cols["specobjid"]]
    assert np.allclose(cols["s"], s[order], atol=1e-5)
    obs_model, obs_ckpt = load_model(tmp_path / "obs")
    assert obs_model.wave_enc is None
    # a checkpoint written before the setting existed loads as observed-frame
    old = {k: v for k, v in obs_ckpt["model_config"].items() if k != "encoder_frame"}
    assert ModelConfig.from_dict(old).encoder_frame == "observed"
    # other differences are still a different network
    with pytest.raises(TrainError, match="model config differs"):
        paper = {**base, "preset": "paper"}
        train(TrainConfig(**paper, run=str(tmp_path / "paper"), init=str(rest_run)))
    with pytest.raises(TrainError, match="--encoder-frame must be one of"):
        TrainConfig(shards="s", run="r", encoder_frame="rest")
