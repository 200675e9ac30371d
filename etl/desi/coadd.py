"""Reading a DESI coadd's FIBERMAP and camera arms (the I/O edge of the DESI preprocessing).

A coadd here is either the archive's whole file or what the range fetch stores: the primary
HDU, FIBERMAP and the ``{B,R,Z}_{WAVELENGTH,FLUX,IVAR,MASK}`` HDUs, each byte for byte as in the
archive's file, concatenated in their original order (a valid FITS file that astropy, fitsio or
desispec opens). HDUs are found by EXTNAME, so both read the same way.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etl.catalog import DESI_ALIASES
from etl.fitsread import FitsError, FitsFile, _int, _str, _value

_BITPIX = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class CoaddError(ValueError):
    """A coadd lacks an HDU or a column, or an HDU is not what it should be."""


@dataclass(frozen=True)
class CoaddArms:
    """One coadd: its targets (FIBERMAP order) and, per arm, (wave, flux, ivar, mask)."""

    targetid: np.ndarray  #: int64, one per spectrum row
    arms: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]

    def rows_of(self, targetids: np.ndarray) -> np.ndarray:
        """Row of each requested TARGETID (-1 where the coadd does not hold it)."""
        index = {int(t): i for i, t in enumerate(self.targetid)}
        return np.array([index.get(int(t), -1) for t in targetids], dtype=np.int64)

    def arm_rows(self, rows: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """The arms restricted to ``rows`` (wave unchanged), in arm order."""
        return [(w, f[rows], iv[rows], m[rows]) for w, f, iv, m in self.arms.values()]


def hdu_index(fits: FitsFile) -> dict[str, int]:
    """EXTNAME (upper case) -> HDU number, for every HDU of a file."""
    out: dict[str, int] = {}
    i = 0
    while True:
        try:
            header = fits.header(i)
        except FitsError:
            return out
        name = _str(header, "EXTNAME").strip().upper() if i else "PRIMARY"
        out.setdefault(name, i)
        i += 1


def image_shape(fits: FitsFile, hdu: int) -> tuple[int, ...]:
    """The shape of an image HDU (slowest axis first), from its header alone."""
    header = fits._hdu(hdu)[0]
    if _str(header, "XTENSION") not in ("IMAGE", "") and hdu:
        raise CoaddError(f"HDU{hdu} is not an image")
    naxis = _int(header, "NAXIS")
    return tuple(_int(header, f"NAXIS{a}") for a in range(naxis, 0, -1))


def read_image(fits: FitsFile, hdu: int, rows: np.ndarray | None = None) -> np.ndarray:
    """An image HDU as a native-endian array (BSCALE/BZERO applied exactly for integers);
    ``rows``: only these rows of an image of one row per spectrum, as a 2-D array (the others
    are never touched, so a mapped file's pages for them are not read)."""
    header, pos, size, _ = fits._hdu(hdu)
    shape = image_shape(fits, hdu)
    dtype = np.dtype(_BITPIX[_int(header, "BITPIX")])
    if pos + size > len(fits._buf):
        raise CoaddError(f"HDU{hdu} is truncated")
    data = np.frombuffer(fits._buf, dtype=dtype, count=size // dtype.itemsize, offset=pos)
    data = data.reshape(shape)
    if rows is not None:
        data = np.atleast_2d(data)[rows]  # a copy of those rows only
    data = data.astype(dtype.newbyteorder("="))
    zero = float(_value(header.get("BZERO", "0")))
    scale = float(_value(header.get("BSCALE", "1")))
    if dtype.kind in "iu" and scale == 1.0 and zero:
        # unsigned stored as signed + BZERO 2**(bits-1): exact in the next wider integer
        return data.astype(np.int64) + int(zero)
    if zero or scale != 1.0:
        return data * scale + zero
    return data


def read_coadd(
    path: str | Path,
    arms: tuple[str, ...],
    table_hdu: str = "FIBERMAP",
    targetids: np.ndarray | None = None,
) -> CoaddArms:
    """Read TARGETID (FIBERMAP) and each arm's wave, flux, ivar, mask from a coadd file;
    ``targetids``: only the rows of these targets (those the coadd holds, in its own order), so
    a shard that needs a few targets of a coadd reads a few rows, not the whole file."""
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            # mapped, not read: an archive's whole coadd is mostly *_RESOLUTION, never touched
            fits = FitsFile(mm)  # type: ignore[arg-type]
            try:
                return _read(fits, arms, table_hdu, targetids)  # every array returned is a copy
            finally:
                fits._buf.release()  # the map can close only once no view of it is left
    except (FitsError, OSError, ValueError) as err:  # CoaddError included
        raise CoaddError(f"{Path(path).name}: {err}") from None


def _read(
    fits: FitsFile, arms: tuple[str, ...], table_hdu: str, targetids: np.ndarray | None
) -> CoaddArms:
    index = hdu_index(fits)
    if table_hdu not in index:
        raise CoaddError(f"no {table_hdu} HDU")
    (tid_name,) = DESI_ALIASES["TARGETID"]
    tid = fits.table(index[table_hdu], [tid_name])[tid_name].astype(np.int64)
    rows = None if targetids is None else np.flatnonzero(np.isin(tid, targetids))
    out = {}
    for arm in arms:
        names = [f"{arm}_{kind}" for kind in ("WAVELENGTH", "FLUX", "IVAR", "MASK")]
        for name in names:
            if name not in index:
                raise CoaddError(f"no {name} HDU")
        # checked on the headers, before any row is read: a subset must not hide a bad file
        shapes = [image_shape(fits, index[name]) for name in names]
        per_row = [(1,) * (2 - len(s)) + s for s in shapes[1:]]  # a 1-row coadd may be 1-D
        if len(shapes[0]) != 1 or len(set(per_row)) != 1 or per_row[0][1:] != shapes[0]:
            raise CoaddError(f"arm {arm}: HDU shapes disagree")
        if per_row[0][0] != len(tid):
            raise CoaddError(f"arm {arm}: {per_row[0][0]} rows, FIBERMAP {len(tid)}")
        wave = read_image(fits, index[names[0]])
        flux, ivar, mask = (
            np.atleast_2d(read_image(fits, index[name], rows)) for name in names[1:]
        )
        out[arm] = (wave.astype(np.float64), flux, ivar, mask)
    return CoaddArms((tid if rows is None else tid[rows]).copy(), out)
