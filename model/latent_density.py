"""The density of the latents of the train split: a Gaussian mixture or a normalizing flow.

Both are fitted to the train split's latents; `choose_density` keeps the one with the higher mean
log-likelihood of the VALIDATION split's latents (no labels needed; neither density saw those
latents). The mixture (size picked by BIC) scores with numpy alone; the flow (zuko's masked
autoregressive flow, as Liang et al. 2023, AJ 166, 75 use for the same job) draws a curved or
ring-shaped latent distribution that a few Gaussians draw badly. `model.density` builds the
outlier score on top of the chosen one.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

#: what `density=` accepts: fit both and keep the better on validation latents, or force one
DENSITY_CHOICES = ("auto", "gmm", "flow")


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
