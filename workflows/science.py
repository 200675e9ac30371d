"""The demo's science printout on the SYNTHETIC population: the fidelity floor beside L_fid, what
the 2-D latents know about the true parameters, and the same models on the real galaxies.

Composes `etl` (the floor needs the population's spec-lite files) and `model` (latents, kNN R²,
evaluation); `workflows.demo` calls it after Table 1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)
Say = Callable[[str], None]


FLOOR_FILE = "fidelity-floor.json"


def write_fidelity_floor(rel, pop_dir: Path, step: Say = log.info) -> dict:
    """L_fid of the population's true noiseless spectra against its test rows (etl.fidelity_floor),
    written to POP/<release>/fidelity-floor.json: the lowest L_fid a model can reach there."""
    from etl.atomic import write_json_atomic
    from etl.fidelity_floor import fidelity_floor

    step("fidelity floor: L_fid of the true spectra against the noisy test rows")
    shards = pop_dir / rel.name / "shards"
    floor = fidelity_floor(
        sorted((shards / "test").glob("shard-*.h5")), pop_dir / rel.name / "spectra", rel.grid
    )
    write_json_atomic(pop_dir / rel.name / FLOOR_FILE, floor)
    return floor


def echo_fidelity_floor(rows: list[dict], pop_dir: Path, rel, echo: Say = print) -> None:
    """One line: the floor beside each run's test L_fid (a rerun on shards made before the floor
    was recorded says how to get it)."""
    path = pop_dir / rel.name / FLOOR_FILE
    if not path.is_file():
        echo(f"fidelity floor: not recorded ({path}); delete {pop_dir} and rerun to measure it")
        return
    floor = json.loads(path.read_text())["L_fid_truth"]
    ratios = ", ".join(f"{r['objective']} {r['L_fid'] / floor:.2f}x" for r in rows)
    echo(
        f"fidelity floor (L_fid of the true noiseless spectra, test split): {floor:.3f}; "
        f"L_fid / floor: {ratios} (the gap is what longer training can still win)"
    )


def on_every_row(
    run: Path, shards_dir: Path, out_root: Path, figures_split: str | None = None
) -> dict:
    """Table 1's L_fid and mean |s − s_aug| of `run` over every row of `shards_dir` (each split
    evaluated into OUT_ROOT/eval-real-<split>, the means weighted by its rows), and n.

    For shards the run was not trained on (the real galaxies beside a population-trained model):
    all their splits are unseen data. `figures_split` also draws that split's figures."""
    from model.evaluate import EvaluateError, evaluate_run

    parts = []
    for split in ("train", "valid", "test"):
        try:
            parts.append(
                evaluate_run(
                    run, shards_dir=shards_dir, split=split,
                    out_dir=out_root / f"eval-real-{split}", figures=split == figures_split,
                )
            )  # fmt: skip
        except EvaluateError as e:  # an empty split of a tiny sample: nothing to add
            log.info("%s on %s %s: %s", run.name, shards_dir, split, e)
    n = sum(p["n"] for p in parts)
    return {k: sum(p[k] * p["n"] for p in parts) / n for k in ("L_fid", "latent_shift")} | {"n": n}


def population_science(
    runs: list[Path], pop_dir: Path, real_shards: Path, rel, step: Say = log.info, echo: Say = print
) -> dict:
    """What the population-trained models know: kNN R² of log sSFR and z from the latents, the
    scale-free shift, each model on every real galaxy the demo fetched, a latent map."""
    from model.interpretability import (
        encode_split,
        interpretability,
        plot_latent_maps,
        read_truth_catalog,
        scale_free_shift,
        singular_ratio,
        truths_for,
    )

    step("interpretability: what the latents know about the true parameters")
    shards = pop_dir / rel.name / "shards"
    catalog = read_truth_catalog(pop_dir / rel.name / "catalog.fits")
    latents, truths, r2, shift = {}, {}, {}, {}
    for run in runs:
        per = {}
        for split in ("train", "valid", "test"):
            s, ids, _ = encode_split(run, shards, split)
            per[split] = s
            truths.setdefault(split, truths_for(catalog, ids))
        latents[run.name] = per
        r2[run.name] = interpretability(per, truths)
        metrics = json.loads((run / "eval-test" / "metrics.json").read_text())
        shift[run.name] = scale_free_shift(per["test"], metrics["latent_shift"])
    echo("")
    echo("What the 2-D latents know (kNN regression R² on the SYNTHETIC test split; 1 = all):")
    echo(
        f"| {'run':<11} | log sSFR | age_mw |   A_V  |    σ   |    z   | scale-free shift "
        "| σ_min/σ_max |"
    )
    for name in latents:
        p = r2[name]
        echo(
            f"| {name:<11} | {p['TRUE_LOG_SSFR']['r2']:8.3f} | {p['TRUE_AGE_MW']['r2']:6.3f} "
            f"| {p['TRUE_AV']['r2']:6.3f} | {p['TRUE_SIGMA']['r2']:6.3f} "
            f"| {p['TRUE_Z']['r2']:6.3f} | {shift[name]['scale_free_shift']:16.3f} "
            f"| {singular_ratio(latents[name]['test']):11.2f} |"
        )
    echo(
        "σ_min/σ_max: smaller over larger singular value of the centred test latents (1: both "
        "latent dimensions used alike, 0: the latents lie on a line)"
    )
    maps = plot_latent_maps(
        {name: per["test"] for name, per in latents.items()},
        truths["test"],
        runs[0].parent / "latent-maps.png",
        f"SYNTHETIC population, test split ({len(truths['test']['TRUE_Z'])} galaxies)",
    )
    echo(f"latent maps coloured by log sSFR and z: {maps}")

    step("sim to real: the same models on every real galaxy the demo fetched")
    real = {run.name: on_every_row(run, real_shards, run, figures_split="test") for run in runs}
    echo("")
    echo("The same models on the REAL bundled SDSS galaxies (never trained on):")
    echo(f"| {'run':<11} |   L_fid | mean abs(s − s_aug) |  n |")
    for name, m in real.items():
        echo(f"| {name:<11} | {m['L_fid']:7.3f} | {m['latent_shift']:19.4f} | {m['n']:2d} |")
    fig = runs[-1] / "eval-real-test" / "figure2.png"
    if fig.exists():
        echo(f"Figure 2 on a real galaxy: {fig}")
    return {"r2": r2, "scale_free": shift, "real": real, "latent_maps": maps}
