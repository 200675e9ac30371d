"""Checkpoints of a run: what best.pt and last.pt hold, writing them safely, loading them.

  best.pt   the model with the lowest validation total loss: weights, model config, provenance
            (TrainConfig, index.json sha256, epoch) and metrics; what inference and `--init`
            need, nothing more
  last.pt   the latest epoch. While the run is unfinished it also holds TRAINING_STATE (optimizer,
            scheduler, RNG) for `--resume`; after the last epoch nothing is left to resume (the
            LR schedule has ended), so it is written model-only, like best.pt, and when the last
            epoch is also the best it is the same file as best.pt (a hard link)

A model-only checkpoint is a third of a full one (Adam keeps two moments per weight). Version 1
checkpoints (full state in best.pt too) still load. Checkpoints hold only tensors and plain python
values, so `torch.load(p, weights_only=True)` reads them. Load models through
`model.train.load_model(run)` (defined here, re-exported there).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from model.autoencoder import ModelConfig, SpectrumAutoencoder

CHECKPOINT_FORMAT = "specetl-checkpoint"
# 1: best.pt and last.pt both held the full training state. 2: best.pt and a finished run's
# last.pt hold the model only; an unfinished run's last.pt adds TRAINING_STATE.
CHECKPOINT_VERSION = 2
TRAINING_STATE = ("optimizer", "scheduler", "rng")


class TrainError(RuntimeError):
    """A user-facing error of a run (bad run dir, unreadable checkpoint, incompatible
    resume/init); one-line message."""


def save_checkpoint(ckpt: dict, path: Path) -> None:
    """Write `ckpt` to `path` under a temporary name, renamed when complete."""
    tmp = path.with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def link_checkpoint(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src`: a hard link (a copy where the file system has none),
    replacing `dst` atomically. Safe because checkpoints are only ever replaced, never rewritten
    in place."""
    tmp = dst.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with `weights_only=True` (no pickled code); raises TrainError."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many kinds (pickle, zip, EOF, OS) for a bad file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainError(f"cannot load checkpoint {path}: {first}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path} is not a specetl checkpoint")
    version = ckpt.get("version", 1)
    if version > CHECKPOINT_VERSION:
        raise TrainError(
            f"{path} is a checkpoint of version {version}; this specetl reads up to "
            f"{CHECKPOINT_VERSION} (upgrade specetl)"
        )
    missing = [k for k in ("model", "model_config", "config") if k not in ckpt]
    if missing:
        raise TrainError(f"{path} lacks {', '.join(missing)}; it is damaged or not a model")
    return ckpt


def load_model(
    run: str | Path, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[SpectrumAutoencoder, dict]:
    """The trained model of a run dir (`best.pt`, falling back to `last.pt`) and its checkpoint."""
    run = Path(run)
    path = run / f"{which}.pt"
    if not path.exists():
        path = run / "last.pt"
    if not path.exists():
        raise TrainError(f"no checkpoint in {run} (expected best.pt or last.pt)")
    ckpt = load_checkpoint(path, device)
    # the observed grid is a saved buffer: build with the checkpoint's own (4360 pixels for
    # DESI, 4648 for SDSS-V), not the DR16 default, or loading it fails on the shape
    wave_obs = ckpt["model"].get("wave_obs")
    if wave_obs is not None and not bool(torch.isfinite(wave_obs).all()):
        # a saved buffer, never trained: only a damaged file has NaN there (and the restframe
        # encoder's grid is derived from it)
        raise TrainError(
            f"{path}: its observed wavelength grid (wave_obs) is not finite; the checkpoint is "
            "damaged: use another one of the run or retrain it"
        )
    model = SpectrumAutoencoder(
        ModelConfig.from_dict(ckpt["model_config"]),
        None if wave_obs is None else wave_obs.cpu().numpy(),
    )
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt


def require_training_state(ckpt: dict, path: Path) -> None:
    """Raise TrainError unless `ckpt` holds what `--resume` needs (TRAINING_STATE)."""
    missing = [k for k in TRAINING_STATE if k not in ckpt]
    if missing:
        raise TrainError(
            f"--resume: {path} holds no {'/'.join(missing)} state (a model-only checkpoint); "
            f"start a new run with --init {path.parent}"
        )


def rng_state() -> dict:
    """The torch (and CUDA) RNG states, for a resumable checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved (CUDA only where a GPU is visible)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: cuda:LOCAL_RANK if a GPU is visible, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
