"""A small, strict reader for FITS binary tables, fast enough for millions of spec-lite files.

astropy's ``fits.open`` parses every header card into objects and builds a column wrapper for
each of HDU2's ~200 columns; for a 175 kB spec-lite file that is most of the cost. Here we parse
only the header keywords a binary table needs, map the table with one structured numpy dtype,
and copy out the requested columns. ``tests/test_etl_fitsread.py`` checks every value against
astropy on the bundled real files.

Anything unexpected (truncated data, no such HDU, a missing column) raises :class:`FitsError`
with a message that says what is wrong; the caller adds the file name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

BLOCK = 2880
CARD = 80

# TFORM letter -> (numpy big-endian dtype, bytes per element)
_TFORM = {
    "L": ("i1", 1),
    "B": ("u1", 1),
    "I": (">i2", 2),
    "J": (">i4", 4),
    "K": (">i8", 8),
    "E": (">f4", 4),
    "D": (">f8", 8),
    "C": (">c8", 8),
    "M": (">c16", 16),
}
_TFORM_RE = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])")


class FitsError(ValueError):
    """The file is not a FITS file of the expected shape."""


def _parse_header(buf: memoryview, offset: int) -> tuple[dict[str, str], int]:
    """Parse the header starting at ``offset``; return (keyword -> raw value, data offset)."""
    header: dict[str, str] = {}
    pos = offset
    n = len(buf)
    while True:
        if pos + BLOCK > n:
            raise FitsError("truncated header")
        block = bytes(buf[pos : pos + BLOCK])
        pos += BLOCK
        for i in range(0, BLOCK, CARD):
            card = block[i : i + CARD]
            key = card[:8].rstrip().decode("ascii", "replace")
            if key == "END":
                return header, pos
            if card[8:10] == b"= ":
                value = card[10:].decode("ascii", "replace")
                # strip an inline comment outside a quoted string
                if value.lstrip().startswith("'"):
                    value = value.strip()
                    end = value.find("'", 1)
                    while end != -1 and end + 1 < len(value) and value[end + 1] == "'":
                        end = value.find("'", end + 2)
                    value = value[: end + 1] if end != -1 else value
                else:
                    value = value.split("/", 1)[0].strip()
                header[key] = value


def _int(header: dict[str, str], key: str) -> int:
    try:
        return int(header[key])
    except KeyError:
        raise FitsError(f"header lacks {key}") from None
    except ValueError:
        raise FitsError(f"header {key} is not an integer: {header[key]!r}") from None


def _str(header: dict[str, str], key: str) -> str:
    return header.get(key, "").strip().strip("'").strip()


def _data_size(header: dict[str, str]) -> int:
    naxis = _int(header, "NAXIS")
    if naxis == 0:
        return 0
    bitpix = abs(_int(header, "BITPIX"))
    count = 1
    for axis in range(1, naxis + 1):
        count *= _int(header, f"NAXIS{axis}")
    count += int(header.get("PCOUNT", "0"))
    count *= int(header.get("GCOUNT", "1"))
    return count * bitpix // 8


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _row_dtype(header: dict[str, str]) -> np.dtype:
    names, formats, offsets = [], [], []
    offset = 0
    for i in range(1, _int(header, "TFIELDS") + 1):
        name = _str(header, f"TTYPE{i}") or f"col{i}"
        tform = _str(header, f"TFORM{i}")
        m = _TFORM_RE.match(tform)
        if not m:
            raise FitsError(f"unsupported TFORM{i} {tform!r}")
        repeat = int(m.group(1) or 1)
        code = m.group(2)
        if code == "A":
            fmt, size = f"S{repeat}", repeat
        elif code == "X":
            fmt, size = f"V{-(-repeat // 8)}", -(-repeat // 8)
        elif code in "PQ":
            fmt, size = ("V8" if code == "P" else "V16"), (8 if code == "P" else 16)
        else:
            base, width = _TFORM[code]
            fmt, size = ((base, (repeat,)) if repeat != 1 else base), width * repeat
        if size:
            names.append(name)
            formats.append(fmt)
            offsets.append(offset)
        offset += size
    width = _int(header, "NAXIS1")
    if offset != width:
        raise FitsError(f"columns add up to {offset} bytes but NAXIS1 is {width}")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": width})


class FitsFile:
    """The HDUs of one FITS file held in memory: headers parsed, data located, nothing copied."""

    def __init__(self, data: bytes):
        self._buf = memoryview(data)
        self.hdus: list[tuple[dict[str, str], int, int]] = []  # header, data offset, data size
        pos = 0
        n = len(data)
        if n < BLOCK or bytes(self._buf[:9]) != b"SIMPLE  =":
            raise FitsError(
                "not a FITS file (no SIMPLE card)" if n >= BLOCK else f"not a FITS file ({n} bytes)"
            )
        while pos < n:
            if not bytes(self._buf[pos : pos + 8]).strip(b" \0"):
                break  # trailing padding
            header, data_pos = _parse_header(self._buf, pos)
            size = _data_size(header)
            self.hdus.append((header, data_pos, size))
            pos = data_pos + _padded(size)

    @classmethod
    def read(cls, path: str | Path) -> FitsFile:
        return cls(Path(path).read_bytes())

    def header(self, hdu: int) -> dict[str, str]:
        return self._hdu(hdu)[0]

    def _hdu(self, hdu: int) -> tuple[dict[str, str], int, int]:
        if hdu >= len(self.hdus):
            raise FitsError(f"HDU{hdu} is missing (file has {len(self.hdus)} HDUs)")
        return self.hdus[hdu]

    def table(
        self, hdu: int, columns: Iterable[str], rows: int | None = None
    ) -> dict[str, np.ndarray]:
        """Columns of binary-table HDU ``hdu`` as native-endian arrays (TSCAL/TZERO applied).

        Column names match case-insensitively; ``rows`` limits how many rows are decoded.
        """
        header, pos, size = self._hdu(hdu)
        if _str(header, "XTENSION") != "BINTABLE":
            raise FitsError(f"HDU{hdu} is not a binary table")
        dtype = _row_dtype(header)
        nrows = _int(header, "NAXIS2")
        if rows is not None:
            nrows = min(nrows, rows)
        need = dtype.itemsize * nrows
        if pos + need > len(self._buf):
            raise FitsError(
                f"truncated: HDU{hdu} data needs {pos + need} bytes, file has {len(self._buf)}"
            )
        table = np.frombuffer(self._buf, dtype=dtype, count=nrows, offset=pos)
        by_lower = {name.lower(): (i + 1, name) for i, name in enumerate(dtype.names)}
        # TTYPE index of each named column (names skip zero-width columns, so look them up)
        ttype_index = {
            _str(header, f"TTYPE{i}").lower(): i for i in range(1, _int(header, "TFIELDS") + 1)
        }
        out: dict[str, np.ndarray] = {}
        missing = [c for c in columns if c.lower() not in by_lower]
        if missing:
            raise FitsError(f"HDU{hdu} lacks column(s) {', '.join(missing)}")
        for col in columns:
            _, name = by_lower[col.lower()]
            values = table[name]
            i = ttype_index.get(col.lower())
            scale = header.get(f"TSCAL{i}")
            zero = header.get(f"TZERO{i}")
            tform = _str(header, f"TFORM{i}").upper() if i else ""
            if values.dtype.kind == "S":
                values = np.char.decode(np.char.rstrip(values), "ascii", "replace")
            elif tform.endswith("L"):
                values = values == ord("T")
            elif zero is not None and values.dtype == np.dtype(">i8") and float(zero) == 2**63:
                values = values.astype(np.int64).view(np.uint64) ^ np.uint64(2**63)
            elif scale is not None or zero is not None:
                values = values * float(scale or 1) + float(zero or 0)
            else:
                values = values.astype(values.dtype.newbyteorder("="))
            out[col] = values
        return out
