"""The training objectives: which loss terms each trains, one batch's terms, their mean over a split.

(`model.evaluate` is the `specetl evaluate` command built on this: Table 1, figures, reports.)

`step_losses` is the single place where a batch becomes the paper's loss terms, so training and
evaluation cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from model.augment import redshift_augment
from model.autoencoder import SpectrumAutoencoder
from model.data import Batch, to_device
from model.losses import consistency_loss, fidelity_loss, restframe_weights, similarity_loss
from model.scalefree import (
    CONSISTENCY_NORMS,
    SIM_FORMS,
    chi2_dissimilarity,
    observed_restframe,
    scalefree_consistency,
    scalefree_similarity,
    window_dissimilarity,
)

OBJECTIVES = ("fidelity", "similarity", "consistency")

#: The loss families and their settings: the 2023 equations (k0 2.5, k1 annealed to 1, weights
#: 1) and the scale-free ones (model/scalefree.py; k0 5, k1 annealed to 5, similarity weight 3:
#: the term must weigh against a fidelity term of order 1 per pixel; consistency weight 100,
#: chosen on the validation split of the convergence study, docs/convergence.md)
LOSS_FAMILIES: dict[str, dict[str, float]] = {
    "paper-2023": {"k0": 2.5, "k1_max": 1.0, "sim_weight": 1.0, "consistency_weight": 1.0},
    "scale-free": {"k0": 5.0, "k1_max": 5.0, "sim_weight": 3.0, "consistency_weight": 100.0},
}


def step_losses(
    model: torch.nn.Module,
    core: SpectrumAutoencoder,
    batch: Batch,
    terms: tuple[str, ...],
    k0: float = 2.5,
    k1: float = 1.0,
    sigma_s: float = 0.1,
    generator: torch.Generator | None = None,
    z_aug_max: float = 0.5,
    autocast: bool = False,
    losses: str = "paper-2023",
    sim_form: str = "restframe",
    consistency_weight: float = 1.0,
    consistency_norm: str = "mean-variance",
    augment: str = "interpolate",
) -> dict[str, torch.Tensor]:
    """Loss terms of one batch. `terms` ⊆ {"fidelity", "similarity", "consistency"}.

    `losses` picks the family of the similarity and consistency terms (`LOSS_FAMILIES`): the
    2023 equations (model/losses.py; `sigma_s` applies) or the scale-free ones
    (model/scalefree.py; `sim_form` "restframe" or "observed" picks the spectral side).
    `consistency_weight` multiplies L_c in the total (the paper and spender 0.3 use 1).
    `augment` is how the consistency copies are moved in redshift (`redshift_augment`'s mode).

    `model` is what is called (maybe DDP-wrapped or compiled); `core` is the bare
    `SpectrumAutoencoder` (for its grids). With "consistency", the batch and its redshift-
    augmented copy go through ONE forward pass (so DDP sees every parameter used once), and the
    copy's reconstruction is trained too ("fidelity_aug"). Returns a dict with "fidelity"
    (originals only), optionally "similarity", "fidelity_aug", "consistency", "latent_shift"
    (mean |s − s_aug|, latent units), and "total" (the sum of the loss terms, similarity weighted
    by the family's `sim_weight`; the reported "similarity" is unweighted).
    Losses are computed in float32 outside autocast (the Gram matrices need the precision).
    """
    if losses not in LOSS_FAMILIES:
        raise ValueError(f"unknown loss family {losses!r}; choose from {tuple(LOSS_FAMILIES)}")
    if sim_form not in SIM_FORMS:
        raise ValueError(f"unknown similarity form {sim_form!r}; choose from {SIM_FORMS}")
    if consistency_norm not in CONSISTENCY_NORMS:
        raise ValueError(
            f"unknown consistency norm {consistency_norm!r}; choose from {CONSISTENCY_NORMS}"
        )
    scale_free = losses == "scale-free"
    x, w, z = batch["flux"], batch["ivar"], batch["z"]
    n = x.shape[0]
    if "consistency" in terms:
        xa, wa, za = redshift_augment(x, w, z, core.wave_obs, generator, z_aug_max, augment)
        x, w, z = torch.cat([x, xa]), torch.cat([w, wa]), torch.cat([z, za])
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        s_all, x_rest_all, x_obs_all = model(x, w, z)
    s_all = s_all.float()
    x_obs_all = x_obs_all.float()
    out = {"fidelity": fidelity_loss(x[:n], x_obs_all[:n], w[:n])}
    s, x_rest = s_all[:n], x_rest_all[:n].float()
    if "similarity" in terms:
        if not scale_free:
            w_rest = restframe_weights(w[:n], z[:n], core.wave_obs, core.wave_rest)
            out["similarity"] = similarity_loss(s, x_rest, w_rest, k0, k1)
        elif sim_form == "restframe":
            d_spec = window_dissimilarity(x_rest, core.wave_rest)
            out["similarity"] = scalefree_similarity(s, d_spec, k0, k1)
        else:
            xr, wr = observed_restframe(x[:n], w[:n], z[:n], core.wave_obs, core.wave_rest)
            out["similarity"] = scalefree_similarity(s, chi2_dissimilarity(xr, wr), k0, k1)
    if "consistency" in terms:
        s_aug = s_all[n:]
        out["fidelity_aug"] = fidelity_loss(x[n:], x_obs_all[n:], w[n:])
        if scale_free:
            out["consistency"] = scalefree_consistency(s, s_aug, consistency_norm)
        else:
            out["consistency"] = consistency_loss(s, s_aug, sigma_s)
        out["latent_shift"] = (s - s_aug).norm(dim=-1).mean().detach()
    sim_weight = LOSS_FAMILIES[losses]["sim_weight"]
    keys = ("fidelity", "fidelity_aug", "similarity", "consistency")
    out["total"] = sum(
        out[t] * {"similarity": sim_weight, "consistency": consistency_weight}.get(t, 1.0)
        for t in keys
        if t in out
    )
    return out


def terms_for(objective: str) -> tuple[str, ...]:
    """Loss terms trained by an objective: fidelity ⊂ similarity ⊂ consistency."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose from {OBJECTIVES}")
    return OBJECTIVES[: OBJECTIVES.index(objective) + 1]


@torch.no_grad()
def evaluate(
    model: SpectrumAutoencoder,
    batches: Iterable[Batch],
    device: torch.device,
    terms: tuple[str, ...] = OBJECTIVES,
    k0: float = 2.5,
    k1: float = 1.0,
    sigma_s: float = 0.1,
    seed: int = 0,
    z_aug_max: float = 0.5,
    losses: str = "paper-2023",
    sim_form: str = "restframe",
    consistency_weight: float = 1.0,
    consistency_norm: str = "mean-variance",
    augment: str = "interpolate",
) -> dict[str, float]:
    """Row-weighted mean of each loss term over `batches` (model in eval mode).

    The augmentation redshifts are drawn from a generator seeded with `seed`, so repeated
    evaluations of the same model give the same numbers; `augment` is how the copies are made
    (`redshift_augment`'s mode: training validates with its own). L_sim is evaluated at fixed (k0, k1)
    (the paper's Table 1 uses k0 = 2.5, k1 = 1). Returns {"fidelity", ["similarity",
    "consistency", "latent_shift"], "total", "n", "sv_ratio"}; "sv_ratio" is the smaller over
    the larger singular value of the centred latents of all rows (0: they lie on a line, the
    one-dimensional latent space; 1: both dimensions used alike).
    """
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(seed)
    sums: dict[str, float] = {}
    latents: list[torch.Tensor] = []
    n = 0
    for batch in batches:
        batch = to_device(batch, device)
        b = batch["z"].shape[0]
        parts = step_losses(
            model,
            model,
            batch,
            terms,
            k0,
            k1,
            sigma_s,
            gen,
            z_aug_max,
            False,
            losses,
            sim_form,
            consistency_weight,
            consistency_norm,
            augment=augment,
        )
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        # an encoder pass more (cheap beside the decoder and the augmented copies) for the shape
        # of the latent cloud, which no loss term reports
        latents.append(model.encode(batch["flux"], batch["ivar"], batch["z"]).float())
        n += b
    model.train(was_training)
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["n"] = n
    out["sv_ratio"] = latent_sv_ratio(torch.cat(latents)) if latents else float("nan")
    return out


def latent_sv_ratio(s: torch.Tensor) -> float:
    """Smaller / larger singular value of the centred latents (N, S), over the finite rows (a
    diverged model's NaN latents are reported by its losses, not here); NaN for fewer than 2."""
    s = s[torch.isfinite(s).all(dim=1)]
    if s.shape[0] < 2:
        return float("nan")
    sv = torch.linalg.svdvals(s - s.mean(0))
    return float(sv[-1] / sv[0].clamp(min=1e-30))


@torch.no_grad()
def collect_latents(
    model: SpectrumAutoencoder, batches: Iterable[Batch], device: torch.device, max_n: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (n, S) and redshifts (n,) of up to `max_n` spectra, on the CPU."""
    model.eval()
    ss, zs, n = [], [], 0
    for batch in batches:
        batch = to_device(batch, device)
        ss.append(model.encode(batch["flux"], batch["ivar"], batch["z"]).float().cpu())
        zs.append(batch["z"].cpu())
        n += len(zs[-1])
        if n >= max_n:
            break
    return torch.cat(ss)[:max_n], torch.cat(zs)[:max_n]
