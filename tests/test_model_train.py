"""Training on shards built from the bundled real sample: learning, resume, init, DDP, CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_model_fixtures import REPO, build_sample_shards

from model.train import (
    TrainConfig,
    TrainError,
    load_checkpoint,
    load_model,
    saved_setting,
    sigma_s_schedule,
    train,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_sample_shards(tmp_path_factory.mktemp("model_train"))


def _cfg(shards: Path, run: Path, **kw) -> TrainConfig:
    base = dict(
        shards=str(shards), run=str(run), preset="cpu-small", batch_size=8, seed=1, progress=False
    )
    return TrainConfig(**{**base, **kw})


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_training_lowers_validation_fidelity(shards, tmp_path):
    run = tmp_path / "fid"
    train(_cfg(shards, run, objective="fidelity", epochs=4, lr=2e-3))
    m = _metrics(run)
    assert [r["epoch"] for r in m] == [1, 2, 3, 4]
    assert m[-1]["valid_fidelity"] < 0.7 * m[0]["valid_fidelity"]
    ckpt = load_checkpoint(run / "last.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 4 and ckpt["config"]["objective"] == "fidelity"
    assert len(ckpt["index_sha256"]) == 64
    torch.load(run / "best.pt", weights_only=True)
    model, _ = load_model(run)
    assert model.wave_obs.shape == (3921,)


def test_resume_2_plus_2_equals_4(shards, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    kw = dict(objective="consistency", epochs=4, checkpoint_every=2)
    train(_cfg(shards, full, **kw))
    train(_cfg(shards, part, **kw), stop_after_epoch=2)
    assert load_checkpoint(part / "last.pt")["epoch"] == 2
    # an interrupted run's last.pt holds what --resume needs; best.pt only the model
    interrupted, best = load_checkpoint(part / "last.pt"), load_checkpoint(part / "best.pt")
    assert {"optimizer", "scheduler", "rng"} <= interrupted.keys()
    assert not {"optimizer", "scheduler", "rng"} & best.keys()
    assert best["model_config"] == interrupted["model_config"] and best["metrics"]["epoch"] >= 1
    assert (part / "best.pt").stat().st_size < 0.5 * (part / "last.pt").stat().st_size
    with pytest.raises(TrainError, match="already holds a run"):
        train(_cfg(shards, part, **kw))
    with pytest.raises(TrainError, match="differ"):
        train(_cfg(shards, part, **{**kw, "lr": 5e-3}, resume=True))
    train(_cfg(shards, part, **kw, resume=True))
    a = load_checkpoint(full / "last.pt")["model"]
    b = load_checkpoint(part / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _metrics(full) == [
        {**r, "spectra_per_s": m["spectra_per_s"], "epoch_s": m["epoch_s"]}
        for r, m in zip(_metrics(part), _metrics(full), strict=True)
    ]
    # a finished run has nothing left to resume: its last.pt is slim and --resume is a no-op
    assert "optimizer" not in load_checkpoint(full / "last.pt")
    # ... and, when its last epoch is also its best, the same file as best.pt (no second copy)
    # every epoch reports the shape of the validation latents (1: both dimensions used alike)
    assert all(0 <= m["valid_sv_ratio"] <= 1 for m in _metrics(full))
    for run in (full, part):
        totals = [m["valid_total"] for m in _metrics(run)]
        last_is_best = min(totals) == totals[-1] and totals.count(min(totals)) == 1
        assert os.path.samefile(run / "best.pt", run / "last.pt") == last_is_best, totals
        assert load_checkpoint(run / "best.pt")["epoch"] == (
            4 if last_is_best else totals.index(min(totals)) + 1
        )
    before = (full / "metrics.jsonl").read_text()
    assert train(_cfg(shards, full, **kw, resume=True))["epoch"] == 4
    assert (full / "metrics.jsonl").read_text() == before


def test_similarity_then_consistency_from_init(shards, tmp_path):
    sim = tmp_path / "sim"
    train(_cfg(shards, sim, objective="similarity", epochs=1))
    assert "valid_similarity" in _metrics(sim)[0]
    assert "optimizer" not in load_checkpoint(sim / "best.pt")  # --init reads a slim best.pt
    con = tmp_path / "con"
    train(_cfg(shards, con, objective="consistency", epochs=1, init=str(sim)))
    m = _metrics(con)[0]
    assert 0 <= m["valid_consistency"] < 0.5 and m["valid_latent_shift"] >= 0
    with pytest.raises(TrainError, match="model config differs"):
        train(_cfg(shards, tmp_path / "x", preset="paper", epochs=1, init=str(sim)))


def test_old_full_state_checkpoints_load_and_bad_ones_fail_clearly(shards, tmp_path):
    """A version-1 run (full training state in best.pt and last.pt) still serves load_model,
    --init and --resume; a newer or damaged checkpoint fails with a one-line TrainError."""
    new = tmp_path / "new"
    kw = dict(objective="fidelity", epochs=2)
    train(_cfg(shards, new, **kw), stop_after_epoch=1)
    full = torch.load(new / "last.pt", weights_only=True)
    assert full["version"] == 2 and "optimizer" in full
    old = tmp_path / "old"  # what specetl wrote before slim checkpoints
    old.mkdir()
    v1 = {**full, "version": 1}
    torch.save(v1, old / "best.pt")
    torch.save(v1, old / "last.pt")
    (old / "config.json").write_text((new / "config.json").read_text())
    (old / "metrics.jsonl").write_text((new / "metrics.jsonl").read_text())
    model, ckpt = load_model(old)
    assert ckpt["version"] == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, full["model"][k]), k
    train(_cfg(shards, tmp_path / "from-old", **kw, init=str(old)), stop_after_epoch=1)
    train(_cfg(shards, old, **kw, resume=True))
    assert load_checkpoint(old / "last.pt")["epoch"] == 2

    # model-only last.pt of an unfinished run (e.g. a best.pt copied over it): no resume
    slim = {k: v for k, v in full.items() if k not in ("optimizer", "scheduler", "rng")}
    torch.save(slim, new / "last.pt")
    with pytest.raises(TrainError, match="holds no optimizer/scheduler/rng state"):
        train(_cfg(shards, new, **kw, resume=True))
    torch.save({**slim, "version": 99}, new / "best.pt")
    with pytest.raises(TrainError, match="version 99"):
        load_model(new)
    torch.save({k: v for k, v in slim.items() if k != "model"}, new / "best.pt")
    with pytest.raises(TrainError, match="lacks model"):
        load_model(new)


@pytest.mark.slow
def test_ddp_two_cpu_processes(shards, tmp_path):
    """The README's command: torchrun … -m cli -- train … (gloo on CPU, 2 ranks)."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "cli",
        "--",  # torchrun would otherwise take --run for its own --run-path
        "train",
        "--shards",
        str(shards),
        "--run",
        str(run),
        "--objective",
        "similarity",
        "--epochs",
        "2",
        "--batch-size",
        "4",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 rank(s)" in res.stderr
    m = _metrics(run)
    assert [r["epoch"] for r in m] == [1, 2]  # rank 0 alone writes
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_cli_train_and_one_line_errors(shards, tmp_path):
    from click.testing import CliRunner

    from cli import main

    run = tmp_path / "cli"
    args = [
        "train",
        "--shards",
        str(shards),
        "--run",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--preset",
        "cpu-small",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (run / "best.pt").exists() and (run / "config.json").exists()
    res = CliRunner().invoke(main, args)  # the run exists and --resume was not given
    assert res.exit_code != 0 and "already holds a run" in res.output


def test_cache_on_device_trains_the_same_model_family(shards, tmp_path):
    """--cache-on-device (here on the CPU "device") learns like streaming and resumes exactly."""
    run = tmp_path / "cached"
    train(_cfg(shards, run, objective="fidelity", epochs=4, lr=2e-3, cache_on_device=True))
    m = _metrics(run)
    assert m[-1]["valid_fidelity"] < 0.7 * m[0]["valid_fidelity"]
    part = tmp_path / "cached-part"
    kw = dict(objective="fidelity", epochs=4, lr=2e-3, cache_on_device=True)
    train(_cfg(shards, part, **kw), stop_after_epoch=2)
    train(_cfg(shards, part, **kw, resume=True))
    a, b = load_checkpoint(run / "last.pt")["model"], load_checkpoint(part / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_more_epochs_says_how_to_train_longer(shards, tmp_path):
    """--resume refuses changed settings and names the way to train longer (a new run with
    --init RUN); the command it suggests then runs."""
    import shlex

    from click.testing import CliRunner

    from cli import main

    run = tmp_path / "short"
    train(_cfg(shards, run, objective="fidelity", epochs=1))
    common = ["train", "--shards", str(shards), "--batch-size", "8", "--seed", "1"]
    res = CliRunner().invoke(main, [*common, "--run", str(run), "--epochs", "3", "--resume"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert "epochs: 1 → 3" in line and f"--init {run}" in line
    suggested = shlex.split(line.split("specetl ", 1)[1].split(" (plus", 1)[0])
    suggested = [str(tmp_path / "longer") if a == "NEW_RUN" else a for a in suggested]
    suggested = ["1" if a == "N" else a for a in suggested]
    again = CliRunner().invoke(main, [*suggested, *common[1:]])
    assert again.exit_code == 0, again.output
    assert _metrics(tmp_path / "longer")[0]["epoch"] == 1


def test_resume_reads_a_setting_the_checkpoint_lacks_as_it_was_then(shards, tmp_path):
    """A checkpoint written before a setting existed was trained with the code of its day, not
    with today's default: a paper-2023, observed-frame run from before --losses, --augment and
    --encoder-frame must not resume under today's scale-free restframe defaults."""
    from model.checkpoint import save_checkpoint
    from workflows.demo import _settings_differ

    run = tmp_path / "old"
    old = dict(losses="paper-2023", encoder_frame="observed", augment="interpolate")
    train(_cfg(shards, run, objective="consistency", epochs=2, **old), stop_after_epoch=1)
    ckpt = load_checkpoint(run / "last.pt")
    recorded_later = ("losses", "consistency_weight", "consistency_norm", "augment")
    for key in (*recorded_later, "encoder_frame", "sim_form", "sigma_s_start"):
        del ckpt["config"][key]
    del ckpt["model_config"]["encoder_frame"]
    save_checkpoint(ckpt, run / "last.pt")
    with pytest.raises(TrainError) as err:  # today's defaults
        train(_cfg(shards, run, objective="consistency", epochs=2, resume=True))
    for change in (
        "losses: 'paper-2023' → 'scale-free'",
        "consistency_weight: 1.0 → 100.0",
        "consistency_norm: 'mean-variance' → 'whitened'",
        "augment: 'interpolate' → 'pixel-shift'",
        "encoder_frame: 'observed' → 'restframe'",
    ):
        assert change in str(err.value)
    # the demo reads an old run the same way
    differs = _settings_differ(ckpt, 2, 8, shards, {"losses": "paper-2023"})
    assert "encoder_frame observed -> restframe" in differs
    assert "augment interpolate -> pixel-shift" in differs
    # with the settings it was trained with, it resumes and finishes
    same = dict(consistency_weight=1.0, consistency_norm="mean-variance", **old)
    train(_cfg(shards, run, objective="consistency", epochs=2, resume=True, **same))
    assert [m["epoch"] for m in _metrics(run)] == [1, 2]
    assert load_model(run)[0].wave_enc is None  # and it is still an observed-frame model
    assert saved_setting({}, "z_aug_max") == TrainConfig.z_aug_max  # recorded from the start
    with pytest.raises(KeyError):
        saved_setting({}, "no_such_setting")


def test_sigma_s_schedule_is_geometric_from_start_to_target():
    total = 101
    assert [sigma_s_schedule(k, total, None, 0.1) for k in (0, 50, 100)] == [0.1] * 3
    sig = [sigma_s_schedule(k, total, 0.1, 0.001) for k in range(total)]
    assert sig[0] == pytest.approx(0.1) and sig[-1] == pytest.approx(0.001)
    assert sig[50] == pytest.approx(0.01)  # geometric: halfway in log
    assert all(a > b for a, b in zip(sig[:-1], sig[1:], strict=True))
    assert sigma_s_schedule(500, total, 0.1, 0.001) == pytest.approx(0.001)  # clamped after the end


def test_latent_sv_ratio_tells_a_line_from_a_cloud():
    from model.objectives import latent_sv_ratio

    g = torch.Generator().manual_seed(0)
    t = torch.randn(500, 1, generator=g)
    line = torch.cat([t, -2 * t + 0.3], dim=1)  # two latents, one degree of freedom
    cloud = torch.randn(500, 2, generator=g)
    assert latent_sv_ratio(line) < 1e-5
    assert latent_sv_ratio(cloud) > 0.8
    assert latent_sv_ratio(cloud * torch.tensor([1.0, 0.1])) == pytest.approx(0.1, rel=0.15)
    assert math.isnan(latent_sv_ratio(cloud[:1]))
    assert math.isnan(latent_sv_ratio(torch.full((5, 2), float("nan"))))  # a diverged model
    assert latent_sv_ratio(torch.cat([cloud, torch.full((3, 2), float("inf"))])) > 0.8


def test_z_aug_max_reaches_every_copy_and_resume_keeps_it(shards, tmp_path, monkeypatch):
    """`specetl train --z-aug-max` sets the range of the copies' redshifts in training and in
    its validation, is recorded in the run, and --resume refuses another value."""
    from click.testing import CliRunner

    import model.objectives
    from cli import main

    drawn: list[tuple[float, float]] = []
    real_augment = model.objectives.redshift_augment

    def recording_augment(x, w, z, wave_obs, generator, z_max, mode):
        out = real_augment(x, w, z, wave_obs, generator, z_max, mode)
        drawn.append((z_max, float(out[2].max())))
        return out

    monkeypatch.setattr(model.objectives, "redshift_augment", recording_augment)
    run = tmp_path / "con"
    args = ["train", "--shards", str(shards), "--run", str(run), "--objective", "consistency"]
    args += ["--epochs", "1", "--batch-size", "8", "--seed", "1", "--z-aug-max", "0.2"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert len(drawn) > 2 and {z_max for z_max, _ in drawn} == {0.2}
    assert 0.1 < max(top for _, top in drawn) <= 0.2 + 1e-3  # pixel-shift rounds to a pixel
    assert json.loads((run / "config.json").read_text())["train"]["z_aug_max"] == 0.2
    args[args.index("0.2")] = "0.3"
    res = CliRunner().invoke(main, [*args, "--resume"])
    assert res.exit_code != 0 and "z_aug_max" in res.output
    from workflows.demo import _settings_differ  # the demo does not reuse it for a 0.5 run

    ckpt = load_checkpoint(run / "last.pt")
    assert "z_aug_max 0.2 -> 0.5" in _settings_differ(ckpt, 1, 8, shards)
    with pytest.raises(TrainError, match=r"--z-aug-max must be in \(0, 1\]"):
        TrainConfig(shards="s", run="r", z_aug_max=1.5)


def test_consistency_trains_with_pixel_shift_copies():
    """--augment pixel-shift reaches the consistency term (the copies sit a whole number of
    pixels away), and an unknown mode is refused by the config."""
    from model.autoencoder import PRESETS, SpectrumAutoencoder
    from model.objectives import step_losses

    torch.manual_seed(0)
    core = SpectrumAutoencoder(PRESETS["cpu-small"])
    x = 1 + 0.1 * torch.randn(4, core.wave_obs.shape[0])
    batch = {"flux": x, "ivar": torch.ones_like(x), "z": torch.tensor([0.05, 0.1, 0.2, 0.3])}
    terms = ("fidelity", "consistency")
    parts = step_losses(
        core, core, batch, terms, generator=torch.Generator().manual_seed(0),
        losses="scale-free", consistency_norm="whitened", augment="pixel-shift",
    )  # fmt: skip
    assert torch.isfinite(parts["total"]) and parts["latent_shift"] > 0
    parts["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in core.parameters() if p.grad is not None)
    # training's validation judges the copies it trains on (it picks best.pt)
    from model.objectives import evaluate

    def shift(mode: str) -> float:
        got = evaluate(
            core, [batch], torch.device("cpu"), terms, losses="scale-free",
            consistency_norm="whitened", augment=mode,
        )  # fmt: skip
        return got["latent_shift"]

    assert shift("pixel-shift") != shift("interpolate")
    with pytest.raises(TrainError, match="--augment must be one of"):
        TrainConfig(shards="s", run="r", augment="sinc")
