"""Catalogue reading: rows/s and peak memory of etl.tables.iter_fits_columns, plain and gzip.

Input: the sample's real SDSS-I/II HDU 2 rows stacked in the specObj format (tests/real_tables.py)
and repeated to ``--rows`` rows; copies beyond the first are SYNTHETIC (id and class changed).
Baseline, measured in the same run: astropy ``fits.open(memmap=True)`` reading the same columns
of the plain file in one go (what a user would write). Run:

    PYTHONPATH=.:tests python benchmarks/catalog_read.py --rows 500000
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from astropy.io import fits  # noqa: E402
from real_tables import repeat_rows, specobj_table  # noqa: E402

from etl.catalog import Selector, source_names  # noqa: E402
from etl.release import load_release  # noqa: E402
from etl.tables import iter_fits_columns  # noqa: E402


def ours(path: Path, cuts) -> tuple[float, int, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    sel = Selector(cuts, str(path))
    for chunk in iter_fits_columns(path):
        sel.add(chunk)
    _, summary = sel.result()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dt, peak, summary["selected"]


def astropy_way(path: Path) -> tuple[float, int]:
    tracemalloc.start()
    t0 = time.perf_counter()
    with fits.open(path, memmap=True) as hdul:
        names = {n.upper(): n for n in hdul[1].columns.names}
        cols = {n: hdul[1].data[names[n]].copy() for n in source_names() if n in names}
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del cols
    return dt, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    args = ap.parse_args()
    cuts = load_release("dr16").selection
    table = specobj_table()
    with tempfile.TemporaryDirectory() as tmp:
        plain = repeat_rows(table, -(-args.rows // len(table.rows))).write(Path(tmp) / "s.fits")
        gz = Path(tmp) / "s.fits.gz"
        with open(plain, "rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
        n = fits.getheader(plain, 1)["NAXIS2"]
        mb = plain.stat().st_size / 1e6
        print(f"specObj format, {n} rows ({mb:.0f} MB; {gz.stat().st_size / 1e6:.0f} MB gzip)")
        t_base, m_base = astropy_way(plain)
        print(f"astropy memmap, 14 columns at once: {t_base:6.2f} s  {n / t_base:9.0f} rows/s  "
              f"peak {m_base / 1e6:6.1f} MB")  # fmt: skip
        for label, path in (("fits", plain), ("fits.gz", gz)):
            dt, peak, selected = ours(path, cuts)
            print(f"specetl select, {label:7s}:          {dt:6.2f} s  {n / dt:9.0f} rows/s  "
                  f"peak {peak / 1e6:6.1f} MB  ({selected} selected; time ratio vs astropy "
                  f"{dt / t_base:.2f}x, memory ratio {m_base / peak:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
