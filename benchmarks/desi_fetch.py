"""DESI: bytes fetched per spectrum (range reads vs whole coadds), and preprocessing speed.

1. Bytes: every coadd is served by the loopback archive (etl.mirror) in DESI's layout and
   fetched twice through etl.desi.rangefetch.fetch_coadd: by range reads of FIBERMAP and the
   twelve arm HDUs, and whole (verified by its sha256sum list). Reported per coadd and per target
   spectrum it holds (a coadd is fetched once for all of its targets). Files: the four real
   coadds (1-5 rows; two are tile coadds, served at a healpix path only to count bytes) and
   SYNTHETIC coadds of N rows assembled from the real sv3 coadd's rows (etl.desi.assemble: real
   spectra and every HDU, new ids), as large as archive coadds are.
2. Preprocessing spectra/s on one core: DESI (read the coadd, join arms, resample, mask,
   normalise: etl.desi) vs SDSS spec-lite (etl.spectrum.Preprocessor.preprocess_file on the
   bundled sample), and desispec's reader + coadd_cameras on the same coadd when installed.

Usage:  python benchmarks/desi_fetch.py [--rows 500 2000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import urlsplit

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from etl.desi.assemble import assemble_coadd  # noqa: E402
from etl.desi.coadd import read_coadd  # noqa: E402
from etl.desi.preprocess import DesiPreprocessor  # noqa: E402
from etl.desi.rangefetch import fetch_coadd  # noqa: E402
from etl.download import DownloadConfig, make_session  # noqa: E402
from etl.mirror import ArchiveMirror  # noqa: E402
from etl.release import load_release  # noqa: E402
from etl.spectrum import Preprocessor, SpectrumRejected  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DESI = REPO / "sample" / "desi"
REAL = [
    "coadd-special-dark-27247.fits",
    "coadd-sv3-dark-26065.fits",
    "coadd-4-80613-thru20210324.fits",
    "coadd-5-169-thru20210419.fits",
]


def serve(m: ArchiveMirror, release, key, path: Path, tmp: Path) -> None:
    url = release.coadd_url(*key, base_url=m.base_url)
    m.add_file(urlsplit(url).path.removeprefix(m.prefix), path)
    listing = tmp / f"{key[2]}.sha256sum"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    listing.write_text(f"{digest}  {url.rsplit('/', 1)[-1]}\n")
    m.add_file(
        urlsplit(release.sha256sum_url(*key, base_url=m.base_url)).path.removeprefix(m.prefix),
        listing,
    )


def bytes_table(release, files: list[tuple[str, Path, int]], tmp: Path) -> list[dict]:
    cfg = DownloadConfig(attempts=2, backoff=0.01)
    out = []
    with ArchiveMirror(None, release, prefix="/public") as m:
        for i, (_label, path, _) in enumerate(files):
            serve(m, release, ("main", "dark", 100 + i), path, tmp)
        session = make_session(1)
        for i, (label, path, ntarget) in enumerate(files):
            key = ("main", "dark", 100 + i)
            url = release.coadd_url(*key, base_url=m.base_url)
            sums = release.sha256sum_url(*key, base_url=m.base_url)
            r = fetch_coadd(session, url, sums, release.coadd.hdus, tmp / f"r{i}.fits", cfg)
            w = fetch_coadd(session, url, sums, release.coadd.hdus, tmp / f"w{i}.fits", cfg, True)
            assert r.status == "ranges" and w.status == "whole", (r, w)
            out.append(
                {
                    "file": label,
                    "targets": ntarget,
                    "file_bytes": path.stat().st_size,
                    "range_bytes": r.bytes,
                    "range_requests": r.requests,
                    "whole_bytes": w.bytes,
                    "fraction": r.bytes / w.bytes,
                }
            )
    return out


def desi_rate(release, path: Path, seconds: float) -> tuple[float, int]:
    pre = DesiPreprocessor(release)
    z = 0.1  # one redshift for every row: the speed does not depend on it
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        coadd = read_coadd(path, release.coadd.arms)
        rows = np.arange(len(coadd.targetid))
        flux, ivar = pre.to_grid(coadd.arm_rows(rows))
        for j in rows:
            try:
                pre.finish(flux[j], ivar[j], z, str(j))
            except SpectrumRejected:
                pass
        done += len(rows)
    return done / (time.perf_counter() - start), done


def desispec_rate(path: Path, seconds: float) -> float | None:
    try:
        from desispec.coaddition import coadd_cameras
        from desispec.io import read_spectra
    except ImportError:
        return None
    import logging

    logging.getLogger("desiutil").setLevel(logging.ERROR)
    os.environ.setdefault("DESI_LOGLEVEL", "ERROR")
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        spectra = read_spectra(str(path))
        coadd_cameras(spectra)
        done += spectra.num_spectra()
    return done / (time.perf_counter() - start)


def sdss_rate(seconds: float) -> float:
    dr16 = load_release("dr16")
    prep = Preprocessor(dr16)
    items = []
    with open(REPO / "sample" / "catalog.csv", newline="") as f:
        for r in csv.DictReader(f):
            try:
                rel = dr16.spec_lite_relpath(
                    r["RUN2D"], int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])
                )
            except (KeyError, ValueError):
                continue
            path = REPO / "sample" / "sdss" / rel
            if path.is_file():
                items.append((path, float(r["Z"])))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        for path, z in items:
            try:
                prep.preprocess_file(path, z)
            except SpectrumRejected:
                pass
            done += 1
    return done / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    release = load_release("desi-dr1")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = []
        for name in REAL:
            coadd = read_coadd(DESI / name, release.coadd.arms)
            files.append((f"{name} (real)", DESI / name, len(coadd.targetid)))
        synthetic = {}
        for n in args.rows:
            path = assemble_coadd(
                DESI / "coadd-sv3-dark-26065.fits",
                np.arange(n) % 5,
                tmp / f"coadd-SYNTHETIC-{n}.fits",
                targetids=np.arange(1, n + 1),
            )
            synthetic[n] = path
            files.append((f"SYNTHETIC {n}-row coadd from real sv3 rows", path, n))
        print("1. bytes fetched per coadd: range reads (FIBERMAP + 12 arm HDUs) vs whole file")
        print(f"{'file':<48} {'rows':>7} {'range B':>11} {'req':>4} {'whole B':>11} "
              f"{'range/whole':>11} {'range B/row':>12}")  # fmt: skip
        for r in bytes_table(release, files, tmp):
            print(
                f"{r['file']:<48} {r['targets']:>7} {r['range_bytes']:>11} "
                f"{r['range_requests']:>4} {r['whole_bytes']:>11} {r['fraction']:>11.1%} "
                f"{r['range_bytes'] / r['targets']:>12.0f}"
            )
        print(f"\n2. preprocessing spectra/s, one core ({args.seconds:g} s each)")
        last = len(files) - 1  # the largest SYNTHETIC coadd: as fetched by range, and whole
        stored, whole = tmp / f"r{last}.fits", tmp / f"w{last}.fits"
        rate, n = desi_rate(release, stored, args.seconds)
        print(f"DESI  etl.desi (read stored coadd, join arms, resample, mask, normalise): "
              f"{rate:8.0f}/s ({files[last][0]})")  # fmt: skip
        ds = desispec_rate(whole, args.seconds)
        if ds is None:
            print(
                "DESI  desispec read_spectra + coadd_cameras: not installed (pip install desispec)"
            )
        else:
            print(
                f"DESI  desispec read_spectra + coadd_cameras (whole file; arm join only): {ds:8.0f}/s"
            )
        print(f"SDSS  etl.spectrum spec-lite, read + grid + mask + normalise (bundled sample): {sdss_rate(args.seconds):8.0f}/s")  # fmt: skip


if __name__ == "__main__":
    main()
