"""`specetl train`: the trainer (single process, or DDP under torchrun).

Run layout (RUN/):
  config.json     the TrainConfig and ModelConfig of the run
  metrics.jsonl   one JSON line per epoch (train and validation losses, lr, k1, spectra/s)
  best.pt         the model with the lowest validation total loss (model only)
  last.pt         the latest epoch (every `checkpoint_every` epochs and at the end), with the
                  state `--resume` needs until the run has finished
What each checkpoint holds, and loading them: model/checkpoint.py (`load_model` is re-exported
here). Every epoch reseeds dropout and augmentation from (seed, epoch) and draws its data order
from (seed, epoch), so `--resume` from an epoch boundary reproduces an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from model.augment import AUGMENT_MODES
from model.autoencoder import (
    DECODER_ACTIVATIONS,
    ENCODER_FRAMES,
    PRESET_BATCH,
    PRESETS,
    ModelConfig,
    SpectrumAutoencoder,
)
from model.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    TrainError,
    link_checkpoint,
    load_checkpoint,
    load_model,
    pick_device,
    require_training_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.data import (
    DeviceCache,
    ShardStream,
    index_sha256,
    list_shards,
    make_loader,
    read_wave_obs,
    to_device,
)
from model.objectives import LOSS_FAMILIES, OBJECTIVES, evaluate, step_losses, terms_for
from model.run_checks import check_pixels, stop_if_not_finite
from model.scalefree import CONSISTENCY_NORMS, SIM_FORMS

log = logging.getLogger(__name__)


#: the largest z_aug_max: a z≈0.1 galaxy moved to z 1 keeps a third of its restframe window
Z_AUG_MAX_LIMIT = 1.0


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in config.json and every checkpoint)."""

    shards: str
    run: str
    objective: str = "fidelity"
    preset: str = "cpu-small"
    epochs: int = 10
    batch_size: int | None = None  # None: the preset's (paper 512, cpu-small 64)
    lr: float = 1e-3  # OneCycle peak learning rate
    init: str | None = None  # run dir whose best model initialises this one
    resume: bool = False
    cache_on_device: bool = False
    compile: bool = False
    workers: int = 0
    seed: int = 0
    checkpoint_every: int = 1
    grad_clip: float = 1.0
    # the family of the similarity and consistency losses (model.objectives.LOSS_FAMILIES):
    # "scale-free" (model/scalefree.py) or "paper-2023" (the paper's equations). The default is
    # the family that won on the validation split of the convergence study (docs/convergence.md)
    losses: str = "scale-free"
    sim_form: str = "restframe"  # scale-free similarity: decoded "restframe" or "observed" data
    k0: float | None = None  # None: the family's (2.5 paper-2023, 5 scale-free)
    k1_max: float | None = None  # None: the family's (1 paper-2023, 5 scale-free)
    k1_cycles: int = 3
    # weight of L_c in the total. None: the family's (1 paper-2023 as in the paper; 100
    # scale-free: its L_c of a shift a tenth of the latent spread is ~0.005 against L_fid ~1, so
    # at weight 1 its pull is weak; 100 chosen on validation)
    consistency_weight: float | None = None
    # scale-free L_c's unit of latent spread (model.scalefree.CONSISTENCY_NORMS): "whitened"
    # (chosen on validation: "mean-variance" lets a model flatten its latents to lower L_c)
    consistency_norm: str = "whitened"
    sigma_s: float = 0.1
    # None: σ_s constant. Else σ_s falls geometrically from this value to `sigma_s` over the run:
    # L_c has no gradient where |s − s_aug| >> σ_s (the sigmoid saturates), so a small target
    # σ_s is only reachable by tightening it while the shifts shrink
    sigma_s_start: float | None = None
    # consistency's copies are moved to z_new ~ U[0, z_aug_max] (training and its validation)
    z_aug_max: float = 0.5
    # how the consistency term's copies are moved in redshift (model.augment.AUGMENT_MODES), in
    # training and in its validation (which picks best.pt, so it must judge what is trained):
    # "pixel-shift" (whole pixels on the log-uniform grid every release's shards have: lines
    # are not blurred) or "interpolate". `specetl evaluate` and benchmarks/convergence.py
    # measure every run with "interpolate" (and the convergence table with both)
    augment: str = "pixel-shift"
    # the frame the encoder reads spectra in (model.autoencoder.ENCODER_FRAMES): "restframe"
    # (placed at λ/(1+z) first: redshift-aware by construction; with "pixel-shift" the choice
    # on the validation split of docs/convergence.md, rounds 6-7) or "observed" (the paper's)
    encoder_frame: str = "restframe"
    # the decoder's activations (model.autoencoder.DECODER_ACTIVATIONS) and hidden widths
    # (None: the preset's). "speculator" with widths (64, 256, 1024) is spender 0.3's decoder
    decoder_activation: str = "leaky-relu"
    decoder_mlp: tuple[int, ...] | None = None
    verify_shards: bool = True
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise TrainError(f"--objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.preset not in PRESETS:
            raise TrainError(f"--preset must be one of {sorted(PRESETS)}, not {self.preset!r}")
        if self.losses not in LOSS_FAMILIES:
            raise TrainError(f"--losses must be one of {tuple(LOSS_FAMILIES)}, not {self.losses!r}")
        if self.consistency_weight is None:
            self.consistency_weight = LOSS_FAMILIES[self.losses]["consistency_weight"]
        if not (math.isfinite(self.consistency_weight) and self.consistency_weight > 0):
            raise TrainError(f"--consistency-weight must be > 0, not {self.consistency_weight!r}")
        if self.sim_form not in SIM_FORMS:
            raise TrainError(f"--sim-form must be one of {SIM_FORMS}, not {self.sim_form!r}")
        if self.consistency_norm not in CONSISTENCY_NORMS:
            raise TrainError(
                f"--consistency-norm must be one of {CONSISTENCY_NORMS}, "
                f"not {self.consistency_norm!r}"
            )
        if not (math.isfinite(self.z_aug_max) and 0 < self.z_aug_max <= Z_AUG_MAX_LIMIT):
            raise TrainError(
                f"--z-aug-max must be in (0, {Z_AUG_MAX_LIMIT:g}], not {self.z_aug_max!r}"
            )
        if self.augment not in AUGMENT_MODES:
            raise TrainError(f"--augment must be one of {AUGMENT_MODES}, not {self.augment!r}")
        if self.encoder_frame not in ENCODER_FRAMES:
            raise TrainError(
                f"--encoder-frame must be one of {ENCODER_FRAMES}, not {self.encoder_frame!r}"
            )
        if self.decoder_activation not in DECODER_ACTIVATIONS:
            raise TrainError(
                f"--decoder-activation must be one of {DECODER_ACTIVATIONS}, "
                f"not {self.decoder_activation!r}"
            )
        if self.decoder_mlp is not None:
            self.decoder_mlp = tuple(int(n) for n in self.decoder_mlp)
            if not self.decoder_mlp or min(self.decoder_mlp) < 1:
                raise TrainError(f"--decoder-mlp needs widths >= 1, not {self.decoder_mlp!r}")
        family = LOSS_FAMILIES[self.losses]
        if self.k0 is None:
            self.k0 = family["k0"]
        if self.k1_max is None:
            self.k1_max = family["k1_max"]
        if self.batch_size is None:
            self.batch_size = PRESET_BATCH[self.preset]
        if self.epochs < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise TrainError("--epochs, --batch-size and --checkpoint-every must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f"--lr must be a finite number > 0, not {self.lr!r}")
        # config.json and the checkpoints store these: absolute, so that evaluate, embed and
        # --init read the same folders from any working directory
        self.shards, self.run = os.path.abspath(self.shards), os.path.abspath(self.run)
        self.init = os.path.abspath(self.init) if self.init else None


def k1_schedule(step: int, total_steps: int, k1_max: float, cycles: int) -> float:
    """Inverse annealing of the similarity sharpness: a sawtooth 0 → k1_max, `cycles` times.

    Small k1 first lets the latent distances find the scale of the spectral distances before
    the sigmoid sharpens; restarting the ramp lets the latents reorganise repeatedly.
    """
    if cycles <= 0 or total_steps <= 0:
        return k1_max
    period = total_steps / cycles
    return k1_max * min(1.0, ((step % period) + 1) / period)


def sigma_s_schedule(step: int, total_steps: int, start: float | None, end: float) -> float:
    """σ_s at `step`: `end` throughout when `start` is None, else geometric from start to end."""
    if start is None or total_steps <= 1:
        return end
    return start * (end / start) ** min(1.0, step / (total_steps - 1))


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 101 + stream) % (2**63)


def _dist_setup(device: torch.device) -> tuple[int, int]:
    """(rank, world_size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(cfg: TrainConfig, stop_after_epoch: int | None = None) -> dict:
    """Train per `cfg`; returns the last epoch's metrics (rank 0; others get {}).

    `stop_after_epoch` ends the run early after that epoch (checkpointing it), as an
    interruption would; the LR schedule still spans `cfg.epochs` (used by the resume test).
    """
    device = pick_device(cfg.device)
    rank, world = _dist_setup(device)
    main = rank == 0
    run = Path(cfg.run)
    terms = terms_for(cfg.objective)
    if main:
        run.mkdir(parents=True, exist_ok=True)
        if (run / "last.pt").exists() and not cfg.resume:
            raise TrainError(f"{run} already holds a run; pass --resume or choose a new --run")
    if cfg.resume and not (run / "last.pt").exists():
        raise TrainError(f"--resume: no {run / 'last.pt'} to resume from")

    train_shards = list_shards(cfg.shards, "train", verify=cfg.verify_shards and main)
    valid_shards = list_shards(cfg.shards, "valid", verify=cfg.verify_shards and main)
    wave_obs = read_wave_obs(train_shards[0])
    mcfg = PRESETS[cfg.preset]
    decoder = {"decoder_activation": cfg.decoder_activation}
    if cfg.decoder_mlp is not None:
        decoder["decoder_mlp"] = list(cfg.decoder_mlp)
    mcfg = ModelConfig.from_dict(
        {**mcfg.to_dict(), "npix": len(wave_obs), "encoder_frame": cfg.encoder_frame, **decoder}
    )

    torch.manual_seed(cfg.seed)  # parameter init, identical on every rank
    core = SpectrumAutoencoder(mcfg, wave_obs).to(device)
    if cfg.init:
        init_model, init_ckpt = load_model(cfg.init)
        check_pixels(init_ckpt, len(wave_obs), f"--init {cfg.init}", cfg.shards)
        init_cfg = ModelConfig.from_dict(init_ckpt["model_config"]).to_dict()
        # the encoder's frame changes no weight's shape: an observed-frame run may start a
        # restframe one (and back); every other difference is a different network
        if {**init_cfg, "encoder_frame": cfg.encoder_frame} != mcfg.to_dict():
            raise TrainError(f"--init {cfg.init}: model config differs from preset {cfg.preset}")
        core.load_state_dict(init_model.state_dict())
        if main:
            log.info(
                "initialised from %s (objective %s, %s-frame encoder)",
                cfg.init,
                init_ckpt["config"]["objective"],
                init_cfg["encoder_frame"],
            )

    if cfg.cache_on_device:
        train_data = DeviceCache(train_shards, cfg.batch_size, device, cfg.seed, rank, world)
        valid_data = DeviceCache(valid_shards, cfg.batch_size, device, shuffle=False)
        train_iter = valid_iter = None
    else:
        train_data = ShardStream(
            train_shards, cfg.batch_size, cfg.seed, rank, world, cfg.workers, shuffle=True
        )
        valid_data = ShardStream(valid_shards, cfg.batch_size, shuffle=False)
        train_iter = make_loader(train_data, pin_memory=device.type == "cuda")
        valid_iter = make_loader(valid_data, pin_memory=device.type == "cuda")
    steps_per_epoch = len(train_data)
    if steps_per_epoch == 0:
        raise TrainError(
            f"too few training spectra for batch size {cfg.batch_size} × {world} ranks "
            f"× {max(cfg.workers, 1)} workers"
        )
    total_steps = steps_per_epoch * cfg.epochs

    opt = torch.optim.Adam(core.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    start_epoch, best = 0, math.inf
    if cfg.resume:
        ckpt = load_checkpoint(run / "last.pt", device)
        _check_resume(ckpt["config"], cfg)
        if ckpt["epoch"] >= cfg.epochs:
            if main:
                log.info("%s finished all %d epochs; nothing to resume", run, cfg.epochs)
            return ckpt.get("metrics", {}) if main else {}
        require_training_state(ckpt, run / "last.pt")
        core.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best = ckpt["epoch"], ckpt["best_valid"]
        if ckpt["index_sha256"] != index_sha256(cfg.shards) and main:
            log.warning("resuming on different shards than the checkpoint was trained on")
        if main:
            _truncate_metrics(run / "metrics.jsonl", start_epoch)
            log.info("resumed %s at epoch %d", run, start_epoch)
    if main:
        (run / "config.json").write_text(
            json.dumps({"train": asdict(cfg), "model": mcfg.to_dict()}, indent=2) + "\n"
        )
        log.info(
            "training %s (%s, %.2fM params) on %s, %d rank(s), %d steps/epoch of %d spectra",
            cfg.objective,
            cfg.preset,
            core.n_params() / 1e6,
            device,
            world,
            steps_per_epoch,
            cfg.batch_size,
        )

    model: torch.nn.Module = core
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            core, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    autocast = device.type == "cuda"  # bf16 on GPU only; CPU autocast is slower than fp32

    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_data.set_epoch(epoch)
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, rank))  # dropout
        gen = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch, 1000 + rank))
        model.train()
        sums = torch.zeros(6, dtype=torch.float64)
        step = epoch * steps_per_epoch
        k1 = 0.0
        batches = train_iter if train_iter is not None else train_data
        bar = tqdm(
            batches,
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=None if (main and cfg.progress) else True,  # None: off when not a terminal
            leave=False,
            unit="batch",
        )
        for batch in bar:
            batch = to_device(batch, device)
            k1 = k1_schedule(step, total_steps, cfg.k1_max, cfg.k1_cycles)
            sigma_s = sigma_s_schedule(step, total_steps, cfg.sigma_s_start, cfg.sigma_s)
            parts = step_losses(
                model,
                core,
                batch,
                terms,
                cfg.k0,
                k1,
                sigma_s,
                gen,
                cfg.z_aug_max,
                autocast,
                cfg.losses,
                cfg.sim_form,
                cfg.consistency_weight,
                cfg.consistency_norm,
                augment=cfg.augment,
            )
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            torch.nn.utils.clip_grad_norm_(core.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            b = batch["z"].shape[0]
            sums += torch.tensor(
                [
                    b,
                    float(parts["total"].detach()) * b,
                    float(parts["fidelity"].detach()) * b,
                    float(parts.get("similarity", torch.zeros(())).detach()) * b,
                    float(parts.get("consistency", torch.zeros(())).detach()) * b,
                    0.0,
                ],
                dtype=torch.float64,
            )
            bar.set_postfix(loss=f"{float(parts['total'].detach()):.4f}")
        if world > 1:
            sums_d = sums.to(device)
            dist.all_reduce(sums_d)
            sums = sums_d.cpu()
        wall = time.perf_counter() - t0
        # every rank sees the all-reduced train loss, so all of them stop together (no rank
        # left waiting at a barrier); the validation loss is rank 0's, checked below
        stop_if_not_finite(float(sums[1]) / max(float(sums[0]), 1.0), 0.0, epoch + 1, run)
        if main:
            vbatches = valid_iter if valid_iter is not None else valid_data
            # similarity at the end of its ramp (k1_max), the sharpness training works towards
            valid = evaluate(
                core,
                vbatches,
                device,
                terms,
                cfg.k0,
                cfg.k1_max,
                cfg.sigma_s,
                cfg.seed,
                cfg.z_aug_max,
                cfg.losses,
                cfg.sim_form,
                cfg.consistency_weight,
                cfg.consistency_norm,
                augment=cfg.augment,
            )
            n = max(float(sums[0]), 1.0)
            stop_if_not_finite(float(sums[1]) / n, valid["total"], epoch + 1, run)
            metrics = {
                "epoch": epoch + 1,
                "train_total": float(sums[1]) / n,
                "train_fidelity": float(sums[2]) / n,
                **({"train_similarity": float(sums[3]) / n} if "similarity" in terms else {}),
                **({"train_consistency": float(sums[4]) / n} if "consistency" in terms else {}),
                **{f"valid_{k}": v for k, v in valid.items() if k != "n"},
                "lr": sched.get_last_lr()[0],
                "k1": k1,
                **({"sigma_s": sigma_s} if cfg.sigma_s_start is not None else {}),
                "spectra_per_s": n / wall,
                "epoch_s": wall,
            }
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            log.info(
                "epoch %d/%d: train %.4f valid %.4f (fidelity %.4f, latents σ_min/σ_max %.2f), "
                "%.0f spectra/s",
                epoch + 1,
                cfg.epochs,
                metrics["train_total"],
                valid["total"],
                valid["fidelity"],
                valid["sv_ratio"],
                metrics["spectra_per_s"],
            )
            slim = {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "model": core.state_dict(),
                "epoch": epoch + 1,
                "config": asdict(cfg),
                "model_config": mcfg.to_dict(),
                "index_sha256": index_sha256(cfg.shards),
                "best_valid": min(best, valid["total"]),
                "metrics": metrics,
            }
            improved = valid["total"] < best
            if improved:
                best = valid["total"]
                save_checkpoint(slim, run / "best.pt")
            finished = epoch + 1 == cfg.epochs
            last = finished or epoch + 1 == stop_after_epoch
            if finished and improved:
                # the same model-only checkpoint: one file under both names, not two copies
                link_checkpoint(run / "best.pt", run / "last.pt")
            elif (epoch + 1) % cfg.checkpoint_every == 0 or last:
                full = {
                    **slim,
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": rng_state(),
                }
                save_checkpoint(slim if finished else full, run / "last.pt")
        if world > 1:
            dist.barrier()
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
            break
    return metrics


_RESUME_KEYS = (
    "objective",
    "preset",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "workers",
    "losses",
    "sim_form",
    "consistency_weight",
    "consistency_norm",
    "k0",
    "k1_max",
    "k1_cycles",
    "sigma_s",
    "sigma_s_start",
    "z_aug_max",
    "augment",
    "encoder_frame",
    "decoder_activation",
    "decoder_mlp",
    "cache_on_device",
)


#: what a run was trained with before its checkpoint recorded the setting. Not today's default:
#: defaults move to what wins on validation (losses and consistency in round 4, augmentation
#: and encoder frame in round 7), and an old checkpoint must not be read as made with the new.
SETTINGS_BEFORE_RECORDED: dict[str, object] = {
    "losses": "paper-2023",
    "sim_form": "restframe",
    "consistency_weight": 1.0,
    "consistency_norm": "mean-variance",
    "sigma_s_start": None,
    "augment": "interpolate",
    "encoder_frame": "observed",
}


def saved_setting(saved: dict, name: str) -> object:
    """The value of TrainConfig setting `name` that the run of checkpoint config `saved` used.

    A key the checkpoint lacks is older than the setting: its value is the one the code had
    before the setting existed (SETTINGS_BEFORE_RECORDED), else the field's default (settings
    recorded from the first checkpoint on). Raises KeyError for a name that is no setting.
    """
    if name in saved:
        return saved[name]
    if name in SETTINGS_BEFORE_RECORDED:
        return SETTINGS_BEFORE_RECORDED[name]
    return TrainConfig.__dataclass_fields__[name].default


def _check_resume(saved: dict, cfg: TrainConfig) -> None:
    def same(a: object, b: object) -> bool:  # a JSON round trip turns tuples into lists
        return (tuple(a) if isinstance(a, list) else a) == (tuple(b) if isinstance(b, list) else b)

    diff = [k for k in _RESUME_KEYS if not same(saved_setting(saved, k), getattr(cfg, k))]
    if diff:
        pairs = ", ".join(f"{k}: {saved_setting(saved, k)!r} → {getattr(cfg, k)!r}" for k in diff)
        # --resume replays the interrupted run exactly (its LR schedule spans the epochs it was
        # started with), so "more epochs" is a new run that starts from this one's weights
        raise TrainError(
            f"--resume with settings that differ from the checkpoint ({pairs}); --resume only "
            f"finishes {cfg.run} as it was started. To train longer or with other settings, "
            f"start a new run from its best model: specetl train --run NEW_RUN --init {cfg.run} "
            f"--objective {cfg.objective} --preset {saved.get('preset', cfg.preset)} "
            f"--epochs N (plus your other options)"
        )


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint (they will be rerun)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    keep = [ln for ln in lines if json.loads(ln)["epoch"] <= epoch]
    path.write_text("".join(ln + "\n" for ln in keep))
