"""`specetl embed` throughput against the model's forward-only rate, measured in the same run.

Forward-only: the same spectra already in memory as tensors, the model's forward pass alone,
batch after batch (what the model can do with no I/O at all). Embed: `model.embed.embed_shards`
end to end on the shards — reading rows (in a background thread), the forward pass, χ², scores,
the FITS write — with the run's outlier model already fitted (the first embed of a run also fits
it, which the script reports separately). Bar: embed >= 0.8x forward-only, i.e. I/O is never
the bottleneck.

Shards: `--shards DIR` (any built shards), else a SYNTHETIC-from-real corpus is made with
etl/synthetic/from_real.py and built. The model is an untrained `--preset` model saved as a run
(throughput does not depend on the weights).

Usage::

    python benchmarks/embed.py --work /tmp/embed-bench --n 2048 [--shards DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from model.autoencoder import PRESETS, ModelConfig, SpectrumAutoencoder  # noqa: E402
from model.checkpoint import CHECKPOINT_FORMAT, pick_device  # noqa: E402
from model.data import list_shards, read_wave_obs  # noqa: E402
from model.embed import embed_batch, embed_shards, read_rows  # noqa: E402


def make_run(run: Path, shards: Path, preset: str) -> None:
    """An untrained model saved as a run folder that `load_model` reads."""
    wave = read_wave_obs(list_shards(shards, "train", verify=False)[0])
    cfg = ModelConfig.from_dict({**PRESETS[preset].to_dict(), "npix": len(wave)})
    torch.manual_seed(0)
    model = SpectrumAutoencoder(cfg, wave)
    run.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": model.state_dict(),
        "model_config": cfg.to_dict(),
        "config": {"shards": str(shards), "objective": "untrained (benchmark)"},
        "epoch": 0,
    }
    torch.save(ckpt, run / "best.pt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2048, help="synthetic spectra when no --shards")
    ap.add_argument("--shards", type=Path, default=None)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes of each (best kept)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shards = args.shards
    if shards is None:
        from etl.build import build_shards
        from etl.release import load_release
        from etl.synthetic.from_real import make_corpus

        data = args.work / "data"
        release = load_release("dr16")
        if not (data / release.name / "shards" / "index.json").exists():
            make_corpus(data, args.n, release=release.name, processes=2)
            build_shards(release, data, progress=False)
        shards = data / release.name / "shards"
    device = pick_device(args.device)
    run = args.work / f"run-{args.preset}"
    make_run(run, shards, args.preset)
    (run / "outliers.json").unlink(missing_ok=True)

    # forward-only: every row in memory as tensors on the device, batches of the same size
    infos = [s for split in ("train", "valid", "test") for s in list_shards(shards, split, False)]
    parts = [read_rows(s.path, 0, s.rows) for s in infos]
    flux = torch.from_numpy(np.concatenate([p["flux"] for p in parts])).to(device)
    ivar = torch.from_numpy(np.concatenate([p["ivar"] for p in parts])).to(device)
    z = torch.from_numpy(np.concatenate([p["z"] for p in parts])).to(device)
    n = len(z)
    from model.checkpoint import load_model

    model, _ = load_model(run, device=device)
    model.eval()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward_only() -> float:
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            for a in range(0, n, args.batch_size):
                b = slice(a, a + args.batch_size)
                model(flux[b], ivar[b], z[b])
        sync()
        return n / (time.perf_counter() - t)

    def forward_chi2() -> float:
        sync()
        t = time.perf_counter()
        for a in range(0, n, args.batch_size):
            b = slice(a, a + args.batch_size)
            embed_batch(model, flux[b], ivar[b], z[b])
        sync()
        return n / (time.perf_counter() - t)

    def embed(name: str) -> float:
        t = time.perf_counter()
        embed_shards(run, args.work / name, shards, "all", device, args.batch_size, verify=False)
        return n / (time.perf_counter() - t)

    forward_only()  # warm-up (allocator, threads)
    first = embed("first.fits")  # fits RUN/outliers.json on the train split as well
    # interleaved, best of each: on a shared machine the load changes between passes
    fwd = fwd_chi2 = emb = 0.0
    for _ in range(args.repeats):
        fwd = max(fwd, forward_only())
        emb = max(emb, embed("embedding.fits"))
        fwd_chi2 = max(fwd_chi2, forward_chi2())
    print(f"{n} spectra, preset {args.preset}, batch {args.batch_size}, device {device}")
    print(f"forward only (tensors in memory):      {fwd:9.1f} spectra/s")
    print(f"forward + chi2 (tensors in memory):    {fwd_chi2:9.1f} spectra/s")
    print(f"specetl embed (shards -> FITS):        {emb:9.1f} spectra/s")
    print(f"first embed of a run (+ density fit):  {first:9.1f} spectra/s")
    print(f"ratio embed / forward-only: {emb / fwd:.2f}x (bar >= 0.8x)")


if __name__ == "__main__":
    main()
