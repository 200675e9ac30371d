"""Differentiable, batched linear interpolation (our own; no external package).

The reference implementation depends on an external interpolation package whose backward pass
breaks on current torch; this module uses only `searchsorted` and `gather`, so autograd handles
the backward pass and it runs on any device.
"""

from __future__ import annotations

import torch


def interp1d(x_new: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linearly interpolate `y(x)` at `x_new`, row by row; zero outside `[x[0], x[-1]]`.

    Args:
        x_new: (B, K) query coordinates (e.g. restframe wavelengths in Å); each row may differ.
        x: (L,) or (B, L) strictly increasing sample coordinates (same units as `x_new`).
        y: (L,) or (B, L) sample values; gradients flow to `y` (and to `x_new`).

    Returns:
        (B, K) interpolated values, exactly 0 where `x_new` lies outside the sampled range
        (the model makes no prediction there, so it must not leak into losses).
    """
    if x_new.dim() == 1:
        return interp1d(x_new[None], x, y)[0]
    batch = x_new.shape[0]
    if x.dim() == 1:
        x = x.expand(batch, -1)
    if y.dim() == 1:
        y = y.expand(batch, -1)
    x = x.contiguous()
    n = x.shape[-1]
    # index of the right neighbour, clamped so that both neighbours exist
    idx = torch.searchsorted(x, x_new.contiguous(), right=False).clamp(1, n - 1)
    x0 = torch.gather(x, 1, idx - 1)
    x1 = torch.gather(x, 1, idx)
    y0 = torch.gather(y, 1, idx - 1)
    y1 = torch.gather(y, 1, idx)
    t = (x_new - x0) / (x1 - x0)
    out = y0 + t * (y1 - y0)
    inside = (x_new >= x[:, :1]) & (x_new <= x[:, -1:])
    # multiply by the mask (not torch.where): one fewer full-size temporary in forward/backward
    return out * inside.to(out.dtype)
