"""workflows.demo: the demo's training step reuses finished runs and resumes interrupted ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_model_fixtures import build_sample_shards

from model.train import TrainConfig, load_checkpoint, train
from workflows.demo import WorkflowError, train_objectives

PLAN = (("fidelity", 1.0, None),)


def _epochs(run: Path) -> list[int]:
    return [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_objectives_resumes_an_interrupted_run_then_reuses_it(tmp_path):
    shards = build_sample_shards(tmp_path)  # real sample spectra
    runs = tmp_path / "runs"
    cfg = dict(shards=str(shards), objective="fidelity", preset="cpu-small", progress=False)
    # a demo run interrupted after its first of two epochs
    train(TrainConfig(run=str(runs / "fidelity"), epochs=2, batch_size=8, **cfg), 1)
    assert "optimizer" in load_checkpoint(runs / "fidelity" / "last.pt")

    said: list[str] = []
    got = train_objectives(shards, runs, 2, 8, plan=PLAN, step=said.append)
    assert got == [runs / "fidelity"]
    assert any("resuming" in s and "after epoch 1/2" in s for s in said), said
    assert _epochs(runs / "fidelity") == [1, 2]
    assert "optimizer" not in load_checkpoint(runs / "fidelity" / "last.pt")  # finished: slim

    said.clear()
    train_objectives(shards, runs, 2, 8, plan=PLAN, step=said.append)
    assert any("reusing" in s for s in said) and _epochs(runs / "fidelity") == [1, 2]

    # a run that cannot go on is one WorkflowError naming the objective, not a traceback
    (runs / "fidelity" / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WorkflowError, match="cannot load checkpoint"):
        train_objectives(shards, runs, 2, 8, plan=PLAN, step=said.append)
