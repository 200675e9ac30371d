"""Benchmark: one training step (fidelity loss, forward + backward + Adam) of our `paper` model
vs the reference implementation (spender 0.3, `pip install spender==0.3 --no-deps` plus GPUtil,
humanize, nflows), same sizes, same batch, same machine, same run.

    .venv/bin/python benchmarks/train_step.py [--batch 32] [--steps 5]

Prints seconds per step for each and the ratio (reference time / ours; > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.autoencoder import PRESETS, SpectrumAutoencoder  # noqa: E402
from model.objectives import step_losses  # noqa: E402


def _time(steps: list, n: int) -> list[float]:
    """Median seconds per call of each step function, calls interleaved (A B A B …) so that
    load from other processes on the machine hits both equally."""
    for step in steps:
        step()  # warm-up (allocations, lazy init)
    ts: list[list[float]] = [[] for _ in steps]
    for _ in range(n):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            ts[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in ts]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    ours = SpectrumAutoencoder(PRESETS["paper"])
    b = args.batch
    x = 1 + 0.1 * torch.randn(b, 3921)
    w = torch.rand(b, 3921) * 10
    z = torch.rand(b) * 0.5
    batch = {"flux": x, "ivar": w, "z": z}
    opt = torch.optim.Adam(ours.parameters(), 1e-3)

    def ours_step() -> None:
        loss = step_losses(ours, ours, batch, ("fidelity",))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    try:
        import spender
        from spender import Instrument
    except ImportError as e:
        print(f"reference implementation not importable ({e}); install spender==0.3")
        return
    inst = Instrument(ours.wave_obs.clone())
    ref = spender.SpectrumAutoencoder(
        inst,
        ours.wave_rest.clone(),
        n_latent=2,
        n_hidden=(256, 512, 1024),
        act=[torch.nn.LeakyReLU() for _ in range(4)],
    )
    n_ref = sum(p.numel() for p in ref.parameters())
    ropt = torch.optim.Adam(ref.parameters(), 1e-3)

    def ref_step() -> None:
        loss = ref.loss(x, w, instrument=inst, z=z)
        ropt.zero_grad()
        loss.backward()
        ropt.step()

    try:
        t_ours, t_ref = _time([ours_step, ref_step], args.steps)
        mode = "forward+backward+Adam"
    except RecursionError as e:  # its interpolation's backward on some torch versions
        print(f"reference backward failed ({type(e).__name__}); timing forward only")

        def ref_fwd() -> None:
            with torch.no_grad():
                ref.loss(x, w, instrument=inst, z=z)

        def ours_fwd() -> None:
            with torch.no_grad():
                step_losses(ours, ours, batch, ("fidelity",))

        (t_ours, t_ref), mode = _time([ours_fwd, ref_fwd], args.steps), "forward only"
    print(
        f"ours   : paper preset, {ours.n_params():,} params, batch {b}, {mode}: {t_ours:.3f} s/step"
    )
    print(f"spender {spender.__version__}: {n_ref:,} params, batch {b}, {mode}: {t_ref:.3f} s/step")
    print(
        f"ratio (reference / ours): {t_ref / t_ours:.2f}x   torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


if __name__ == "__main__":
    main()
