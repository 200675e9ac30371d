"""Catalogue tables made of real rows: HDU 2 of the bundled spec-lite files, stacked as they are.

Each spec-lite file's HDU 2 is one row of the release's summary table in that table's own format
(SPECOBJ: the specObj bulk file's 126 columns, ``SPECOBJID`` a padded ``22A`` string and
``SPECPRIMARY`` a ``B``; SPALL: the spAll file's columns, ``SPECOBJID`` a ``K`` with TZERO 2**63).
Stacking the rows' raw bytes under the first file's HDU 2 header (NAXIS2 updated) gives a
specObj- or spAll-format table whose every byte is real. Nothing here types a column name or a
value except where a function says so.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from astropy.io import fits

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SDSS = REPO / "sample" / "sdss"
SAMPLE_SDSSV = REPO / "sample" / "sdss-v"
#: SDSS-I/II reductions in the sample (HDU 2 = SPECOBJ, the specObj bulk file's format)
SPECOBJ_RUN2DS = ("26", "103", "104")
#: BOSS reductions of the sample that share the DR14–DR17 spAll layout (236 columns)
SPALL_RUN2DS = ("v5_10_0", "v5_13_2")


class RealTable:
    """A FITS binary-table header and its rows as raw (big-endian, unscaled) records."""

    def __init__(self, header: fits.Header, rows: np.ndarray):
        self.header, self.rows = header, rows

    def write(self, path: Path) -> Path:
        """Write primary HDU + this table, byte for byte, to ``path``."""
        header = self.header.copy()
        header["NAXIS2"] = len(self.rows)
        data = self.rows.tobytes()
        data += b"\0" * (-len(data) % 2880)
        with open(path, "wb") as f:
            f.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
            f.write(header.tostring().encode("ascii"))
            f.write(data)
        return path

    def column_index(self, name: str) -> int:
        n = self.header["TFIELDS"]
        return next(i for i in range(1, n + 1) if self.header[f"TTYPE{i}"] == name)


def stack_hdu2(files: list[Path], hdu_index: int = 2) -> RealTable:
    """The HDU 2 rows of ``files`` (which must share one HDU 2 layout) as one table (a copy:
    callers may change it; the stack itself is made once per test session)."""
    header, rows = _stack(tuple(files), hdu_index)
    return RealTable(header.copy(), rows.copy())


@functools.lru_cache(maxsize=8)
def _stack(files: tuple[Path, ...], hdu_index: int) -> tuple[fits.Header, np.ndarray]:
    rows, header = [], None
    for path in files:
        with fits.open(path) as hdul:
            hdu = hdul[hdu_index]
            dtype = _big_endian(hdu.data.dtype)  # the raw (unscaled) record layout of the file
            offset = hdu.fileinfo()["datLoc"]
            cards = [(k, v) for k, v in hdu.header.items() if k.startswith(("TTYPE", "TFORM"))]
            if header is None:
                header, first_cards = hdu.header.copy(), cards
            elif cards != first_cards:
                raise ValueError(f"{path}: HDU 2 layout differs from {files[0]}")
        raw = np.fromfile(path, dtype=dtype, count=int(hdu.header["NAXIS2"]), offset=offset)
        rows.append(raw.tobytes())
    # (np.concatenate would turn the big-endian fields native: join the bytes instead)
    return header, np.frombuffer(b"".join(rows), dtype=dtype).copy()


def _big_endian(dtype: np.dtype) -> np.dtype:
    """``dtype`` with every field big-endian (astropy swaps fields to native once read)."""
    fields = {}
    for name, (ft, offset, *_) in dtype.fields.items():
        base = ft.subdtype[0] if ft.subdtype else ft
        base = base.newbyteorder(">") if base.byteorder not in "|" else base
        fields[name] = ((base, ft.subdtype[1]) if ft.subdtype else base, offset)
    return np.dtype(
        {
            "names": list(fields),
            "formats": [f for f, _ in fields.values()],
            "offsets": [o for _, o in fields.values()],
            "itemsize": dtype.itemsize,
        }
    )


def _files(root: Path, run2ds: tuple[str, ...]) -> list[Path]:
    return sorted(p for r in run2ds for p in (root / r).rglob("spec-*.fits"))


def specobj_table() -> RealTable:
    """specObj format: the HDU 2 (SPECOBJ) rows of every SDSS-I/II file of the sample."""
    return stack_hdu2(_files(SAMPLE_SDSS, SPECOBJ_RUN2DS))


def spall_table(signed_ids: bool = False) -> RealTable:
    """spAll format: the HDU 2 (SPALL) rows of the sample's BOSS files of the DR14–DR17 layout.

    ``signed_ids``: store SPECOBJID as the bulk spAll file does, a plain signed ``K`` without
    TZERO: the same 64 bits, so ids above 2**63 read as negative numbers.
    """
    table = stack_hdu2(_files(SAMPLE_SDSS, SPALL_RUN2DS))
    if signed_ids:
        i = table.column_index("SPECOBJID")
        # stored = id - 2**63 under TZERO; the signed form stores id's own bits: flip the sign bit
        ids = table.rows["SPECOBJID"].view(">u8")
        ids ^= np.uint64(2**63)
        del table.header[f"TZERO{i}"]
        if f"TSCAL{i}" in table.header:
            del table.header[f"TSCAL{i}"]
    return table


def sdssv_spall_table() -> RealTable:
    """SDSS-V spAll-lite format: ``sample/sdss-v/spall-rows.fits``, the HDU 2 (SPALL) rows of the
    three bundled SDSS-V files as they are (their string widths differ file to file, so they were
    stacked with astropy, which widens each string column to its longest value)."""
    return stack_hdu2([SAMPLE_SDSSV / "spall-rows.fits"], hdu_index=1)


def repeat_rows(table: RealTable, copies: int) -> RealTable:
    """The rows ``copies`` times, for size tests. Synthetic copies: copy k > 0 gets its id's
    last digits changed (id + k) and CLASS "STAR", so the copies fall to the class cut and the
    selection stays that of the real rows; every other value is the real row's."""
    n = len(table.rows)
    rows = np.frombuffer(table.rows.tobytes() * copies, dtype=table.rows.dtype).copy()
    k = np.repeat(np.arange(copies), n)
    ids = rows["SPECOBJID"]
    if ids.dtype.kind == "S":
        width = ids.dtype.itemsize
        rows["SPECOBJID"] = [
            str(int(v) + int(j)).rjust(width).encode() for v, j in zip(ids, k, strict=True)
        ]
    else:
        rows["SPECOBJID"] = ids + k.astype(ids.dtype)
    width = rows["CLASS"].dtype.itemsize
    rows["CLASS"][n:] = b"STAR".ljust(width)
    return RealTable(table.header, rows)


def expected_ids(path: Path, cuts) -> list[str]:
    """The cuts computed straight from a real-row table read by astropy (independent of etl)."""
    with fits.open(path) as hdul:
        d = hdul[1].data
        keep = (
            (np.char.strip(d["CLASS"].astype(str)) == cuts.class_)
            & (d["Z"] > cuts.z_min)
            & (d["Z"] <= cuts.z_max)
            & (d["Z_ERR"] > cuts.z_err_min)
            & (d["Z_ERR"] < cuts.z_err_max)
            & (d["ZWARNING"] == cuts.zwarning)
        )
        if cuts.science_primary:
            keep &= d["SPECPRIMARY"] == 1
        ids = d["SPECOBJID"][keep]
        # astropy gives str (22A), uint64 (TZERO) or int64 (signed K: ids >= 2**63 negative)
        ids = [
            int(str(v).strip()) % 2**64 if isinstance(v, str) else int(v) % 2**64
            for v in ids.tolist()
        ]
    return [str(v) for v in sorted(set(ids))]
