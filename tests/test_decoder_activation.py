"""The decoder's activations (`--decoder-activation`, `--decoder-mlp`): the Speculator activation
is the published formula, a speculator decoder starts near the median normalisation of 1, and a
run with spender 0.3's decoder trains on real spectra of the bundled sample, saves, reloads and
resumes as itself."""

from __future__ import annotations

import pytest
import torch
from test_model_fixtures import build_sample_shards

from model.autoencoder import (
    PRESETS,
    Decoder,
    ModelConfig,
    SpectrumAutoencoder,
    SpeculatorActivation,
)
from model.embed import iter_shard_batches
from model.train import TrainConfig, TrainError, load_model, train


def test_speculator_activation_is_the_published_formula_with_its_two_limits():
    torch.manual_seed(0)
    act = SpeculatorActivation(5)
    x = torch.randn(7, 5) * 3
    beta, gamma = act.beta.detach(), act.gamma.detach()
    # Alsing et al. 2020, eq. 8, written out element by element
    want = torch.empty_like(x)
    for i in range(7):
        for j in range(5):
            gate = 1 / (1 + torch.exp(-beta[j] * x[i, j]))
            want[i, j] = (gamma[j] + gate * (1 - gamma[j])) * x[i, j]
    assert torch.allclose(act(x), want, atol=1e-6)
    with torch.no_grad():
        act.gamma.fill_(1.0)
        assert torch.equal(act(x), x)  # γ = 1: the identity
        act.gamma.fill_(0.0)
        act.beta.fill_(1e4)
        assert torch.allclose(act(x), torch.relu(x), atol=1e-3)  # γ = 0, β → ∞: a ReLU


def test_speculator_decoder_starts_near_one_and_differs_from_the_default():
    torch.manual_seed(0)
    s = torch.randn(16, 2)
    spec = ModelConfig(decoder_activation="speculator", decoder_mlp=(64, 256, 1024))
    with torch.no_grad():
        out, default_out = Decoder(spec)(s), Decoder(ModelConfig())(s)
    assert out.shape == (16, spec.n_rest)
    # the last layer adds 1: an untrained decoder already emits a flat normalised spectrum
    assert abs(float(out.mean()) - 1.0) < 0.1
    assert abs(float(default_out.mean())) < 0.1  # the default adds nothing
    # every layer has its own learnt gate, the output layer's included
    gates = [m for m in Decoder(spec).modules() if isinstance(m, SpeculatorActivation)]
    assert [g.beta.numel() for g in gates] == [64, 256, 1024, spec.n_rest]
    with pytest.raises(ValueError, match="decoder_activation"):
        SpectrumAutoencoder(ModelConfig(decoder_activation="relu"))
    with pytest.raises(TrainError, match="--decoder-activation must be one of"):
        TrainConfig(shards="s", run="r", decoder_activation="relu")
    with pytest.raises(TrainError, match="--decoder-mlp"):
        TrainConfig(shards="s", run="r", decoder_mlp=(64, 0))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_sample_shards(tmp_path_factory.mktemp("decoder"))


def test_a_run_with_spenders_decoder_trains_reloads_and_resumes_as_itself(shards, tmp_path):
    base = dict(shards=str(shards), preset="cpu-small", batch_size=8, seed=1, progress=False)
    spender_decoder = dict(decoder_activation="speculator", decoder_mlp=(64, 256, 1024))
    run = tmp_path / "spec"
    cfg = dict(objective="fidelity", epochs=2, **spender_decoder)
    train(TrainConfig(**base, run=str(run), **cfg), stop_after_epoch=1)
    with pytest.raises(TrainError, match="decoder_mlp"):  # --resume keeps the decoder
        train(TrainConfig(**base, run=str(run), resume=True, **{**cfg, "decoder_mlp": (32,)}))
    metrics = train(TrainConfig(**base, run=str(run), resume=True, **cfg))
    assert metrics["epoch"] == 2
    model, ckpt = load_model(run)
    saved = ckpt["model_config"]
    assert saved["decoder_activation"] == "speculator" and list(saved["decoder_mlp"]) == [
        64,
        256,
        1024,
    ]
    gates = [m for m in model.decoder.modules() if isinstance(m, SpeculatorActivation)]
    assert len(gates) == 4
    # the reloaded model is the trained one: same latents and restframe model on real spectra
    batch = next(iter(iter_shard_batches(shards, ["test"], 8)))
    x, w = torch.from_numpy(batch["flux"]), torch.from_numpy(batch["ivar"])
    z = torch.as_tensor(batch["z"], dtype=torch.float32)
    again, _ = load_model(run)
    with torch.no_grad():
        a, b = model(x, w, z), again(x, w, z)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert bool(torch.isfinite(a[2]).all())
    # a checkpoint written before the setting existed loads with the default decoder
    old = {k: v for k, v in saved.items() if k != "decoder_activation"}
    assert ModelConfig.from_dict(old).decoder_activation == "leaky-relu"
    # the demo does not reuse a run made with another decoder
    from workflows.demo import _settings_differ

    assert "decoder_activation speculator -> leaky-relu" in _settings_differ(ckpt, 2, 8, shards)
    # --init across decoders is a different network
    with pytest.raises(TrainError, match="model config differs"):
        train(TrainConfig(**base, run=str(tmp_path / "relu"), init=str(run), objective="fidelity"))
    assert PRESETS["cpu-small"].decoder_activation == "leaky-relu"
