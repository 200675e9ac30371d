"""Speed of one SYNTHETIC population galaxy: bagpipes as shipped vs our vectorised resampling.

bagpipes' last step resamples the model onto the observed pixels with ``spectres``, a Python loop
over output pixels; ``etl/synthetic/population.py`` replaces it with :func:`population.rebin` (same
numbers). Both are timed in this run, on the same galaxies, and the largest difference between
their spectra is printed.

Usage: ``python benchmarks/population_speed.py [--n 60]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the package
from etl.synthetic import population  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="galaxies timed per variant")
    args = ap.parse_args()
    params = population.draw_parameters(np.random.default_rng(0), args.n)
    fast = population.Synthesiser(-50, 3950)  # the SDSS run2d-26 pixels of the bundled sample
    shipped = population.Synthesiser(-50, 3950)
    shipped._model_class = shipped._bagpipes.model_galaxy  # bagpipes' own spectres step
    out = {}
    for name, synth in (("bagpipes + spectres", shipped), ("vectorised rebin", fast)):
        synth.spectrum(params, 0)  # build the grids outside the timing
        t0 = time.perf_counter()
        spectra = [synth.spectrum(params, i)[0] for i in range(args.n)]
        out[name] = ((time.perf_counter() - t0) / args.n, np.array(spectra))
    (t_ref, ref), (t_new, new) = out.values()
    err = np.max(np.abs(new - ref)) / np.max(np.abs(ref))
    print(f"bagpipes + spectres: {t_ref * 1e3:.1f} ms/galaxy")
    print(f"vectorised rebin:    {t_new * 1e3:.1f} ms/galaxy")
    print(f"speed-up {t_ref / t_new:.1f}x; largest difference {err:.1e} of the peak flux")


if __name__ == "__main__":
    main()
