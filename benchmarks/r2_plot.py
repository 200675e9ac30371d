"""Draw `r2_intervals.py --json` files: R²(run) − R²(reference) with its 95% bootstrap interval.

One panel per parameter, one row per run, one colour per file (e.g. the same comparison on the
validation and on the test split), so a gap that holds on one split only is seen at a glance.

    python benchmarks/r2_plot.py r2-valid.json r2-test.json --params TRUE_LOG_SSFR TRUE_AV \
        --out docs/spender-r2.png

THE SPECTRA ARE SYNTHETIC (the R² are those of the bagpipes population's true parameters).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = {
    "TRUE_LOG_SSFR": "log sSFR",
    "TRUE_AGE_MW": "age",
    "TRUE_AV": "A_V",
    "TRUE_LOG_ZMET": "log Z",
    "TRUE_SIGMA": "σ",
    "TRUE_Z": "z",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", type=Path, help="r2_intervals.py --json outputs")
    ap.add_argument("--params", nargs="+", default=["TRUE_LOG_SSFR", "TRUE_AV"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--title", default=None)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.loads(p.read_text()) for p in args.json]
    runs: list[str] = []
    for d in docs:
        runs += [r for r in d["runs"] if r not in runs]
    fig, axes = plt.subplots(
        1, len(args.params), figsize=(4.2 * len(args.params), 0.45 * len(runs) + 1.6), sharey=True
    )
    axes = [axes] if len(args.params) == 1 else list(axes)
    offsets = [0.18 * (k - (len(docs) - 1) / 2) for k in range(len(docs))]
    for ax, param in zip(axes, args.params, strict=True):
        for k, d in enumerate(docs):
            n = d.get(f"n_{d['split']}", "")
            for i, run in enumerate(runs):
                r = d["runs"].get(run, {}).get(param)
                if r is None:
                    continue
                y = len(runs) - 1 - i + offsets[k]
                ax.errorbar(
                    r["delta"], y, xerr=[[r["delta"] - r["lo"]], [r["hi"] - r["delta"]]],
                    fmt="o", color=f"C{k}", capsize=3,
                    label=f"{d['split']} split ({n})" if i == 0 else None,
                )  # fmt: skip
        ax.axvline(0, color="0.5", lw=0.8)
        ax.set_xlabel(f"ΔR² {LABELS.get(param, param)}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(runs)), list(reversed(runs)))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(docs), fontsize=8, frameon=False)
    refs = sorted({d["reference"] for d in docs})
    fig.suptitle(
        args.title or f"R²(run) − R²({', '.join(refs)}), 95% paired bootstrap (SYNTHETIC)",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
