"""The redshift-aware spectrum autoencoder (Liang, Melchior & Lu): encoder, decoder, redshifting.

The decoder emits a *restframe* spectrum on a fixed grid (Å); the observed model is that spectrum
evaluated at λ_obs/(1+z), so the latents never need to encode redshift.

The encoder reads the spectrum in one of two frames (`ModelConfig.encoder_frame`):
- "observed" (the paper's): the observed-frame pixels as they are. The same galaxy at another
  redshift lands on other pixels, so invariance must be learnt (the similarity and consistency
  terms exist for that).
- "restframe": the spectrum is first placed on a log-uniform restframe grid at λ_obs/(1+z), using
  the catalogue redshift. Moving a galaxy in z then only changes which restframe pixels the
  observed window covers, so the encoder is redshift-aware by construction and only the coverage
  is left to learn. It needs z wherever it encodes (every shard and catalogue row has it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model.interp import interp1d

#: SDSS observed grid: log10 λ = LOGLAM0 + DLOGLAM·k, k = 0…NPIX-1 (vacuum Å).
LOGLAM0, DLOGLAM, NPIX = 3.578, 1e-4, 3921

#: frames the encoder can read a spectrum in (see the module docstring); the first is the default
ENCODER_FRAMES = ("observed", "restframe")

#: the decoder's activations: "leaky-relu" (specetl's, piecewise linear in the latents) or
#: "speculator" (smooth and gated, Alsing et al. 2020, ApJS 249, 5; spender's decoder uses it,
#: and its last layer adds 1, so an untrained decoder already emits a spectrum near the median
#: normalisation of 1). The first is the default
DECODER_ACTIVATIONS = ("leaky-relu", "speculator")


def default_wave_obs() -> np.ndarray:
    """The SDSS observed-frame grid in Å, (3921,) float64; training reads it from the shards."""
    return 10.0 ** (LOGLAM0 + DLOGLAM * np.arange(NPIX))


@dataclass
class ModelConfig:
    """Sizes of the autoencoder; presets are just instances of this (see `PRESETS`)."""

    n_latent: int = 2
    conv_channels: tuple[int, int, int] = (128, 256, 512)
    conv_kernels: tuple[int, int, int] = (5, 11, 21)
    pool_sizes: tuple[int, int] = (5, 11)
    encoder_mlp: tuple[int, ...] = (128, 64, 32)
    decoder_mlp: tuple[int, ...] = (256, 512, 1024)
    dropout: float = 0.0
    n_rest: int = 7000
    wave_rest_min: float = 2359.0  # Å
    wave_rest_max: float = 9332.0  # Å
    npix: int = NPIX
    # "observed" or "restframe" (ENCODER_FRAMES). The frame changes no weight's shape, so a
    # restframe encoder can start from an observed-frame run's weights (--init)
    encoder_frame: str = "observed"
    # DECODER_ACTIVATIONS; a checkpoint without the key was made with "leaky-relu"
    decoder_activation: str = "leaky-relu"

    def to_dict(self) -> dict:
        """Plain-python dict (lists, not tuples) for JSON and weights_only checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        fields = cls.__dataclass_fields__
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
        )


PRESETS: dict[str, ModelConfig] = {
    # the reference architecture: ~3.2M parameters
    "paper": ModelConfig(),
    # narrower convolutions (the expensive part) so CI and laptops train in minutes; same grids
    "cpu-small": ModelConfig(conv_channels=(32, 64, 128), encoder_mlp=(64, 32, 16)),
}

#: default batch size per preset
PRESET_BATCH: dict[str, int] = {"paper": 512, "cpu-small": 64}


def _mlp(sizes: list[int], dropout: float, act: type[nn.Module]) -> nn.Sequential:
    """Linear layers with `act` between them; no activation after the last layer."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class ConvBlock(nn.Module):
    """Conv1d → InstanceNorm → PReLU → MaxPool (→ dropout), with the PReLU moved after the pool.

    PReLU with slope a >= 0 is non-decreasing, so it commutes with max-pooling; with a < 0 it is
    V-shaped and its maximum over a window is reached at the window's maximum or minimum of the
    input. Pooling first (max, plus min where a slope is negative) and activating only the
    pooled values is therefore exact, and the per-channel PReLU — whose backward pass is one of
    the most expensive ops of the whole step on CPU — runs on 1/pool of the data.
    ``tests/test_model_autoencoder.py`` checks equality with the textbook order.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, pool: int | None, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
        self.act = nn.PReLU(c_out)
        # a p=0 Dropout would still cost a pass over the activations
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # InstanceNorm without affine: the PReLU and the next conv rescale anyway
        h = F.instance_norm(self.conv(x))
        if self.pool is None:
            return self.dropout(self.act(h))
        pad = self.pool // 2  # as the reference: 3921 → 785 → 72 positions
        out = self.act(F.max_pool1d(h, self.pool, padding=pad))
        if bool((self.act.weight < 0).any()):
            out = torch.maximum(out, self.act(-F.max_pool1d(-h, self.pool, padding=pad)))
        return self.dropout(out)


class Encoder(nn.Module):
    """Observed spectrum (B, M) → latents (B, S): conv blocks, attention pooling, MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for i, (c, k) in enumerate(zip(cfg.conv_channels, cfg.conv_kernels, strict=True)):
            pool = cfg.pool_sizes[i] if i < len(cfg.pool_sizes) else None
            blocks.append(ConvBlock(c_in, c, k, pool, cfg.dropout))
            c_in = c
        self.conv = nn.Sequential(*blocks)
        self.n_values = c_in // 2
        self.mlp = _mlp([self.n_values, *cfg.encoder_mlp, cfg.n_latent], cfg.dropout, nn.LeakyReLU)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Encode normalised flux `x` (B, M); pixels with weight `w` == 0 are fed as 0 because
        the shards keep the (possibly garbage) flux of masked pixels."""
        h = self.conv((x * (w > 0))[:, None, :])
        values, logits = h[:, : self.n_values], h[:, self.n_values :]
        # attention: softmax over position picks where each feature is read from
        feats = (values * torch.softmax(logits, dim=-1)).sum(-1)
        return self.mlp(feats)


class SpeculatorActivation(nn.Module):
    """a(x) = [γ + (1 − γ)·sigmoid(β·x)]·x per feature, with learnt β, γ (Alsing et al. 2020).

    γ = 1 is the identity, β → ∞ with γ = 0 a ReLU: a smooth gate whose shape each feature
    learns, so a decoder built from it is smooth in the latents."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.randn(n_features))
        self.gamma = nn.Parameter(torch.randn(n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.gamma + (1 - self.gamma) * torch.sigmoid(self.beta * x)) * x


class Decoder(nn.Module):
    """Latents (B, S) → restframe spectrum (B, n_rest) on `wave_rest`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        sizes = [cfg.n_latent, *cfg.decoder_mlp, cfg.n_rest]
        if cfg.decoder_activation == "leaky-relu":
            self.mlp = _mlp(sizes, 0.0, nn.LeakyReLU)
            self.offset = 0.0
        else:  # "speculator": every layer activated, the output too, plus 1
            layers: list[nn.Module] = []
            for a, b in zip(sizes[:-1], sizes[1:], strict=True):
                layers += [nn.Linear(a, b), SpeculatorActivation(b)]
            self.mlp = nn.Sequential(*layers)
            self.offset = 1.0

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        x = self.mlp(s)
        return x + self.offset if self.offset else x


def redshift(
    x_rest: torch.Tensor, wave_rest: torch.Tensor, wave_obs: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Observe a restframe spectrum at redshift z: x''(λ_obs) = x'(λ_obs/(1+z)).

    Args:
        x_rest: (B, L) restframe spectra sampled at `wave_rest` (Å, increasing).
        wave_rest: (L,) restframe grid, Å.
        wave_obs: (M,) observed grid, Å.
        z: (B,) redshifts.

    Returns:
        (B, M) spectra on the observed grid; 0 where λ_obs/(1+z) is outside `wave_rest`.
    """
    return interp1d(wave_obs[None, :] / (1 + z[:, None]), wave_rest, x_rest)


def restframe_encoder_grid(cfg: ModelConfig, wave_obs: np.ndarray) -> np.ndarray:
    """The restframe encoder's input grid in Å: log-uniform over the decoder's restframe span,
    with the observed grid's median log step (SDSS: 1e-4 dex, 5,973 pixels for 2359–9332 Å).

    With the observed grid's own step, a whole-pixel redshift copy (`--augment pixel-shift`)
    lands on the same restframe pixels as its original, so the encoder input of the two differs
    only where the observed window covers other restframe wavelengths."""
    log_wave = np.log10(np.asarray(wave_obs, dtype=np.float64))
    step = float(np.median(np.diff(log_wave)))
    lo, hi = np.log10(cfg.wave_rest_min), np.log10(cfg.wave_rest_max)
    return 10.0 ** (lo + step * np.arange(int(np.floor((hi - lo) / step)) + 1))


def to_restframe(
    x: torch.Tensor, wave_obs: torch.Tensor, wave_enc: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Place observed spectra `x` (B, M) on the restframe grid `wave_enc` (Å): x(λ·(1+z)).

    Coordinates are interpolated in log λ and float64 so that two copies of one spectrum a
    whole number of pixels apart get identical inputs; 0 outside the observed window (as a
    masked pixel is fed)."""
    pos = torch.log(wave_enc.double())[None, :] + torch.log1p(z.double())[:, None]
    return interp1d(pos, torch.log(wave_obs.double()), x.double()).to(x.dtype)


class SpectrumAutoencoder(nn.Module):
    """Encoder + decoder + redshift transform. `wave_obs` / `wave_rest` are buffers (saved)."""

    def __init__(self, cfg: ModelConfig, wave_obs: np.ndarray | torch.Tensor | None = None) -> None:
        super().__init__()
        if cfg.encoder_frame not in ENCODER_FRAMES:
            raise ValueError(
                f"encoder_frame must be one of {ENCODER_FRAMES}, not {cfg.encoder_frame!r}"
            )
        if cfg.decoder_activation not in DECODER_ACTIVATIONS:
            raise ValueError(
                f"decoder_activation must be one of {DECODER_ACTIVATIONS}, "
                f"not {cfg.decoder_activation!r}"
            )
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        wo = default_wave_obs() if wave_obs is None else wave_obs
        self.register_buffer("wave_obs", torch.as_tensor(np.asarray(wo), dtype=torch.float32))
        wr = torch.linspace(cfg.wave_rest_min, cfg.wave_rest_max, cfg.n_rest, dtype=torch.float64)
        self.register_buffer("wave_rest", wr.float())
        grid = None
        if cfg.encoder_frame == "restframe":
            grid = torch.from_numpy(restframe_encoder_grid(cfg, self.wave_obs.double().numpy()))
        # derived from the config and wave_obs, so not saved: checkpoints keep their keys
        self.register_buffer("wave_enc", grid, persistent=False)

    def encode(self, x: torch.Tensor, w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, S) of normalised observed flux `x` (B, M) with weights `w` (B, M) at
        redshifts `z` (B,); an observed-frame encoder ignores `z`."""
        if self.wave_enc is None:
            return self.encoder(x, w)
        x_in = to_restframe(x * (w > 0), self.wave_obs, self.wave_enc, z)
        return self.encoder(x_in, torch.ones_like(x_in))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns latents s (B, S), restframe model x' (B, L), observed model x'' (B, M)."""
        s = self.encode(x, w, z)
        x_rest = self.decoder(s)
        x_obs = redshift(x_rest.float(), self.wave_rest, self.wave_obs, z.float())
        return s, x_rest, x_obs

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = [
    "ModelConfig",
    "ENCODER_FRAMES",
    "DECODER_ACTIVATIONS",
    "SpeculatorActivation",
    "PRESETS",
    "PRESET_BATCH",
    "ConvBlock",
    "Encoder",
    "Decoder",
    "SpectrumAutoencoder",
    "redshift",
    "default_wave_obs",
    "restframe_encoder_grid",
    "to_restframe",
]
