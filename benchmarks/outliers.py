"""Do outlier scores find real non-galaxies? ROC AUC of quasars and stars vs held-out galaxies.

A model is trained on galaxies only, then scores REAL spectra it has never seen: the bundled
quasars at z <= 0.5 and stars (positives) and real galaxies held out of training (negatives),
all through `specetl embed --spectra`'s path (the same grid/mask/normalise as the shards).
Reported: ROC AUC by OUTLIER_SCORE, by the χ² term alone and by the latent-density term alone.
Goal: >= 0.95.

The training corpus is SYNTHETIC-from-real (``etl/synthetic/from_real.py``): real bundled galaxy
spectra moved to new redshifts with added noise. One third of the real galaxies that could be
templates (every third by redshift) are kept out of the corpus, so the negatives include real
galaxies the model has never seen in any form; the galaxies of reductions the release does not
serve (BOSS v5_*) are never templates and are negatives too. Results are printed per group.

Usage::

    python benchmarks/outliers.py --work /tmp/outliers --n 3000 --epochs 15
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from explore_fixtures import is_galaxy, sample_rows  # noqa: E402

import etl.synthetic.from_real as mc  # noqa: E402
from etl.build import build_shards  # noqa: E402
from etl.catalog import as_catalog, write_catalog  # noqa: E402
from etl.release import load_release  # noqa: E402
from model.density import roc_auc  # noqa: E402
from model.embed import read_embedding  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402
from workflows.spectra import embed_spectra  # noqa: E402

log = logging.getLogger("outliers")


def make_galaxy_corpus(data: Path, n: int, seed: int, release: str) -> set[float]:
    """SYNTHETIC corpus from 2/3 of the template galaxies; returns the held-out templates' z."""
    templates = mc.load_templates(release)
    train_t = [t for i, t in enumerate(templates) if i % 3 != 2]
    held_z = {t.z for i, t in enumerate(templates) if i % 3 == 2}
    spectra_dir = data / release / "spectra"
    parts = []
    for k, first in enumerate(range(0, n, mc.PER_PLATE)):
        count = min(mc.PER_PLATE, n - first)
        parts.append(
            mc._make_plate((spectra_dir, mc.FIRST_PLATE + k, count, seed, release, train_t))
        )
    columns = {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}
    columns["SPECOBJID"] = columns["SPECOBJID"].astype(np.uint64)
    columns["CLASS"] = np.full(n, "GALAXY")
    columns["ZWARNING"] = np.zeros(n, dtype=np.int32)
    write_catalog(as_catalog(columns, "synthetic corpus"), data / release / "catalog.fits")
    log.warning("SYNTHETIC corpus: %d spectra from %d real templates", n, len(train_t))
    return held_z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder")
    ap.add_argument("--n", type=int, default=3000, help="synthetic training spectra")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--objective", default="fidelity")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)
    release = load_release("dr16")
    data, run = args.work / "data", args.work / "run"
    t0 = time.perf_counter()
    held_z = make_galaxy_corpus(data, args.n, args.seed, release.name)
    built = build_shards(release, data, progress=False)
    if not (run / "last.pt").exists():
        train(
            TrainConfig(
                shards=str(built.shards_dir),
                run=str(run),
                objective=args.objective,
                preset="cpu-small",
                epochs=args.epochs,
                lr=args.lr,
                seed=args.seed,
                progress=False,
            )
        )
    t_train = time.perf_counter() - t0

    rows = [r for r in sample_rows() if r["path"].exists()]
    template_z = {t.z for t in mc.load_templates(release.name)}
    group = {}
    for r in rows:
        z = float(r["Z"])
        if is_galaxy(r):
            if z in held_z:
                group[str(r["path"])] = "galaxy, held-out template"
            elif z not in template_z:
                group[str(r["path"])] = "galaxy, never a template"
        elif (r["CLASS"] == "QSO" and z <= 0.5) or r["CLASS"] == "STAR":
            group[str(r["path"])] = r["CLASS"]
    out, errors = embed_spectra(run, list(group), args.work / "candidates.fits", device="cpu")
    cols, _ = read_embedding(out)
    g = np.array([group[f] for f in cols["file"]])
    positive = np.isin(g, ["QSO", "STAR"])
    figures = {
        "n_train_synthetic": args.n,
        "epochs": args.epochs,
        "objective": args.objective,
        "skipped": errors,
        "counts": {k: int((g == k).sum()) for k in sorted(set(g))},
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(t_train, 1),
    }
    for name in ("outlier_score", "r_chi2", "r_density"):
        figures[f"auc_{name}"] = round(roc_auc(cols[name], positive), 4)
        for neg in ("galaxy, held-out template", "galaxy, never a template"):
            keep = positive | (g == neg)
            if (g == neg).any():
                key = f"auc_{name}_vs_{'held_out' if 'held' in neg else 'never_template'}"
                figures[key] = round(roc_auc(cols[name][keep], positive[keep]), 4)
    print(json.dumps(figures, indent=1))
    print(
        f"ROC AUC non-galaxy vs galaxy: OUTLIER_SCORE {figures['auc_outlier_score']:.3f}, "
        f"chi2 alone {figures['auc_r_chi2']:.3f}, density alone {figures['auc_r_density']:.3f} "
        f"(goal >= 0.95); {int(positive.sum())} non-galaxies, {int((~positive).sum())} galaxies"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
