"""The ``--population`` part of ``benchmarks/table1.py``: science beyond the paper's four columns.

Writes ``<docs>/table1-population.md`` (generated numbers, commands, wall times) and the figures
``latent-maps.png``, ``figure2-population.png``, ``figure2-real.png``; prints the same.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from consistency_sweep import sweep_table

from etl.synthetic.real_sample import real_sample_shards
from model.evaluate import evaluate_run
from model.interpretability import (
    TARGETS,
    encode_split,
    interpretability,
    plot_latent_maps,
    read_truth_catalog,
    scale_free_shift,
    similarity_scales,
    truths_for,
)

log = logging.getLogger("table1.population")

LABEL = {"fidelity": "fidelity", "similarity": "+ similarity", "consistency": "+ consistency"}


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])


def population_report(args, release, shards_dir: Path, runs: Path, rows, table, setup, verdict):
    t0 = time.perf_counter()
    data = args.work / "data"
    catalog = read_truth_catalog(data / release.name / "catalog.fits")
    by = {r["objective"]: r for r in rows}
    objectives = [r["objective"] for r in rows]

    latents, truths, shift = {}, {}, {}
    for obj in objectives:
        per_split = {}
        for split in ("train", "valid", "test"):
            s, ids, _ = encode_split(runs / obj, shards_dir, split)
            per_split[split] = s
            truths.setdefault(split, truths_for(catalog, ids))
        latents[obj] = per_split
        shift[obj] = scale_free_shift(per_split["test"], by[obj]["latent_shift"])
    r2 = {obj: interpretability(latents[obj], truths) for obj in objectives}
    scales = {obj: similarity_scales(runs / obj, shards_dir, "test") for obj in objectives}

    real_dir = args.work / "real"
    real_shards = real_dir / release.name / "shards"
    if not (real_shards / "index.json").exists():
        real_shards = real_sample_shards(release, real_dir)
    real = {}
    for obj in objectives:
        real[obj] = evaluate_run(
            runs / obj, shards_dir=real_shards, split="test", out_dir=runs / obj / "eval-real"
        )

    # --- the tables ----------------------------------------------------------------------
    headline = _md_table(
        ["objective", "L_fid", "L_sim", "L_c", "mean abs(s − s_aug)", "scale-free shift"],
        [
            [
                LABEL[o],
                f"{by[o]['L_fid']:.3f}",
                f"{by[o]['L_sim']:.3f}" if o != "fidelity" else "–",
                f"{by[o]['L_c']:.3g}" if o == "consistency" else "–",
                f"{by[o]['latent_shift']:.3f}",
                f"{shift[o]['scale_free_shift']:.3f}",
            ]
            for o in objectives
        ],
    )
    ratio = by["fidelity"]["latent_shift"] / by["consistency"]["latent_shift"]
    ratio_sf = shift["fidelity"]["scale_free_shift"] / shift["consistency"]["scale_free_shift"]
    fid = by["consistency"]["L_fid"] / by["fidelity"]["L_fid"] - 1
    sim_floor = 2 / (1 + np.exp(2.5))  # 2·sigmoid(−k0): every pair perfectly matched
    bars = (
        f"- mean |s − s_aug| fidelity / consistency = **{ratio:.1f}x** (bar >= 10x: "
        f"{'met' if ratio >= 10 else 'MISSED'}); scale-free: {ratio_sf:.1f}x\n"
        f"- L_fid consistency vs fidelity: **{fid:+.1%}** (bar: at most 5% worse: "
        f"{'met' if fid <= 0.05 else 'MISSED'})\n"
        f"- L_sim: similarity {by['similarity']['L_sim']:.3f}, consistency "
        f"{by['consistency']['L_sim']:.3f}, fidelity (untrained term) "
        f"{by['fidelity']['L_sim']:.3f}; floor {sim_floor:.3f}\n"
        f"- median latent distance between different test galaxies: "
        + ", ".join(f"{LABEL[o]} {shift[o]['median_pair_distance']:.3f}" for o in objectives)
        + "\n- the similarity loss's two sides over the pairs of "
        f"{scales[objectives[0]]['n']} test spectra, median ½|s_i − s_j|² vs median spectral "
        "distance D_ij (L_sim reaches its floor only where they agree), and the fraction of "
        "pairs with |S_ij| < 1: "
        + ", ".join(
            f"{LABEL[o]} {scales[o]['median_latent_side']:.3g} vs "
            f"{scales[o]['median_spectral_side']:.3g} ({scales[o]['matched_fraction']:.0%})"
            for o in objectives
        )
    )
    r2_table = _md_table(
        ["parameter", *[LABEL[o] for o in objectives]],
        [
            [TARGETS[p], *[f"{r2[o][p]['r2']:.3f} (k={r2[o][p]['k']})" for o in objectives]]
            for p in TARGETS
        ],
    )
    real_table = _md_table(
        ["objective", "L_fid (real)", "mean abs(s − s_aug) (real)", "L_fid (population test)",
         "n real"],
        [
            [LABEL[o], f"{real[o]['L_fid']:.3f}", f"{real[o]['latent_shift']:.3f}",
             f"{by[o]['L_fid']:.3f}", str(real[o]["n"])]
            for o in objectives
        ],
    )  # fmt: skip
    report_s = time.perf_counter() - t0
    cmd = " ".join(["python", "benchmarks/table1.py", *sys.argv[1:]])
    text = (
        f"Command: `{cmd}`\n\n{setup}; corpus generation {args.corpus_s / 60:.1f} min "
        f"(0 when reused); this report (latents, kNN, real-sample evaluation, figures) "
        f"{report_s / 60:.1f} min.\n\n"
        f"### Table 1 (test split, {by['consistency']['n']} SYNTHETIC spectra)\n\n{headline}\n\n"
        f"{bars}\n\n{verdict}.\n\nAs printed by `specetl evaluate --compare`:\n\n{table}\n\n"
        + (
            "### The σ_s sweep, on the validation split (how the consistency run was chosen)\n\n"
            f"{sweep_table(args.sweep)}\n\n"
            if args.sweep
            else ""
        )
        + f"### Interpretability: R² of a kNN regression from the 2-D latents (test split)\n\n"
        f"{r2_table}\n\n"
        f"### Sim to real: the same models on the {real['consistency']['n']} real bundled DR16 "
        f"galaxies\n\n{real_table}\n"
    )
    print(text)
    out = {
        "table1": {o: {k: by[o][k] for k in ("L_fid", "L_sim", "L_c", "latent_shift", "n")}
                   for o in objectives},
        "scale_free": shift,
        "similarity_scales": scales,
        "r2": r2,
        "sweep_valid": args.sweep,
        "real": {o: {k: real[o][k] for k in ("L_fid", "L_sim", "L_c", "latent_shift", "n")}
                 for o in objectives},
    }  # fmt: skip
    (args.work / "population-report.json").write_text(json.dumps(out, indent=2) + "\n")
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "table1-population.md").write_text(
            "# Table 1 on the SYNTHETIC galaxy population (generated by benchmarks/table1.py)\n\n"
            + text
        )
        plot_latent_maps(
            {LABEL[o]: latents[o]["test"] for o in objectives},
            truths["test"],
            args.docs / "latent-maps.png",
            f"SYNTHETIC population, test split ({len(truths['test']['TRUE_Z'])} galaxies): "
            "2-D latents per objective",
        )
        con = runs / "consistency"
        shutil.copyfile(
            by["consistency"]["figures"]["figure2"], args.docs / "figure2-population.png"
        )
        shutil.copyfile(con / "eval-real" / "figure2.png", args.docs / "figure2-real.png")
        shutil.copyfile(by["consistency"]["figures"]["training"], args.docs / "training.png")
        print(f"wrote {args.docs}/table1-population.md and figures")
