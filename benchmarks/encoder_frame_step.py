"""Benchmark: what the restframe encoder costs. One training step (forward + backward + Adam) and
one encoding pass of the observed-frame and the restframe encoder (`--encoder-frame`), same
sizes, same batch, same machine, calls interleaved.

The restframe encoder reads the spectrum on a 5,973-pixel restframe grid (2359–9332 Å at
1e-4 dex) instead of the 3,921 observed pixels, so its convolutions do ~1.5x the work; the
decoder, the redshifting and the losses are the same.

    .venv/bin/python benchmarks/encoder_frame_step.py [--preset cpu-small] [--batch 64] [--steps 5]

Prints seconds per call for each frame and the ratio (restframe / observed; > 1: it costs more).
Input: normalised flux ~ 1 + noise on the SDSS grid (the step's cost does not depend on values).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from train_step import _time  # noqa: E402

from model.autoencoder import ENCODER_FRAMES, PRESETS, ModelConfig, SpectrumAutoencoder  # noqa: E402
from model.objectives import step_losses  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=tuple(PRESETS), default="cpu-small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {}
    for frame in ENCODER_FRAMES:
        cfg = ModelConfig.from_dict({**PRESETS[args.preset].to_dict(), "encoder_frame": frame})
        models[frame] = SpectrumAutoencoder(cfg)
    m = models["observed"].wave_obs.shape[0]
    x = 1 + 0.1 * torch.randn(args.batch, m)
    batch = {"flux": x, "ivar": torch.ones_like(x), "z": 0.3 * torch.rand(args.batch)}
    terms = ("fidelity", "consistency")

    def train_step(model: SpectrumAutoencoder, opt: torch.optim.Optimizer):
        def step() -> None:
            parts = step_losses(
                model, model, batch, terms, generator=torch.Generator().manual_seed(0),
                losses="scale-free", consistency_norm="whitened", augment="pixel-shift",
            )  # fmt: skip
            opt.zero_grad()
            parts["total"].backward()
            opt.step()

        return step

    def encode(model: SpectrumAutoencoder):
        def step() -> None:
            with torch.no_grad():
                model.encode(batch["flux"], batch["ivar"], batch["z"])

        return step

    steps = [train_step(mod, torch.optim.Adam(mod.parameters())) for mod in models.values()]
    t_obs, t_rest = _time(steps, args.steps)
    e_obs, e_rest = _time([encode(mod) for mod in models.values()], args.steps)
    print(f"{args.preset}, batch {args.batch}, {torch.get_num_threads()} thread(s):")
    print(f"  consistency training step: observed {t_obs:.3f} s, restframe {t_rest:.3f} s, "
          f"ratio {t_rest / t_obs:.2f}x")  # fmt: skip
    print(f"  encoding pass:             observed {e_obs:.4f} s, restframe {e_rest:.4f} s, "
          f"ratio {e_rest / e_obs:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
