"""Benchmark: spectra/s delivered by the shard loader vs spectra/s of `cpu-small` training.

    .venv/bin/python benchmarks/loader.py [--rows 16384] [--batch 512]

Shards: the bundled real sample preprocessed by `etl`, its rows repeated to `--rows` rows in 4
train shards (uncompressed, chunked as the format says) in a temp folder. Loader: `ShardStream`
in the main process (workers=0, torch on 1 thread, i.e. one core), shuffled epoch, after one
warm-up epoch (files in the page cache, as during training). Training: cpu-small, fidelity
objective, batch 64, default threads, median of timed steps. Prints both rates and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from model.autoencoder import PRESETS, SpectrumAutoencoder  # noqa: E402
from model.data import ShardStream, list_shards, make_loader  # noqa: E402
from model.objectives import step_losses  # noqa: E402


def build(out: Path, rows: int) -> Path:
    import h5py
    from test_model_fixtures import build_sample_shards

    from etl.release import load_release
    from etl.shard_task import shard_attrs
    from shardio import write_shard

    small = build_sample_shards(out / "small")
    with h5py.File(next((small / "train").glob("*.h5"))) as f:
        base = {k: f[k][:] for k in f if k != "wave_obs"}
    release = load_release("dr16")
    shards = out / "big"
    import json

    entries = []
    per = rows // 4
    for j in range(4):
        idx = np.arange(j * per, (j + 1) * per) % len(base["z"])
        cols = {k: v[idx] for k, v in base.items()}
        rel = f"train/shard-{j:05d}.h5"
        digest = write_shard(shards / rel, cols, release.wave_obs, shard_attrs(release, "train"))
        entries.append({"path": rel, "split": "train", "rows": per, "sha256": digest})
    (shards / "index.json").write_text(json.dumps({"shards": entries}))
    return shards


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shards = build(Path(tmp), args.rows)
        info = list_shards(shards, "train")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        stream = ShardStream(info, args.batch, seed=0)
        rates = []
        for epoch in range(3):
            stream.set_epoch(epoch)
            t0 = time.perf_counter()
            n = sum(b["z"].shape[0] for b in make_loader(stream))
            if epoch:  # epoch 0 warms the page cache
                rates.append(n / (time.perf_counter() - t0))
        loader_rate = statistics.median(rates)
        torch.set_num_threads(threads)

        model = SpectrumAutoencoder(PRESETS["cpu-small"])
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        stream = ShardStream(info, 64, seed=0)
        times = []
        for i, batch in enumerate(make_loader(stream)):
            t0 = time.perf_counter()
            loss = step_losses(model, model, batch, ("fidelity",))["total"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t0)
            if i == 15:
                break
        train_rate = 64 / statistics.median(times)
    print(f"loader  : {loader_rate:,.0f} spectra/s (1 thread, workers=0, batch {args.batch})")
    print(
        f"training: {train_rate:,.0f} spectra/s (cpu-small, fidelity, batch 64, {threads} threads)"
    )
    print(f"ratio loader / training: {loader_rate / train_rate:.0f}x")


if __name__ == "__main__":
    main()
