"""DESI catalogue selection in bounded memory: peak RSS against the size of a zall-format file.

Input: a SYNTHETIC zall-format table (one binary-table HDU, DESI's column names) made from the
real redrock rows of sample/desi (REDSHIFTS and FIBERMAP columns side by side: 484 bytes a row;
the real zall-pix-iron.fits is ~750), repeated to ``--megabytes``; the copies keep the real
values except TARGETID and the coadd location. The selection (etl.desi.catalog.DesiSelector over
iter_desi_table, what `specetl fetch --catalog PATH` runs) is run in a fresh process and its peak
RSS (getrusage) is reported next to the same process's RSS after imports only.

Usage:  python benchmarks/desi_zall.py [--megabytes 500] [--primary-every 1]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DESI = REPO / "sample" / "desi"

CHILD = """
import resource, sys, time
from etl.release import load_release
from etl.desi.catalog import DesiSelector, iter_desi_table
r = load_release("desi-dr1")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
sel = DesiSelector(r, sys.argv[1])
for chunk in iter_desi_table(sys.argv[1], r):
    sel.add(chunk)
cat, summary = sel.result()
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak, dt, summary["steps"][0]["rows"], summary["steps"][-2]["rows"], summary["selected"])
"""


def block(n_rows: int, primary_every: int = 1):
    """n_rows of the real redrock rows (both healpix and tile files), as one FITS table."""
    from astropy.io import fits
    from astropy.table import Table, vstack

    parts = []
    for name in ("redrock-special-dark-27247.fits", "redrock-test.fits",
                 "redrock-4-80613-thru20210324.fits"):  # fmt: skip
        with fits.open(DESI / name) as h:
            z, fm = Table(h["REDSHIFTS"].data), Table(h["FIBERMAP"].data)
        keep = [c for c in fm.colnames if c not in z.colnames]
        t = z.copy()
        for c in keep:
            t[c] = fm[c]
        parts.append(t)
    common = [c for c in parts[0].colnames if all(c in p.colnames for p in parts)]
    rows = vstack([p[common] for p in parts])
    out = rows[np.arange(n_rows) % len(rows)]
    out["TARGETID"] = np.arange(1, n_rows + 1, dtype=np.int64)
    out["SURVEY"] = np.array(["main"] * n_rows)
    out["PROGRAM"] = np.array(["dark"] * n_rows)
    out["HEALPIX"] = (np.arange(n_rows) % 49152).astype(np.int32)
    out["ZCAT_PRIMARY"] = np.arange(n_rows) % primary_every == 0
    return fits.BinTableHDU(out, name="ZCATALOG")


def write_big(path: Path, megabytes: int, primary_every: int = 1) -> tuple[int, int]:
    """A zall-format file of about ``megabytes``: one block's rows repeated (header by hand)."""
    from astropy.io import fits

    hdu = block(4096, primary_every)
    row_bytes = hdu.header["NAXIS1"]
    reps = max(1, megabytes * 2**20 // (row_bytes * 4096))
    n_rows = reps * 4096
    import io

    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)  # FITS byte order, as astropy writes it
    raw = buf.getvalue()
    with fits.open(io.BytesIO(raw)) as h:
        info = h[1].fileinfo()
        header = h[1].header.copy()
    data = raw[info["datLoc"] : info["datLoc"] + row_bytes * 4096]
    header["NAXIS2"] = n_rows
    with open(path, "wb") as f:
        f.write(fits.PrimaryHDU().header.tostring().encode())
        f.write(header.tostring().encode())
        for _ in range(reps):
            f.write(data)
        pad = -(n_rows * row_bytes) % 2880
        f.write(b"\0" * pad)
    return n_rows, row_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--megabytes", type=int, default=500)
    ap.add_argument(
        "--primary-every", type=int, default=1,
        help="ZCAT_PRIMARY on every Nth row only (fewer rows pass: memory is chunk + selection)",
    )  # fmt: skip
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zall-pix-SYNTHETIC.fits"
        t0 = time.perf_counter()
        n_rows, row_bytes = write_big(path, args.megabytes, args.primary_every)
        size = path.stat().st_size
        print(f"SYNTHETIC zall-format file: {n_rows} rows x {row_bytes} B = {size / 2**20:.0f} MiB "
              f"(written in {time.perf_counter() - t0:.1f} s)")  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True,
            cwd=REPO,
        )  # fmt: skip
        base, peak, dt, rows_in, kept, selected = out.stdout.split()
        base_mb, peak_mb = int(base) / 1024, int(peak) / 1024  # ru_maxrss is KiB on Linux
        print(f"selection: {rows_in} rows in {float(dt):.1f} s ({int(rows_in) / float(dt):,.0f} rows/s), "
              f"{kept} pass every cut, {selected} unique (the copies repeat ids)")  # fmt: skip
        print(f"peak RSS {peak_mb:.0f} MiB (after imports {base_mb:.0f} MiB; +{peak_mb - base_mb:.0f}"
              f" MiB for the read: {(peak_mb - base_mb) * 2**20 / max(1, int(kept)):.0f} B per row that passes"
              f" every cut) against a {size / 2**20:.0f} MiB file")  # fmt: skip


if __name__ == "__main__":
    main()
