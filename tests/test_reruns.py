"""What a rerun verifies, and runs that work from any folder (issue 19, docs/reruns.md).

- fetch re-hashes a file whose mtime changed since its ledger entry: a flipped byte is
  downloaded again, a touched but identical file is kept and re-recorded;
- a run stores absolute paths: evaluated from another folder it reads the shards it was trained
  on, even where other shards sit at the same relative path;
- a diverging run (--lr 1e12) stops with one line and a non-zero exit, and no NaN model;
- embed --spectra --catalog takes the columns its --help names; non-ASCII run and output paths
  go through embed and explore;
- the demo reuses a run only when the same settings made it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from fetch_support import FAST, SAMPLE_SDSS, legacy_catalog
from test_bad_input import World, world  # noqa: F401 - the module-scoped real run

from cli import main
from etl.fetch import fetch
from etl.ledger import load_ledger

REPO = Path(__file__).resolve().parents[1]


def test_fetch_rerun_rehashes_a_file_changed_since_verified(archive_server, release, tmp_path):
    catalog = legacy_catalog(tmp_path)
    data = tmp_path / "DATA"
    run = dict(base_url=archive_server.base_url, config=FAST, progress=False)
    first = fetch(release, data, str(catalog), **run)
    assert first.ok and first.downloaded == first.selected
    spectra = data / "dr16" / "spectra"
    flipped, touched = sorted(spectra.rglob("spec-*.fits"))[:2]
    good = flipped.read_bytes()
    body = bytearray(good)
    body[len(body) // 2] ^= 0xFF  # same size: a size check alone cannot see it
    flipped.write_bytes(bytes(body))
    os.utime(touched)  # new mtime, same bytes
    archive_server.hits.clear()

    again = fetch(release, data, str(catalog), **run)

    assert again.ok and again.downloaded == 1
    assert flipped.read_bytes() == good
    assert list(archive_server.hits) == [
        next(p for p in archive_server.hits if p.endswith(flipped.name))
    ]
    ledger = load_ledger(data / "dr16" / "ledger")
    rel = touched.relative_to(spectra).as_posix()
    assert ledger[rel] == (touched.stat().st_size, hashlib.sha256(touched.read_bytes()).hexdigest())
    # the touched file is recorded with its new mtime: the next rerun reads nothing again
    archive_server.hits.clear()
    third = fetch(release, data, str(catalog), **run)
    assert third.downloaded == 0 and sum(archive_server.hits.values()) == 0
    sizes, mtimes = load_ledger(data / "dr16" / "ledger").stats([rel])
    assert mtimes[0] == touched.stat().st_mtime_ns


def test_an_old_ledger_without_mtimes_still_loads(tmp_path):
    import numpy as np

    from etl.ledger import _LEDGER_DTYPE_V1, Ledger, ledger_key

    old = np.zeros(1, _LEDGER_DTYPE_V1)
    old["key"], old["size"] = ledger_key("26/0266/x.fits"), 123
    np.save(tmp_path / "ledger.npy", old)
    sizes, mtimes = Ledger(tmp_path).stats(["26/0266/x.fits"])
    assert (sizes[0], mtimes[0]) == (123, 0)  # trusted on size, as before


def test_a_run_reads_its_own_shards_from_any_folder(world: World, tmp_path, monkeypatch):  # noqa: F811
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    shutil.copytree(world.shards, start / "shards")
    monkeypatch.chdir(start)
    result = CliRunner().invoke(
        main,
        ["train", "--shards", "shards", "--run", "runs/fid", "--epochs", "1", "--batch-size", "8"],
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((start / "runs/fid/config.json").read_text())["train"]
    assert cfg["shards"] == str(start / "shards") and cfg["run"] == str(start / "runs/fid")
    # other shards at the same relative path in the other folder (the n = 2 vs 329)
    elsewhere.mkdir()
    shutil.copytree(world.other_grid, elsewhere / "shards")
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["evaluate", "--run", str(start / "runs/fid")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((start / "runs/fid/eval-test/metrics.json").read_text())
    assert metrics["provenance"]["shards_dir"] == str(start / "shards")
    test_rows = sum(
        e["rows"]
        for e in json.loads((world.shards / "index.json").read_text())["shards"]
        if e["split"] == "test"
    )
    assert metrics["n"] == test_rows


def test_a_diverging_run_stops_with_one_line_and_no_nan_model(world: World, tmp_path):  # noqa: F811
    run = tmp_path / "diverged"
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--shards",
            str(world.shards),
            "--run",
            str(run),
            "--lr",
            "1e12",
            "--epochs",
            "2",
            "--batch-size",
            "8",
        ],
    )
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "not finite at epoch 1" in errors[0] and "smaller --lr" in errors[0]
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


def test_stop_if_not_finite_names_the_checkpoints_it_kept(tmp_path):
    from model.run_checks import stop_if_not_finite
    from model.train import TrainError

    stop_if_not_finite(1.0, 2.0, 3, tmp_path)  # finite: goes on
    (tmp_path / "best.pt").write_bytes(b"")
    with pytest.raises(TrainError, match="kept best.pt of the last finite epoch"):
        stop_if_not_finite(float("nan"), 2.0, 4, tmp_path)


def _key_z_catalog(path: Path, files: list[Path], z: float) -> Path:
    """A table with exactly the columns `embed --help` names: PLATE, MJD, FIBERID, Z."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["PLATE", "MJD", "FIBERID", "Z"])
        for p in files:
            _, plate, mjd, fiber = p.stem.split("-")
            w.writerow([int(plate), int(mjd), int(fiber), z])
    return path


def test_embed_spectra_catalog_with_the_columns_its_help_names(world: World, tmp_path):  # noqa: F811
    from model.embed import read_embedding

    files = sorted((SAMPLE_SDSS / "26").rglob("spec-*.fits"))[:3]
    catalog = _key_z_catalog(tmp_path / "z.csv", files, 0.05)
    out = tmp_path / "cand.fits"
    args = ["embed", "--run", str(world.run), "--out", str(out), "--device", "cpu", "--spectra"]
    result = CliRunner().invoke(main, [*args, "--catalog", str(catalog), *map(str, files)])
    assert result.exit_code == 0, result.output
    cols, _ = read_embedding(out)
    assert len(cols["z"]) == 3 and all(abs(z - 0.05) < 1e-6 for z in cols["z"])
    assert all(len(s) > 10 for s in cols["specobjid"])  # the ids the table lacks: from HDU 2


def test_non_ascii_run_and_output_paths(world: World, tmp_path):  # noqa: F811
    from model.embed import read_embedding

    home = tmp_path / "démo ✓"
    shutil.copytree(world.run, home / "run", ignore=shutil.ignore_patterns("eval-*"))
    emb, page = home / "embédding.fits", home / "page ✓.html"
    run = CliRunner().invoke
    result = run(
        main,
        ["embed", "--run", str(home / "run"), "--out", str(emb), "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    _, header = read_embedding(emb)
    assert header["RUN"] == str(home / "run")
    result = run(
        main,
        ["explore", "--embedding", str(emb), "--run", str(home / "run"), "--out", str(page)]
        + ["--top", "2", "--sample", "2", "--device", "cpu"],
    )
    assert result.exit_code == 0, result.output
    assert page.stat().st_size > 1000


def test_demo_reuses_only_runs_of_the_same_settings(world: World, tmp_path):  # noqa: F811
    from workflows.demo import WorkflowError, train_objectives

    plan = (("fidelity", 1.0, None),)
    said: list[str] = []
    runs = tmp_path / "runs"
    train_objectives(world.shards, runs, 1, 8, plan=plan, step=said.append)
    train_objectives(world.shards, runs, 1, 8, plan=plan, step=said.append)
    assert "reusing" in said[-1] and "same settings" in said[-1]
    with pytest.raises(WorkflowError, match="other settings .*epochs 1 -> 2"):
        train_objectives(world.shards, runs, 2, 8, plan=plan, step=said.append)
    # a run of another learning rate or loss family is another experiment too
    faster = (("fidelity", 1.0, None, {"lr": 3e-3}),)
    with pytest.raises(WorkflowError, match=r"other settings \(lr 0.001 -> 0.003\)"):
        train_objectives(world.shards, runs, 1, 8, plan=faster, step=said.append)
    staged = (("fidelity", 1.0, None), ("similarity", 1.0, "fidelity", {"losses": "scale-free"}))
    train_objectives(world.shards, runs, 1, 8, plan=staged, step=said.append)
    ckpt = torch.load(runs / "similarity" / "last.pt", weights_only=False)
    assert ckpt["config"]["losses"] == "scale-free"
    assert ckpt["config"]["init"] == str(runs / "fidelity")
    # a stage's own batch size is used, capped by what the corpus allows (the last argument)
    small = (("fidelity", 1.0, None, {"batch_size": 4}),)
    train_objectives(world.shards, tmp_path / "small", 1, 8, plan=small, step=said.append)
    ckpt = torch.load(tmp_path / "small" / "fidelity" / "last.pt", weights_only=False)
    assert ckpt["config"]["batch_size"] == 4
    big = (("fidelity", 1.0, None, {"batch_size": 16}),)
    with pytest.raises(WorkflowError, match=r"batch_size 4 -> 8"):
        train_objectives(world.shards, tmp_path / "small", 1, 8, plan=big, step=said.append)


@pytest.mark.slow
def test_ctrl_c_during_build_shards_is_one_line_and_the_rerun_completes(
    archive_server, release, tmp_path
):
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "DATA"
    got = fetch(
        release,
        data,
        str(REPO / "sample" / "catalog.csv"),
        base_url=archive_server.base_url,
        config=FAST,
        progress=False,
    )
    assert got.downloaded > 50
    cmd = [sys.executable, "-c", "from cli import main; main()", "build-shards"]
    cmd += ["--data-dir", str(data), "--workers", "2", "--shard-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # the child starts with Ctrl-C at its default, as from a terminal: an ignored SIGINT would be
    # inherited from this process (whatever an earlier test left) and Python would keep ignoring it
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    shards = data / "dr16" / "shards"
    deadline = time.monotonic() + 120
    while not any(shards.glob("*/*")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the workers are writing: the cluster is up
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C goes to the whole group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert [ln for ln in out.splitlines() if ln.startswith("Error")] == [
        "Error: interrupted (Ctrl-C); rerun the same command to resume"
    ]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (shards / "index.json").exists()


def test_a_run_of_an_older_version_with_a_relative_path(world: World, tmp_path, monkeypatch):  # noqa: F811
    """Accepted only from a folder where that path holds exactly the run's shards."""
    from test_bad_input import run_copy

    def relative(ckpt: dict) -> None:
        ckpt["config"]["shards"] = "data/shards"

    run = run_copy(world, tmp_path, relative)
    there = tmp_path / "there"
    shutil.copytree(world.shards, there / "data" / "shards")
    monkeypatch.chdir(there)
    result = CliRunner().invoke(main, ["evaluate", "--run", run, "--out", str(tmp_path / "e")])
    assert result.exit_code == 0, result.output
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(world.other_grid, elsewhere / "data" / "shards")
    monkeypatch.chdir(elsewhere)
    result = CliRunner().invoke(main, ["evaluate", "--run", run, "--out", str(tmp_path / "f")])
    assert result.exit_code == 1 and "relative path 'data/shards'" in result.output
