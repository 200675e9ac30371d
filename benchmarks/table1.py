"""Reproduce the paper's Table 1 on a SYNTHETIC corpus, on CPU; with ``--population``, also
measure what the latents know about the galaxies' physics and how the models do on real spectra.

``--population`` (the headline of docs/table1.md): the corpus is the SYNTHETIC galaxy population
of ``python -m etl.synthetic population`` (bagpipes galaxies with known parameters, real SDSS
noise and masks). On top of Table 1 it reports the scale-free shift (mean |s − s_aug| over the
median latent distance between different galaxies), the R² of a kNN regression of each true
parameter from the 2-D latents (fitted on train, k chosen on valid, scored on test), each model
on the real bundled DR16 galaxies, and figures (latent maps coloured by log sSFR and z; Figure 2
on a population galaxy and on a real one). Needs the ``population`` extra.

Without ``--population``:

Real galaxies are few offline (13 bundled ones pass the DR16 cuts), so the corpus comes from
``etl/synthetic/from_real.py``: those real galaxy spectra moved to new redshifts 0 < z < 0.5 (on
the SDSS lattice, with noise drawn from their own ivar, new ids). THE CORPUS IS SYNTHETIC: it
has 13 distinct spectral shapes, so absolute losses are not comparable with the paper's 500k
real spectra; what carries over is the *effect* of each loss.

Steps (the same library calls the CLI makes): make the corpus → ``build-shards`` → train
``fidelity``, ``similarity`` and ``consistency`` (initialised from the similarity run, as the
paper advises) with the ``cpu-small`` preset → ``evaluate`` each on the test split → a
Table-1-style table.

The bar at this scale: mean |s − s_aug| falls by >= 10x from fidelity to consistency, and
L_fid of the consistency run is within 5% of the fidelity run's.

Usage::

    python benchmarks/table1.py --work /tmp/table1 --n 4000 --epochs 20 [--docs docs]
    python benchmarks/table1.py --population --work /tmp/pop --n 20000 --epochs 8 --docs docs

With ``--docs`` the table goes to ``docs/table1.md`` and the consistency run's Figure 2 and
training curves to ``docs/figure2.png`` / ``docs/training.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from consistency_sweep import train_runs  # noqa: E402

from etl.build import BuildResult, build_shards  # noqa: E402
from etl.release import load_release  # noqa: E402
from etl.synthetic.from_real import make_corpus  # noqa: E402
from model.evaluate import compare_runs, format_table  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402

log = logging.getLogger("table1")

PAPER = """| objective | L_fid | L_sim | L_c | mean abs(s − s_aug) |
|---|---:|---:|---:|---:|
| fidelity | 0.476 | – | – | 2.496 |
| + similarity | 0.473 | 0.158 | – | 0.450 |
| + consistency | 0.470 | 0.155 | 0.001 | 0.007 |"""


def _epoch_seconds(run: Path) -> float:
    """Training time from the run's own log, so a rerun that reuses the run reports it too."""
    return sum(
        json.loads(line)["epoch_s"] for line in (run / "metrics.jsonl").read_text().splitlines()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--work", type=Path, required=True, help="scratch folder (corpus, shards, runs)"
    )
    ap.add_argument("--n", type=int, default=4000, help="synthetic spectra in the corpus")
    ap.add_argument("--epochs", type=int, default=20, help="epochs of fidelity and similarity")
    ap.add_argument("--consistency-epochs", type=int, default=None, help="default: epochs / 2")
    ap.add_argument(
        "--consistency-lr",
        type=float,
        default=3e-4,
        help="peak LR of the consistency run: it fine-tunes the similarity run, and the full "
        "1e-3 OneCycle peak undoes part of what that run learnt",
    )
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", type=Path, default=None, help="write table + figures here")
    ap.add_argument(
        "--population",
        action="store_true",
        help="the SYNTHETIC galaxy population (known parameters) instead of synthetic-from-real",
    )
    ap.add_argument(
        "--parallel",
        action="store_true",
        help="train fidelity and similarity at the same time (two single-thread processes)",
    )
    ap.add_argument(
        "--sigma-s",
        default="0.1",
        help="σ_s of the consistency loss; a comma-separated list trains one consistency run "
        "per value and reports the one chosen on the VALIDATION split (see "
        "benchmarks/consistency_sweep.py)",
    )
    ap.add_argument(
        "--reuse-shards",
        action="store_true",
        help="use DATA/<release>/shards as they are instead of (re)building them",
    )
    ap.add_argument(
        "--sigma-s-start",
        type=float,
        default=None,
        help="anneal σ_s geometrically from this value to each --sigma-s over the consistency "
        "run (default: constant σ_s)",
    )
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for name in ("distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.WARNING)

    release = load_release("dr16")
    data = args.work / "data"
    runs = args.work / "runs"
    t_corpus = time.perf_counter()
    if not (data / release.name / "catalog.fits").exists():
        if args.population:
            from etl.synthetic.population_corpus import make_population

            make_population(data, args.n, seed=args.seed, release=release.name, processes=2)
        else:
            make_corpus(data, args.n, seed=args.seed, release=release.name, processes=2)
    args.corpus_s = time.perf_counter() - t_corpus  # ~0 when the corpus was already there
    shards_dir = data / release.name / "shards"
    if args.reuse_shards and (shards_dir / "index.json").exists():
        # e.g. shards made by an older specetl whose runs are being reported: rebuilding would
        # re-split them under the current split scheme and mix the runs' train and test rows
        built = BuildResult.from_index(shards_dir)
        log.info("reusing %s as it is (%d spectra)", shards_dir, built.accepted)
    else:
        built = build_shards(release, data, progress=False)
    counts = {
        split: sum(s["rows"] for s in built.shards if s["split"] == split)
        for split in ("train", "valid", "test")
    }
    log.info("shards: %s", counts)

    con_epochs = args.consistency_epochs or max(1, args.epochs // 2)
    sigmas = [float(v) for v in args.sigma_s.split(",")]
    plan = [
        ("fidelity", args.epochs, None, 1e-3),
        ("similarity", args.epochs, None, 1e-3),
        ("consistency", con_epochs, runs / "similarity", args.consistency_lr),
    ]
    configs = {
        objective: TrainConfig(
            shards=str(built.shards_dir),
            run=str(runs / objective),
            objective=objective,
            preset=args.preset,
            epochs=epochs,
            batch_size=args.batch_size,
            lr=lr,
            init=str(init) if init else None,
            seed=args.seed,
            progress=False,
            # σ_s only acts on the consistency run; a sweep replaces it per run
            **(
                {"sigma_s": sigmas[0], "sigma_s_start": args.sigma_s_start}
                if objective == "consistency"
                else {}
            ),
        )
        for objective, epochs, init, lr in plan
    }
    t_train = time.perf_counter()
    # fidelity and similarity are independent: with --parallel, one process each
    train_runs([configs["fidelity"], configs["similarity"]], args.parallel)
    args.sweep = None
    if len(sigmas) > 1:
        from consistency_sweep import choose_on_validation, link_chosen, train_sweep

        sweep = train_sweep(configs["consistency"], sigmas, runs, args.parallel)
        chosen, args.sweep = choose_on_validation(
            sweep, sigmas, runs / "fidelity", built.shards_dir
        )
        link_chosen(runs, chosen)
    wall = {}
    for objective, *_ in plan:
        run = runs / objective
        t0 = time.perf_counter()
        if not (run / "last.pt").exists():
            train(configs[objective])
        wall[objective] = _epoch_seconds(run) or (time.perf_counter() - t0)
    if args.sweep:  # every sweep run counts, not only the chosen one
        wall["consistency"] = sum(_epoch_seconds(runs / r["run"]) for r in args.sweep)
    train_wall = time.perf_counter() - t_train  # ~0 when every run was already there
    rows = compare_runs([runs / p[0] for p in plan], split="test")
    table = format_table(rows, blank_untrained=True)
    by = {r["objective"]: r for r in rows}
    shift_ratio = by["fidelity"]["latent_shift"] / by["consistency"]["latent_shift"]
    fid_change = by["consistency"]["L_fid"] / by["fidelity"]["L_fid"] - 1
    total = sum(wall.values())
    verdict = (
        f"mean |s − s_aug| fidelity / consistency = {shift_ratio:.1f}x (bar >= 10x: "
        f"{'met' if shift_ratio >= 10 else 'MISSED'}); L_fid consistency vs fidelity "
        f"{fid_change:+.1%} (bar: no more than 5% worse: "
        f"{'met' if fid_change <= 0.05 else 'MISSED'})"
    )
    corpus = (
        f"SYNTHETIC population of {args.n} bagpipes galaxies with real SDSS noise and masks"
        if args.population
        else f"SYNTHETIC-from-real corpus of {args.n} spectra (real DR16 galaxies moved to "
        "0 < z < 0.5)"
    )
    setup = (
        f"{corpus}, shards train/valid/test = {counts['train']}/{counts['valid']}/"
        f"{counts['test']}; preset {args.preset}; epochs fidelity/similarity/consistency = "
        f"{args.epochs}/{args.epochs}/{con_epochs} (peak LR 1e-3/1e-3/{args.consistency_lr:g}, "
        f"batch {args.batch_size or 'preset'}); training wall time "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in wall.items())
        + f"; {total / 60:.1f} min of training in all on this machine (2 cores)"
        + (f", {train_wall / 60:.1f} min wall-clock" if train_wall > 60 else "")
        + (" (fidelity and similarity side by side, one thread each)" if args.parallel else "")
        + (
            f"; consistency σ_s swept over {', '.join(f'{v:g}' for v in sigmas)}"
            + (
                f" (annealed geometrically from {args.sigma_s_start:g} over each run)"
                if args.sigma_s_start
                else ""
            )
            + " (one run each, "
            f"the consistency time above is all of them), chosen on the validation split: "
            f"σ_s = {next(r['sigma_s'] for r in args.sweep if r['chosen']):g}"
            if args.sweep
            else f"; consistency σ_s = {sigmas[0]:g}"
        )
    )
    print(table)
    print(setup)
    print(verdict)
    if args.population:
        from population_report import population_report

        population_report(args, release, built.shards_dir, runs, rows, table, setup, verdict)
        return
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        cmd = " ".join(["python", "benchmarks/table1.py", *sys.argv[1:]])
        (args.docs / "table1.md").write_text(
            "# Table 1 at small scale\n\n"
            f"Command: `{cmd}`\n\n{setup}.\n\n## Measured (test split)\n\n{table}\n\n"
            f"{verdict}.\n\n## The paper (500k real SDSS spectra, full-size model)\n\n{PAPER}\n"
        )
        con = by["consistency"]["figures"]
        shutil.copyfile(con["figure2"], args.docs / "figure2.png")
        shutil.copyfile(con["training"], args.docs / "training.png")
        print(f"wrote {args.docs / 'table1.md'}, figure2.png, training.png")


if __name__ == "__main__":
    main()
