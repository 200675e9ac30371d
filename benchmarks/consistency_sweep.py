"""A sweep of the consistency loss's σ_s for ``benchmarks/table1.py``, chosen on the VALIDATION split.

σ_s (latent units) sets the distance below which L_c = sigmoid(|s − s_aug|²/2σ_s²) − ½ stops
pulling s and s_aug together: for |s − s_aug| ≪ σ_s the loss is ≈ |s − s_aug|²/8σ_s², so the
pull weakens as 1/σ_s². The paper's σ_s = 0.1 was set for latents spread over several units;
when a small model's latents span a few tenths, 0.1 is a weak constraint. Each σ_s gets its own
consistency run, initialised from the same similarity run and trained with the same schedule.

Choice (validation split only; the test split is not looked at): the smallest mean
|s − s_aug| among the runs whose L_fid is at most 5% above the fidelity run's (the Table-1 bar);
if none qualifies, the lowest L_fid. The chosen run is linked as ``RUNS/consistency`` so the rest
of table1.py reports it on the test split.
"""

from __future__ import annotations

import logging
import multiprocessing
from dataclasses import replace
from pathlib import Path

from model.evaluate import compare_runs
from model.interpretability import encode_split, scale_free_shift
from model.train import TrainConfig, train

log = logging.getLogger("table1.sweep")


def sweep_run_name(sigma_s: float) -> str:
    return f"consistency-sigma{sigma_s:g}"


def train_one_thread(cfg: TrainConfig) -> None:
    """Train in this process on one thread: independent small CPU runs scale better side by
    side, one process each, than one after another on all cores (a Pool worker)."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    train(cfg)


def train_runs(cfgs: list[TrainConfig], parallel: bool) -> None:
    """Train every run not trained yet (no last.pt); with `parallel`, side by side, one
    single-thread process each (they are independent)."""
    todo = [c for c in cfgs if not (Path(c.run) / "last.pt").exists()]
    if parallel and len(todo) > 1:
        with multiprocessing.get_context("spawn").Pool(len(todo)) as pool:
            pool.map(train_one_thread, todo)
    else:
        for cfg in todo:
            train(cfg)


def train_sweep(base: TrainConfig, sigmas: list[float], runs: Path, parallel: bool) -> list[Path]:
    """One consistency run per σ_s (skipping runs already trained); returns their folders."""
    cfgs = [replace(base, sigma_s=s, run=str(runs / sweep_run_name(s))) for s in sigmas]
    train_runs(cfgs, parallel)
    return [Path(c.run) for c in cfgs]


def choose_on_validation(
    sweep: list[Path], sigmas: list[float], fidelity_run: Path, shards_dir: Path
) -> tuple[Path, list[dict]]:
    """Evaluate every sweep run and the fidelity run on VALID; pick as the module says.

    Returns the chosen run folder and one row per σ_s (sigma_s, L_fid, L_fid change vs
    fidelity, latent_shift, scale_free_shift, eligible).
    """
    fid = compare_runs([fidelity_run], split="valid", figures=False)[0]
    rows = []
    for run, sigma, ev in zip(
        sweep, sigmas, compare_runs(sweep, split="valid", figures=False), strict=True
    ):
        latents, _, _ = encode_split(run, shards_dir, "valid")
        change = ev["L_fid"] / fid["L_fid"] - 1
        rows.append(
            {
                "run": run.name,
                "sigma_s": sigma,
                "L_fid": ev["L_fid"],
                "L_fid_change": change,
                "latent_shift": ev["latent_shift"],
                "scale_free_shift": scale_free_shift(latents, ev["latent_shift"])[
                    "scale_free_shift"
                ],
                "eligible": change <= 0.05,
            }
        )
    eligible = [r for r in rows if r["eligible"]]
    best = (
        min(eligible, key=lambda r: r["latent_shift"])
        if eligible
        else min(rows, key=lambda r: r["L_fid"])
    )
    for r in rows:
        r["chosen"] = r is best
    log.info("sweep on valid: %s", rows)
    return sweep[rows.index(best)], rows


def link_chosen(runs: Path, chosen: Path) -> Path:
    """RUNS/consistency → the chosen sweep run (a relative symlink, replaced on rerun)."""
    link = runs / "consistency"
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} is a real run folder; move it away to report a sweep")
    link.symlink_to(chosen.name)
    return link


def sweep_table(rows: list[dict]) -> str:
    """The sweep as a markdown table (validation split)."""
    head = (
        "| σ_s | L_fid (valid) | vs fidelity | mean abs(s − s_aug) (valid) | scale-free | chosen |"
    )
    lines = [head, "|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['sigma_s']:g} | {r['L_fid']:.3f} | {r['L_fid_change']:+.1%} | "
            f"{r['latent_shift']:.4f} | {r['scale_free_shift']:.4f} | "
            f"{'**chosen**' if r['chosen'] else ('' if r['eligible'] else 'L_fid > +5%')} |"
        )
    return "\n".join(lines)
