"""Read + preprocess throughput on one core: specetl vs the reference implementation's way.

Baseline (measured in the same run, same files): what spender does per file — astropy
``fits.open``, read HDU1 ``loglam``/``flux``/``ivar``/``and_mask`` and HDU2 ``Z``/``Z_ERR``, then
place, mask and normalise (done here with the same numpy code, so the comparison isolates the
reading path plus our per-spectrum overheads).

specetl: ``etl.spectrum.Preprocessor.preprocess_file`` (strict fast FITS reader + the pure
functions), including the HDU2 id check that build-shards performs.

Usage:  python benchmarks/preprocess.py [--seconds 5]
Prints spectra/s for both and their ratio (target >= 25x).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from etl.release import load_release  # noqa: E402
from etl.spectrum import Preprocessor, RawSpectrum, SpectrumRejected  # noqa: E402

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "sdss"


def reference_way(path: Path, prep: Preprocessor) -> None:
    with fits.open(path) as hdul:
        coadd = hdul[1].data
        raw = RawSpectrum(
            loglam=np.asarray(coadd["loglam"], dtype=np.float64),
            flux=np.asarray(coadd["flux"], dtype=np.float64),
            ivar=np.asarray(coadd["ivar"], dtype=np.float64),
            and_mask=np.asarray(coadd["and_mask"]),
        )
        z = float(hdul[2].data["Z"][0])
        float(hdul[2].data["Z_ERR"][0])
    try:
        prep.preprocess(raw, z, path.name)
    except SpectrumRejected:
        pass


def specetl_way(path: Path, prep: Preprocessor, z: float, ids: tuple[int, int, int]) -> None:
    try:
        prep.preprocess_file(path, z, expect_id=ids)
    except SpectrumRejected:
        pass


def rate(fn, items, seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while True:
        for item in items:
            fn(*item)
        done += len(items)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum time per measurement")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, honestly
    prep = Preprocessor(load_release("dr16"))
    files = sorted(SAMPLE.glob("*/*/spec-*.fits"))
    with fits.open(files[0]):
        pass  # warm astropy's imports so the baseline is not charged for them
    from etl.spectrum import read_spec_lite

    meta = []
    for path in files:
        raw = read_spec_lite(path)
        with fits.open(path) as hdul:
            z = float(hdul[2].data["Z"][0])
        meta.append((path, prep, z, (raw.plate, raw.mjd, raw.fiberid)))
    base = rate(reference_way, [(p, prep) for p, prep, _, _ in meta], args.seconds)
    ours = rate(specetl_way, meta, args.seconds)
    print(f"files: {len(files)} bundled real spec-lite files (SDSS + BOSS), one core")
    print(f"reference way (astropy fits.open + HDU1/HDU2 columns): {base:8.1f} spectra/s")
    print(f"specetl Preprocessor.preprocess_file:                 {ours:8.1f} spectra/s")
    print(f"ratio: {ours / base:.1f}x (target >= 25x)")


if __name__ == "__main__":
    main()
