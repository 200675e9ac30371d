"""Sim to real: models trained on the SYNTHETIC population, measured on REAL galaxies.

The convergence study (`benchmarks/convergence.py`) measures every run on the population's test
split; the population is synthetic, so a setting that wins there may not win on real spectra.
This script runs each model on every row of a shards folder of real galaxies (the demo builds
the bundled sample's 84 into `demo-out/data/dr16/shards`; none of them was ever trained on) and
prints, per run:

- L_fid: the Table 1 fidelity term, the mean over spectra (`specetl evaluate` on each split,
  weighted by its rows). A few badly fitted galaxies dominate it on 84 objects;
- median χ²: the fidelity term per valid pixel (`specetl embed`'s CHI2), its median over the
  galaxies, which they do not;
- the scale-free shift: mean |s − s_aug| of copies moved to z_aug ~ U[0, 0.5] (interpolated,
  as `specetl evaluate` makes them) over the median latent distance of two different real
  galaxies (`model.interpretability.scale_free_shift`): how far a galaxy moves with redshift,
  in units of how far apart real galaxies lie;
- σ_min/σ_max of the real latents.

    python benchmarks/sim_to_real.py --real demo-out/data/dr16/shards \
        --runs R/fid-120 R/fid-rf-120 R/conrf-w100-96 --json sim-to-real.json

The models were trained on SYNTHETIC spectra (bagpipes galaxies observed with real SDSS noise
and masks); the galaxies measured here are REAL.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model.checkpoint import load_model  # noqa: E402
from model.embed import embed_stream, iter_shard_batches  # noqa: E402
from model.interpretability import scale_free_shift, singular_ratio  # noqa: E402
from workflows.science import on_every_row  # noqa: E402

SPLITS = ("train", "valid", "test")


def measure(run: Path, real: Path) -> dict:
    """The sim-to-real figures of one run on every row of the shards folder `real`."""
    with tempfile.TemporaryDirectory() as tmp:  # evaluate's metrics.json, not kept
        m = on_every_row(run, real, Path(tmp))
    model, _ = load_model(run)
    table = embed_stream(model, iter_shard_batches(real, SPLITS), torch.device("cpu"))
    latents = table["s"].astype(np.float64)
    return {
        "run": str(run),
        "n": m["n"],
        "L_fid": m["L_fid"],
        "median_chi2": float(np.median(table["chi2"])),
        "latent_shift": m["latent_shift"],
        "scale_free_shift": scale_free_shift(latents, m["latent_shift"])["scale_free_shift"],
        "sv_ratio": singular_ratio(latents),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real", type=Path, required=True, help="shards folder of real galaxies")
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print(
        "| run | REAL galaxies | L_fid | median χ² | scale-free shift | σ_min/σ_max |\n"
        "|---|---:|---:|---:|---:|---:|"
    )
    for run in args.runs:
        r = measure(run, args.real)
        rows.append(r)
        print(
            f"| {run.name} | {r['n']} | {r['L_fid']:.3f} | {r['median_chi2']:.2f} "
            f"| {r['scale_free_shift']:.3f} | {r['sv_ratio']:.2f} |",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps({"real": str(args.real), "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
