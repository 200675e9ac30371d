"""Benchmark: peak memory of `similarity_loss` (Gram matrices) vs the naive N×N×M' form,
forward + backward, M' = 7000 restframe pixels, float32.

    .venv/bin/python benchmarks/similarity_memory.py [--n 512] [--naive-n 32 64 128]

Method: each measurement runs in a fresh child process; peak = ru_maxrss of the child after the
computation minus ru_maxrss after building the inputs (same process), i.e. the extra resident
memory the loss needed. The naive form is measured at smaller N and extrapolated ∝ N² (its
N×N×M' temporaries dominate), because at N = 512 it needs several GB per temporary.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(form: str, n: int) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from model.losses import similarity_loss

    g = torch.Generator().manual_seed(0)
    m = 7000
    s = torch.randn(n, 2, generator=g, requires_grad=True)
    x = (1 + 0.1 * torch.randn(n, m, generator=g)).requires_grad_()
    w = torch.rand(n, m, generator=g) * 10
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if form == "gram":
        loss = similarity_loss(s, x, w, 2.5, 1.0)
    else:
        s_d = 0.5 * ((s[:, None] - s[None]) ** 2).sum(-1)
        x_d = (torch.sqrt(w[:, None] * w[None]) * (x[:, None] - x[None]) ** 2).sum(-1) / m
        big_s = s_d - x_d
        loss = (torch.sigmoid(big_s - 2.5) + torch.sigmoid(-big_s - 2.5)).mean()
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mib": (peak - base) / 1024}))  # ru_maxrss is KiB on Linux


def measure(form: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--child", form, str(n)], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--naive-n", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    gram = measure("gram", args.n)
    print(f"Gram form, N={args.n}: {gram:.1f} MiB extra peak")
    naive = {n: measure("naive", n) for n in args.naive_n}
    for n, v in naive.items():
        print(f"naive form, N={n}: {v:.1f} MiB extra peak")
    n_big = max(naive)
    extrapolated = naive[n_big] * (args.n / n_big) ** 2
    print(
        f"naive form, N={args.n}: ~{extrapolated / 1024:.1f} GiB (extrapolated ∝ N² from N={n_big})"
    )
    print(f"ratio naive / Gram at N={args.n}: {extrapolated / gram:.0f}x")


if __name__ == "__main__":
    main()
