"""What the trained models know about the SYNTHETIC population's physics, and about real galaxies.

Used by the demo (``workflows.demo``) and ``benchmarks/table1.py --population``:

- :func:`encode_split`: the 2-D latents of every spectrum of a split, with its specobjid;
- :func:`interpretability`: k-nearest-neighbour regression of each true parameter from the
  latents, fitted on the train split, k chosen on the validation split, R² on the test split;
- :func:`paired_r2_bootstrap`: R²(a) − R²(b) on the same objects with a bootstrap interval, so
  "at least the fidelity model's" can be told from noise (``benchmarks/r2_intervals.py``);
- :func:`scale_free_shift`: mean |s − s_aug| over the median latent distance between different
  galaxies (a latent space without a fixed scale cannot shrink it by shrinking);
- :func:`plot_latent_maps`: latents coloured by log sSFR and by z, one column per objective;
- :func:`similarity_scales`: the two sides of the similarity loss's S_ij = ½|s_i − s_j|² − D_ij
  over pairs of a test batch, i.e. whether the latents are spread at the scale of the spectral
  distances (L_sim reaches its floor only where they are).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import load_model
from model.data import list_shards
from model.embed import iter_shard_batches, read_rows
from model.objectives import latent_sv_ratio

#: the true parameters the latents are asked to predict: catalogue column -> label
TARGETS = {
    "TRUE_LOG_SSFR": "log sSFR [1/yr]",
    "TRUE_AGE_MW": "mass-weighted age [Gyr]",
    "TRUE_AV": "A_V [mag]",
    "TRUE_LOG_ZMET": "log Z/Z☉",
    "TRUE_SIGMA": "σ [km/s]",
    "TRUE_Z": "z",
}
K_CHOICES = (5, 10, 20, 50, 100)


@torch.no_grad()
def encode_split(
    run: str | Path, shards_dir: str | Path, split: str, batch: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(latents (n, S), specobjids (n,) as ints, z (n,)) of every row of ``split``, in order.

    Reads the shards as `specetl embed` does (`model.embed.iter_shard_batches`: any shard
    format), but runs the encoder only: the latents are all the science here needs."""
    model, _ = load_model(run, device="cpu")
    model.eval()
    lat, ids, zs = [], [], []
    for rows in iter_shard_batches(shards_dir, [split], batch):
        ids.append(rows["specobjid"])
        zs.append(rows["z"])
        flux, ivar = torch.from_numpy(rows["flux"]), torch.from_numpy(rows["ivar"])
        z = torch.as_tensor(rows["z"], dtype=torch.float32)
        lat.append(model.encode(flux, ivar, z).float().numpy())
    as_ints = np.array([int(v) for v in np.concatenate(ids)], dtype=object)
    return np.concatenate(lat), as_ints, np.concatenate(zs)


def truths_for(catalog: Mapping[str, np.ndarray], ids: np.ndarray) -> dict[str, np.ndarray]:
    """The TRUE_* catalogue columns, row-aligned with ``ids`` (specobjids as ints)."""
    where = {int(s): i for i, s in enumerate(catalog["SPECOBJID"])}
    rows = np.array([where[int(s)] for s in ids])
    return {k: np.asarray(v)[rows] for k, v in catalog.items() if k.startswith("TRUE_")}


def read_truth_catalog(path: str | Path) -> dict[str, np.ndarray]:
    """SPECOBJID and the TRUE_* columns of a population catalogue."""
    from astropy.table import Table

    t = Table.read(path)
    out = {"SPECOBJID": np.array([int(v) for v in t["SPECOBJID"]], dtype=object)}
    out.update({c: np.asarray(t[c], dtype=np.float64) for c in t.colnames if c.startswith("TRUE_")})
    return out


def _knn_predict(x_fit, y_fit, x_eval, k: int) -> np.ndarray:
    from sklearn.neighbors import KNeighborsRegressor

    reg = KNeighborsRegressor(n_neighbors=min(k, len(x_fit)), weights="uniform")
    return reg.fit(x_fit, y_fit).predict(x_eval)


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import r2_score

    return float(r2_score(y, pred))


def knn_test_predictions(
    latents: Mapping[str, np.ndarray],
    truths: Mapping[str, Mapping[str, np.ndarray]],
    param: str,
    split: str = "test",
) -> tuple[np.ndarray, int]:
    """(predictions of `param` on `split`, k): kNN fitted on train, k the best R² on valid.

    `split="valid"` predicts the split k was chosen on (R² a little optimistic, alike for every
    model): what settings are chosen by, so that the test split is never looked at.
    """
    x, y = latents, {s: truths[s][param] for s in truths}
    best = max(
        K_CHOICES,
        key=lambda k: _r2(y["valid"], _knn_predict(x["train"], y["train"], x["valid"], k)),
    )
    return _knn_predict(x["train"], y["train"], x[split], best), best


def interpretability(
    latents: Mapping[str, np.ndarray], truths: Mapping[str, Mapping[str, np.ndarray]]
) -> dict[str, dict[str, float]]:
    """R² on the test split of a kNN regression of each :data:`TARGETS` parameter.

    ``latents`` and ``truths`` are keyed by split ("train", "valid", "test"). The regressor is
    fitted on train; k is the one of :data:`K_CHOICES` with the best R² on valid. Returns
    {parameter: {"r2": test R², "k": k}}.
    """
    out = {}
    for param in TARGETS:
        pred, k = knn_test_predictions(latents, truths, param)
        out[param] = {"r2": _r2(truths["test"][param], pred), "k": k}
    return out


def paired_r2_bootstrap(
    y: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """R²(a) − R²(b) on the same objects, with a percentile bootstrap interval over them.

    The objects are resampled with replacement (the same draw for both models, so what they
    share cancels); a difference whose interval straddles 0 is within what the test split's
    size can tell apart. Returns r2_a, r2_b, delta and its [lo, hi] interval at `level`.
    """
    y, pred_a, pred_b = (np.asarray(v, dtype=np.float64) for v in (y, pred_a, pred_b))
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(y), size=(n_boot, len(y)))
    yb = y[idx]
    ss_tot = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
    ok = ss_tot > 0  # a draw of one repeated value has no R²
    delta = (((yb - pred_b[idx]) ** 2).sum(1) - ((yb - pred_a[idx]) ** 2).sum(1))[ok] / ss_tot[ok]
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(delta, [tail, 100 - tail])
    r2_a, r2_b = _r2(y, pred_a), _r2(y, pred_b)
    return {"r2_a": r2_a, "r2_b": r2_b, "delta": r2_a - r2_b, "lo": float(lo), "hi": float(hi)}


def singular_ratio(latents: np.ndarray) -> float:
    """Smaller / larger singular value of the centred latents (n, 2): 1 when both dimensions are
    used alike, 0 when the latents lie on a line (a one-dimensional latent space). The measure
    training logs each epoch (`model.objectives.latent_sv_ratio`), on numpy latents."""
    return latent_sv_ratio(torch.from_numpy(np.asarray(latents, dtype=np.float64)))


def scale_free_shift(latents: np.ndarray, latent_shift: float, seed: int = 0) -> dict:
    """mean |s − s_aug| / median |s_i − s_j| over random pairs i != j of different spectra."""
    rng = np.random.default_rng(seed)
    n = len(latents)
    i = rng.integers(n, size=20000)
    j = (i + rng.integers(1, n, size=20000)) % n  # never i itself
    typical = float(np.median(np.linalg.norm(latents[i] - latents[j], axis=1)))
    return {"median_pair_distance": typical, "scale_free_shift": latent_shift / typical}


def plot_latent_maps(
    latents: Mapping[str, np.ndarray],
    truths: Mapping[str, np.ndarray],
    path: str | Path,
    title: str,
    colour_by: Sequence[tuple[str, str, str]] = (
        ("TRUE_LOG_SSFR", "log sSFR [1/yr]", "coolwarm_r"),
        ("TRUE_Z", "z", "viridis"),
    ),
) -> Path:
    """Latent maps (one column per objective), one row per colouring parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(latents)
    fig, axes = plt.subplots(
        len(colour_by), len(names), figsize=(4.2 * len(names), 3.8 * len(colour_by)),
        squeeze=False,
    )  # fmt: skip
    for col, name in enumerate(names):
        s = latents[name]
        order = np.random.default_rng(0).permutation(len(s))  # no colour painted over the rest
        for row, (param, label, cmap) in enumerate(colour_by):
            ax = axes[row, col]
            c = truths[param]
            lo, hi = np.percentile(c, [2, 98])
            sc = ax.scatter(
                s[order, 0], s[order, 1], c=c[order], s=3, cmap=cmap, vmin=lo, vmax=hi,
                rasterized=True, linewidths=0,
            )  # fmt: skip
            ax.set_xlabel("s₁")
            ax.set_ylabel("s₂")
            if row == 0:
                ax.set_title(name)
            fig.colorbar(sc, ax=ax, label=label)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def similarity_scales(run: str | Path, shards_dir: str | Path, split: str, n: int = 256) -> dict:
    """Medians over the pairs i < j of the first ``n`` rows of ``split`` of the latent side
    ½|s_i − s_j|² and the spectral side D_ij (weighted restframe distance per pixel, as in
    `model.losses.similarity_loss`), and the fraction of pairs with |S_ij| < 1, where the pair
    loss at k0 = 2.5, k1 = 1 is within 0.06 of its minimum."""
    from model.losses import _pairwise_weighted_sqdist, restframe_weights

    model, _ = load_model(run, device="cpu")
    model.eval()
    shard = list_shards(shards_dir, split, verify=False)[0]
    rows = read_rows(shard.path, 0, min(n, shard.rows))
    x, w, z = (torch.from_numpy(rows[k]) for k in ("flux", "ivar", "z"))
    s, x_rest, _ = model(x, w, z)
    w_rest = restframe_weights(w, z, model.wave_obs, model.wave_rest)
    latent = 0.5 * torch.cdist(s.double(), s.double()) ** 2
    spectral = _pairwise_weighted_sqdist(x_rest.float(), w_rest.float()) / x_rest.shape[1]
    iu = torch.triu_indices(len(s), len(s), offset=1)
    a, b = latent[iu[0], iu[1]].numpy(), spectral[iu[0], iu[1]].double().numpy()
    return {
        "median_latent_side": float(np.median(a)),
        "median_spectral_side": float(np.median(b)),
        "matched_fraction": float(np.mean(np.abs(a - b) < 1.0)),
        "n": int(len(s)),
    }
