"""SYNTHETIC DESI coadds assembled from real rows: larger files for benchmarks and path tests.

The bundled real coadds hold 1–5 targets; an archive coadd holds hundreds to thousands. This
writes a coadd with the HDU layout of a real one (every HDU, *_RESOLUTION and EXP_FIBERMAP
included, so byte counts are realistic) whose rows are copies of a real file's rows, given new
TARGETIDs and positions where asked. The primary header says ``SYNTHETIC = T`` and names its
source; every HDU carries fresh DATASUM/CHECKSUM. The spectra are real; the ids, positions and
pixel are not. Nothing here is used by fetch or build.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from etl.catalog import DESI_ALIASES, DESI_POSITION_PAIRS


def assemble_coadd(
    source: str | Path,
    rows: Sequence[int],
    out: str | Path,
    targetids: Sequence[int] | None = None,
    ra: Sequence[float] | None = None,
    dec: Sequence[float] | None = None,
    header: dict | None = None,
) -> Path:
    """Write a coadd whose row k is row ``rows[k]`` of ``source`` (every per-row HDU).

    ``targetids``/``ra``/``dec`` replace the FIBERMAP's ids and target positions (EXP_FIBERMAP's
    ids follow); ``header`` adds primary-header cards (e.g. SURVEY, PROGRAM, HPXPIXEL).
    """
    from astropy.io import fits
    from astropy.table import Table

    rows = np.asarray(rows, dtype=np.int64)
    (tid,) = DESI_ALIASES["TARGETID"]
    ((ra_name, dec_name),) = DESI_POSITION_PAIRS
    with fits.open(source) as h:
        fibermap = Table(h["FIBERMAP"].data)
        old_ids = np.asarray(fibermap[tid])
        new_ids = np.asarray(targetids if targetids is not None else old_ids[rows], dtype=np.int64)
        hdus: list = []
        for i, hdu in enumerate(h):
            if i == 0:
                primary = fits.PrimaryHDU(header=hdu.header.copy())
                primary.header["SYNTHETIC"] = (True, "rows copied from a real coadd, new ids")
                primary.header["SRCFILE"] = Path(source).name
                for k, v in (header or {}).items():
                    primary.header[k] = v
                hdus.append(primary)
            elif hdu.name == "FIBERMAP" or hdu.name == "SCORES":
                t = Table(hdu.data)[rows]
                if tid in t.colnames:
                    t[tid] = new_ids
                if hdu.name == "FIBERMAP":
                    if ra is not None:
                        t[ra_name] = np.asarray(ra, dtype=np.float64)
                    if dec is not None:
                        t[dec_name] = np.asarray(dec, dtype=np.float64)
                hdus.append(fits.BinTableHDU(t.as_array(), header=hdu.header, name=hdu.name))
            elif hdu.name == "EXP_FIBERMAP":
                t = Table(hdu.data)
                ids = np.asarray(t[tid])
                parts = []
                for k, r in enumerate(rows):
                    sel = t[ids == old_ids[r]]
                    sel[tid] = new_ids[k]
                    parts.append(sel)
                from astropy.table import vstack

                t = vstack(parts) if parts else t[:0]
                hdus.append(fits.BinTableHDU(t.as_array(), header=hdu.header, name=hdu.name))
            elif hdu.data is not None and hdu.data.ndim >= 2:  # per-row images
                hdus.append(fits.ImageHDU(hdu.data[rows], header=hdu.header, name=hdu.name))
            else:  # WAVELENGTH: shared by every row
                hdus.append(fits.ImageHDU(hdu.data, header=hdu.header, name=hdu.name))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(out, overwrite=True, checksum=True)
    return out
