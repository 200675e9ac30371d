"""Figures of `specetl evaluate`: the paper's Figure 2 and the training curves.

Drawn with matplotlib's object API (`Figure` + savefig, Agg), never `pyplot`, so plotting does not
switch a global backend or leak figures in a long-running process. Inputs are plain numpy arrays;
the model code lives in `model.evaluate`.

Units: wavelengths in Å (vacuum), fluxes normalised as in the shards (observed flux divided by
its median in the normalisation window, so dimensionless), latents in latent units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: Strong restframe features for the zoom panels: (label, centre Å vacuum, half-width Å).
LINES: tuple[tuple[str, float, float], ...] = (
    ("[OII] 3728", 3728.5, 35.0),
    ("Ca H&K", 3952.0, 45.0),
    ("Hβ 4863", 4862.7, 35.0),
    ("[OIII] 5008", 5008.2, 35.0),
    ("Na D", 5894.6, 35.0),
    ("Hα 6565", 6564.6, 45.0),
)

# plasma without its palest end: a yellow line on white is hard to see
_Z_CMAP = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0, 0.88, 256)))


@dataclass
class SpectrumPanel:
    """What the left half of Figure 2 shows, all on the observed grid `wave_obs` (M,) Å.

    x, w: observed normalised flux and inverse variance of the chosen spectrum (M,); z its redshift.
    model: its reconstruction x'' (M,). z_aug (K,), model_aug (K, M): redshifts of the augmented
    copies and their reconstructions on the same observed grid (copy k is at z_aug[k]).
    """

    wave_obs: np.ndarray
    x: np.ndarray
    w: np.ndarray
    z: float
    model: np.ndarray
    z_aug: np.ndarray
    model_aug: np.ndarray
    label: str = ""


def _robust_ylim(y: np.ndarray, pad: float = 0.15) -> tuple[float, float]:
    """y-range from the 1st–99.5th percentiles, so noise spikes do not set the scale."""
    y = y[np.isfinite(y)]
    if y.size == 0:
        return -1.0, 1.0
    lo, hi = np.percentile(y, [1.0, 99.5])
    span = max(hi - lo, 1e-3)
    return lo - pad * span, hi + pad * span


def _masked(y: np.ndarray, keep: np.ndarray) -> np.ndarray:
    out = np.asarray(y, dtype=float).copy()
    out[~keep] = np.nan  # NaNs break the line: masked pixels are omitted, not interpolated
    return out


def _shade_masked(ax, lam: np.ndarray, keep: np.ndarray) -> None:
    """Grey bands where the observed pixels are masked (weight 0), in data x / axes y coords."""
    if keep.all():
        return
    ax.fill_between(
        lam,
        0,
        1,
        where=~keep,
        color="0.9",
        step="mid",
        transform=ax.get_xaxis_transform(),
        linewidth=0,
        zorder=0,
    )


def _draw_spectra(ax, p: SpectrumPanel, norm: Normalize, lw: float = 0.8) -> None:
    """Data, reconstruction and augmented reconstructions against restframe wavelength."""
    keep = p.w > 0
    lam = p.wave_obs / (1 + p.z)
    _shade_masked(ax, lam, keep)
    ax.plot(lam, _masked(p.x, keep), color="0.45", lw=0.5, label="observed spectrum", zorder=1)
    for za, m in zip(p.z_aug, p.model_aug, strict=True):
        ax.plot(
            p.wave_obs / (1 + za),
            m,
            color=_Z_CMAP(norm(za)),
            lw=lw * 0.8,
            alpha=0.85,
            label=f"copy at z = {za:.3f}",
            zorder=3,  # over the original's (thicker) model: where they agree, black borders it
        )
    ax.plot(lam, p.model, color="k", lw=lw * 1.6, label=f"reconstruction (z = {p.z:.3f})", zorder=2)


def _draw_latents(
    ax,
    s: np.ndarray,
    z: np.ndarray,
    s_obj: np.ndarray,
    s_aug: np.ndarray,
    z_obj: float,
    z_aug: np.ndarray,
    norm: Normalize,
) -> object:
    """Latent map: population coloured by z, the object (star) and its copies (circles) joined."""
    n_dim = s.shape[1]
    if n_dim >= 2:
        xy, xy_obj, xy_aug = s[:, :2], s_obj[:2], s_aug[:, :2]
        ax.set_xlabel("latent s₁ (latent units)")
        ax.set_ylabel("latent s₂ (latent units)")
    else:  # one latent: show it against redshift instead of inventing a second axis
        xy = np.stack([s[:, 0], z], 1)
        xy_obj = np.array([s_obj[0], z_obj])
        xy_aug = np.stack([s_aug[:, 0], z_aug], 1)
        ax.set_xlabel("latent s₁ (latent units)")
        ax.set_ylabel("redshift z")
    size = float(np.clip(4000 / max(len(s), 1), 3, 40))  # dense clouds need small dots
    sc = ax.scatter(
        xy[:, 0], xy[:, 1], c=z, cmap=_Z_CMAP, norm=norm, s=size, alpha=0.7, lw=0, zorder=1
    )
    for a in xy_aug:
        ax.plot([xy_obj[0], a[0]], [xy_obj[1], a[1]], color="k", lw=0.8, zorder=2)
    ax.scatter(
        xy_aug[:, 0],
        xy_aug[:, 1],
        c=z_aug,
        cmap=_Z_CMAP,
        norm=norm,
        s=55,
        edgecolors="k",
        linewidths=0.9,
        zorder=3,
        label="its redshifted copies",
    )
    ax.scatter(
        [xy_obj[0]],
        [xy_obj[1]],
        c=[z_obj],
        cmap=_Z_CMAP,
        norm=norm,
        marker="*",
        s=260,
        edgecolors="k",
        linewidths=1.0,
        zorder=4,
        label="shown spectrum",
    )
    title = f"latents of {len(s)} spectra"
    if n_dim > 2:
        title += f" (first 2 of S = {n_dim} dims)"
    elif n_dim == 1:
        title += " (S = 1: s₁ vs z)"
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8, framealpha=0.85)
    return sc


def plot_figure2(
    path: str | Path,
    panel: SpectrumPanel,
    latents: np.ndarray,
    latent_z: np.ndarray,
    s_obj: np.ndarray,
    s_aug: np.ndarray,
    title: str = "",
) -> Path:
    """The paper's Figure 2 as a PNG.

    Left: the spectrum against restframe wavelength (top axis: observed wavelength of the
    original), its reconstruction and those of its redshifted copies, each over the restframe
    range its observed grid covers; below, zooms on the strong lines of `LINES` that the
    spectrum covers. Right: latents `latents` (n, S) coloured by `latent_z` (n,), with the
    object `s_obj` (S,) and its copies `s_aug` (K, S). One redshift colour scale for all.
    """
    path = Path(path)
    z_hi = max(
        float(np.max(latent_z, initial=0.0)), float(np.max(panel.z_aug, initial=0.0)), panel.z
    )
    norm = Normalize(0.0, max(z_hi, 0.05))
    lam = panel.wave_obs / (1 + panel.z)
    keep = panel.w > 0
    lo_cov, hi_cov = (lam[keep].min(), lam[keep].max()) if keep.any() else (lam[0], lam[-1])
    lines = [ln for ln in LINES if lo_cov + ln[2] * 0.5 <= ln[1] <= hi_cov - ln[2] * 0.5]

    fig = Figure(figsize=(16, 7.2), layout="constrained")
    outer = fig.add_gridspec(1, 2, width_ratios=[2.15, 1])
    left = outer[0].subgridspec(2, max(len(lines), 1), height_ratios=[2.1, 1])
    ax = fig.add_subplot(left[0, :])
    _draw_spectra(ax, panel, norm)
    ax.set_xlim(min(lam[0], panel.wave_obs[0] / (1 + panel.z_aug.max(initial=panel.z))), lam[-1])
    ax.set_ylim(*_robust_ylim(np.concatenate([panel.x[keep], panel.model[keep]])))
    ax.set_xlabel("restframe wavelength λ (Å)")
    ax.set_ylabel("normalised flux f_λ (dimensionless)")
    top = ax.secondary_xaxis(
        "top", functions=(lambda x: x * (1 + panel.z), lambda x: x / (1 + panel.z))
    )
    top.set_xlabel(f"observed wavelength of the shown spectrum, λ(1 + {panel.z:.3f}) (Å)")
    ax.legend(loc="lower center", fontsize=7.5, ncol=4, framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=11, loc="left")
    for j, (name, centre, half) in enumerate(lines):  # mark the zoom windows on the main panel
        ax.axvspan(centre - half, centre + half, color="tab:blue", alpha=0.07, lw=0)
        ax.text(
            centre,
            0.98 - 0.05 * (j % 2),  # staggered: neighbouring lines (Hβ, [OIII]) would overlap
            name,
            transform=ax.get_xaxis_transform(),
            fontsize=7,
            ha="center",
            va="top",
            color="tab:blue",
        )

    for i, (name, centre, half) in enumerate(lines):
        zax = fig.add_subplot(left[1, i])
        _draw_spectra(zax, panel, norm, lw=1.0)
        zax.set_xlim(centre - half, centre + half)
        win = (lam > centre - half) & (lam < centre + half)
        zax.set_ylim(
            *_robust_ylim(np.concatenate([panel.x[win & keep], panel.model[win & keep]]), 0.1)
        )
        zax.set_title(name, fontsize=9)
        zax.set_xlabel("λ rest (Å)", fontsize=8)
        zax.tick_params(labelsize=7)
        zax.xaxis.set_major_locator(MaxNLocator(3))
        if i == 0:
            zax.set_ylabel("norm. flux", fontsize=8)
    if not lines:
        left_ax = fig.add_subplot(left[1, 0])
        left_ax.text(0.5, 0.5, "no strong line inside the coverage", ha="center", va="center")
        left_ax.set_axis_off()

    rax = fig.add_subplot(outer[1])
    sc = _draw_latents(rax, latents, latent_z, s_obj, s_aug, panel.z, panel.z_aug, norm)
    cb = fig.colorbar(sc, ax=rax, shrink=0.9)
    cb.set_label("redshift z (population, shown spectrum and copies)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


# metrics.jsonl keys per panel: (title, [(key, label, style)], y label)
_TRAINING_PANELS = (
    (
        "fidelity",
        [
            ("train_fidelity", "train", "-"),
            ("valid_fidelity", "valid", "--"),
            ("valid_fidelity_aug", "valid, redshifted copies", ":"),
        ],
        "L_fid (χ²/2 per pixel)",
    ),
    (
        "similarity",
        [
            ("train_similarity", "train (k1 annealed)", "-"),
            ("valid_similarity", "valid (k1 = 1)", "--"),
        ],
        "L_sim",
    ),
    (
        "consistency",
        [("train_consistency", "train", "-"), ("valid_consistency", "valid", "--")],
        "L_c",
    ),
    (
        "latent shift",
        [("valid_latent_shift", "valid mean |s − s_aug|", "--")],
        "mean |s − s_aug| (latent units)",
    ),
    ("total", [("train_total", "train", "-"), ("valid_total", "valid", "--")], "total loss"),
)


def plot_training(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Training curves from a run's metrics.jsonl rows: one panel per loss the run recorded.

    Log-y where every value is positive and they span more than a factor 3 (losses falling over
    orders of magnitude); the similarity panel also shows k1 (end of epoch) on a right axis.
    """
    path = Path(path)
    epochs = np.array([r["epoch"] for r in rows], dtype=float)
    panels = [p for p in _TRAINING_PANELS if any(k in r for r in rows for k, _, _ in p[1])]
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows), layout="constrained")
    marker = "o" if len(rows) <= 30 else None  # a single epoch must still show up
    for i, (name, series, ylabel) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        allv = []
        for key, label, style in series:
            v = np.array([r.get(key, np.nan) for r in rows], dtype=float)
            if np.isfinite(v).any():
                ax.plot(epochs, v, style, marker=marker, ms=3, label=label)
                allv.append(v[np.isfinite(v)])
        vals = np.concatenate(allv) if allv else np.array([])
        if vals.size and (vals > 0).all() and vals.max() > 3 * vals.min():
            ax.set_yscale("log")
        if name == "similarity" and any("k1" in r for r in rows):
            k1 = np.array([r.get("k1", np.nan) for r in rows], dtype=float)
            tax = ax.twinx()
            tax.plot(epochs, k1, color="0.6", lw=0.8, marker=marker, ms=2, label="k1")
            tax.set_ylabel("k1 at epoch end (similarity sharpness)", color="0.4")
            tax.set_ylim(0, max(float(np.nanmax(k1)) if np.isfinite(k1).any() else 1.0, 1e-3) * 1.1)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
