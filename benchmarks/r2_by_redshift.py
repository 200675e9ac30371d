"""Where in redshift does a model lose a parameter? kNN prediction error per redshift bin.

`benchmarks/r2_intervals.py` says *whether* one model's latents predict a true parameter worse
than another's; this says *where*. The same kNN predictions (fitted on train, k chosen on valid:
`model.interpretability.knn_test_predictions`) are split by the galaxy's redshift, and each bin
gets its RMS error, with the reference model's on the same galaxies and a paired bootstrap
interval of the difference. The bins are cut at the population's median z (0.17) and where Hα
(6563 Å) leaves the 3784–9332 Å grid (z 0.42):

    python benchmarks/r2_by_redshift.py --pop /work/conv/pop --split both \
        --reference R/fid-rf-120 --run R/conrf-w100-48 --param TRUE_LOG_SSFR

`--split both` pools the validation and test splits (each predicted by the same kNN), doubling
the galaxies per bin; a model may be `spender:STAGE_DIR` as in `r2_intervals.py`.

THE SPECTRA ARE SYNTHETIC (bagpipes galaxies observed with real SDSS noise and masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from r2_intervals import predictions  # noqa: E402

from etl.release import load_release  # noqa: E402
from model.interpretability import TARGETS, read_truth_catalog  # noqa: E402

#: redshift bin edges: the population's median z, and Hα (6563 Å) leaving the grid's 9332 Å
Z_EDGES = (0.0, 0.17, 0.42, np.inf)


def rms_bootstrap(
    y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """RMS error of a and b on the same objects, and rms_a − rms_b with a 95% paired interval."""
    err_a, err_b = (np.asarray(p, dtype=np.float64) - y for p in (pred_a, pred_b))
    idx = np.random.default_rng(seed).integers(len(y), size=(n_boot, len(y)))
    diff = np.sqrt((err_a[idx] ** 2).mean(1)) - np.sqrt((err_b[idx] ** 2).mean(1))
    lo, hi = np.percentile(diff, [2.5, 97.5])
    rms_a, rms_b = float(np.sqrt((err_a**2).mean())), float(np.sqrt((err_b**2).mean()))
    return {"n": len(y), "rms_a": rms_a, "rms_b": rms_b, "delta": rms_a - rms_b,
            "lo": float(lo), "hi": float(hi)}  # fmt: skip


def pooled(spec: str, shards: Path, truth_cat: dict, splits: list[str]) -> tuple[str, dict, dict]:
    """(label, {param: predictions}, {param or "z": truths}) over `splits`, concatenated."""
    preds: dict[str, list] = {p: [] for p in TARGETS}
    truths: dict[str, list] = {p: [] for p in TARGETS}
    label = spec
    for split in splits:
        label, pred, by_split = predictions(spec, shards, truth_cat, split)
        for p in TARGETS:
            preds[p].append(pred[p])
            truths[p].append(by_split[split][p])
    return (
        label,
        {p: np.concatenate(v) for p, v in preds.items()},
        {p: np.concatenate(v) for p, v in truths.items()},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pop", type=Path, required=True, help="population DATA folder")
    ap.add_argument("--reference", required=True, help="run (or spender:STAGE) to compare against")
    ap.add_argument("--run", action="append", required=True, help="run folder or spender:STAGE")
    ap.add_argument("--param", action="append", choices=list(TARGETS), default=None,
                    help="true parameter(s) to measure (default TRUE_LOG_SSFR)")  # fmt: skip
    ap.add_argument("--split", choices=("valid", "test", "both"), default="valid",
                    help="valid to choose settings by, test to report, both pooled")  # fmt: skip
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    params = args.param or ["TRUE_LOG_SSFR"]
    splits = ["valid", "test"] if args.split == "both" else [args.split]
    release = load_release("dr16")
    shards = args.pop / release.name / "shards"
    truth_cat = read_truth_catalog(args.pop / release.name / "catalog.fits")
    ref_label, ref, truths = pooled(args.reference, shards, truth_cat, splits)
    z = truths["TRUE_Z"]
    bins = list(zip(Z_EDGES[:-1], Z_EDGES[1:], strict=True))
    out = {"reference": ref_label, "split": args.split, "bins": [list(b) for b in bins], "runs": {}}
    print(
        f"RMS error of the kNN prediction from the latents, per redshift bin, on "
        f"{len(z)} SYNTHETIC galaxies ({args.split}); Δ = run − {ref_label} with a 95% paired "
        f"bootstrap interval ({args.n_boot} draws)"
    )
    for run in args.run:
        label, pred, truths_run = pooled(run, shards, truth_cat, splits)
        assert (truths_run["TRUE_Z"] == z).all(), "models must share the split"
        rows: dict = {}
        for p in params:
            rows[p] = []
            for lo, hi in bins:
                sel = (z >= lo) & (z < hi)
                r = rms_bootstrap(truths[p][sel], pred[p][sel], ref[p][sel], args.n_boot)
                rows[p].append(r)
                tell = "within noise" if r["lo"] <= 0 <= r["hi"] else (
                    "worse" if r["lo"] > 0 else "better")  # fmt: skip
                print(
                    f"  {label:22s} {p:14s} z {lo:.2f}-{hi:.2f} (n {r['n']:4d}): RMS "
                    f"{r['rms_a']:.3f} vs {r['rms_b']:.3f}, Δ {r['delta']:+.3f} "
                    f"[{r['lo']:+.3f}, {r['hi']:+.3f}] {tell}"
                )
        out["runs"][label] = rows
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
