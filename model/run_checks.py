"""Checks that keep a run honest about its data: which shards it reads, whether they fit the
model, and whether its loss is still a number.

- :func:`shards_of_run`: the shards a command reads for a run. ``--shards`` when given; else the
  folder the run's config records, which must be absolute (a relative one would mean whatever
  sits at that path below the current folder: one is accepted only where it holds exactly the
  run's shards) and must still hold the shard set the run was trained on (the sha256 of its ``index.json`` is in every checkpoint). A missing or changed set
  is one :class:`TrainError`, never a silent substitute.
- :func:`check_pixels`: the model's input size against the shards' grid, as one line
  ("this model expects 3921 pixels, these shards have 3500") instead of a tensor-size error.
- :func:`stop_if_not_finite`: a diverged run stops, keeping its last good checkpoint.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from model.checkpoint import TrainError
from model.data import ShardError, index_sha256


def check_pixels(ckpt: dict, npix: int, what: str, shards: str | Path) -> None:
    """TrainError unless the checkpoint's model takes spectra of ``npix`` pixels."""
    expected = int(ckpt.get("model_config", {}).get("npix", npix))
    if expected != npix:
        raise TrainError(
            f"{what}: this model expects {expected} pixels, the shards in {shards} have {npix} "
            "(another grid or release); use shards of the grid the model was trained on"
        )


def shards_of_run(run: str | Path, ckpt: dict, shards: str | Path | None = None) -> Path:
    """The shards folder to read for ``run``: ``shards`` if given, else the run's own, checked.

    Raises TrainError naming the run and the cause when the recorded folder is relative, gone,
    or holds other shards than the run was trained on.
    """
    if shards is not None:
        path = Path(shards)
        if not (path / "index.json").is_file():
            raise TrainError(f"no shards at {path} (index.json missing)")
        return path
    recorded = str(ckpt.get("config", {}).get("shards") or "")
    if not recorded:
        raise TrainError(f"{run} does not record its shards; pass --shards DIR")
    trained_on = ckpt.get("index_sha256")
    path = Path(recorded)
    if not os.path.isabs(recorded):
        # a run made before paths were stored absolute: its path meant "below the folder it was
        # started in"; accepted only where that is provably the same shard set
        if (path / "index.json").is_file() and trained_on and index_sha256(path) == trained_on:
            return path.resolve()
        raise TrainError(
            f"{run} records its shards as the relative path {recorded!r} (a run made before "
            "paths were stored absolute), and there is not the shard set it was trained on "
            "from this folder; pass --shards DIR"
        )
    if not (path / "index.json").is_file():
        raise TrainError(f"the shards {run} was trained on are gone ({path}); pass --shards DIR")
    try:
        now = index_sha256(path)
    except (OSError, ShardError) as e:
        raise TrainError(f"cannot read {path / 'index.json'}: {e}") from None
    if trained_on and now != trained_on:
        raise TrainError(
            f"the shards at {path} changed since {run} was trained on them (index.json sha256 "
            f"{now[:12]} != {trained_on[:12]}); pass --shards {path} to use them anyway"
        )
    return path


def stop_if_not_finite(train_loss: float, valid_loss: float, epoch: int, run: Path) -> None:
    """TrainError when an epoch's loss is NaN or infinite: the run has diverged, and nothing it
    writes from now on is a model. Called before the epoch's checkpoints are written, so the
    last good ones stay."""
    if math.isfinite(train_loss) and math.isfinite(valid_loss):
        return
    kept = [p.name for p in (run / "best.pt", run / "last.pt") if p.exists()]
    where = f"kept {' and '.join(kept)} of the last finite epoch" if kept else "no checkpoint"
    raise TrainError(
        f"{run}: the loss is not finite at epoch {epoch} (train {train_loss:.4g}, valid "
        f"{valid_loss:.4g}): training diverged; {where}. Try a smaller --lr"
    )
