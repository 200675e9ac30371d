"""Convergence study on the SYNTHETIC population: curves, the fidelity floor, Table 1 at the end.

Reads finished `specetl train` runs (it trains nothing) and writes, for each run, on the
validation and test splits: L_fid beside the fidelity floor (L_fid of the true noiseless spectra,
`etl.fidelity_floor`), the scale-free redshift shift, how much of the second latent dimension the
latents use (smaller / larger singular value of the centred latents), kNN R² of the true
parameters, and the similarity loss of the run's own family beside its floor; plus the curves
(validation L_fid per epoch, against the floor) and the doubling check for pairs of runs that
differ only in their epochs (`--pair SHORT:LONG`): converged when doubling the epochs improves
validation L_fid by less than 2%.

The shift is measured twice: with interpolated copies (`specetl evaluate`'s, rounds 1–5's
yardstick) and, from round 6 on the log-uniform SDSS grid, with whole-pixel copies
(`benchmarks/shift_yardstick.py`): a galaxy really observed at another redshift is not blurred,
so interpolation's blur is a measurement artefact. The choice on validation uses the whole-pixel
shift (fixed before the round-6 runs were measured); the baseline is `--baseline` (default: the
longest fidelity run listed first).

    python benchmarks/convergence.py --pop /work/conv/pop --runs R/fid-60 R/sim-2023 ... \
        --pair R/fid-30:R/fid-60 --docs docs

THE SPECTRA ARE SYNTHETIC (bagpipes galaxies observed with real SDSS noise and masks).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from shift_yardstick import shifts  # noqa: E402

from etl.fidelity_floor import fidelity_floor  # noqa: E402
from etl.release import load_release  # noqa: E402
from model.evaluate import evaluate_run  # noqa: E402
from model.interpretability import (  # noqa: E402
    encode_split,
    interpretability,
    read_truth_catalog,
    scale_free_shift,
    singular_ratio,
    truths_for,
)
from model.train import saved_setting  # noqa: E402

SPLITS = ("train", "valid", "test")
R2_SHOWN = ("TRUE_LOG_SSFR", "TRUE_AGE_MW", "TRUE_AV", "TRUE_SIGMA", "TRUE_Z")
DOUBLING_BAR = 0.02


def losses_label(cfg: dict) -> str:
    """The loss family, with the consistency norm where it matters (scale-free consistency),
    whole-pixel copies and a restframe encoder where a run used them."""
    losses = saved_setting(cfg, "losses")
    # a fidelity run has no similarity or consistency term, whatever the family's setting
    label = "–" if cfg["objective"] == "fidelity" else losses
    if losses == "scale-free" and cfg["objective"] == "consistency":
        label = f"{losses} ({saved_setting(cfg, 'consistency_norm')})"
    if cfg["objective"] == "consistency" and saved_setting(cfg, "augment") != "interpolate":
        label += ", whole-pixel copies"
    if saved_setting(cfg, "encoder_frame") != "observed":
        label += f", {saved_setting(cfg, 'encoder_frame')} encoder"
    if saved_setting(cfg, "decoder_activation") != "leaky-relu":
        widths = saved_setting(cfg, "decoder_mlp")
        label += f", {saved_setting(cfg, 'decoder_activation')} decoder"
        label += f" {'/'.join(map(str, widths))}" if widths else ""
    return label


def metrics_of(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln]


def sim_floor(cfg: dict) -> float:
    """Lowest value of the run's own similarity loss (every pair matched exactly)."""
    k0 = float(cfg.get("k0", 2.5))
    return 2 / (1 + math.exp(k0))


def measure(run: Path, shards: Path, truth_cat: dict, floors: dict) -> dict:
    """One run's figures, cached in RUN/convergence.json (remade when best.pt is newer)."""
    cache = run / "convergence.json"
    if cache.is_file() and cache.stat().st_mtime > (run / "best.pt").stat().st_mtime:
        out = json.loads(cache.read_text())
        out["losses"] = losses_label(json.loads((run / "config.json").read_text())["train"])
        if "scale_free_px" not in out["test"]:  # measured before round 6's yardstick
            _add_pixel_shift(out, run, shards)
            cache.write_text(json.dumps(out, indent=1) + "\n")
        return out
    out = _measure(run, shards, truth_cat, floors)
    _add_pixel_shift(out, run, shards)
    cache.write_text(json.dumps(out, indent=1) + "\n")
    print(f"measured {run.name}", flush=True)
    return out


def _measure(run: Path, shards: Path, truth_cat: dict, floors: dict) -> dict:
    cfg = json.loads((run / "config.json").read_text())["train"]
    rows = metrics_of(run)
    best = min(rows, key=lambda r: r["valid_total"])
    lat, truths = {}, {}
    for split in SPLITS:
        s, ids, _ = encode_split(run, shards, split)
        lat[split], truths[split] = s, truths_for(truth_cat, ids)
    out = {
        "run": run.name,
        "objective": cfg["objective"],
        "losses": losses_label(cfg),
        "epochs": cfg["epochs"],
        "best_epoch": best["epoch"],
        "sim_own": best.get("valid_similarity"),
        "sim_floor": sim_floor(cfg),
        "r2": {k: v["r2"] for k, v in interpretability(lat, truths).items()},
    }
    for split in ("valid", "test"):
        m = evaluate_run(run, shards, split=split, out_dir=run / f"eval-{split}", figures=False)
        sf = scale_free_shift(lat[split], m["latent_shift"])
        out[split] = {
            "L_fid": m["L_fid"],
            "floor": floors[split]["L_fid_truth"],
            "shift": m["latent_shift"],
            "scale_free": sf["scale_free_shift"],
            "sv_ratio": singular_ratio(lat[split]),
            "n": m["n"],
        }
    return out


def _add_pixel_shift(out: dict, run: Path, shards: Path) -> None:
    """The scale-free shift with whole-pixel copies, beside the interpolated one."""
    for split in ("valid", "test"):
        # the interpolated shift is evaluate_run's already; only the whole-pixel one is new
        out[split]["scale_free_px"] = shifts(run, shards, split, modes=("pixel-shift",))[
            "pixel-shift"
        ]


def doubling(short: Path, long: Path) -> dict:
    a, b = (min(r["valid_fidelity"] for r in metrics_of(p)) for p in (short, long))
    gain = (a - b) / a
    return {"short": short.name, "long": long.name, "valid_L_fid": [a, b], "gain": gain}


#: curve colours: (colour map, what the legend says) per kind of run (`curve_family`)
CURVE_FAMILIES = {
    "paper-2023": ("Greens", "green paper-2023"),
    "mean-variance": ("Oranges", "orange scale-free mean-variance"),
    "whitened": ("Blues", "blue scale-free whitened"),
    "whole-pixel": ("Reds", "red whitened with whole-pixel copies"),
    "restframe": ("Purples", "purple restframe encoder"),
}


def curve_family(cfg: dict) -> str:
    """Which CURVE_FAMILIES colour a run's curves get (its TrainConfig dict; a setting it lacks
    is read as the code then trained: `model.train.saved_setting`)."""
    if saved_setting(cfg, "encoder_frame") == "restframe":
        return "restframe"
    if saved_setting(cfg, "losses") == "paper-2023":
        return "paper-2023"
    if saved_setting(cfg, "augment") == "pixel-shift":
        return "whole-pixel"
    return saved_setting(cfg, "consistency_norm")


def plot_curves(runs: list[Path], floor: float, path: Path) -> None:
    """Three panels: validation L_fid of the fidelity and similarity runs (against the floor),
    then validation L_fid and mean |s − s_aug| of the consistency runs, coloured by
    `curve_family`. The shift is each run's own validation: with its own copies (whole-pixel
    or interpolated) and in its own latent units, so compare a curve's shape, not its height
    across runs (the tables hold the scale-free figures on one yardstick)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = {run: json.loads((run / "config.json").read_text())["train"] for run in runs}
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.6))
    seen: dict[tuple[bool, str], int] = {}
    for run in runs:
        cfg, rows = cfgs[run], metrics_of(run)
        consistency = cfg["objective"] == "consistency"
        key = (consistency, curve_family(cfg))
        k = seen[key] = seen.get(key, 0) + 1
        n = sum(
            1 for r in runs if (cfgs[r]["objective"] == "consistency", curve_family(cfgs[r])) == key
        )
        colour = plt.get_cmap(CURVE_FAMILIES[key[1]][0])(0.35 + 0.6 * k / max(n, 1))
        ep = [r["epoch"] for r in rows]
        fid = [r["valid_fidelity"] for r in rows]
        if not consistency:
            ax[0].plot(ep, fid, color=colour, label=run.name)
            continue
        ax[1].plot(ep, fid, color=colour, label=run.name)
        ax[2].plot(ep, [r["valid_latent_shift"] for r in rows], color=colour, label=run.name)
    ax[0].axhline(floor, color="k", ls="--", lw=1, label="floor: L_fid of the truth")
    ax[0].set(xlabel="epoch", ylabel="validation L_fid", yscale="log", ylim=(0.3, 5))
    ax[0].set_title("fidelity and similarity runs")
    ax[1].set(xlabel="epoch", ylabel="validation L_fid", ylim=(1.05, 1.4))
    ax[1].set_title("consistency runs (from a similarity run)")
    ax[2].set(xlabel="epoch", ylabel="validation mean |s - s_aug| (own copies)", ylim=(0, None))
    ax[2].set_title("consistency runs: redshift shift")
    ax[0].legend(fontsize=7)
    ax[2].legend(fontsize=7, ncol=2, loc="upper right")
    present = [f for f in CURVE_FAMILIES if any(curve_family(c) == f for c in cfgs.values())]
    fig.suptitle(
        "Convergence on the SYNTHETIC population (bagpipes + real SDSS noise)\n"
        + ", ".join(CURVE_FAMILIES[f][1] for f in present)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def baseline_of(results: list[dict], name: str | None = None) -> dict | None:
    """The fidelity run every ratio is against: `name`, else the longest fidelity run (the
    first listed among equals)."""
    fid = [r for r in results if r["objective"] == "fidelity"]
    if name is not None:
        fid = [r for r in fid if r["run"] == name]
    return max(fid, key=lambda r: r["epochs"]) if fid else None


def choose_on_validation(
    results: list[dict],
    tolerance: float = 0.05,
    min_sv_ratio: float = 0.0,
    shift: str = "scale_free",
    baseline: dict | None = None,
) -> dict | None:
    """The consistency run with the smallest VALIDATION `shift` ("scale_free": interpolated
    copies; "scale_free_px": whole-pixel) among those whose validation L_fid is at most
    `tolerance` above the baseline fidelity run's and whose validation latents use both
    dimensions (σ_min/σ_max >= `min_sv_ratio`); None if none. The rule is fixed before looking
    at the test split, which only reports the choice."""
    baseline = baseline or baseline_of(results)
    if baseline is None:
        return None
    base = baseline["valid"]["L_fid"]
    ok = [
        r
        for r in results
        if r["objective"] == "consistency"
        and r["valid"]["L_fid"] <= (1 + tolerance) * base
        and r["valid"]["sv_ratio"] >= min_sv_ratio
    ]
    return min(ok, key=lambda r: r["valid"][shift]) if ok else None


def table(results: list[dict]) -> str:
    head = (
        "| run | losses | epochs (best) | L_fid test | ÷ floor | mean abs(s − s_aug) | "
        "scale-free shift | whole-pixel shift | σ_min/σ_max | L_sim own (floor) | "
        + " | ".join(f"R² {k[5:]}" for k in R2_SHOWN)
        + " |"
    )
    lines = [head, "|" + "---|" * (10 + len(R2_SHOWN))]
    for r in results:
        t = r["test"]
        sim = f"{r['sim_own']:.3f} ({r['sim_floor']:.3f})" if r["sim_own"] is not None else "–"
        lines.append(
            f"| {r['run']} | {r['losses']} | {r['epochs']} ({r['best_epoch']}) | {t['L_fid']:.3f} "
            f"| {t['L_fid'] / t['floor']:.2f} | {t['shift']:.4f} | {t['scale_free']:.3f} "
            f"| {t['scale_free_px']:.3f} "
            f"| {t['sv_ratio']:.2f} | {sim} | "
            + " | ".join(f"{r['r2'][k]:.2f}" for k in R2_SHOWN)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pop", type=Path, required=True, help="population DATA folder")
    ap.add_argument("--runs", type=Path, nargs="+", required=True)
    ap.add_argument("--pair", action="append", default=[], help="SHORT:LONG run folders")
    ap.add_argument("--docs", type=Path, default=None)
    ap.add_argument(
        "--figure", type=Path, default=None, help="also draw the curves of these runs here (PNG)"
    )
    ap.add_argument("--baseline", default=None, help="name of the fidelity run ratios are against")
    args = ap.parse_args()
    release = load_release("dr16")
    shards = args.pop / release.name / "shards"
    spectra = args.pop / release.name / "spectra"
    floors = {
        split: fidelity_floor(sorted((shards / split).glob("shard-*.h5")), spectra, release.grid)
        for split in ("valid", "test")
    }
    truth_cat = read_truth_catalog(args.pop / release.name / "catalog.fits")
    results = [measure(run, shards, truth_cat, floors) for run in args.runs]
    pairs = [doubling(*(Path(p) for p in spec.split(":"))) for spec in args.pair]
    text = table(results)
    print(f"floors: {json.dumps(floors)}")
    print(text)
    for r in results:
        v = r["valid"]
        print(
            f"valid {r['run']}: L_fid {v['L_fid']:.4f}, scale-free shift {v['scale_free']:.4f} "
            f"(whole-pixel {v['scale_free_px']:.4f}), σ_min/σ_max {v['sv_ratio']:.2f}"
        )
    # round 3's rule (shift and fidelity only), then round 4's, which adds the latent-dimension
    # bar on validation: round 3 showed the shift can be bought by flattening the latents
    # and round 6's: the same with the whole-pixel shift (the yardstick without interpolation blur)
    fid = baseline_of(results, args.baseline)
    if fid is None:
        sys.exit(f"no fidelity run {args.baseline or ''} among --runs to measure against")
    choices = {
        "shift + L_fid": choose_on_validation(results, baseline=fid),
        "shift + L_fid + σ_min/σ_max >= 0.3": choose_on_validation(
            results, min_sv_ratio=0.3, baseline=fid
        ),
        "whole-pixel shift + L_fid + σ_min/σ_max >= 0.3": choose_on_validation(
            results, min_sv_ratio=0.3, shift="scale_free_px", baseline=fid
        ),
    }
    for rule, chosen in choices.items():
        if not chosen:
            print(f"chosen on validation ({rule}): no consistency run qualifies")
            continue
        key = "scale_free_px" if rule.startswith("whole-pixel") else "scale_free"
        ratio = fid["test"][key] / chosen["test"][key]
        print(
            f"chosen on validation ({rule}): {chosen['run']}; test {key} "
            f"{fid['run']} / {chosen['run']} = {ratio:.2f}x (bar 10x); test L_fid "
            f"{chosen['test']['L_fid'] / fid['test']['L_fid'] - 1:+.1%} vs {fid['run']}; "
            f"test σ_min/σ_max {chosen['test']['sv_ratio']:.2f}"
        )
    for p in pairs:
        verdict = "converged" if p["gain"] < DOUBLING_BAR else "NOT converged"
        print(f"doubling {p['short']} -> {p['long']}: valid L_fid gain {p['gain']:.1%} ({verdict})")
    if args.figure:
        plot_curves(args.runs, floors["valid"]["L_fid_truth"], args.figure)
        print(f"wrote {args.figure}")
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        plot_curves(args.runs, floors["valid"]["L_fid_truth"], args.docs / "convergence.png")
        (args.docs / "convergence.json").write_text(
            json.dumps(
                {
                    "floors": floors,
                    "runs": results,
                    "pairs": pairs,
                    "chosen": {k: v and v["run"] for k, v in choices.items()},
                },
                indent=1,
            )
            + "\n"
        )
        print(f"wrote {args.docs / 'convergence.png'} and convergence.json")


if __name__ == "__main__":
    main()
