"""GPU check, prepared for a session that has one: `paper` training, streaming vs --cache-on-device.

One short script, meant to run in a few minutes on a lent GPU machine (it also runs, slowly, on
a CPU as a dry run). Steps:

1. a SYNTHETIC-from-real corpus (``etl/synthetic/from_real.py``) of ``--n`` spectra → shards;
2. ``paper`` preset, ``similarity`` objective, ``--epochs`` epochs, streaming from the shards
   (DataLoader workers, pinned memory, non-blocking copies);
3. the same with ``--cache-on-device`` (the whole split on the GPU);
4. prints spectra/s of each (epochs after the first; the first pays for warm-up) and the ratio,
   and GPU utilisation sampled with ``nvidia-smi`` every 0.5 s during each run.

Usage (on the device machine, from the repository root, after ``make setup TORCH=torch``)::

    .venv/bin/python benchmarks/gpu_train.py --work /tmp/gpu --n 20000 --epochs 3

Nothing here is asserted; the figures go into ``benchmarks/README.md`` by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from etl.build import build_shards, read_index  # noqa: E402
from etl.release import load_release  # noqa: E402
from etl.synthetic.from_real import PER_PLATE, make_corpus  # noqa: E402
from model.train import TrainConfig, train  # noqa: E402


class GpuSampler:
    """Samples `nvidia-smi` GPU utilisation (%) in a thread; empty where there is no GPU."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        while not self._stop.wait(self.interval):
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_once(shards: Path, run: Path, epochs: int, cache: bool, workers: int) -> dict:
    with GpuSampler() as gpu:
        train(
            TrainConfig(
                shards=str(shards),
                run=str(run),
                objective="similarity",
                preset="paper",
                epochs=epochs,
                cache_on_device=cache,
                workers=0 if cache else workers,
                progress=False,
            )
        )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["spectra_per_s"] for r in rows[1:]] or [rows[-1]["spectra_per_s"]]
    return {
        "spectra_per_s": statistics.median(rates),
        "gpu_util_mean": statistics.mean(gpu.samples) if gpu.samples else None,
        "gpu_util_samples": len(gpu.samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--n", type=int, default=20000, help="synthetic spectra in the corpus")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers when streaming")
    args = ap.parse_args()
    release = load_release("dr16")
    data = args.work / "data"
    if not (data / release.name / "catalog.fits").exists():
        make_corpus(data, args.n, release=release.name, processes=4)
    shards = build_shards(release, data, progress=False).shards_dir
    splits = {e["split"] for e in read_index(shards)["shards"]}
    if not {"train", "valid"} <= splits:  # a small --n for a CPU dry run
        ap.error(
            f"--n {args.n}: the corpus's shards are all in {sorted(splits)}; training needs train "
            f"and valid shards. The splits go by sky position and a plate of up to {PER_PLATE} "
            "spectra covers few positions, so a corpus of one or two plates can miss a split: "
            "use --n 5000 or more (the default 20000 is fine)"
        )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
    results = {}
    for name, cache in (("streaming", False), ("cache-on-device", True)):
        run = args.work / "runs" / name
        shutil.rmtree(run, ignore_errors=True)
        results[name] = run_once(shards, run, args.epochs, cache, args.workers)
        print(f"{name:16s} {json.dumps(results[name])}", flush=True)
    ratio = results["cache-on-device"]["spectra_per_s"] / results["streaming"]["spectra_per_s"]
    print(f"device: {device}; paper preset, similarity objective, batch 512, {args.n} spectra")
    print(f"cache-on-device / streaming: {ratio:.2f}x")


if __name__ == "__main__":
    main()
