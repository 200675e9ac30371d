"""Redshift invariance measured with either augmentation: interpolated or whole-pixel copies.

The scale-free shift of `benchmarks/convergence.py` (mean |s − s_aug| over the median latent
distance between two galaxies) moves each test spectrum to a new redshift by linear
interpolation, the same way training does by default. Interpolation at a fractional pixel also
blurs the copy (lines broaden by up to half a pixel), so a model can look less invariant because
it tells a blurred spectrum from a sharp one, not because redshift moves its latents. This
script measures the shift both ways (`model.augment.redshift_augment` mode "interpolate" and
"pixel-shift", the same seeded draw of z_new), for runs trained either way (`--augment`).

    python benchmarks/shift_yardstick.py --pop /work/conv/pop --run R/fid-120 \
        --run R/conw-w100-48 --run R/conwpx-w100-48 --json shift.json

THE SPECTRA ARE SYNTHETIC (bagpipes galaxies observed with real SDSS noise and masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from etl.release import load_release  # noqa: E402
from model.augment import AUGMENT_MODES, redshift_augment  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.embed import iter_shard_batches  # noqa: E402
from model.interpretability import scale_free_shift  # noqa: E402


@torch.no_grad()
def shifts(
    run: Path, shards: Path, split: str, seed: int = 0, modes: tuple[str, ...] = AUGMENT_MODES
) -> dict[str, float]:
    """{mode: scale-free shift} of `run` on `split` for each of `modes`, every mode from the
    same z_new draws."""
    model, _ = load_model(run, device="cpu")
    model.eval()
    lat, dist = [], {m: [] for m in modes}
    gens = {m: torch.Generator().manual_seed(seed) for m in modes}
    for rows in iter_shard_batches(shards, [split], 256):
        x, w = torch.from_numpy(rows["flux"]), torch.from_numpy(rows["ivar"])
        z = torch.from_numpy(np.asarray(rows["z"], dtype=np.float32))
        s = model.encode(x, w, z)
        lat.append(s.numpy())
        for mode in modes:
            xa, wa, za = redshift_augment(x, w, z, model.wave_obs, gens[mode], 0.5, mode)
            dist[mode].append((s - model.encode(xa, wa, za)).norm(dim=-1).numpy())
    latents = np.concatenate(lat)
    return {
        m: scale_free_shift(latents, float(np.concatenate(d).mean()))["scale_free_shift"]
        for m, d in dist.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pop", type=Path, required=True, help="population DATA folder")
    ap.add_argument("--run", type=Path, action="append", required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shards = args.pop / load_release("dr16").name / "shards"
    out = {}
    print("scale-free shift (SYNTHETIC population) by the augmentation that measures it")
    print(
        f"{'run':18s} {'trained with':12s} "
        + " ".join(f"{s}/{m:>11s}" for s in ("valid", "test") for m in AUGMENT_MODES)
    )
    for run in args.run:
        cfg = json.loads((run / "config.json").read_text())["train"]
        got = {split: shifts(run, shards, split) for split in ("valid", "test")}
        consistency = cfg["objective"] == "consistency"
        trained = cfg.get("augment", "interpolate") if consistency else "(no copies)"
        out[run.name] = {"trained_with": trained, **got}
        print(
            f"{run.name:18s} {out[run.name]['trained_with']:12s} "
            + " ".join(f"{got[s][m]:17.4f}" for s in ("valid", "test") for m in AUGMENT_MODES)
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
