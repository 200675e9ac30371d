"""Benchmark `specetl build-shards` against the reference implementation's way, same run.

Steps (all on a SYNTHETIC corpus from ``etl/synthetic/from_real.py``):

1. generate ``--n`` synthetic spec-lite files + catalogue (skipped if already there);
2. baseline: the reference implementation's approach, re-implemented here (not its code):
   per file ``astropy.io.fits.open``, COADD columns to torch tensors, placement on the grid with
   torch, and_mask/ivar/sky masking, median normalisation in the restframe window, and batches
   of 1024 spectra pickled to disk; single process, on ``--baseline-n`` files;
3. ``specetl build-shards`` (a subprocess, fresh output) with 1 and with 2 worker processes on
   the first ``--throughput-n`` objects, and with 2 workers on 5k and on ``--n`` objects for
   peak memory: RSS summed over the whole process tree (driver, scheduler, nannies, workers),
   sampled every 50 ms with psutil.

Wall times include starting the Dask cluster. Files are read from the page cache in both
paths (the corpus was just written; both read the same files). Prints the figures and ratios
and, with ``--json``, writes them to a file. ``--cleanup`` deletes the generated data after.

Usage: ``python benchmarks/build_shards.py --work /tmp/bench --n 50000 --cleanup``
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from etl.catalog import read_catalog, write_catalog  # noqa: E402
from etl.release import load_release, spec_lite_relpath  # noqa: E402
from etl.synthetic.from_real import make_corpus  # noqa: E402
from etl.telluric import release_telluric_mask  # noqa: E402

BATCH = 1024


# --- the baseline: the reference implementation's way ------------------------------------------


def reference_way(files: list[Path], out_dir: Path) -> float:
    """Process ``files`` the way the reference implementation does; return seconds taken.

    Per file: ``fits.open``; loglam/flux/ivar/and_mask as torch tensors; placement by the offset
    of the first pixel on the observed grid (clipped at both ends); weights 0 where and_mask,
    ivar <= 1e-6 or a sky line; normalise by the median flux of valid pixels in the restframe
    window; weights × norm²; plate/mjd/fiberid, z and z_err read from HDU2's row. Spectra are
    collected into batches of 1024 that are pickled.
    """
    import torch
    from astropy.io import fits

    torch.set_num_threads(1)  # one core, like one build-shards worker
    release = load_release("dr16")
    g = release.grid
    wave = torch.tensor(g.wave_obs)
    sky = torch.tensor(release_telluric_mask(release))
    lo_w, hi_w = release.normalisation.restframe_min, release.normalisation.restframe_max
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    batch: list[tuple] = []
    nbatch = 0

    def flush() -> None:
        nonlocal nbatch, batch
        spec = torch.stack([b[0] for b in batch])
        w = torch.stack([b[1] for b in batch])
        meta = torch.tensor([b[2:] for b in batch], dtype=torch.float64)
        with open(out_dir / f"batch_{nbatch:05d}.pkl", "wb") as fh:
            pickle.dump((spec, w, meta), fh)
        nbatch += 1
        batch = []

    for path in files:
        with fits.open(path) as hdul:
            data = hdul[1].data
            loglam = torch.tensor(np.asarray(data["loglam"], dtype=np.float64))
            flux = torch.tensor(np.asarray(data["flux"], dtype=np.float32))
            ivar = torch.tensor(np.asarray(data["ivar"], dtype=np.float32))
            and_mask = torch.tensor(np.asarray(data["and_mask"], dtype=np.int32))
            # ids, z and z_err from HDU2's row, as the reference's per-file preparation does
            row = hdul[2].data[0]
            ids = (int(row["PLATE"]), int(row["MJD"]), int(row["FIBERID"]))
            zi, zerr = float(row["Z"]), float(row["Z_ERR"])
        start = int(torch.round((loglam[0] - g.loglam0) / g.dloglam))
        spec = torch.zeros(g.npix)
        w = torch.zeros(g.npix)
        a, b = max(start, 0), min(start + len(loglam), g.npix)
        if a >= b:
            continue
        mask = (and_mask != 0) | (ivar <= 1e-6)
        ivar = torch.where(mask, torch.zeros_like(ivar), ivar)
        spec[a:b] = flux[a - start : b - start]
        w[a:b] = ivar[a - start : b - start]
        w[sky] = 0
        rest = wave / (1 + float(zi))
        sel = (rest >= lo_w) & (rest <= hi_w) & (w > 0)
        if not sel.any():
            continue
        norm = torch.median(spec[sel])
        if not norm > 0:
            continue
        batch.append((spec / norm, w * norm**2, zi, zerr, float(norm), *ids))
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return time.perf_counter() - t0


# --- measuring specetl build-shards --------------------------------------------------------------


def run_tree_peak(cmd: list[str]) -> tuple[float, int, str, float]:
    """Run ``cmd``; return (wall s, peak RSS of its process tree in bytes, stdout, CPU s).

    CPU seconds (user + system) are summed over every process of the tree (driver, scheduler,
    nannies, workers) as last sampled: a per-core figure that other load on the machine does
    not distort the way it distorts wall time.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = 0
                for p in procs:
                    try:
                        rss += p.memory_info().rss
                        t = p.cpu_times()
                        cpu[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    done.set()
    thread.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, peak, out.strip(), sum(cpu.values())


def subset(data: Path, dst: Path, n: int) -> None:
    """DATA folder ``dst`` whose catalogue is the first n objects of ``data`` (spectra linked)."""
    cat = read_catalog(data / "dr16" / "catalog.fits")
    (dst / "dr16").mkdir(parents=True, exist_ok=True)
    link = dst / "dr16" / "spectra"
    if not link.exists():
        link.symlink_to((data / "dr16" / "spectra").resolve())
    write_catalog({k: v[:n] for k, v in cat.items()}, dst / "dr16" / "catalog.fits")


def build_cmd(data: Path, workers: int) -> list[str]:
    exe = Path(sys.executable).parent / "specetl"
    return [str(exe), "build-shards", "--release", "dr16", "--data-dir", str(data),
            "--workers", str(workers), "--rebuild"]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/specetl-bench"), help="scratch folder")
    ap.add_argument("--n", type=int, default=50000, help="corpus size (and the large memory run)")
    ap.add_argument("--throughput-n", type=int, default=20000, help="objects for the 1 vs 2 run")
    ap.add_argument("--baseline-n", type=int, default=1000, help="files for the baseline")
    ap.add_argument("--small-n", type=int, default=5000, help="the small memory run")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--cleanup", action="store_true", help="delete generated data at the end")
    args = ap.parse_args(argv)
    work = args.work
    data = work / "full"
    figures: dict = {"command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    try:
        if not (data / "dr16" / "catalog.fits").exists():
            print(f"generating a SYNTHETIC corpus of {args.n} files in {data} ...", flush=True)
            t0 = time.perf_counter()
            make_corpus(data, args.n, seed=0, processes=os.cpu_count() or 1)
            figures["generate_s"] = round(time.perf_counter() - t0, 1)
            print(f"  {figures['generate_s']} s", flush=True)
        cat = read_catalog(data / "dr16" / "catalog.fits")

        nb = args.baseline_n
        files = [
            data / "dr16" / "spectra" / spec_lite_relpath(*row)
            for row in zip(
                cat["RUN2D"][:nb],
                cat["PLATE"][:nb],
                cat["MJD"][:nb],
                cat["FIBERID"][:nb],
                strict=True,
            )  # fmt: skip
        ]
        c0 = time.process_time()
        secs = reference_way(files, work / "baseline")
        figures["baseline_per_s"] = round(nb / secs, 1)
        figures["baseline_per_cpu_s"] = round(nb / (time.process_time() - c0), 1)
        print(f"baseline (reference way, 1 process): {figures['baseline_per_s']} spectra/s, "
              f"{figures['baseline_per_cpu_s']} per CPU-second", flush=True)  # fmt: skip

        for workers in (1, 2):
            sub = work / f"tp{workers}"
            subset(data, sub, args.throughput_n)
            wall, peak, _, cpu = run_tree_peak(build_cmd(sub, workers))
            figures[f"build_w{workers}_per_s"] = round(args.throughput_n / wall, 1)
            figures[f"build_w{workers}_per_cpu_s"] = round(args.throughput_n / cpu, 1)
            figures[f"build_w{workers}_s"] = round(wall, 1)
            print(f"build-shards, {workers} worker(s), {args.throughput_n} spectra: {wall:.1f} s "
                  f"= {args.throughput_n / wall:.0f} spectra/s, "
                  f"{args.throughput_n / cpu:.0f} per CPU-second (whole tree)", flush=True)  # fmt: skip
            shutil.rmtree(sub / "dr16" / "shards", ignore_errors=True)
        # a rerun with unchanged inputs (no-op)
        sub = work / "tp2"
        subset(data, sub, args.throughput_n)
        run_tree_peak(build_cmd(sub, 2))
        cmd = build_cmd(sub, 2)[:-1]
        wall, _, _, _ = run_tree_peak(cmd)
        figures["noop_rerun_s"] = round(wall, 2)
        print(f"no-op rerun, {args.throughput_n} spectra: {wall:.2f} s", flush=True)
        shutil.rmtree(sub, ignore_errors=True)

        for n in (args.small_n, args.n):
            sub = work / f"mem{n}"
            subset(data, sub, n)
            wall, peak, out, _ = run_tree_peak(build_cmd(sub, 2))
            figures[f"peak_rss_mb_{n}"] = round(peak / 2**20)
            figures[f"build_w2_{n}_s"] = round(wall, 1)
            print(f"build-shards, 2 workers, {n} spectra: {wall:.1f} s, peak RSS of the process "
                  f"tree {peak / 2**20:.0f} MiB  [{out}]", flush=True)  # fmt: skip
            shutil.rmtree(sub, ignore_errors=True)

        f = figures
        f["speedup_wall_1_worker"] = round(f["build_w1_per_s"] / f["baseline_per_s"], 1)
        f["speedup_per_core"] = round(f["build_w1_per_cpu_s"] / f["baseline_per_cpu_s"], 1)
        f["scaling_2_vs_1"] = round(f["build_w2_per_s"] / f["build_w1_per_s"], 2)
        f["memory_ratio"] = round(f[f"peak_rss_mb_{args.n}"] / f[f"peak_rss_mb_{args.small_n}"], 2)
        print(f"speed-up per core (CPU-seconds) vs the reference way: {f['speedup_per_core']}x "
              f"(target >= 25x); wall, 1 worker vs 1 process: {f['speedup_wall_1_worker']}x")  # fmt: skip
        print(f"2 workers vs 1: {f['scaling_2_vs_1']}x")
        print(f"peak memory {args.n} vs {args.small_n}: {f['memory_ratio']}x (target <= 1.2x)")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1) + "\n")
    finally:
        if args.cleanup:
            shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main()
