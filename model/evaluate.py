"""`specetl evaluate`: the paper's Table 1 metrics and Figure 2 for a trained run.

Outputs, in OUT = RUN/eval-<split>/ unless told otherwise:
  metrics.json   Table 1 columns, provenance, figure paths (see `evaluate_run`)
  figure2.png    one spectrum, its reconstruction and those of its redshifted copies; latent map
  training.png   the run's training curves from RUN/metrics.jsonl

Metric definitions. All come from `model.objectives.evaluate` (the trainer's validation code,
so evaluation and training cannot drift apart), over every spectrum of the split, in shard
order, in batches of `batch_size` rows (default: the run's training batch size), as
row-weighted means over batches:
  L_fid        fidelity loss of the spectra, ≈ χ²/2 per pixel (dimensionless)
  L_sim        similarity loss at k0 = 2.5, k1 = 1.0 (the paper's Table 1 setting), over the
               pairs within each batch, so it depends on the batch size
  L_c          consistency loss (σ_s of the run, 0.1 by default)
  latent_shift mean Euclidean distance |s − s_aug| (latent units) between each spectrum's
               latents and those of its copy moved to z_aug ~ U[0, 0.5]
The z_aug are drawn by a `torch.Generator` on the evaluation device seeded with `seed`
(DEFAULT_SEED = 0), one draw per spectrum in split order; so a given run, split, batch size,
seed and device type always give the same numbers. All terms are evaluated for every run,
whatever objective it was trained with (`format_table(..., blank_untrained=True)` blanks
those a run did not train, as the paper's table does).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from model.augment import redshift_augment
from model.checkpoint import TrainError, load_model, pick_device
from model.data import (
    Batch,
    ShardError,
    ShardInfo,
    ShardStream,
    file_sha256,
    index_sha256,
    list_shards,
    read_wave_obs,
)
from model.eval_figures import SpectrumPanel, plot_figure2, plot_training
from model.objectives import OBJECTIVES, collect_latents, evaluate, terms_for
from model.run_checks import check_pixels, shards_of_run
from shardio import read_rows

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
#: the paper's Table 1 evaluates the similarity loss at these (k0, k1)
TABLE1_K0, TABLE1_K1 = 2.5, 1.0
Z_AUG_MAX = 0.5
#: bump when the definition of a metric changes: cached metrics.json of another version are redone
METRICS_VERSION = 1
TABLE_COLUMNS = ("L_fid", "L_sim", "L_c", "latent_shift")


class EvaluateError(RuntimeError):
    """A user-facing evaluation error (no such run, shards missing); one-line message."""


def _checkpoint_path(run: Path) -> Path:
    """The file `load_model(run)` reads: best.pt, else last.pt."""
    return run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"


def _run_config(run: Path, ckpt: dict) -> dict:
    """The run's TrainConfig as a dict: RUN/config.json, else the checkpoint's copy."""
    try:
        return json.loads((run / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError):
        return dict(ckpt.get("config", {}))


def _tap_snr(batches: Iterable[Batch], snr: list[np.ndarray]) -> Iterator[Batch]:
    """Pass batches through, recording each spectrum's median per-pixel S/N (√w·|x|) over the
    whole observed grid, masked pixels counting as 0: picks a well-measured *and* well-covered
    spectrum for Figure 2 without a second read."""
    for b in batches:
        r = (b["ivar"].clamp(min=0).sqrt() * b["flux"].abs()).numpy()
        snr.append(np.nan_to_num(np.median(r, axis=1), nan=0.0))
        yield b


def read_spectrum(shards: Sequence[ShardInfo], index: int) -> dict:
    """Row `index` (counted over the split's shards in order) as numpy arrays: flux, ivar (M,),
    z, and specobjid (an int)."""
    for s in shards:
        if index < s.rows:
            row = read_rows(s.path, index, index + 1)  # the shard format's reader (any version)
            return {
                "flux": np.asarray(row["flux"][0], dtype=np.float32),
                "ivar": np.asarray(row["ivar"][0], dtype=np.float32),
                "z": float(row["z"][0]),
                "specobjid": int(row["specobjid"][0]),
            }
        index -= s.rows
    raise EvaluateError(f"spectrum index out of range (split has {sum(s.rows for s in shards)})")


@torch.no_grad()
def _figure2_data(
    model, spec: dict, device: torch.device, n_aug: int, seed: int
) -> tuple[SpectrumPanel, np.ndarray, np.ndarray]:
    """Reconstruct one spectrum and `n_aug` copies moved to z_aug ~ U[0, 0.5] (the metric's
    augmentation, generator seeded with `seed + 1` so the copies differ from the metric's draw
    of that spectrum yet are reproducible). Returns the panel data, s (S,), s_aug (K, S)."""
    x = torch.from_numpy(spec["flux"]).to(device)[None].expand(n_aug, -1)
    w = torch.from_numpy(spec["ivar"]).to(device)[None].expand(n_aug, -1)
    z = torch.full((n_aug,), spec["z"], device=device)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    xa, wa, za = redshift_augment(x, w, z, model.wave_obs, gen, Z_AUG_MAX)
    order = torch.argsort(za)  # copies in redshift order: legend and colours read monotonically
    xa, wa, za = xa[order], wa[order], za[order]
    s, _, x_obs = model(torch.cat([x[:1], xa]), torch.cat([w[:1], wa]), torch.cat([z[:1], za]))
    s, x_obs = s.float().cpu().numpy(), x_obs.float().cpu().numpy()
    panel = SpectrumPanel(
        wave_obs=model.wave_obs.cpu().numpy().astype(np.float64),
        x=spec["flux"],
        w=spec["ivar"],
        z=spec["z"],
        model=x_obs[0],
        z_aug=za.cpu().numpy().astype(np.float64),
        model_aug=x_obs[1:],
    )
    return panel, s[0], s[1:]


def evaluate_run(
    run_dir: str | Path,
    shards_dir: str | Path | None = None,
    split: str = "test",
    out_dir: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    max_latents: int = 10_000,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    figures: bool = True,
    spectrum_index: int | None = None,
    n_augments: int = 5,
    verify: bool = True,
) -> dict:
    """Evaluate a run's model (best.pt, else last.pt) on a split; write OUT/metrics.json.

    Args:
        run_dir: a `specetl train` run folder.
        shards_dir: shards folder (index.json); default: the one recorded in the run's config.
        split: "train", "valid" or "test".
        out_dir: output folder; default RUN/eval-<split>/.
        seed: seeds the augmentation redshifts z_aug (see the module docstring).
        max_latents: at most this many spectra (the first, in split order) in the latent map.
        device: "auto" (GPU if visible), "cpu", "cuda", ...
        batch_size: rows per evaluation batch; default the run's training batch size (L_sim is
            a mean over the pairs of a batch, so this matches what the run was trained on).
        figures: draw figure2.png and training.png.
        spectrum_index: which spectrum of the split Figure 2 shows; default the one with the
            highest median S/N over the whole grid among the first `max_latents`.
        n_augments: redshifted copies of that spectrum in Figure 2.
        verify: check the split's shard sha256s against index.json.

    Returns:
        the dict written to metrics.json: "L_fid", "L_sim", "L_c", "latent_shift" (floats),
        "L_fid_aug" (fidelity of the copies), "n" (spectra), "objective", "k0", "k1",
        "sigma_s", "z_aug_max", "seed", "batch_size", "provenance" {...}, "figures"
        {"figure2", "training": path or None}, "metrics_path".

    Raises:
        EvaluateError: no run/checkpoint, shards missing or corrupt, empty split.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise EvaluateError(f"no run folder {run}")
    dev = pick_device(device) if isinstance(device, str) else device
    ckpt_path = _checkpoint_path(run)
    try:
        model, ckpt = load_model(run, device=dev)
    except TrainError as e:
        raise EvaluateError(str(e)) from None
    cfg = _run_config(run, ckpt)
    try:
        shards_dir = shards_of_run(run, {**ckpt, "config": cfg}, shards_dir)
        shards = list_shards(shards_dir, split, verify=verify)
        if shards:
            check_pixels(ckpt, len(read_wave_obs(shards[0])), f"evaluate {run}", shards_dir)
    except (ShardError, TrainError) as e:
        raise EvaluateError(str(e)) from None
    bs = int(batch_size or cfg.get("batch_size") or 64)
    sigma_s = float(cfg.get("sigma_s", 0.1))
    stream = ShardStream(shards, bs, shuffle=False)  # in order, every row once

    m = evaluate(model, stream, dev, OBJECTIVES, TABLE1_K0, TABLE1_K1, sigma_s, seed, Z_AUG_MAX)
    if not math.isfinite(m["fidelity"]):  # a diverged model: NaN metrics are no result
        raise EvaluateError(
            f"{run}: the model's fidelity loss on the {split} split is not finite "
            f"({m['fidelity']}); the run diverged, retrain it with a smaller --lr"
        )
    out = Path(out_dir) if out_dir is not None else run / f"eval-{split}"
    out.mkdir(parents=True, exist_ok=True)
    objective = cfg.get("objective", "?")
    result: dict = {
        "metrics_version": METRICS_VERSION,
        "objective": objective,
        "trained_terms": list(terms_for(objective)) if objective in OBJECTIVES else [],
        "L_fid": m["fidelity"],
        "L_sim": m["similarity"],
        "L_c": m["consistency"],
        "latent_shift": m["latent_shift"],
        "L_fid_aug": m["fidelity_aug"],
        "n": int(m["n"]),
        "k0": TABLE1_K0,
        "k1": TABLE1_K1,
        "sigma_s": sigma_s,
        "z_aug_max": Z_AUG_MAX,
        "seed": seed,
        "batch_size": bs,
        "provenance": {
            "run_dir": str(run.resolve()),
            "checkpoint": ckpt_path.name,
            "checkpoint_sha256": file_sha256(ckpt_path),
            "checkpoint_epoch": int(ckpt.get("epoch", 0)),
            "objective": objective,
            "preset": cfg.get("preset"),
            "epochs": cfg.get("epochs"),
            "init": cfg.get("init"),
            "split": split,
            "n_spectra": int(m["n"]),
            "seed": seed,
            "shards_dir": str(shards_dir.resolve()),
            "index_sha256": index_sha256(shards_dir),
            "trained_on_index_sha256": ckpt.get("index_sha256"),
            "device": str(dev),
            "torch": torch.__version__,
            "evaluated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
        "figures": {"figure2": None, "training": None},
    }
    if figures:
        result["figures"] = _draw_figures(
            model, run, shards, stream, dev, out, result, max_latents, spectrum_index, n_augments
        )
    path = out / "metrics.json"
    result["metrics_path"] = str(path)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _draw_figures(
    model,
    run: Path,
    shards: list[ShardInfo],
    stream: ShardStream,
    dev: torch.device,
    out: Path,
    result: dict,
    max_latents: int,
    spectrum_index: int | None,
    n_augments: int,
) -> dict:
    """figure2.png and training.png in `out`; returns their paths (None for one not drawn)."""
    snr: list[np.ndarray] = []
    lat, lat_z = collect_latents(model, _tap_snr(stream, snr), dev, max_latents)
    if spectrum_index is None:
        spectrum_index = int(np.argmax(np.concatenate(snr)[: len(lat_z)]))
    spec = read_spectrum(shards, spectrum_index)
    panel, s_obj, s_aug = _figure2_data(model, spec, dev, n_augments, result["seed"])
    prov = result["provenance"]
    name = f"specObjID {spec['specobjid']}" if spec["specobjid"] is not None else "spectrum"
    title = (
        f"{run.name}: {result['objective']} ({prov['preset']}, {prov['checkpoint']} = epoch "
        f"{prov['checkpoint_epoch']}/{prov['epochs']}) "
        f"— {prov['split']} {name} #{spectrum_index}, z = {spec['z']:.4f}"
    )
    fig2 = plot_figure2(out / "figure2.png", panel, lat.numpy(), lat_z.numpy(), s_obj, s_aug, title)
    figs = {"figure2": str(fig2), "training": None, "figure2_spectrum_index": spectrum_index}
    rows = _read_metrics_jsonl(run / "metrics.jsonl")
    if rows:
        t = f"{run.name}: {result['objective']} ({prov['preset']})"
        figs["training"] = str(plot_training(rows, out / "training.png", t))
    else:
        log.warning("%s has no metrics.jsonl rows: no training.png", run)
    return figs


def _read_metrics_jsonl(path: Path) -> list[dict]:
    """Epoch rows of metrics.jsonl; a torn last line (run killed mid-write) is skipped."""
    if not path.exists():
        return []
    rows = []
    for ln in path.read_text().splitlines():
        try:
            rows.append(json.loads(ln))
        except ValueError:
            continue
    return [r for r in rows if "epoch" in r]


def _reusable(
    path: Path, run: Path, split: str, seed: int, shards_dir: str | Path | None
) -> dict | None:
    """A metrics.json computed by this code version on the same checkpoint, split, seed and
    shards (same index.json bytes), or None."""
    try:
        old = json.loads(path.read_text())
        prov = old["provenance"]
        ok = (
            old.get("metrics_version") == METRICS_VERSION
            and prov["split"] == split
            and old["seed"] == seed
            and prov["checkpoint_sha256"] == file_sha256(_checkpoint_path(run))
            and prov["index_sha256"] == index_sha256(shards_dir or prov["shards_dir"])
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return old if ok else None


def compare_runs(
    runs: Sequence[str | Path],
    split: str = "test",
    seed: int = DEFAULT_SEED,
    shards_dir: str | Path | None = None,
    reuse: bool = True,
    **kw,
) -> list[dict]:
    """Evaluate several runs on the same split; one Table-1 row (dict) per run, in order.

    Each run is evaluated with `evaluate_run` into RUN/eval-<split>/ (figures included). With
    `reuse`, an existing RUN/eval-<split>/metrics.json is taken as is when it was made by this
    metrics version from the same checkpoint bytes, split, seed and index.json. Extra keyword
    arguments go to `evaluate_run` (device, batch_size, ...). Each row is the full
    metrics.json dict plus "run" (the folder name).
    """
    rows = []
    for r in runs:
        run = Path(r)
        old = _reusable(run / f"eval-{split}" / "metrics.json", run, split, seed, shards_dir)
        if old is not None and kw.get("figures", True):  # figures wanted: they must be there
            figs = [old["figures"].get(k) for k in ("figure2", "training")]
            old = old if all(f and Path(f).exists() for f in figs[:1]) else None
        if reuse and old is not None:
            log.info("%s: reusing %s", run, run / f"eval-{split}" / "metrics.json")
            row = old
        else:
            row = evaluate_run(run, shards_dir=shards_dir, split=split, seed=seed, **kw)
        rows.append({"run": run.name, **row})
    return rows


def evaluate_runs(
    run_dir: str | Path | None,
    runs: Sequence[str | Path],
    split: str = "test",
    out_dir: str | Path | None = None,
    shards: str | Path | None = None,
    seed: int = DEFAULT_SEED,
    device: str = "auto",
) -> list[dict]:
    """`specetl evaluate`: one run (`run_dir`, into `out_dir`) or several (`runs`, each into
    RUN/eval-<split>/, reusing up-to-date results); one Table-1 row per run.

    Raises:
        EvaluateError: both or neither of `run_dir` and `runs`, `out_dir` with several runs, or
            anything `evaluate_run` refuses.
    """
    if run_dir is not None and runs:
        raise EvaluateError("give either --run RUN or --compare RUN_A RUN_B ..., not both")
    if run_dir is None and not runs:
        raise EvaluateError("give --run RUN or --compare RUN_A RUN_B ...")
    if run_dir is not None:
        row = evaluate_run(run_dir, shards, split, out_dir, seed, device=device)
        return [{"run": Path(run_dir).name, **row}]
    if out_dir is not None:
        raise EvaluateError("--out applies to --run only")
    return compare_runs(runs, split, seed, shards, device=device)


def _fmt(v: float | None) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if v == 0 or 0.01 <= abs(v) < 1e4:
        return f"{v:.3f}"
    return f"{v:.3g}" if 1e-4 <= abs(v) < 0.01 else f"{v:.2e}"  # 0.00387, not 3.87e-03


def format_table(rows: Sequence[dict], blank_untrained: bool = False) -> str:
    """A markdown table, one row per run: run, objective, L_fid, L_sim, L_c, mean |s − s_aug|, n.

    Pipe-free headers ("mean abs(s − s_aug)") so it reads the same in a terminal and pastes
    into docs. With `blank_untrained`, terms a run was not trained with show "–" (as in the
    paper's Table 1); the latent shift is always shown.
    """
    head = ["run", "objective", "L_fid", "L_sim", "L_c", "mean abs(s − s_aug)", "n"]
    body = []
    for r in rows:
        trained = set(r.get("trained_terms", OBJECTIVES))
        vals = []
        for col, term in zip(
            TABLE_COLUMNS, ("fidelity", "similarity", "consistency", None), strict=True
        ):
            hide = blank_untrained and term is not None and term not in trained
            vals.append("–" if hide else _fmt(r.get(col)))
        body.append(
            [str(r.get("run", "")), str(r.get("objective", "")), *vals, str(r.get("n", ""))]
        )
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = (
        "|"
        + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(head), sep, *(line(b) for b in body)])
