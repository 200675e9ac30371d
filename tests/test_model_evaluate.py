"""`specetl evaluate`: Table 1 metrics against direct computations, seeding, figures, CLI.

One tiny cpu-small run (1 epoch on shards from the bundled sample) and a consistency run
initialised from it are shared by the module; the test split has 9 spectra.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_model_fixtures import build_sample_shards

from cli import main
from model.augment import redshift_augment
from model.data import index_sha256, list_shards
from model.eval_figures import SpectrumPanel, plot_figure2, plot_training
from model.evaluate import EvaluateError, compare_runs, evaluate_run, format_table
from model.train import TrainConfig, load_model, train


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_sample_shards(tmp_path_factory.mktemp("model_evaluate"))


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval_runs")
    base = dict(shards=str(shards), preset="cpu-small", batch_size=8, seed=1, progress=False)
    fid, con = root / "fid", root / "con"
    train(TrainConfig(run=str(fid), objective="fidelity", epochs=1, **base))
    train(TrainConfig(run=str(con), objective="consistency", epochs=1, init=str(fid), **base))
    return fid, con


@pytest.fixture(scope="module")
def result(runs, tmp_path_factory) -> dict:
    """One evaluation of the fidelity run, all 9 test spectra in one batch."""
    out = tmp_path_factory.mktemp("eval_out")
    return evaluate_run(runs[0], split="test", out_dir=out, seed=7, batch_size=64, device="cpu")


def _test_split(shards: Path) -> dict[str, torch.Tensor]:
    cols: dict[str, list] = {"flux": [], "ivar": [], "z": []}
    for s in list_shards(shards, "test"):
        with h5py.File(s.path) as f:
            for k in cols:
                cols[k].append(f[k][:])
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in cols.items()}


def _ink(path: Path) -> np.ndarray:
    """Where a PNG is not white (bool, rows x columns): what was drawn."""
    from matplotlib.image import imread

    return (imread(path)[..., :3] < 0.9).any(-1)


def _png_size(path: Path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_metrics_json_keys_provenance_and_figures(result, runs, shards):
    on_disk = json.loads(Path(result["metrics_path"]).read_text())
    assert on_disk == result
    for k in ("L_fid", "L_sim", "L_c", "latent_shift", "L_fid_aug"):
        assert math.isfinite(result[k]), k
    assert result["L_fid"] > 0 and 0 < result["L_sim"] < 2 and 0 <= result["L_c"] < 0.5
    assert result["n"] == 9 and (result["k0"], result["k1"]) == (2.5, 1.0)
    prov = result["provenance"]
    assert prov["run_dir"] == str(runs[0].resolve()) and prov["objective"] == "fidelity"
    assert (prov["preset"], prov["epochs"], prov["split"], prov["n_spectra"]) == (
        "cpu-small",
        1,
        "test",
        9,
    )
    assert prov["seed"] == 7 and prov["index_sha256"] == index_sha256(shards)
    assert prov["trained_on_index_sha256"] == prov["index_sha256"]
    for name, min_w in (("figure2", 1200), ("training", 400)):
        w, h = _png_size(result["figures"][name])
        assert w >= min_w and 250 <= h <= 3000, (name, w, h)
        assert Path(result["figures"][name]).stat().st_size > 20_000


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


@torch.no_grad()
def test_metrics_equal_a_plain_transcription_of_the_paper(result, runs, shards):
    """One batch holds the whole split, so each metric is the paper's equation on that batch,
    written out here in numpy, pair by pair (not through model.losses, which this checks)."""
    model, _ = load_model(runs[0])
    model.eval()
    d = _test_split(shards)
    x, w, z = d["flux"], d["ivar"], d["z"]
    s, x_rest, x_obs = model(x, w, z)
    s, xr, xo = s.double().numpy(), x_rest.double().numpy(), x_obs.double().numpy()
    xn, wn = x.double().numpy(), w.double().numpy()
    n, m = xn.shape
    # L_fid = 1/(2NM) Σ w (x − x'')²
    assert result["L_fid"] == pytest.approx((wn * (xn - xo) ** 2).sum() / (2 * n * m), rel=1e-5)
    # L_sim: restframe weights are the observed ivar at λ_rest(1+z) (interpolated, 0 where
    # an observed neighbour is masked or outside the grid), pair weights √(w'_i w'_j)
    wave_obs, wave_rest = model.wave_obs.double().numpy(), model.wave_rest.double().numpy()
    wr = np.zeros_like(xr)
    for i in range(n):
        lam = wave_rest * (1 + float(z[i]))
        inside = (lam >= wave_obs[0]) & (lam <= wave_obs[-1])
        k = np.clip(np.searchsorted(wave_obs, lam), 1, m - 1)
        both_valid = (wn[i, k - 1] > 0) & (wn[i, k] > 0)
        wr[i] = np.where(inside & both_valid, np.interp(lam, wave_obs, wn[i]), 0.0)
    total = 0.0
    for i in range(n):
        for j in range(n):
            spectral = (np.sqrt(wr[i] * wr[j]) * (xr[i] - xr[j]) ** 2).sum() / xr.shape[1]
            big_s = 0.5 * ((s[i] - s[j]) ** 2).sum() - spectral
            total += _sigmoid(1.0 * big_s - 2.5) + _sigmoid(-1.0 * big_s - 2.5)
    assert result["L_sim"] == pytest.approx(total / n**2, rel=1e-4)
    # the documented augmentation: z_aug ~ U[0, 0.5] from a cpu Generator seeded with `seed`
    gen = torch.Generator().manual_seed(7)
    xa, wa, za = redshift_augment(x, w, z, model.wave_obs, gen, 0.5)
    s_aug = model.encode(xa, wa, za).double().numpy()
    shift = np.linalg.norm(s - s_aug, axis=1)
    assert result["latent_shift"] == pytest.approx(shift.mean(), rel=1e-4)
    # L_c = 1/N Σ sigmoid(|s − s_aug|² / (2σ_s²)) − ½, σ_s = 0.1
    plain_c = (_sigmoid(shift**2 / (2 * 0.1**2)) - 0.5).mean()
    assert result["L_c"] == pytest.approx(plain_c, rel=1e-4, abs=1e-7)


def test_latent_shift_is_seeded(runs, tmp_path):
    kw = dict(figures=False, device="cpu", verify=False)
    a = evaluate_run(runs[1], out_dir=tmp_path / "a", seed=3, **kw)
    b = evaluate_run(runs[1], out_dir=tmp_path / "b", seed=3, **kw)
    c = evaluate_run(runs[1], out_dir=tmp_path / "c", seed=4, **kw)
    assert (a["latent_shift"], a["L_c"]) == (b["latent_shift"], b["L_c"])
    assert a["L_fid"] == c["L_fid"] and a["latent_shift"] != c["latent_shift"]
    assert a["figures"]["figure2"] is None and a["batch_size"] == 8  # the run's batch size


def test_errors_are_one_line(runs, tmp_path):
    with pytest.raises(EvaluateError, match="no checkpoint"):
        evaluate_run(tmp_path)
    with pytest.raises(EvaluateError, match="no shards"):
        evaluate_run(runs[0], shards_dir=tmp_path)
    res = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path)])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "no checkpoint" in res.output
    assert CliRunner().invoke(main, ["evaluate"]).exit_code == 1


def test_cli_run_and_compare_print_one_row_per_run(runs, tmp_path):
    fid, con = runs
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["evaluate", "--run", str(con), "--out", str(out), "--seed", "2"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metrics.json").read_text())["seed"] == 2
    assert str(out / "figure2.png") in res.output and (out / "training.png").exists()

    for argv in (["--compare", str(fid), str(con)], ["--compare", str(fid), "--compare", str(con)]):
        res = CliRunner().invoke(main, ["evaluate", *argv])
        assert res.exit_code == 0, res.output
        table = [ln for ln in res.output.splitlines() if ln.startswith("|")]
        assert len(table) == 2 + 2, res.output  # header, separator, one row per run
        assert "fidelity" in table[2] and "consistency" in table[3]
    assert (fid / "eval-test" / "metrics.json").exists()


def test_cli_refuses_ambiguous_run_choices_in_one_line(runs, tmp_path):
    """--run with --compare, neither, --out with --compare, bare run arguments: each one line."""
    fid, con = runs
    cases = {
        ("--run", str(fid), "--compare", str(con)): "not both",
        (): "give --run RUN or --compare",
        ("--compare", str(fid), str(con), "--out", str(tmp_path / "o")): "--out applies to --run",
        (str(fid), str(con)): "did you mean --compare?",
    }
    for argv, message in cases.items():
        res = CliRunner().invoke(main, ["evaluate", *argv])
        assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
        assert message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_compare_rows_and_table_formatting(runs):
    rows = compare_runs(list(runs), device="cpu")  # reuses or writes RUN/eval-test/
    assert [r["run"] for r in rows] == ["fid", "con"]
    text = format_table(rows, blank_untrained=True)
    lines = text.splitlines()
    assert len(lines) == 4 and all(ln.startswith("| ") for ln in lines[:1] + lines[2:])
    assert "mean abs(s − s_aug)" in lines[0]
    fid_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert fid_cells[3:5] == ["–", "–"] and fid_cells[-1] == "9"  # L_sim, L_c untrained


@pytest.mark.parametrize("n_latent,n", [(2, 1), (3, 40), (1, 5)])
def test_figure2_handles_latent_dims_and_tiny_splits(tmp_path, n_latent, n):
    rng = np.random.default_rng(0)
    wave = 10 ** (3.578 + 1e-4 * np.arange(3921))
    x = 1 + 0.1 * rng.standard_normal(3921)
    w = np.full(3921, 100.0)
    w[1000:1040] = 0  # a masked stretch
    panel = SpectrumPanel(wave, x, w, 0.1, x, np.array([0.05, 0.3]), np.stack([x, x]))
    lat = rng.standard_normal((n, n_latent))
    path = plot_figure2(
        tmp_path / "f.png",
        panel,
        lat,
        rng.uniform(0, 0.4, n),
        lat[0],
        lat[0] + 0.1 * rng.standard_normal((2, n_latent)),
    )
    assert _png_size(path)[0] > 1000
    # what a person sees: the spectrum panels (left two thirds) and the latent map (right third)
    # both hold drawn lines and points, not an empty frame
    ink = _ink(path)
    third = ink.shape[1] // 3
    assert ink[:, : 2 * third].mean() > 0.02 and ink[:, 2 * third :].mean() > 0.01
    rows = [{"epoch": 1, "train_total": 5.0, "train_fidelity": 5.0, "valid_fidelity": 4.0}]
    training = plot_training(rows, tmp_path / "t.png")
    assert _png_size(training)[0] > 300
    # an empty curve list would leave only axes and labels; with one epoch there is a marker
    empty = plot_training(
        [{"epoch": 1, "train_total": float("nan"), "train_fidelity": float("nan")}],
        tmp_path / "empty.png",
    )
    assert _ink(training).sum() > _ink(empty).sum()
