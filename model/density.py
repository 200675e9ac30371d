"""Outlier scores: how unusual a spectrum is, from where its latent lies and how well it is fitted.

Two signs that a spectrum is not like the training data, each measured against the train split:

- **latent density**: −log p(s) under a density fitted to the train-split latents (the latent
  space is small: 2 dimensions in both presets). A spectrum whose latent lands where few
  training spectra do is unusual. Two densities are fitted: a Gaussian mixture (size picked by
  BIC; scores with numpy alone) and a normalizing flow (zuko's neural spline flow, as Liang et
  al. 2023, AJ 166, 75 use for the same job; a curved or ring-shaped latent distribution is
  what a few Gaussians draw badly). The one kept is the one with the higher mean log-likelihood
  of the VALIDATION split's latents — no labels needed, and neither density saw those latents
  (`choose_density`); `density="gmm"|"flow"` forces one.
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

import base64
import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: file in the run folder holding the fitted `OutlierModel`
OUTLIERS_FILE = "outliers.json"
FORMAT = "specetl-outliers"
#: written by this version; version 1 (a GaussianMixture under "mixture", no choice) still loads
FORMAT_VERSION = 2
#: what `density=` accepts: fit both and keep the better on validation latents, or force one
DENSITY_CHOICES = ("auto", "gmm", "flow")
#: MAD → standard deviation for a normal distribution
MAD_TO_SIGMA = 1.4826


class DensityError(RuntimeError):
    """An outlier model cannot be fitted or read; the message names the file or the cause."""


@dataclass(frozen=True)
class GaussianMixture:
    """A Gaussian mixture in latent space: weights (K,), means (K, S), covariances (K, S, S)."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    kind = "gmm"

    def log_prob(self, s: np.ndarray) -> np.ndarray:
        """log p(s) (natural log, latent units⁻ˢ) of latents `s` (N, S); (N,) float64."""
        s = np.asarray(s, dtype=np.float64)
        k, dim = self.means.shape
        out = np.empty((len(s), k))
        for j in range(k):
            chol = np.linalg.cholesky(self.covariances[j])
            # solve L y = (s − μ)ᵀ: the Mahalanobis distance is |y|²
            y = np.linalg.solve(chol, (s - self.means[j]).T)
            log_det = 2 * np.log(np.diag(chol)).sum()
            out[:, j] = np.log(self.weights[j]) - 0.5 * (
                dim * np.log(2 * np.pi) + log_det + (y**2).sum(0)
            )
        top = out.max(1, keepdims=True)
        return (top + np.log(np.exp(out - top).sum(1, keepdims=True)))[:, 0]

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "weights": self.weights.tolist(),
            "means": self.means.tolist(),
            "covariances": self.covariances.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> GaussianMixture:
        return cls(
            np.asarray(d["weights"], dtype=np.float64),
            np.asarray(d["means"], dtype=np.float64),
            np.asarray(d["covariances"], dtype=np.float64),
        )


def fit_mixture(
    s: np.ndarray, max_components: int = 8, seed: int = 0, max_points: int = 200_000
) -> GaussianMixture:
    """Fit a full-covariance Gaussian mixture to latents `s` (N, S), K ≤ `max_components` by BIC.

    K is also capped at N/(10·(S+1)) so that a small split (a test, a demo) gets a mixture with
    enough points per component. Fits on a random subset of `max_points` (the density of 2-d
    latents is pinned down long before that). Deterministic for a given `seed`.
    """
    from sklearn.mixture import GaussianMixture as SkMixture

    s = np.asarray(s, dtype=np.float64)
    n, dim = s.shape
    if n < 2 * (dim + 1) or not np.isfinite(s).all():
        raise DensityError(
            f"cannot fit a latent density to {n} latents (need finite, >= {2 * (dim + 1)})"
        )
    rng = np.random.default_rng(seed)
    if n > max_points:
        s = s[rng.choice(n, max_points, replace=False)]
    k_max = max(1, min(max_components, n // (10 * (dim + 1))))
    best, best_bic = None, np.inf
    for k in range(1, k_max + 1):
        gm = SkMixture(k, covariance_type="full", reg_covar=1e-6, random_state=seed, n_init=2)
        gm.fit(s)
        bic = gm.bic(s)
        if bic < best_bic:
            best, best_bic = gm, bic
    assert best is not None
    return GaussianMixture(best.weights_, best.means_, best.covariances_)


#: the flow's shape: a masked autoregressive flow (MAF: each transform shifts and scales one
#: latent coordinate by a 2×64 MADE of the others before it, the order alternating) of 4
#: transforms; ~18k weights for 2-d latents. Affine transforms extrapolate smoothly, so a far
#: outlier keeps a falling density (a spline flow is the identity outside its bound, and at this
#: budget drew a curved latent distribution worse than the mixture did).
FLOW_CONFIG = {"type": "maf", "transforms": 4, "hidden_features": [64, 64]}


def _build_flow(dim: int, config: dict):
    """The zuko flow of `config` (FLOW_CONFIG's keys; type maf or nsf) over `dim` features."""
    import zuko

    kinds = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}
    if config.get("type") not in kinds:
        raise DensityError(f"unknown flow type {config.get('type')!r}")
    return kinds[config["type"]](
        features=dim,
        context=0,
        transforms=int(config["transforms"]),
        hidden_features=tuple(int(h) for h in config["hidden_features"]),
    )


class LatentFlow:
    """A normalizing flow in latent space (zuko; FLOW_CONFIG) over standardised latents (s − shift)/scale.

    `log_prob` is in latent units (the standardisation's Jacobian −Σ log scale is added), so it
    compares with `GaussianMixture.log_prob` on the same latents. `state` holds the trained
    parameters (float32, as trained; the masks and orders are rebuilt from `config`); the torch
    module is built from them on first use and scores in float64.
    """

    kind = "flow"

    def __init__(
        self, shift: np.ndarray, scale: np.ndarray, config: dict, state: dict[str, np.ndarray]
    ) -> None:
        self.shift = np.asarray(shift, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.config = dict(config)
        self.state = {k: np.asarray(v, dtype="<f4") for k, v in state.items()}
        self._flow = None

    def _module(self):
        if self._flow is None:
            import torch

            # scored in float64 from the saved weights: a fitted and a loaded flow agree exactly
            flow = _build_flow(len(self.shift), self.config).double()
            params = {k: torch.from_numpy(v.astype(np.float64)) for k, v in self.state.items()}
            missing, unexpected = flow.load_state_dict(params, strict=False)
            buffers = {k for k, _ in flow.named_buffers()}
            if unexpected or set(missing) - buffers:
                raise DensityError(
                    f"flow weights do not match its config: missing {sorted(set(missing) - buffers)}"
                    f", unexpected {sorted(unexpected)}"
                )
            self._flow = flow.eval()
        return self._flow

    def log_prob(self, s: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """log p(s) (natural log, latent units⁻ˢ) of latents `s` (N, S); (N,) float64."""
        import torch

        u = (np.asarray(s, dtype=np.float64) - self.shift) / self.scale
        dist = self._module()()
        out = np.empty(len(u))
        with torch.no_grad():
            for a in range(0, len(u), batch):
                out[a : a + batch] = dist.log_prob(torch.from_numpy(u[a : a + batch])).numpy()
        return out - np.log(self.scale).sum()

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "shift": self.shift.tolist(),
            "scale": self.scale.tolist(),
            "config": self.config,
            # the bytes themselves: a loaded flow scores bit for bit as the fitted one
            "state": {
                k: {
                    "shape": list(v.shape),
                    "dtype": "<f4",
                    "base64": base64.b64encode(np.ascontiguousarray(v).tobytes()).decode(),
                }
                for k, v in self.state.items()
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> LatentFlow:
        state = {
            k: np.frombuffer(base64.b64decode(v["base64"]), dtype=v["dtype"]).reshape(v["shape"])
            for k, v in d["state"].items()
        }
        return cls(d["shift"], d["scale"], d["config"], state)


def fit_flow(
    s: np.ndarray,
    seed: int = 0,
    config: dict | None = None,
    epochs: int = 80,
    batch_size: int = 64,
    lr: float = 5e-3,
    max_points: int = 20_000,
) -> LatentFlow:
    """Fit the flow of `config` (default FLOW_CONFIG) to latents `s` (N, S) by maximum likelihood.

    Latents are standardised first (mean, std). Adam on seeded mini-batches, its step size
    annealed to 0 over the `epochs` (cosine). A fixed 1/5 of the points (seeded) is held out:
    the weights kept are those of the epoch with the best held-out log-likelihood (early
    stopping). The validation split is not used here, so it stays an unbiased judge between
    this and the mixture (`choose_density`). Deterministic for a given `seed` (same machine,
    same thread count: float32 sums may be reordered across threads); about
    5 s on one thread for ~2k points (subsampled to `max_points`).
    """
    import torch

    s = np.asarray(s, dtype=np.float64)
    n, dim = s.shape
    if n < 50 or not np.isfinite(s).all():
        raise DensityError(f"cannot fit a latent flow to {n} latents (need >= 50, finite)")
    rng = np.random.default_rng(seed)
    if n > max_points:
        s, n = s[rng.choice(n, max_points, replace=False)], max_points
    shift = s.mean(0)
    scale = s.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    u = torch.from_numpy((s - shift) / scale).float()
    order = torch.from_numpy(rng.permutation(n))
    n_hold = max(10, n // 5)
    held, fit = u[order[:n_hold]], u[order[n_hold:]]
    config = dict(config or FLOW_CONFIG)
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's RNG left as it was
        torch.manual_seed(seed)
        flow = _build_flow(dim, config)
    steps = epochs * -(-len(fit) // batch_size)
    opt = torch.optim.Adam(flow.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    best, best_state = -np.inf, None
    for _ in range(epochs):
        for idx in torch.randperm(len(fit), generator=gen).split(batch_size):
            loss = -flow().log_prob(fit[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            score = float(flow().log_prob(held).mean())
        if np.isfinite(score) and score > best:
            best = score
            best_state = {k: v.detach().numpy().copy() for k, v in flow.named_parameters()}
    if best_state is None:
        raise DensityError("the latent flow never reached a finite held-out log-likelihood")
    # only the parameters are saved: the masks and orders must come back the same from config
    rebuilt = dict(_build_flow(dim, config).named_buffers())
    for k, b in flow.named_buffers():
        if not torch.equal(rebuilt[k], b):
            raise DensityError(f"flow buffer {k} is not rebuilt the same from its config")
    return LatentFlow(shift, scale, config, best_state)


LatentDensity = GaussianMixture | LatentFlow


def density_from_dict(d: dict) -> LatentDensity:
    """A density saved by `to_dict` (a version-1 mixture has no "kind": it is a mixture)."""
    kind = d.get("kind", "gmm")
    if kind == "gmm":
        return GaussianMixture.from_dict(d)
    if kind == "flow":
        return LatentFlow.from_dict(d)
    raise DensityError(f"unknown latent density kind {kind!r}")


def mean_log_likelihood(density: LatentDensity, s: np.ndarray) -> float:
    """Mean log p(s) of the finite latents `s` (N, S) under `density`; NaN if there are none."""
    s = np.asarray(s, dtype=np.float64)
    s = s[np.isfinite(s).all(1)] if len(s) else s
    return float(np.mean(density.log_prob(s))) if len(s) else float("nan")


def choose_density(
    s_train: np.ndarray, s_valid: np.ndarray | None, density: str = "auto", seed: int = 0
) -> tuple[LatentDensity, dict]:
    """Fit the latent density on `s_train`; with "auto" fit both, keep the better on `s_valid`.

    Returns the density and the record of the choice: mode, chosen kind, number of validation
    latents and each fitted density's mean validation log-likelihood (latent units). "auto"
    keeps the mixture when there are no validation latents, or when the flow cannot be fitted
    (too few latents; the reason is recorded), or on a tie.
    """
    if density not in DENSITY_CHOICES:
        raise DensityError(f"density must be one of {', '.join(DENSITY_CHOICES)}, not {density!r}")
    kinds = ("gmm", "flow") if density == "auto" else (density,)
    fitted: dict[str, LatentDensity] = {}
    record: dict = {"mode": density}
    for kind in kinds:
        try:
            fitted[kind] = (
                fit_mixture(s_train, seed=seed) if kind == "gmm" else fit_flow(s_train, seed=seed)
            )
        except DensityError as e:
            if density != "auto" or kind == "gmm":
                raise
            record["flow_error"] = str(e)
    n_valid = 0 if s_valid is None else int(np.isfinite(np.asarray(s_valid)).all(1).sum())
    record["n_valid"] = n_valid
    record["valid_mean_logp"] = {
        k: mean_log_likelihood(d, s_valid) if n_valid else None for k, d in fitted.items()
    }
    chosen = kinds[0]
    if density == "auto" and n_valid and "flow" in fitted:
        ll = record["valid_mean_logp"]
        chosen = "flow" if ll["flow"] > ll["gmm"] else "gmm"
    record["chosen"] = chosen
    return fitted[chosen], record


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
