"""Helpers for the DESI tests: a loopback archive in DESI's layout serving real coadds, and
SYNTHETIC coadds assembled from real rows (etl.desi.assemble) with their zall table."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from astropy.io import fits
from astropy.table import Table

from etl.desi.assemble import assemble_coadd
from etl.mirror import ArchiveMirror

DESI = Path(__file__).resolve().parent.parent / "sample" / "desi"
#: the two real galaxies with a real redrock redshift and a coadd: (coadd, redrock)
REAL_GALAXIES = (
    ("coadd-special-dark-27247.fits", "redrock-special-dark-27247.fits"),
    ("coadd-4-80613-thru20210324.fits", "redrock-4-80613-thru20210324.fits"),
)


def serve(mirror: ArchiveMirror, release, key: tuple[str, str, int], path: Path, tmp: Path) -> None:
    """Serve ``path`` as the coadd ``key`` of ``release``, with its directory's sha256sum list."""
    url = release.coadd_url(*key, base_url=mirror.base_url)
    mirror.add_file(urlsplit(url).path.removeprefix(mirror.prefix), path)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    listing = tmp / f"{key[0]}-{key[1]}-{key[2]}.sha256sum"
    listing.write_text(f"{digest}  {url.rsplit('/', 1)[-1]}\n")
    sum_url = release.sha256sum_url(*key, base_url=mirror.base_url)
    mirror.add_file(urlsplit(sum_url).path.removeprefix(mirror.prefix), listing)


def real_zall_rows() -> Table:
    """The real REDSHIFTS + FIBERMAP rows of the two real galaxies, DESI's column names."""
    out = []
    for coadd, redrock in REAL_GALAXIES:
        with fits.open(DESI / redrock) as h:
            z, fm = Table(h["REDSHIFTS"].data), Table(h["FIBERMAP"].data)
        t = Table()
        for col in ("TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE", "DELTACHI2"):
            t[col] = z[col]
        for col in ("OBJTYPE", "COADD_FIBERSTATUS", "TARGET_RA", "TARGET_DEC"):
            t[col] = fm[col]
        t["SOURCE"] = [coadd]
        out.append(t)
    from astropy.table import vstack

    return vstack(out)


def synthetic_sky(release, n_coadds: int, per_coadd: int, tmp: Path, mirror: ArchiveMirror):
    """SYNTHETIC: ``n_coadds`` healpix coadds (main/dark) of ``per_coadd`` rows each, every row a
    copy of one of the two real galaxies (its real spectrum and redshift) under a new TARGETID
    at a new position, spread over pixels chosen so train, valid and test all get rows. Returns
    the zall-format rows (a Table) and serves the coadds on ``mirror``."""
    from astropy_healpix import HEALPix

    from etl.splits import split_of

    hp = HEALPix(nside=64, order="nested")
    real = real_zall_rows()
    rows, seen, pixel, made = [], set(), 1000, 0
    next_id = 10**15
    while made < n_coadds or not {"train", "valid", "test"} <= seen:
        pixel += 37
        lon, lat = hp.healpix_to_lonlat([pixel])
        ra, dec = float(lon.deg[0]), float(lat.deg[0])
        split = split_of(np.array([ra]), np.array([dec]), np.zeros(1, int), release.splits)[0]
        missing = {"train", "valid", "test"} - seen
        if made >= n_coadds - len(missing) and missing and split not in missing:
            continue  # the last pixels go to splits still missing
        seen.add(split)
        src = real[made % len(real)]
        made += 1
        ids = np.arange(next_id, next_id + per_coadd)
        next_id += per_coadd
        offsets = 0.002 * np.arange(per_coadd)  # 7" apart: distinct objects, one cell
        path = assemble_coadd(
            DESI / src["SOURCE"], [0] * per_coadd, tmp / f"coadd-main-dark-{pixel}.fits",
            targetids=ids, ra=ra + offsets, dec=np.full(per_coadd, dec),
            header={"SURVEY": "main", "PROGRAM": "dark", "HPXPIXEL": pixel},
        )  # fmt: skip
        serve(mirror, release, ("main", "dark", pixel), path, tmp)
        for k, tid in enumerate(ids):
            rows.append(
                {
                    **{c: src[c] for c in real.colnames if c != "SOURCE"},
                    "TARGETID": tid,
                    "TARGET_RA": ra + offsets[k],
                    "TARGET_DEC": dec,
                    "SURVEY": "main",
                    "PROGRAM": "dark",
                    "HEALPIX": pixel,
                    "ZCAT_PRIMARY": True,
                }
            )
    return Table(rows=rows)
