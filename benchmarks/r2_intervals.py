"""How sure is "R² at least the fidelity model's"? Paired bootstrap intervals of R² differences.

The convergence bar asks every physical R² of the consistency model (kNN regression of a true
parameter from the test latents: `model.interpretability`) to be at least the fidelity model's.
With 329 test galaxies a difference of 0.01-0.04 may be noise: this script prints, for each run
against a reference run, R²(run) − R²(reference) on the same test objects with a 95% percentile
bootstrap interval over them (`model.interpretability.paired_r2_bootstrap`). An interval that
straddles 0 means the test split cannot tell the two apart.

    python benchmarks/r2_intervals.py --pop /work/conv/pop --reference R/fid-120 \
        --run R/conw-w100-48 --run R/sim-sf-80 --json r2.json

`--split valid` measures the same differences on the validation split instead, which is what a
setting is chosen by (k is chosen on that split too, so its R² are a little optimistic, alike for
every model); the test split is for reporting only.

A model may also be a stage of spender 0.3 that `benchmarks/spender_compare.py` trained,
written `spender:WORK/spender-converged/con` (needs the `compare` extra), so the side-by-side's
R² gaps get the same test:

    python benchmarks/r2_intervals.py --pop /work/conv/pop \
        --reference spender:/work/spender-compare/spender-converged/con --run R/conw-w100-48

THE SPECTRA ARE SYNTHETIC (bagpipes galaxies observed with real SDSS noise and masks).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from etl.release import load_release  # noqa: E402
from model.interpretability import (  # noqa: E402
    TARGETS,
    encode_split,
    knn_test_predictions,
    paired_r2_bootstrap,
    read_truth_catalog,
    truths_for,
)

SPLITS = ("train", "valid", "test")
#: parameters the latents should NOT know (a redshift-invariant latent space has z R² ~ 0)
UNWANTED = ("TRUE_Z",)


def encoder_of(spec: str, shards: Path) -> tuple[str, Callable[[str], tuple]]:
    """(label, split → (latents, specobjids)) of a run folder or of `spender:STAGE_DIR`."""
    if spec.startswith("spender:"):
        from spender_compare import encode_rows, load_spender

        stage = Path(spec.removeprefix("spender:"))
        model = load_spender(stage, shards)
        seed = re.search(r"-(s\d+)$", stage.parent.name)  # spender_compare --seed N's chains
        label = f"spender-{stage.name}" + (f"-{seed.group(1)}" if seed else "")
        return label, lambda split: encode_rows(model, shards, split)
    run = Path(spec)
    return run.name, lambda split: encode_split(run, shards, split)[:2]


def predictions(
    spec: str, shards: Path, truth_cat: dict, split: str = "test"
) -> tuple[str, dict, dict]:
    """(label, {param: predictions on `split`}, truths by split) of a model's latents."""
    label, encode = encoder_of(spec, shards)
    lat, truths = {}, {}
    for name in SPLITS:
        s, ids = encode(name)
        lat[name], truths[name] = s, truths_for(truth_cat, ids)
    return label, {p: knn_test_predictions(lat, truths, p, split)[0] for p in TARGETS}, truths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pop", type=Path, required=True, help="population DATA folder")
    ap.add_argument("--reference", required=True, help="run (or spender:STAGE) to compare against")
    ap.add_argument("--run", action="append", required=True, help="run folder or spender:STAGE")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--split",
        choices=("test", "valid"),
        default="test",
        help="split the R² are measured on: test to report, valid to choose settings by",
    )
    args = ap.parse_args()
    release = load_release("dr16")
    shards = args.pop / release.name / "shards"
    truth_cat = read_truth_catalog(args.pop / release.name / "catalog.fits")
    sp = args.split
    ref_label, ref, truths = predictions(args.reference, shards, truth_cat, sp)
    n = len(truths[sp]["TRUE_Z"])
    out = {"reference": ref_label, "split": sp, f"n_{sp}": n, "runs": {}}
    print(
        f"R²(run) − R²({ref_label}) on the same {n} SYNTHETIC {sp}-split galaxies,"
        f" 95% paired bootstrap interval ({args.n_boot} draws)"
    )
    for run in args.run:
        label, pred, truths_run = predictions(run, shards, truth_cat, sp)
        rows = {}
        for p in TARGETS:
            y = truths_run[sp][p]
            assert (y == truths[sp][p]).all(), f"runs must share the {sp} split"
            rows[p] = paired_r2_bootstrap(y, pred[p], ref[p], n_boot=args.n_boot)
            r = rows[p]
            more = r["lo"] > 0  # the run knows more of it than the reference
            if r["lo"] <= 0 <= r["hi"]:
                verdict = "within noise"
            elif p in UNWANTED:  # latents should not know z: knowing more is worse
                verdict = "worse (knows more z)" if more else "better (knows less z)"
            else:
                verdict = "better" if more else "worse"
            print(
                f"  {label:18s} {p:14s} R² {r['r2_a']:.3f} vs {r['r2_b']:.3f}: "
                f"Δ {r['delta']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] {verdict}"
            )
        out["runs"][label] = rows
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
