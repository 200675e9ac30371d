"""specetl beside spender 0.3 (the paper authors' library) on the same SYNTHETIC population shards.

Both models are trained on the same shard rows (flux, ivar, z on the 3921-pixel observed grid
3784–9332 Å, median-normalised, sky lines already masked in ivar) and measured by ONE
evaluation (`measure`): the same function runs on specetl's model and on spender's model behind
a thin adapter, so every figure has one definition:

- L_fid: `model.objectives.evaluate` on the test split (specetl's `fidelity_loss`, χ²/2 per
  pixel, batch 64, the shard ivar; for spender its observed-frame reconstruction on the same
  grid), exactly as `specetl evaluate` / `benchmarks/convergence.py` compute it; ÷ floor: over
  `etl.fidelity_floor` (L_fid of the true noiseless spectra);
- mean |s − s_aug| with specetl's `redshift_augment` copies (z_aug ~ U[0, 0.5], seed 0), the
  scale-free shift (`model.interpretability.scale_free_shift`), σ_min/σ_max of the centred test
  latents (`singular_ratio`), kNN R² of TRUE_LOG_SSFR and TRUE_Z (`interpretability`: fitted on
  train, k on valid, R² on test; truth from the population's catalog.fits);
- train spectra/s: the mean over epochs of the training loop's own rate (validation excluded).

spender side (trained here, cached under WORK/spender-BUDGET/{fid,sim,con}/; a stage whose
done.json exists is skipped, an interrupted one resumes from its last.pt): spender's
`SpectrumEncoder` with its convolutions cut to cpu-small widths (32/64/128) and its MLP to
64/32/16, spender's default `SpectrumDecoder` (64/256/1024, Speculator activations) on specetl's
restframe grid (2359–9332 Å, 7000 bins), an `Instrument` holding the shards' observed grid and
nothing else (no LSF, no calibration; spender 0.3 applies no sky mask of its own, and the shards'
ivar already masks sky lines, so both models see the same weights). Losses: spender's
`get_losses` as it stands: its fidelity (`model.loss`), `similarity_restframe_loss` (weight
`LossConfig.similarity_amp` = 3, sigmoid slope annealed 0 → 5 in 3 saw-tooth ramps per stage
with specetl's `k1_schedule`) and `consistency_loss` (weight 1) on copies made by specetl's
`redshift_augment` (so both models see the same augmentation; spender, unlike specetl, does not
add the copies' fidelity). Optimiser as specetl's trainer: Adam, OneCycle LR over the stage
(peak 1e-3; 3e-4 for consistency), gradient norm clipped at 1 — on the per-spectrum mean of the
total (spender's losses are sums over the batch; the mean keeps their relative weights), batch 64,
the same `ShardStream` order (seed 0), best-by-validation-total kept (best.pt) like specetl.
Masked pixels are fed to spender's encoder as 0, as specetl's encoder does.

specetl side: `--budget small` trains the chain with the CLI (WORK/specetl-small-FAMILY/...,
`specetl train --preset cpu-small --batch-size 64 --losses FAMILY`, each stage `--init` the
previous one); `--budget converged` measures existing run folders (`--specetl fid=DIR sim=DIR
con=DIR`).

Budgets: small = fidelity 10 → similarity 10 → consistency 3 epochs (each stage initialised from
the previous); converged = fidelity 60 from scratch, similarity 80 from scratch, consistency 48
initialised from the similarity model at peak LR 3e-4.

Install spender (benchmarks only; see benchmarks/README.md):

    .venv/bin/pip install -e ".[compare]"

Commands (THE SPECTRA ARE SYNTHETIC: bagpipes galaxies with real SDSS noise and masks):

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/spender_compare.py \
        --pop /work/conv/pop --work /work/spender-compare --budget small \
        --losses paper-2023 scale-free --json /work/spender-compare/small.json

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/spender_compare.py \
        --pop /work/conv/pop --work /work/spender-compare --budget converged \
        --specetl fid=/work/conv/runs/fid-60 sim=/work/conv/runs/sim-sf-80 \
                  con=/work/conv/runs/conw-w100-48 \
        --json /work/spender-compare/converged.json

Converged, spender side in two background processes of one thread each (similarity must finish
before consistency; fidelity is independent), then measure:

    for st in "sim con" fid; do OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nohup .venv/bin/python \
        benchmarks/spender_compare.py --pop /work/conv/pop --work /work/spender-compare \
        --budget converged --stages $st --train-only \
        > /work/spender-compare/converged-${st// /-}.log 2>&1 & done

`--train-only` trains the spender chain (and, for small, specetl's) without measuring, e.g. under
nohup; `--no-train` measures what exists and fails on an unfinished stage unless `--partial`
(then the finished ones are measured and the others listed). Rerunning a training command resumes
an interrupted stage from its last.pt and skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
for _p in (HERE.parent, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from convergence import metrics_of  # noqa: E402

from etl.fidelity_floor import fidelity_floor  # noqa: E402
from etl.release import load_release  # noqa: E402
from model.augment import redshift_augment  # noqa: E402
from model.autoencoder import PRESETS  # noqa: E402
from model.checkpoint import load_model  # noqa: E402
from model.data import ShardStream, list_shards, read_wave_obs  # noqa: E402
from model.embed import iter_shard_batches  # noqa: E402
from model.interpretability import (  # noqa: E402
    interpretability,
    read_truth_catalog,
    scale_free_shift,
    singular_ratio,
    truths_for,
)
from model.objectives import evaluate  # noqa: E402
from model.train import k1_schedule  # noqa: E402

BATCH = 64
Z_AUG_MAX = 0.5
SEED = 0  # the evaluation's (augmentation redshifts), whatever seed a spender chain trained with
STAGES = ("fid", "sim", "con")
OBJECTIVE = {"fid": "fidelity", "sim": "similarity", "con": "consistency"}
#: stage -> (epochs, peak LR, stage it is initialised from or None)
BUDGETS: dict[str, dict[str, tuple[int, float, str | None]]] = {
    "small": {"fid": (10, 1e-3, None), "sim": (10, 1e-3, "fid"), "con": (3, 3e-4, "sim")},
    "converged": {"fid": (60, 1e-3, None), "sim": (80, 1e-3, None), "con": (48, 3e-4, "sim")},
}
SLOPE_MAX, SLOPE_CYCLES = 5.0, 3
GRAD_CLIP = 1.0
CONV_WIDTHS = (32, 64, 128)  # cpu-small
ENCODER_MLP = (64, 32, 16)  # cpu-small


def import_spender():
    """spender 0.3's modules, or exit 2 with one line when it is not installed."""
    try:
        import spender
        from spender import loss as spender_loss
    except ImportError as e:
        print(
            f"spender_compare: spender 0.3 is not importable ({e}); install it with `.venv/bin/pip "
            f'install -e ".[compare]"` (see benchmarks/README.md)',
            file=sys.stderr,
        )
        sys.exit(2)
    return spender, spender_loss


# --- spender's model, cut to cpu-small widths ------------------------------------------------


def build_spender(wave_obs: np.ndarray, wave_rest: torch.Tensor) -> tuple[nn.Module, nn.Module]:
    """(spender BaseAutoencoder, its Instrument): spender's encoder with cpu-small widths, its
    default decoder on `wave_rest` (Å), the instrument on the observed grid `wave_obs` (Å)."""
    spender, _ = import_spender()
    from spender.model import MLP

    inst = spender.Instrument(torch.as_tensor(wave_obs, dtype=torch.float32))
    enc = spender.SpectrumEncoder(inst, 2, n_hidden=ENCODER_MLP)
    # spender 0.3 hard-codes 128/256/512 filters; rebuild the blocks with its own builder at
    # the cpu-small widths, and the MLP for the narrower attended features
    enc.conv1, enc.conv2, enc.conv3 = enc._conv_blocks(list(CONV_WIDTHS), [5, 11, 21])
    enc.n_feature = CONV_WIDTHS[-1] // 2
    act = [nn.PReLU(n) for n in ENCODER_MLP] + [nn.Identity()]
    enc.mlp = MLP(enc.n_feature, 2, n_hidden=ENCODER_MLP, act=act)
    dec = spender.SpectrumDecoder(wave_rest.clone(), n_latent=2)
    return spender.model.BaseAutoencoder(enc, dec), inst


class SpenderAsSpecetl(nn.Module):
    """spender's autoencoder behind specetl's model interface, so the same evaluation code runs
    on both: forward(x, w, z) → (s, restframe model, observed-frame model on `wave_obs`),
    encode(x, w, z) → s (spender's encoder reads the observed frame: z unused). Masked pixels
    (w = 0) are fed as 0, as specetl's encoder does."""

    def __init__(self, ae: nn.Module, instrument: nn.Module) -> None:
        super().__init__()
        self.ae, self.instrument = ae, instrument
        self.register_buffer("wave_obs", instrument.wave_obs.float().clone())
        self.register_buffer("wave_rest", ae.decoder.wave_rest.float().clone())

    def encode(self, x: torch.Tensor, w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.ae.encode(x * (w > 0))

    def forward(self, x: torch.Tensor, w: torch.Tensor, z: torch.Tensor):
        s = self.encode(x, w, z)
        rest = self.ae.decode(s)
        obs = self.ae.decoder.transform(rest, instrument=self.instrument, z=z)
        return s, rest, obs


# --- spender's training loop (after spender.loss.get_losses) ---------------------------------


def _augmenter(wave_obs: torch.Tensor, gen: torch.Generator) -> Callable:
    def aug(batch):
        x, w, z = batch
        xa, wa, za = redshift_augment(x, w, z, wave_obs, gen, Z_AUG_MAX)
        return xa * (wa > 0), wa, za

    return aug


def _spender_losses(ae, inst, batch, stage: str, slope: float, gen: torch.Generator) -> dict:
    """spender's get_losses on one specetl batch; per-spectrum means and the weighted total."""
    _, spender_loss = import_spender()
    x, w, z = batch["flux"], batch["ivar"], batch["z"]
    cfg = spender_loss.LossConfig(similarity_slope=slope)
    fid, sim, con = spender_loss.get_losses(
        ae,
        inst,
        (x * (w > 0), w, z),
        aug_fct=_augmenter(inst.wave_obs, gen) if stage == "con" else None,
        similarity=stage in ("sim", "con"),
        consistency=stage == "con",
        loss_config=cfg,
    )
    n = x.shape[0]
    total = (fid + cfg.similarity_amp * sim + cfg.consistency_amp * con) / n
    return {"total": total, "fidelity": fid / n, "similarity": sim / n, "consistency": con / n}


def _num(v: torch.Tensor | float) -> float:
    """A loss term as a float (get_losses returns 0, not a tensor, for a term it skips)."""
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _epoch_means(sums: dict[str, float], n: int, prefix: str) -> dict[str, float]:
    return {f"{prefix}_{k}": float(v) / max(n, 1) for k, v in sums.items()}


def train_spender_stage(
    stage_dir: Path,
    stage: str,
    epochs: int,
    lr: float,
    init: Path | None,
    shards: Path,
    seed: int = SEED,
) -> None:
    """Train one stage into `stage_dir` (metrics.jsonl, best.pt, last.pt, done.json); `seed`
    sets the initial weights, the batch order and the stage's random draws."""
    if (stage_dir / "done.json").is_file():
        print(f"spender {stage_dir.name}: done, skipped", flush=True)
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    train_shards = list_shards(shards, "train", verify=False)
    valid_shards = list_shards(shards, "valid", verify=False)
    wave_obs = read_wave_obs(train_shards[0])
    wave_rest = _wave_rest()
    torch.manual_seed(seed)
    ae, inst = build_spender(wave_obs, wave_rest)
    if init is not None:
        ae.load_state_dict(torch.load(init / "best.pt", weights_only=True)["model"])
    stream = ShardStream(train_shards, BATCH, seed, shuffle=True)
    valid = ShardStream(valid_shards, BATCH, shuffle=False)
    total_steps = len(stream) * epochs
    opt = torch.optim.Adam(ae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)
    start, best = 0, math.inf
    if (stage_dir / "last.pt").is_file():
        ck = torch.load(stage_dir / "last.pt", weights_only=False)
        ae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, best = ck["epoch"], ck["best"]
        kept = [r for r in _read_jsonl(stage_dir / "metrics.jsonl") if r["epoch"] <= start]
        (stage_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
        print(f"spender {stage_dir.name}: resumed at epoch {start}", flush=True)
    for epoch in range(start, epochs):
        stream.set_epoch(epoch)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + 1000)
        ae.train()
        sums: dict[str, float] = {}
        n, step = 0, epoch * len(stream)
        t0 = time.perf_counter()
        for batch in stream:
            slope = k1_schedule(step, total_steps, SLOPE_MAX, SLOPE_CYCLES)
            parts = _spender_losses(ae, inst, batch, stage, slope, gen)
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(ae.parameters(), GRAD_CLIP)
            opt.step()
            sched.step()
            step += 1
            b = batch["z"].shape[0]
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + _num(v) * b
            n += b
        wall = time.perf_counter() - t0
        row = {"epoch": epoch + 1, **_epoch_means(sums, n, "train")}
        row.update(_spender_valid(ae, inst, valid, stage))
        row.update({"lr": sched.get_last_lr()[0], "spectra_per_s": n / wall, "epoch_s": wall})
        with open(stage_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"spender {stage_dir.name} epoch {epoch + 1}/{epochs}: train {row['train_total']:.4f} "
            f"valid {row['valid_total']:.4f} (fidelity {row['valid_fidelity']:.4f}), "
            f"{row['spectra_per_s']:.0f} spectra/s",
            flush=True,
        )
        if row["valid_total"] < best:
            best = row["valid_total"]
            torch.save({"model": ae.state_dict(), "epoch": epoch + 1}, stage_dir / "best.pt")
        state = {
            "model": ae.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch + 1,
            "best": best,
        }
        torch.save(state, stage_dir / "last.tmp")
        (stage_dir / "last.tmp").replace(stage_dir / "last.pt")
    done = {"stage": stage, "epochs": epochs, "lr": lr, "init": str(init) if init else None}
    done["seed"] = seed
    (stage_dir / "done.json").write_text(json.dumps(done) + "\n")


@torch.no_grad()
def _spender_valid(ae, inst, valid: ShardStream, stage: str) -> dict[str, float]:
    """Validation means of the stage's loss terms at the end of the slope ramp (like specetl)."""
    ae.eval()
    gen = torch.Generator().manual_seed(SEED)
    sums: dict[str, float] = {}
    n = 0
    for batch in valid:
        parts = _spender_losses(ae, inst, batch, stage, SLOPE_MAX, gen)
        b = batch["z"].shape[0]
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + _num(v) * b
        n += b
    ae.train()
    return _epoch_means(sums, n, "valid")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _wave_rest() -> torch.Tensor:
    """specetl's restframe grid (Å): cpu-small's 2359–9332 Å in 7000 linear bins."""
    c = PRESETS["cpu-small"]
    wr = torch.linspace(c.wave_rest_min, c.wave_rest_max, c.n_rest, dtype=torch.float64)
    return wr.float()


def load_spender(stage_dir: Path, shards: Path) -> SpenderAsSpecetl:
    wave_obs = read_wave_obs(list_shards(shards, "test", verify=False)[0])
    ae, inst = build_spender(wave_obs, _wave_rest())
    ae.load_state_dict(torch.load(stage_dir / "best.pt", weights_only=True)["model"])
    return SpenderAsSpecetl(ae, inst).eval()


def spender_root(work: Path, budget: str, seed: int = SEED) -> Path:
    """WORK/spender-BUDGET for the seed-0 chain, WORK/spender-BUDGET-sN for seed N."""
    return work / (f"spender-{budget}" if seed == SEED else f"spender-{budget}-s{seed}")


def train_spender_chain(
    work: Path, budget: str, shards: Path, stages: tuple[str, ...] = STAGES, seed: int = SEED
) -> dict[str, Path]:
    """Train the spender stages `stages` (in that order) of `budget` under spender_root()."""
    root = spender_root(work, budget, seed)
    for stage in stages:
        epochs, lr, parent = BUDGETS[budget][stage]
        init = root / parent if parent else None
        train_spender_stage(root / stage, stage, epochs, lr, init, shards, seed)
    return {s: root / s for s in STAGES}


# --- specetl's chain via its CLI (small budget) ----------------------------------------------


def _run_finished(run: Path, epochs: int) -> bool:
    rows = _read_jsonl(run / "metrics.jsonl")
    return (run / "best.pt").is_file() and bool(rows) and rows[-1]["epoch"] >= epochs


def train_specetl_chain(work: Path, losses: str, shards: Path) -> dict[str, Path]:
    root = work / f"specetl-small-{losses}"
    cli = Path(sys.executable).parent / "specetl"
    runs = {}
    for stage in STAGES:
        epochs, lr, parent = BUDGETS["small"][stage]
        run = root / stage
        runs[stage] = run
        if _run_finished(run, epochs):
            print(f"specetl {losses} {stage}: done, skipped", flush=True)
            continue
        cmd = [
            str(cli), "train", "--shards", str(shards), "--run", str(run),
            "--objective", OBJECTIVE[stage], "--preset", "cpu-small", "--batch-size", str(BATCH),
            "--epochs", str(epochs), "--lr", str(lr), "--losses", losses,
            # the issue's table was measured with the paper's encoder and interpolated copies;
            # the reproduction keeps them (a restframe chain is compared with --no-train)
            "--encoder-frame", "observed", "--augment", "interpolate",
        ]  # fmt: skip
        if parent:
            cmd += ["--init", str(root / parent)]
        if (run / "last.pt").is_file():
            cmd += ["--resume"]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return runs


# --- ONE evaluation for both -----------------------------------------------------------------


@torch.no_grad()
def encode_rows(model: nn.Module, shards: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n, 2), specobjids as ints) of every row of `split`, in shard order (as
    `model.interpretability.encode_split`, for a model object instead of a run folder)."""
    lat, ids = [], []
    for rows in iter_shard_batches(shards, [split], 512):
        ids.append(rows["specobjid"])
        x, w = torch.from_numpy(rows["flux"]), torch.from_numpy(rows["ivar"])
        z = torch.as_tensor(rows["z"], dtype=torch.float32)
        lat.append(model.encode(x, w, z).float().numpy())
    return np.concatenate(lat), np.array([int(v) for v in np.concatenate(ids)], dtype=object)


def measure(model: nn.Module, shards: Path, truth_cat: dict, floor: float) -> dict:
    """The comparison's figures for one model (specetl's or spender's behind the adapter)."""
    model.eval()
    test = ShardStream(list_shards(shards, "test", verify=False), BATCH, shuffle=False)
    # the same call `specetl evaluate` makes (seed 0, z_aug ~ U[0, 0.5], batch 64); the
    # similarity term is left out: it does not touch the augmentation draws
    m = evaluate(model, test, torch.device("cpu"), ("fidelity", "consistency"), seed=SEED)
    lat, truths = {}, {}
    for split in ("train", "valid", "test"):
        lat[split], ids = encode_rows(model, shards, split)
        truths[split] = truths_for(truth_cat, ids)
    r2 = interpretability(lat, truths)
    return {
        "L_fid": m["fidelity"],
        "floor": floor,
        "ratio_floor": m["fidelity"] / floor,
        "shift": m["latent_shift"],
        "scale_free": scale_free_shift(lat["test"], m["latent_shift"])["scale_free_shift"],
        "sv_ratio": singular_ratio(lat["test"]),
        "r2_ssfr": r2["TRUE_LOG_SSFR"]["r2"],
        "r2_z": r2["TRUE_Z"]["r2"],
        "n": int(m["n"]),
    }


def cached_measure(work: Path, run: Path, checkpoint: Path, compute: Callable[[], dict]) -> dict:
    """`compute()` cached in WORK/measured/, remade when `checkpoint` changed (as convergence.py
    caches in the run folder; here the run folders may be read-only)."""
    cache = work / "measured" / (str(run.resolve()).strip("/").replace("/", "_") + ".json")
    stamp = checkpoint.stat().st_mtime
    if cache.is_file():
        got = json.loads(cache.read_text())
        if got.get("checkpoint_mtime") == stamp:
            return got["figures"]
    figures = compute()
    print(f"measured {run}", flush=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"checkpoint_mtime": stamp, "figures": figures}) + "\n")
    return figures


def specetl_label(run: Path) -> str:
    """A specetl run's objective with the loss settings that shape it (from its config.json)."""
    cfg = json.loads((run / "config.json").read_text())["train"]
    if cfg["objective"] == "fidelity":  # the loss family does not enter a fidelity run
        return "fidelity"
    label = f"{cfg['objective']} ({cfg.get('losses', 'paper-2023')}"
    if cfg["objective"] == "consistency" and cfg.get("losses") == "scale-free":
        norm = cfg.get("consistency_norm", "mean-variance")
        label += f", weight {cfg.get('consistency_weight', 1.0):g}, {norm}"
    return label + ")"


def train_rate(run: Path) -> float:
    """Mean training spectra/s over a run's epochs (its metrics.jsonl)."""
    rows = metrics_of(run)
    return float(np.mean([r["spectra_per_s"] for r in rows]))


def table(rows: list[dict]) -> str:
    head = (
        "| model | objective | L_fid | ÷ floor | mean abs(s − s_aug) | scale-free shift | "
        "σ_min/σ_max | R² sSFR | R² z | train spectra/s |"
    )
    out = [head, "|" + "---|" * 10]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['objective']} | {r['L_fid']:.3f} | {r['ratio_floor']:.2f} "
            f"| {r['shift']:.4f} | {r['scale_free']:.3f} | {r['sv_ratio']:.2f} "
            f"| {r['r2_ssfr']:.2f} | {r['r2_z']:.2f} | {r['spectra_per_s']:.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pop", type=Path, required=True, help="population DATA folder")
    ap.add_argument("--work", type=Path, required=True, help="checkpoints and runs (cached)")
    ap.add_argument("--budget", choices=tuple(BUDGETS), default="small")
    ap.add_argument(
        "--losses", nargs="+", default=["paper-2023"], choices=("paper-2023", "scale-free"),
        help="specetl loss families trained for --budget small",
    )  # fmt: skip
    ap.add_argument("--specetl", nargs="+", default=[], help="converged: fid=DIR sim=DIR con=DIR")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES),
        help="spender stages to train, in this order (e.g. two processes: 'sim con' and 'fid')",
    )  # fmt: skip
    ap.add_argument(
        "--seed", type=int, default=SEED,
        help="spender's training seed (weights, batch order); N > 0 trains and reads "
        "WORK/spender-BUDGET-sN. The evaluation's own draws stay seed 0",
    )  # fmt: skip
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--train-only", action="store_true")
    mode.add_argument("--no-train", action="store_true")
    ap.add_argument(
        "--partial", action="store_true",
        help="with --no-train: measure the finished spender stages, list the unfinished ones",
    )  # fmt: skip
    args = ap.parse_args()
    import_spender()
    torch.set_num_threads(args.threads)
    release = load_release("dr16")
    shards = args.pop / release.name / "shards"
    specetl_runs: dict[str, dict[str, Path]] = {}
    if args.budget == "converged" and not args.train_only:
        given = dict(spec.split("=", 1) for spec in args.specetl)
        if sorted(given) != sorted(STAGES):
            ap.error("--budget converged needs --specetl fid=DIR sim=DIR con=DIR")
        family = json.loads((Path(given["con"]) / "config.json").read_text())["train"]["losses"]
        specetl_runs[family] = {s: Path(given[s]) for s in STAGES}
    if args.no_train:
        spender_runs = {s: spender_root(args.work, args.budget, args.seed) / s for s in STAGES}
        if args.budget == "small":
            for fam in args.losses:
                specetl_runs[fam] = {s: args.work / f"specetl-small-{fam}" / s for s in STAGES}
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        spender_runs = train_spender_chain(
            args.work, args.budget, shards, tuple(args.stages), args.seed
        )
        if args.budget == "small":
            for fam in args.losses:
                specetl_runs[fam] = train_specetl_chain(args.work, fam, shards)
    if args.train_only:
        return
    missing = [s for s, p in spender_runs.items() if not (p / "done.json").is_file()]
    if missing and not args.partial:
        sys.exit(
            f"spender_compare: unfinished spender stages {missing} under {args.work}; rerun "
            f"without --no-train to finish them, or pass --partial to measure the finished ones"
        )
    spender_runs = {s: p for s, p in spender_runs.items() if s not in missing}
    floor = fidelity_floor(
        sorted((shards / "test").glob("shard-*.h5")), args.pop / release.name / "spectra",
        release.grid,
    )["L_fid_truth"]  # fmt: skip
    truth_cat = read_truth_catalog(args.pop / release.name / "catalog.fits")
    rows = []
    for runs in specetl_runs.values():
        for stage in STAGES:
            run = runs[stage]
            ckpt = run / "best.pt" if (run / "best.pt").is_file() else run / "last.pt"
            r = cached_measure(
                args.work, run, ckpt,
                lambda run=run: measure(load_model(run, device="cpu")[0], shards, truth_cat, floor),
            )  # fmt: skip
            rows.append(
                {"model": "specetl", "objective": specetl_label(run),
                 "run": str(runs[stage]), **r, "spectra_per_s": train_rate(runs[stage])}
            )  # fmt: skip
    for stage in spender_runs:
        run = spender_runs[stage]
        r = cached_measure(
            args.work, run, run / "best.pt",
            lambda run=run: measure(load_spender(run, shards), shards, truth_cat, floor),
        )  # fmt: skip
        rows.append(
            {"model": "spender 0.3", "objective": OBJECTIVE[stage], "run": str(spender_runs[stage]),
             **r, "spectra_per_s": train_rate(spender_runs[stage])}
        )  # fmt: skip
    print(f"SYNTHETIC population, test split ({rows[0]['n']} spectra), budget {args.budget}; "
          f"fidelity floor {floor:.3f}")  # fmt: skip
    print(table(rows))
    if missing:
        print(f"spender stages not finished (not in the table): {missing}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        spender, _ = import_spender()
        doc = {
            "budget": args.budget,
            "synthetic": True,
            "floor": floor,
            "rows": rows,
            "settings": {
                "stages": {s: dict(zip(("epochs", "lr", "init"), v, strict=True))
                           for s, v in BUDGETS[args.budget].items()},
                "batch": BATCH,
                "spender_conv": CONV_WIDTHS,
                "spender_encoder_mlp": ENCODER_MLP,
                "spender_slope_max": SLOPE_MAX,
                "slope_cycles": SLOPE_CYCLES,
                "grad_clip": GRAD_CLIP,
                "threads": args.threads,
                "torch": torch.__version__,
                "spender": spender.__version__,
            },
            "load_average_at_end": os.getloadavg(),
            "unfinished_spender_stages": missing,
        }  # fmt: skip
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
