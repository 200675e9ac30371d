"""Outlier scores: how unusual a spectrum is, from where its latent lies and how well it is fitted.

Two signs that a spectrum is not like the training data, each measured against the train split:

- **latent density**: −log p(s) under a density fitted to the train-split latents (the latent
  space is small: 2 dimensions in both presets). A spectrum whose latent lands where few
  training spectra do is unusual. Two densities are fitted: a Gaussian mixture (size picked by
  BIC; scores with numpy alone) and a normalizing flow (zuko's masked autoregressive flow, as Liang et
  al. 2023, AJ 166, 75 use for the same job; a curved or ring-shaped latent distribution is
  what a few Gaussians draw badly). The one kept is the one with the higher mean log-likelihood
  of the VALIDATION split's latents — no labels needed, and neither density saw those latents
  (`model.latent_density.choose_density`); `density="gmm"|"flow"` forces one.
- **reconstruction**: CHI2, the fidelity term per valid pixel, Σ w (x − x″)² / #(w > 0). The
  encoder maps *any* spectrum somewhere in latent space, often into a dense region (a quasar
  can land among galaxies), so density alone misses spectra the decoder cannot draw at all; the
  χ² catches those.

Each term is turned into a robust z-score against its train-split distribution,
r = (t − median) / (1.4826·MAD), of a quantity that grows like a distance in standard deviations:
t = log χ² (χ² is heavy-tailed; its log is close to symmetric), and for the density
t = d = √(2·(log p_max − log p)), p_max the highest density of a training latent (for a single
Gaussian d is the Mahalanobis distance from the mode; −log p itself grows like d², which would
let the density swamp the χ² in a sum). The outlier score is their sum:

    OUTLIER_SCORE = r_density + r_chi2

so it is 0 for a typical training spectrum, a few units for a spectrum unusual in one respect,
and large when it is unusual in both. It is unbounded (no ties among the extreme objects, unlike
a rank), and new spectra are scored against the same saved reference (`RUN/outliers.json`,
format version 2: the chosen density — a flow's weights inline, float32 little-endian in
base64, so one JSON file of ~0.1 MB holds it all and its sha256 covers them — and the validation
figures of the choice; a version 1 file, GMM only, still loads).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.latent_density import (  # noqa: F401  (re-exported: the outlier model's API)
    DENSITY_CHOICES,
    FLOW_CONFIG,
    DensityError,
    GaussianMixture,
    LatentDensity,
    LatentFlow,
    choose_density,
    density_from_dict,
    fit_flow,
    fit_mixture,
    mean_log_likelihood,
)

#: file in the run folder holding the fitted `OutlierModel`
OUTLIERS_FILE = "outliers.json"
FORMAT = "specetl-outliers"
#: written by this version; version 1 (a GaussianMixture under "mixture", no choice) still loads
FORMAT_VERSION = 2
#: MAD → standard deviation for a normal distribution
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class RobustScale:
    """Median and MAD-based σ of a train-split quantity; `z(t)` = (t − median) / σ."""

    median: float
    sigma: float

    @classmethod
    def of(cls, t: np.ndarray) -> RobustScale:
        t = np.asarray(t, dtype=np.float64)
        t = t[np.isfinite(t)]
        med = float(np.median(t))
        sigma = MAD_TO_SIGMA * float(np.median(np.abs(t - med)))
        return cls(med, sigma if sigma > 0 else 1.0)

    def z(self, t: np.ndarray) -> np.ndarray:
        return (np.asarray(t, dtype=np.float64) - self.median) / self.sigma


SCORE_DEFINITION = (
    "OUTLIER_SCORE = robust_z(sqrt(2 (log p_max - log p))) + robust_z(log chi2), "
    "train-split reference"
)


def density_distance(logp: np.ndarray, logp_max: float) -> np.ndarray:
    """d = √(2·(log p_max − log p)): how far below the densest training latent, in σ-like units."""
    return np.sqrt(2 * np.maximum(logp_max - np.asarray(logp, dtype=np.float64), 0.0))


@dataclass(frozen=True)
class OutlierModel:
    """The train-split reference that outlier scores are measured against (see module doc)."""

    density: LatentDensity
    logp_max: float  # highest log p(s) of a train-split latent
    density_scale: RobustScale  # of the density distance d on the train split
    chi2_scale: RobustScale  # of log χ² on the train split
    provenance: dict
    #: how the density was chosen: mode (auto/gmm/flow), chosen, n_valid, valid_mean_logp
    selection: dict = field(default_factory=dict)

    @property
    def mixture(self) -> GaussianMixture:
        """The Gaussian mixture, where that is the density (DensityError otherwise)."""
        if not isinstance(self.density, GaussianMixture):
            raise DensityError(f"the latent density is a {self.density.kind}, not a mixture")
        return self.density

    def terms(self, s: np.ndarray, chi2: np.ndarray) -> dict[str, np.ndarray]:
        """LOGP (log density), R_DENSITY and R_CHI2 (robust z-scores) and OUTLIER_SCORE."""
        logp = self.density.log_prob(s)
        r_density = self.density_scale.z(density_distance(logp, self.logp_max))
        # a χ² of 0 (a perfect fit) is the least anomalous: floor it before the log
        r_chi2 = self.chi2_scale.z(np.log(np.maximum(np.asarray(chi2, dtype=np.float64), 1e-12)))
        r_chi2 = np.where(np.isfinite(r_chi2), r_chi2, np.inf)
        return {
            "LOGP": logp,
            "R_DENSITY": r_density,
            "R_CHI2": r_chi2,
            "OUTLIER_SCORE": r_density + r_chi2,
        }

    def score(self, s: np.ndarray, chi2: np.ndarray) -> np.ndarray:
        """OUTLIER_SCORE of latents `s` (N, S) with per-pixel χ² `chi2` (N,); larger = odder."""
        return self.terms(s, chi2)["OUTLIER_SCORE"]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "score": SCORE_DEFINITION,
            "density": self.density.to_dict(),
            "selection": self.selection,
            "logp_max": self.logp_max,
            "density_scale": vars(self.density_scale),
            "chi2_scale": vars(self.chi2_scale),
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: dict) -> OutlierModel:
        if d.get("format") != FORMAT:
            raise DensityError("not a specetl outlier model")
        version = int(d.get("version", 1))
        if version > FORMAT_VERSION:
            raise DensityError(f"outlier model format version {version} is newer than this code")
        if version == 1:  # a mixture, fitted before the flow existed: nothing was chosen
            density: LatentDensity = GaussianMixture.from_dict(d["mixture"])
            selection = {"mode": "gmm", "chosen": "gmm", "format_version": 1}
        else:
            density = density_from_dict(d["density"])
            selection = dict(d.get("selection", {}))
        return cls(
            density,
            float(d["logp_max"]),
            RobustScale(**d["density_scale"]),
            RobustScale(**d["chi2_scale"]),
            dict(d.get("provenance", {})),
            selection,
        )


def fit_outlier_model(
    s_train: np.ndarray,
    chi2_train: np.ndarray,
    provenance: dict | None = None,
    seed: int = 0,
    s_valid: np.ndarray | None = None,
    density: str = "auto",
) -> OutlierModel:
    """Fit the latent density and both robust scales on the train split's latents and χ².

    `density` "auto" fits a mixture and a flow and keeps the one with the higher mean
    log-likelihood of the validation latents `s_valid` (`choose_density`); "gmm"/"flow" force.
    """
    dens, selection = choose_density(s_train, s_valid, density, seed=seed)
    logp = dens.log_prob(s_train)
    logp_max = float(np.max(logp[np.isfinite(logp)]))
    log_chi2 = np.log(np.maximum(np.asarray(chi2_train, dtype=np.float64), 1e-12))
    return OutlierModel(
        dens,
        logp_max,
        RobustScale.of(density_distance(logp, logp_max)),
        RobustScale.of(log_chi2),
        {**(provenance or {}), "n_train": int(len(s_train))},
        selection,
    )


def save_outlier_model(model: OutlierModel, path: str | Path) -> None:
    """Write the outlier model as JSON, through a temporary name renamed when complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(model.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)
    finally:  # a failed clean-up must not hide why the write failed
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def load_outlier_model(path: str | Path) -> OutlierModel:
    """Read an outlier model written by `save_outlier_model`; DensityError names the file."""
    path = Path(path)
    try:
        return OutlierModel.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, DensityError) as e:
        raise DensityError(f"cannot read outlier model {path}: {e}") from e


def outlier_rank(score: np.ndarray) -> np.ndarray:
    """Rank of each score, 1 = the largest (most anomalous); ties broken by row order."""
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `score` separating `positive` (True) from the rest
    (scikit-learn's roc_auc_score; ties count one half). NaN scores count as the lowest."""
    from sklearn.metrics import roc_auc_score

    score = np.asarray(score, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        raise ValueError("ROC AUC needs at least one positive and one negative")
    finite = score[np.isfinite(score)]
    lo, hi = (finite.min() - 1.0, finite.max() + 1.0) if len(finite) else (0.0, 0.0)
    # sklearn refuses non-finite scores; NaN and -inf tie below every finite score
    return float(roc_auc_score(positive, np.nan_to_num(score, nan=lo, neginf=lo, posinf=hi)))
