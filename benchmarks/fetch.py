"""Benchmark `specetl fetch` (defaults) against serial one-file-at-a-time download.

A loopback archive (etl.mirror) adds ``--latency`` seconds to every request, standing in for the
round trip to data.sdss.org. The corpus is ``--files`` spec-lite files made from the bundled
run2d-26 sample by rewriting HDU2 PLATE/MJD/FIBERID in copies (so that verification passes).

1. serial: a plain ``requests.get`` loop writing each file (what the reference implementation
   and astroquery's ``get_spectra`` do: a new connection per file, one file at a time);
2. ``specetl fetch`` with its defaults, as a subprocess (Dask LocalCluster start included);
3. the same with ``--faults`` of the files failing once (503 + Retry-After, reset mid-body,
   short body, HTML page with 200, wrong object) and a few 404s: every recoverable file must
   arrive, byte-identical; the 404s must be reported.

Run from the repository root: ``.venv/bin/python benchmarks/fetch.py``
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from astropy.io import fits

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from etl.mirror import ArchiveMirror, Fault, FaultPlan  # noqa: E402
from etl.release import load_release, spec_lite_relpath  # noqa: E402


def make_corpus(root: Path, n: int) -> list[dict]:
    """``n`` spec-lite files under ``root/26/<plate>/``; return their catalogue rows."""
    sources = sorted((REPO / "sample/sdss/26").glob("*/spec-*.fits"))
    rows = []
    for i in range(n):
        src = sources[i % len(sources)]
        plate, mjd, fiberid = 7000 + i // 500, 55000 + i // 500, i % 500 + 1
        dest = root / spec_lite_relpath("26", plate, mjd, fiberid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fits.open(src) as hdul:
            hdul[2].data["PLATE"][0], hdul[2].data["MJD"][0] = plate, mjd
            hdul[2].data["FIBERID"][0] = fiberid
            z = float(hdul[2].data["Z"][0])
            ra, dec = float(hdul[2].data["PLUG_RA"][0]), float(hdul[2].data["PLUG_DEC"][0])
            hdul.writeto(dest)
        rows.append(
            dict(SPECOBJID=10**17 + i, PLATE=plate, MJD=mjd, FIBERID=fiberid, RA=ra, DEC=dec,
                 RUN2D="26", CLASS="GALAXY", Z=min(max(z, 0.01), 0.5), Z_ERR=1e-5, ZWARNING=0,
                 SCIENCEPRIMARY=1)
        )  # fmt: skip
    return rows


def serial(urls: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    for i, url in enumerate(urls):
        r = requests.get(url, timeout=60)
        r.raise_for_status()
        (out / f"{i}.fits").write_bytes(r.content)
    return time.perf_counter() - t0


def run_fetch(data: Path, catalog: Path, base_url: str) -> tuple[float, dict, int]:
    cmd = [sys.executable, "-c", "from cli import main; main()", "fetch", "--data-dir", str(data),
           "--catalog", str(catalog), "--base-url", base_url]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    return wall, json.loads((data / "dr16/fetch-report.json").read_text()), done.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added per request")
    ap.add_argument("--faults", type=float, default=0.05, help="fraction of files faulted once")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    release = load_release("dr16")
    with tempfile.TemporaryDirectory(prefix="specetl-bench-") as tmp:
        tmp = Path(tmp)
        rows = make_corpus(tmp / "archive", args.files)
        catalog = tmp / "catalog.csv"
        with open(catalog, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        ids = [("26", r["PLATE"], r["MJD"], r["FIBERID"]) for r in rows]
        with ArchiveMirror(tmp / "archive", release, latency=args.latency) as mirror:
            urls = [release.spec_lite_url(*i, base_url=mirror.base_url) for i in ids]
            (tmp / "serial").mkdir()
            t_serial = serial(urls, tmp / "serial")
            t_fetch, rep, rc = run_fetch(tmp / "D1", catalog, mirror.base_url)
            assert rc == 0 and rep["downloaded"] == args.files, rep
            n = args.files
            print(f"files: {n}, latency {args.latency * 1000:.0f} ms/request")
            print(f"serial requests.get loop: {t_serial:.2f} s  ({n / t_serial:.1f} files/s)")
            print(f"specetl fetch (defaults): {t_fetch:.2f} s end to end incl. cluster start "
                  f"({n / t_fetch:.1f} files/s); download phase {rep['download_seconds']:.2f} s "
                  f"({rep['files_per_second']:.1f} files/s)")  # fmt: skip
            print(f"ratio end to end: {t_serial / t_fetch:.1f}x; "
                  f"download phase: {t_serial / rep['download_seconds']:.1f}x")  # fmt: skip

            # faults: each faulted file fails once with one of the recoverable faults
            rng = random.Random(args.seed)
            names = [spec_lite_relpath(*i).name for i in ids]
            faulted = rng.sample(names, max(1, round(args.faults * n)))
            other = mirror.url_path(*ids[0])
            kinds = [
                Fault("status", 503, {"Retry-After": "1"}, b"busy"),
                Fault("reset", at_bytes=20000),
                Fault("short", at_bytes=8640),
                Fault("status", 200, {"Content-Type": "text/html"}, b"<html>error</html>"),
                Fault("substitute", other=other),
            ]
            plan = {name: [kinds[k % len(kinds)]] for k, name in enumerate(faulted)}
            missing = [nm for nm in names if nm not in plan and nm != names[0]][:2]
            for nm in missing:
                plan[nm] = [Fault("status", 404, {}, b"gone")] * 50
            mirror.faults = FaultPlan(plan)
            t_faults, rep2, rc2 = run_fetch(tmp / "D2", catalog, mirror.base_url)
            spectra = tmp / "D2/dr16/spectra"
            corrupt = sum(
                (spectra / spec_lite_relpath(*i)).read_bytes()
                != (tmp / "archive" / spec_lite_relpath(*i)).read_bytes()
                for i in ids
                if (spectra / spec_lite_relpath(*i)).exists()
            )
            partial = [p for p in spectra.rglob("*.part")]
            recoverable = n - len(missing)
            print(f"faults: {len(faulted)} files faulted once ({len(faulted) / n:.0%}), "
                  f"{len(missing)} missing upstream (404)")  # fmt: skip
            print(f"  recovered {rep2['downloaded']}/{recoverable} recoverable "
                  f"({rep2['downloaded'] / recoverable:.0%}), reported failed {rep2['failed']} "
                  f"{list(rep2['failed_by_reason'])}, corrupt {corrupt}, partial {len(partial)}, "
                  f"exit code {rc2}, {t_faults:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
