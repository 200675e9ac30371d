"""Do outlier scores find real non-galaxies? ROC AUC of quasars and stars vs held-out galaxies.

A model is trained on galaxies only, then scores REAL spectra it has never seen: the bundled
quasars at z <= 0.5 and stars (positives) and real galaxies held out of training (negatives),
all through `specetl embed --spectra`'s path (the same grid/mask/normalise as the shards).
Reported: ROC AUC by OUTLIER_SCORE, by each of its terms alone, by OUTLIER_SCORE without its
density term (chi2_signal), and by the format 2 score it replaced (density + raw χ², no S/N
terms).
Goal: >= 0.95.

The training corpus is SYNTHETIC-from-real (``etl/synthetic/from_real.py``): real bundled galaxy
spectra moved to new redshifts with added noise. One third of the real galaxies that could be
templates (every third by redshift) are kept out of the corpus, so the negatives include real
galaxies the model has never seen in any form; the galaxies of reductions the release does not
serve (BOSS v5_*) are never templates and are negatives too. Results are printed per group.

``--run RUN`` instead scores an EXISTING run (no corpus, no training), e.g. a model of the
convergence study trained on the SYNTHETIC bagpipes population: every real spectrum of sample/
is then unseen. Negatives are the real galaxies (tests/explore_fixtures.py `is_galaxy`);
positives the real quasars at z <= 0.5, the real stars and the real sky fibres whose pipeline
CLASS says GALAXY (SOURCETYPE SKY), each group also reported alone. The run's best.pt and
config.json are copied into ``--work`` and the outlier model is fitted there (never in RUN), on
the run's train split, with the valid split's latents judging the density (auto) — the product
path of `specetl embed`. Both densities (mixture, flow) are scored. For honesty the real objects
are split in two halves (alternately by SPECOBJID within each group): the density to report is
picked on the first half ("validation objects") by OUTLIER_SCORE AUC and reported on the second
("test objects"); all-object figures are printed beside them, marked as such.

Usage::

    python benchmarks/outliers.py --work /tmp/outliers --n 3000 --epochs 15
    python benchmarks/outliers.py --work /tmp/outliers-fid --run /work/conv/runs/fid-120
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

from explore_fixtures import is_galaxy, object_group, sample_rows  # noqa: E402

import etl.synthetic.from_real as mc  # noqa: E402
from etl.build import build_shards  # noqa: E402
from etl.catalog import as_catalog, write_catalog  # noqa: E402
from etl.release import load_release  # noqa: E402
from model.density import RobustScale, fit_outlier_model, roc_auc  # noqa: E402
from model.embed import (  # noqa: E402
    embed_stream,
    ensure_outlier_model,
    iter_shard_batches,
    read_embedding,
)
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


# --- --run: score an existing run ------------------------------------------------------------

#: the positive groups of --run (non-galaxies) and the negatives
POSITIVE_GROUPS = ("QSO", "STAR", "SKY")
NEGATIVE = "GALAXY"
#: columns of the AUC tables: every positive, each group, and quasars + stars (the positives of
#: the training mode above and of tests/test_outliers.py)
AUC_GROUPS = ("all", *POSITIVE_GROUPS, "QSO+STAR")
#: OUTLIER_SCORE (format 3: density + χ² given S/N + missing signal), its three terms, and the
#: format 2 score it replaced (density + raw χ²) with its raw χ² term, for comparison
#: chi2_signal: OUTLIER_SCORE without its density term (R_CHI2 + R_SIGNAL), to measure what the
#: latent density adds
SCORES = (
    "outlier_score",
    "r_chi2",
    "r_density",
    "r_signal",
    "chi2_signal",
    "outlier_score_v2",
    "r_chi2_v2",
)
#: the score variants the validation objects choose between
PICK_SCORES = ("outlier_score", "chi2_signal", "outlier_score_v2")


def real_object_groups() -> dict[str, tuple[str, str]]:
    """{file: (group, half)} of the bundled real objects that --run scores.

    Groups: `explore_fixtures.object_group` (GALAXY, QSO at z <= 0.5, STAR, SKY: a sky fibre,
    SOURCETYPE SKY in its HDU 2, CLASS GALAXY). Halves "valid"/"test" alternate by SPECOBJID within each group, so
    each half has about half of every group.
    """
    by_group: dict[str, list[tuple[int, str]]] = {}
    for r in sample_rows():
        g = object_group(r) if r["path"].exists() else None
        if g is None:
            continue
        by_group.setdefault(g, []).append((int(r["SPECOBJID"]), str(r["path"])))
    out = {}
    for g, items in by_group.items():
        for i, (_, path) in enumerate(sorted(items)):
            out[path] = (g, ("valid", "test")[i % 2])
    return out


#: the half of an object from --more-objects: never looked at while the score was designed
UNSEEN = "unseen"


def more_object_groups(folder: Path, known: set[str]) -> dict[str, tuple[str, str]]:
    """{file: (group, "unseen")} of the spec-lite files under `folder` that are not in sample/
    (by file name), grouped by their OWN HDU 2 row as `real_object_groups` groups the sample
    (`object_group`); others are left out."""
    from astropy.io import fits

    out = {}
    for path in sorted(folder.rglob("spec-*.fits")):
        if path.name in known:
            continue
        with fits.open(path) as h:
            d = h[2].data
            r = {
                "CLASS": str(d["CLASS"][0]).strip(),
                "Z": float(d["Z"][0]),
                "ZWARNING": int(d["ZWARNING"][0]),
                "path": path,
            }
        g = object_group(r)
        if g is not None:
            out[str(path)] = (g, UNSEEN)
    return out


def auc_table(
    scores: dict[str, np.ndarray], group: np.ndarray, keep: np.ndarray
) -> dict[str, float | None]:
    """AUC of each score: all positives vs galaxies, and each positive group alone, on `keep`."""
    out: dict[str, float | None] = {}
    for name, v in scores.items():
        for pos in AUC_GROUPS:
            members = {"all": POSITIVE_GROUPS, "QSO+STAR": ("QSO", "STAR")}.get(pos, (pos,))
            is_pos = np.isin(group, members)
            sel = keep & (is_pos | (group == NEGATIVE))
            ok = is_pos[sel].any() and (~is_pos[sel]).any()
            out[f"{name}/{pos}"] = round(roc_auc(v[sel], is_pos[sel]), 4) if ok else None
    return out


def score_run(
    run: Path, work: Path, shards: Path | None, device: str, more: Path | None = None
) -> dict:
    """Figures of --run: the run copied into `work`, its outlier model fitted there, real objects
    scored with the mixture and the flow (see the module doc)."""
    from model.checkpoint import load_model
    from model.embed import checkpoint_path
    from model.run_checks import shards_of_run
    from workflows.spectra import embed_spectra

    run, scratch = run.resolve(), (work / run.name).resolve()
    if scratch == run or run in scratch.parents or scratch in run.parents:
        raise SystemExit(f"--work must be outside the run folder {run}")
    scratch.mkdir(parents=True, exist_ok=True)
    for name in (checkpoint_path(run).name, "config.json"):
        if (run / name).exists() and not (scratch / name).exists():
            shutil.copy2(run / name, scratch / name)
    t0 = time.perf_counter()
    model, ckpt = load_model(scratch, device=device)
    shards = shards_of_run(scratch, ckpt, shards)
    split = {
        s: embed_stream(model, iter_shard_batches(shards, [s], 256), torch_device(device))
        for s in ("train", "valid")
    }
    # the product's path: auto choice on the valid split, written to scratch/outliers.json
    om = ensure_outlier_model(
        scratch,
        shards,
        model,
        torch_device(device),
        train_table=split["train"],
        valid_table=split["valid"],
        density="auto",
        refit=True,
    )
    groups = real_object_groups()
    if more is not None:
        groups.update(more_object_groups(more, {Path(f).name for f in groups}))
    out, errors = embed_spectra(
        scratch, list(groups), work / f"{run.name}-real.fits", device=device
    )
    cols, header = read_embedding(out)
    g = np.array([groups[f][0] for f in cols["file"]])
    half = np.array([groups[f][1] for f in cols["file"]])
    per_density, fit_seconds = {}, {}
    for kind in ("gmm", "flow"):
        t_fit = time.perf_counter()
        train = split["train"]
        omk = fit_outlier_model(
            train["s"],
            train["chi2"],
            s_valid=split["valid"]["s"],
            density=kind,
            snr_train=train["snr"],
        )
        fit_seconds[kind] = round(time.perf_counter() - t_fit, 1)
        terms = omk.terms(cols["s"], cols["chi2"], cols["snr"])
        per_density[kind] = {k.lower(): v for k, v in terms.items() if k != "LOGP"}
        per_density[kind]["chi2_signal"] = terms["R_CHI2"] + terms["R_SIGNAL"]
        # the format 2 score: the same density, the raw χ² scale, no S/N terms
        v2 = replace(
            omk,
            chi2_trend=None,
            snr_scale=None,
            chi2_scale=RobustScale.of(np.log(np.maximum(train["chi2"], 1e-12))),
        )
        terms2 = v2.terms(cols["s"], cols["chi2"])
        per_density[kind]["outlier_score_v2"] = terms2["OUTLIER_SCORE"]
        per_density[kind]["r_chi2_v2"] = terms2["R_CHI2"]
        # the product's own scores and this refit agree for the density auto kept
        if kind == om.density.kind:
            np.testing.assert_allclose(
                per_density[kind]["outlier_score"], cols["outlier_score"], rtol=1e-4, atol=1e-4
            )
    # the setting to report (density × score variant), picked on the validation objects only
    pick_auc = {
        f"{k}/{score}": auc_table({score: v[score]}, g, half == "valid")[f"{score}/all"]
        for k, v in per_density.items()
        for score in PICK_SCORES
    }
    auto_key = f"{om.density.kind}/outlier_score"
    picked = max(pick_auc, key=lambda k: (pick_auc[k], k == auto_key))
    picked_kind, picked_score = picked.split("/")
    figures = {
        "run": str(run),
        "epoch": int(ckpt.get("epoch", 0)),
        "objective": str(ckpt.get("config", {}).get("objective", "")),
        "scratch": str(scratch),
        "shards": str(shards),
        "n_train": int(len(split["train"]["s"])),
        "n_valid": int(len(split["valid"]["s"])),
        "auto_choice": om.selection,
        "density_fit_seconds": fit_seconds,
        "picked_on_validation_objects": picked,
        "validation_objects_auc": pick_auc,
        "picked_test_auc": auc_table(
            {picked_score: per_density[picked_kind][picked_score]}, g, half == "test"
        ),
        "skipped": errors,
        "counts": {
            f"{grp}/{h}": int(((g == grp) & (half == h)).sum())
            for grp in (NEGATIVE, *POSITIVE_GROUPS)
            for h in ("valid", "test", UNSEEN)
        },
        "test_objects": {k: auc_table(v, g, half == "test") for k, v in per_density.items()},
        # the unseen positives of --more-objects against every real galaxy (sample and unseen)
        "unseen_positives_vs_all_galaxies": {
            k: auc_table(v, g, (half == UNSEEN) | (g == NEGATIVE)) for k, v in per_density.items()
        },
        "all_objects_not_held_out": {
            k: auc_table(v, g, np.ones(len(g), bool)) for k, v in per_density.items()
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return figures


def torch_device(device: str):
    import torch

    from model.checkpoint import pick_device

    return pick_device(device) if device == "auto" else torch.device(device)


def print_run_figures(f: dict) -> None:
    """A table per run: AUC by score and positive group, mixture and flow, test objects first."""
    sel = f["auto_choice"]
    print(
        f"\n{f['run']} (epoch {f['epoch']}, {f['objective']}): auto chose {sel['chosen']} "
        f"(mean valid-split log-lik {sel['valid_mean_logp']})"
    )
    print(f"counts (group/half): {f['counts']}; skipped by preprocessing: {len(f['skipped'])}")
    print(
        f"picked on the validation objects: {f['picked_on_validation_objects']} "
        f"(their AUC, all positives: {f['validation_objects_auc']})"
    )
    print(f"its AUC on the test objects: {f['picked_test_auc']} (goal >= 0.95, all positives)")
    for where in ("test_objects", "unseen_positives_vs_all_galaxies", "all_objects_not_held_out"):
        print(f"ROC AUC, {where.replace('_', ' ')}:")
        print(f"  {'density':8s} {'score':17s} " + " ".join(f"{p:>8s}" for p in AUC_GROUPS))
        for kind, table in f[where].items():
            for name in SCORES:
                vals = [table[f"{name}/{p}"] for p in AUC_GROUPS]
                print(
                    f"  {kind:8s} {name:17s} "
                    + " ".join("     n/a" if v is None else f"{v:8.3f}" for v in vals)
                )


def main_run(args: argparse.Namespace) -> None:
    figures = []
    for run in args.run:
        f = score_run(run, args.work, args.shards, args.device, args.more_objects)
        print(json.dumps(f, indent=1))
        figures.append(f)
    for f in figures:
        print_run_figures(f)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder")
    ap.add_argument("--n", type=int, default=3000, help="synthetic training spectra")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--objective", default="fidelity")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--run",
        type=Path,
        action="append",
        default=None,
        help="score this existing run (repeatable): no corpus, no training; RUN is only read",
    )
    ap.add_argument(
        "--shards", type=Path, default=None, help="with --run: its shards (default: the run's own)"
    )
    ap.add_argument(
        "--more-objects",
        type=Path,
        default=None,
        help="with --run: a folder of further real spec-lite files (e.g. a download of SDSS "
        "spectra); those not in sample/ are scored as unseen objects, grouped by their HDU 2",
    )
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.run:
        main_run(args)
        return
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
    for name in ("outlier_score", "r_chi2", "r_density", "r_signal"):
        if np.all(cols[name] == cols[name][0]):  # R_SIGNAL 0 everywhere: no ranking to score
            continue
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
