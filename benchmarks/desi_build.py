"""DESI `build-shards`: one process against Dask worker processes, on the same coadds.

SYNTHETIC coadds: each holds ROWS copies of the real galaxy of the bundled coadd
``sample/desi/coadd-special-dark-27247.fits`` (its real spectrum and every HDU, through
etl.desi.assemble), under new TARGETIDs, at positions spread over the sky so that every split gets
targets. The catalogue is the real redrock row of that galaxy (read by the product's own reader,
etl.desi.catalog.iter_desi_table), repeated with those ids and positions and selected by the
release's cuts (DesiSelector). Each build is a full rebuild of the same inputs; the script checks
that both give the same shard bytes, then prints spectra/s and the ratio measured in this run.
Every shard is one task that reads its coadds' rows, preprocesses and writes (etl.desi.build), so
the workers do the whole build; the script also prints the time to read and preprocess every
coadd once in this process, without writing, against the one-process build.

``--sky pixel`` puts each coadd's targets inside its own healpix pixel, as DESI's are (the
default, ``spread``, puts them all over the sky so that every coadd feeds every split).
``--grow G``: the catalogue first lacks the targets of G coadds spread through the healpix
order, is built, then gains them: the rerun writes only the shards whose key range they join
(the previous index's boundaries are kept). It prints the shards and seconds of that rerun
against a full rebuild of the grown catalogue on the same workers, measured in this run.

Usage:  python benchmarks/desi_build.py [--coadds 24] [--rows 200] [--workers 2]
            [--shard-size N] [--grow G] [--sky spread|pixel]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from etl.build import build_shards  # noqa: E402
from etl.catalog import commit_selection  # noqa: E402
from etl.desi.assemble import assemble_coadd  # noqa: E402
from etl.desi.catalog import DesiSelector, iter_desi_table  # noqa: E402
from etl.release import load_release  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COADD = REPO / "sample" / "desi" / "coadd-special-dark-27247.fits"
REDROCK = REPO / "sample" / "desi" / "redrock-special-dark-27247.fits"


def make_release_data(data: Path, n_coadds: int, rows: int, sky: str = "spread") -> int:
    """Write DATA/desi-dr1/{catalog.fits, coadds/} as `specetl fetch` would; returns targets.

    ``sky``: "spread" puts every coadd's targets all over the sky (each coadd feeds every
    split); "pixel" puts them inside the coadd's own nside-64 healpix pixel, as DESI's are."""
    from astropy_healpix import HEALPix

    release = load_release("desi-dr1")
    root = data / release.name
    (real,) = list(iter_desi_table(REDROCK, release))
    chunk: dict[str, list] = {k: [] for k in real}
    rng = np.random.default_rng(0)
    hp = HEALPix(nside=64, order="nested")
    for k in range(n_coadds):
        pixel = 1000 + 37 * k
        ids = 10**15 + k * rows + np.arange(rows)
        if sky == "pixel":  # within ~0.1 deg of the pixel's centre (pixels are ~0.9 deg wide)
            lon, lat = hp.healpix_to_lonlat([pixel])
            ra = float(lon.deg[0]) + rng.uniform(-0.1, 0.1, rows)
            dec = float(lat.deg[0]) + rng.uniform(-0.1, 0.1, rows)
        else:
            ra = rng.uniform(0, 360, rows)
            dec = np.degrees(np.arcsin(rng.uniform(-0.3, 0.9, rows)))
        key = ("main", "dark", pixel)
        assemble_coadd(COADD, [0] * rows, root / "coadds" / release.coadd_relpath(*key),
                       targetids=ids, ra=ra, dec=dec,
                       header={"SURVEY": "main", "PROGRAM": "dark", "HPXPIXEL": pixel})  # fmt: skip
        for name, column in real.items():
            chunk[name].append(np.repeat(column, rows))
        chunk["TARGETID"][-1], chunk["TARGET_RA"][-1], chunk["TARGET_DEC"][-1] = ids, ra, dec
        chunk["SURVEY"][-1] = np.full(rows, "main")
        chunk["HPXPIXEL"][-1] = np.full(rows, pixel)
    selector = DesiSelector(release, "SYNTHETIC")
    selector.add({k: np.concatenate(v) for k, v in chunk.items()})
    catalog, summary = selector.result()
    commit_selection(catalog, summary, root, None, "TARGETID")
    return len(catalog["TARGETID"])


def preprocess_only(release, data: Path) -> float:
    """Seconds to read and preprocess every coadd in this process, without writing shards."""
    from etl.desi.build import CoaddJob, preprocess_coadd, read_desi_catalog
    from etl.desi.fetch import coadd_groups
    from etl.desi.preprocess import DesiPreprocessor

    root = data / release.name
    catalog = read_desi_catalog(root / "catalog.fits")
    pre = DesiPreprocessor(release)
    t0 = time.perf_counter()
    for key, rows in coadd_groups(catalog).items():
        path = str(root / "coadds" / release.coadd_relpath(*key))
        z = np.asarray(catalog["Z"][rows], dtype=np.float64)
        job = CoaddJob(path, "", rows, catalog["TARGETID"][rows], z, key)
        preprocess_coadd(pre, release.coadd, job)
    return time.perf_counter() - t0


def grow(release, data: Path, n_grow: int, shard_size: int | None, workers: int) -> None:
    """Build without ``n_grow`` coadds' targets, then with them; print what the rerun wrote."""
    from astropy.table import Table

    path = data / release.name / "catalog.fits"
    full = Table.read(path)
    pixels = sorted(set(full["HEALPIX"].tolist()))
    late = [pixels[(2 * k + 1) * len(pixels) // (2 * n_grow)] for k in range(n_grow)]
    later = np.isin(full["HEALPIX"], late)
    full[~later].write(path, overwrite=True)
    before = build_shards(release, data, shard_size, rebuild=True, workers=workers)
    full.write(path, overwrite=True)
    t0 = time.perf_counter()
    grown = build_shards(release, data, shard_size, workers=workers)
    t_grow = time.perf_counter() - t0
    t0 = time.perf_counter()
    rebuilt = build_shards(release, data, shard_size, rebuild=True, workers=workers)
    t_full = time.perf_counter() - t0
    print(f"  grow: {before.accepted} targets in {len(before.shards)} shards, then "
          f"+{int(later.sum())} targets of {n_grow} coadds spread through the healpix order")  # fmt: skip
    print(f"    rerun after growth: {grown.written} shards written, {grown.kept} kept, "
          f"{t_grow:.2f} s; full rebuild: {len(rebuilt.shards)} shards, {t_full:.2f} s")  # fmt: skip
    print(f"    ratio (full rebuild / rerun after growth): {t_full / t_grow:.2f}x")
    assert grown.accepted == rebuilt.accepted == len(full)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coadds", type=int, default=24)
    ap.add_argument("--rows", type=int, default=200, help="targets per coadd")
    ap.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    ap.add_argument("--shard-size", type=int, default=None, help="rows per shard (manifest's)")
    ap.add_argument("--grow", type=int, default=0, help="coadds the catalogue gains (0: skip)")
    ap.add_argument("--sky", choices=("spread", "pixel"), default="spread",
                    help="targets all over the sky, or inside their coadd's healpix pixel")  # fmt: skip
    args = ap.parse_args()
    release = load_release("desi-dr1")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        n = make_release_data(data, args.coadds, args.rows, args.sky)
        print(f"SYNTHETIC: {args.coadds} coadds x {args.rows} copies of a real galaxy = {n} "
              f"targets (sky: {args.sky})")  # fmt: skip
        times, digests = {}, {}
        for workers in (1, args.workers):
            t0 = time.perf_counter()
            result = build_shards(
                release, data, args.shard_size, rebuild=True, workers=workers, progress=False
            )
            times[workers] = time.perf_counter() - t0
            digests[workers] = [e["sha256"] for e in result.shards]
            label = "one process" if workers == 1 else f"Dask, {workers} worker processes"
            print(f"  {label:<28} {times[workers]:7.2f} s  {result.accepted / times[workers]:7.0f}"
                  f" spectra/s  ({result.accepted} accepted, {len(result.shards)} shards)")  # fmt: skip
        # reading and preprocessing alone, each coadd once: the rest of a one-process build is
        # writing the shards (and a coadd's second read where its rows straddle shards)
        pre_seconds = preprocess_only(release, data)
        print(f"  read + preprocess, no writes {pre_seconds:7.2f} s  "
              f"({pre_seconds / times[1]:.0%} of the one-process build)")  # fmt: skip
        same = digests[1] == digests[args.workers]
        print(f"  same shard bytes: {same}")
        print(f"  ratio (Dask / one process): {times[1] / times[args.workers]:.2f}x")
        if args.grow:
            grow(release, data, args.grow, args.shard_size, args.workers)


if __name__ == "__main__":
    main()
