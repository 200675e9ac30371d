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
let the density swamp the χ² in a sum).

Two corrections make the χ² term mean "the model cannot draw it" at every signal-to-noise (SNR,
the median of flux·√ivar over the valid pixels; format version 3):

- **χ² given S/N**: a model that is wrong by a fixed fraction ε of the flux has χ² ≈ 1 + ε²·SNR²,
  so the raw χ² ranks every bright galaxy as odd and forgives a faint anomaly. R_CHI2 therefore
  measures log χ² against the train split's straight-line trend in log SNR (`SnrTrend`; log SNR
  clamped to the train split's 1st–99th percentiles, so it never extrapolates).
- **no signal**: a spectrum with no source in it (a sky fibre that reached the embedder) is noise
  the decoder "fits" with χ² ≈ 1, and its latent is meaningless. R_SIGNAL = max(0, z − 3), z the
  robust z-score of −log SNR against the train split: 0 for any S/N within 3σ of the training
  spectra's, growing with how far below them it lies. It is relative to the train split on
  purpose: a survey whose targets are faint in the continuum (DESI's emission-line galaxies)
  trains on low S/N and is not flagged for it.

The outlier score is their sum:

    OUTLIER_SCORE = r_density + r_chi2 + r_signal

so it is 0 for a typical training spectrum, a few units for a spectrum unusual in one respect,
and large when it is unusual in several. It is unbounded (no ties among the extreme objects,
unlike a rank), and new spectra are scored against the same saved reference (`RUN/outliers.json`,
format version 3: the chosen density — a flow's weights inline, float32 little-endian in
base64, so one JSON file of ~0.1 MB holds it all and its sha256 covers them — the validation
figures of the choice, and the S/N reference; versions 1 (GMM only) and 2 (no S/N reference:
R_CHI2 is the raw log χ² and R_SIGNAL is 0) still load, and `specetl embed` refits them).
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
#: written by this version; version 1 (a GaussianMixture under "mixture", no choice) and 2 (no
#: S/N reference) still load
FORMAT_VERSION = 3
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


#: R_SIGNAL is 0 for a median S/N within this many robust σ of the train split's
SIGNAL_GRACE = 3.0
#: a median S/N at or below this (no source: noise around zero, or none valid) counts as it
SNR_FLOOR = 1e-2
#: the 1st and 99th percentiles of the train split's log SNR bound the χ² trend's reach
TREND_RANGE = (0.01, 0.99)

SCORE_DEFINITION = (
    "OUTLIER_SCORE = robust_z(sqrt(2 (log p_max - log p))) + robust_z(log chi2 - trend(log snr))"
    f" + max(0, robust_z(-log snr) - {SIGNAL_GRACE:g}), train-split reference"
)
#: what a version 1/2 model (no S/N reference) scores
SCORE_DEFINITION_V2 = (
    "OUTLIER_SCORE = robust_z(sqrt(2 (log p_max - log p))) + robust_z(log chi2), "
    "train-split reference"
)


def log_snr(snr: np.ndarray) -> np.ndarray:
    """log of the median S/N, floored at SNR_FLOOR (a NaN, no valid pixel, counts as the floor)."""
    return np.log(np.fmax(np.asarray(snr, dtype=np.float64), SNR_FLOOR))


@dataclass(frozen=True)
class SnrTrend:
    """The train split's log χ² ≈ intercept + slope·log SNR, with log SNR clamped to [lo, hi]."""

    intercept: float
    slope: float
    lo: float
    hi: float

    @classmethod
    def fit(cls, log_snr_train: np.ndarray, log_chi2_train: np.ndarray) -> SnrTrend:
        """Least-squares line through the finite (log SNR, log χ²) pairs of the train split."""
        x = np.asarray(log_snr_train, dtype=np.float64)
        y = np.asarray(log_chi2_train, dtype=np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(x) == 0:  # nothing to measure a trend on: χ² is judged as it is
            return cls(0.0, 0.0, 0.0, 0.0)
        lo, hi = (float(q) for q in np.quantile(x, TREND_RANGE))
        if len(x) < 3 or hi <= lo:  # no spread in S/N: no trend to measure
            return cls(float(np.median(y)), 0.0, lo, hi)
        slope, intercept = np.polyfit(x, y, 1)
        return cls(float(intercept), float(slope), lo, hi)

    def __call__(self, log_snr_values: np.ndarray) -> np.ndarray:
        x = np.clip(np.asarray(log_snr_values, dtype=np.float64), self.lo, self.hi)
        return self.intercept + self.slope * x


def density_distance(logp: np.ndarray, logp_max: float) -> np.ndarray:
    """d = √(2·(log p_max − log p)): how far below the densest training latent, in σ-like units."""
    return np.sqrt(2 * np.maximum(logp_max - np.asarray(logp, dtype=np.float64), 0.0))


@dataclass(frozen=True)
class OutlierModel:
    """The train-split reference that outlier scores are measured against (see module doc)."""

    density: LatentDensity
    logp_max: float  # highest log p(s) of a train-split latent
    density_scale: RobustScale  # of the density distance d on the train split
    chi2_scale: RobustScale  # of log χ² − chi2_trend(log SNR) on the train split (v1/2: log χ²)
    provenance: dict
    #: how the density was chosen: mode (auto/gmm/flow), chosen, n_valid, valid_mean_logp
    selection: dict = field(default_factory=dict)
    #: the S/N reference (None in a version 1/2 model: raw χ², no R_SIGNAL)
    chi2_trend: SnrTrend | None = None
    snr_scale: RobustScale | None = None  # of log SNR on the train split

    @property
    def scores_snr(self) -> bool:
        """Whether this model scores χ² given S/N and the missing signal (format version 3)."""
        return self.chi2_trend is not None and self.snr_scale is not None

    @property
    def definition(self) -> str:
        return SCORE_DEFINITION if self.scores_snr else SCORE_DEFINITION_V2

    @property
    def mixture(self) -> GaussianMixture:
        """The Gaussian mixture, where that is the density (DensityError otherwise)."""
        if not isinstance(self.density, GaussianMixture):
            raise DensityError(f"the latent density is a {self.density.kind}, not a mixture")
        return self.density

    def terms(
        self, s: np.ndarray, chi2: np.ndarray, snr: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """LOGP (log density), R_DENSITY, R_CHI2, R_SIGNAL (robust z-scores) and OUTLIER_SCORE.

        `snr` (N,), the median S/N per valid pixel, is needed by a version 3 model.
        """
        logp = self.density.log_prob(s)
        r_density = self.density_scale.z(density_distance(logp, self.logp_max))
        # a χ² of 0 (a perfect fit) is the least anomalous: floor it before the log
        log_chi2 = np.log(np.maximum(np.asarray(chi2, dtype=np.float64), 1e-12))
        r_signal = np.zeros_like(log_chi2)
        if self.scores_snr:
            if snr is None:
                raise DensityError("this outlier model scores χ² given S/N: pass the spectra's SNR")
            x = log_snr(snr)
            log_chi2 = log_chi2 - self.chi2_trend(x)
            r_signal = np.maximum(0.0, -self.snr_scale.z(x) - SIGNAL_GRACE)
        r_chi2 = self.chi2_scale.z(log_chi2)
        r_chi2 = np.where(np.isfinite(r_chi2), r_chi2, np.inf)
        return {
            "LOGP": logp,
            "R_DENSITY": r_density,
            "R_CHI2": r_chi2,
            "R_SIGNAL": r_signal,
            "OUTLIER_SCORE": r_density + r_chi2 + r_signal,
        }

    def score(self, s: np.ndarray, chi2: np.ndarray, snr: np.ndarray | None = None) -> np.ndarray:
        """OUTLIER_SCORE of latents `s` (N, S) with per-pixel χ² `chi2` (N,) and median S/N
        `snr` (N,); larger = odder."""
        return self.terms(s, chi2, snr)["OUTLIER_SCORE"]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "score": self.definition,
            "density": self.density.to_dict(),
            "selection": self.selection,
            "logp_max": self.logp_max,
            "density_scale": vars(self.density_scale),
            "chi2_scale": vars(self.chi2_scale),
            "chi2_trend": None if self.chi2_trend is None else vars(self.chi2_trend),
            "snr_scale": None if self.snr_scale is None else vars(self.snr_scale),
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
            SnrTrend(**d["chi2_trend"]) if d.get("chi2_trend") else None,
            RobustScale(**d["snr_scale"]) if d.get("snr_scale") else None,
        )


def fit_outlier_model(
    s_train: np.ndarray,
    chi2_train: np.ndarray,
    provenance: dict | None = None,
    seed: int = 0,
    s_valid: np.ndarray | None = None,
    density: str = "auto",
    snr_train: np.ndarray | None = None,
) -> OutlierModel:
    """Fit the latent density and the robust scales on the train split's latents, χ² and S/N.

    `density` "auto" fits a mixture and a flow and keeps the one with the higher mean
    log-likelihood of the validation latents `s_valid` (`choose_density`); "gmm"/"flow" force.
    Without `snr_train` the model is a version 2 one (raw χ², no R_SIGNAL).
    """
    dens, selection = choose_density(s_train, s_valid, density, seed=seed)
    logp = dens.log_prob(s_train)
    logp_max = float(np.max(logp[np.isfinite(logp)]))
    log_chi2 = np.log(np.maximum(np.asarray(chi2_train, dtype=np.float64), 1e-12))
    trend = snr_scale = None
    if snr_train is not None:
        x = log_snr(snr_train)
        trend, snr_scale = SnrTrend.fit(x, log_chi2), RobustScale.of(x)
        log_chi2 = log_chi2 - trend(x)
    return OutlierModel(
        dens,
        logp_max,
        RobustScale.of(density_distance(logp, logp_max)),
        RobustScale.of(log_chi2),
        {**(provenance or {}), "n_train": int(len(s_train))},
        selection,
        trend,
        snr_scale,
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
