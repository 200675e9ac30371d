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

import functools
import re
import types
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

BLOCK = 2880
CARD = 80

# TFORM letter -> (numpy big-endian dtype, bytes per element)
_TFORM = {
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


def _parse_header(buf: memoryview, offset: int) -> tuple[Mapping[str, str], int, bytes]:
    """Parse the header starting at ``offset``.

    Returns (keyword -> raw value text, data offset, the header's raw bytes). Values stay raw
    text (comments included) and are interpreted only when asked for. Parsed headers are cached
    by their bytes: millions of spec-lite files share a handful of distinct HDU2 headers.
    """
    pos = offset
    while True:
        if pos + BLOCK > len(buf):
            raise FitsError("truncated header")
        block = bytes(buf[pos : pos + BLOCK])
        pos += BLOCK
        i = block.find(b"END     ")
        while i != -1 and i % CARD:
            i = block.find(b"END     ", i + 1)
        if i != -1:
            raw = bytes(buf[offset:pos])
            return _parse_cards(raw), pos, raw


@functools.lru_cache(maxsize=256)
def _parse_cards(raw: bytes) -> Mapping[str, str]:
    # read-only: one parsed header is shared by every file with identical header bytes
    text = raw.decode("latin-1")
    header: dict[str, str] = {}
    for i in range(0, len(text), CARD):
        key = text[i : i + 8]
        if key == "END     ":
            break
        if text[i + 8 : i + 10] == "= ":
            header[key.rstrip()] = text[i + 10 : i + CARD]
    return types.MappingProxyType(header)


_QUOTED_RE = re.compile(r"\s*'((?:[^']|'')*)'")


def _value(raw: str) -> str:
    """The value of a raw card value text: a quoted string unquoted, else text before a comment."""
    m = _QUOTED_RE.match(raw)
    if m:
        return m.group(1).replace("''", "'").rstrip()
    return raw.split("/", 1)[0].strip()


def _int(header: Mapping[str, str], key: str) -> int:
    try:
        return int(_value(header[key]))
    except KeyError:
        raise FitsError(f"header lacks {key}") from None
    except ValueError:
        raise FitsError(f"header {key} is not an integer: {header[key]!r}") from None


def _str(header: Mapping[str, str], key: str) -> str:
    return _value(header.get(key, ""))


def _data_size(header: Mapping[str, str]) -> int:
    naxis = _int(header, "NAXIS")
    if naxis == 0:
        return 0
    bitpix = abs(_int(header, "BITPIX"))
    count = 1
    for axis in range(1, naxis + 1):
        count *= _int(header, f"NAXIS{axis}")
    count += int(_value(header.get("PCOUNT", "0")))
    count *= int(_value(header.get("GCOUNT", "1")))
    return count * bitpix // 8


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


@functools.lru_cache(maxsize=256)
def _row_layout_cached(raw: bytes) -> tuple[np.dtype, dict[str, tuple[int, str]]]:
    return _row_layout(_parse_cards(raw))


def _row_layout(header: Mapping[str, str]) -> tuple[np.dtype, dict[str, tuple[int, str]]]:
    """Row dtype of a binary table, and each lower-cased column name's (TTYPE index, field name).

    Cached on the raw column cards: millions of spec-lite files share a handful of layouts.
    """
    nfields = _int(header, "TFIELDS")
    cards = tuple(
        (header.get(f"TTYPE{i}", ""), header.get(f"TFORM{i}", "")) for i in range(1, nfields + 1)
    )
    return _layout_from_cards(cards, _int(header, "NAXIS1"))


@functools.lru_cache(maxsize=64)
def _layout_from_cards(
    cards: tuple[tuple[str, str], ...], width: int
) -> tuple[np.dtype, dict[str, tuple[int, str]]]:
    names, formats, offsets = [], [], []
    index: dict[str, tuple[int, str]] = {}
    offset = 0
    for i, (ttype_raw, tform_raw) in enumerate(cards, start=1):
        name = _value(ttype_raw) or f"col{i}"
        tform = _value(tform_raw)
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
        elif code == "L":
            fmt, size = (("i1", (repeat,)) if repeat != 1 else "i1"), repeat
        else:
            base, itemsize = _TFORM[code]
            fmt, size = ((base, (repeat,)) if repeat != 1 else base), itemsize * repeat
        if size:
            names.append(name)
            formats.append(fmt)
            offsets.append(offset)
            index[name.lower()] = (i, name)
        offset += size
    if offset != width:
        raise FitsError(f"columns add up to {offset} bytes but NAXIS1 is {width}")
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": width})
    return dtype, index


class FitsFile:
    """One FITS file held in memory; HDU headers are parsed on first use, data never copied."""

    def __init__(self, data: bytes):
        self._buf = memoryview(data)
        n = len(data)
        if n < BLOCK or bytes(self._buf[:9]) != b"SIMPLE  =":
            raise FitsError(
                "not a FITS file (no SIMPLE card)" if n >= BLOCK else f"not a FITS file ({n} bytes)"
            )
        # per HDU: header, data offset, data size, raw header bytes
        self._hdus: list[tuple[Mapping[str, str], int, int, bytes]] = []
        self._next = 0  # where the next unparsed HDU starts; headers are parsed on demand

    @classmethod
    def read(cls, path: str | Path) -> FitsFile:
        return cls(Path(path).read_bytes())

    def header(self, hdu: int) -> Mapping[str, str]:
        """Raw header of HDU ``hdu``: keyword -> unparsed value text."""
        return self._hdu(hdu)[0]

    def _hdu(self, hdu: int) -> tuple[Mapping[str, str], int, int, bytes]:
        while len(self._hdus) <= hdu:
            pos = self._next
            if pos >= len(self._buf) or not bytes(self._buf[pos : pos + 8]).strip(b" \0"):
                raise FitsError(f"HDU{hdu} is missing (file has {len(self._hdus)} HDUs)")
            header, data_pos, raw = _parse_header(self._buf, pos)
            size = _data_size(header)
            self._hdus.append((header, data_pos, size, raw))
            self._next = data_pos + _padded(size)
        return self._hdus[hdu]

    def table(
        self, hdu: int, columns: Iterable[str], rows: int | None = None
    ) -> dict[str, np.ndarray]:
        """Columns of binary-table HDU ``hdu`` as native-endian arrays (TSCAL/TZERO applied).

        Column names match case-insensitively; ``rows`` limits how many rows are decoded.
        """
        header, pos, _, raw = self._hdu(hdu)
        if _str(header, "XTENSION") != "BINTABLE":
            raise FitsError(f"HDU{hdu} is not a binary table")
        dtype, index = _row_layout_cached(raw)
        nrows = _int(header, "NAXIS2")
        if rows is not None:
            nrows = min(nrows, rows)
        need = dtype.itemsize * nrows
        if pos + need > len(self._buf):
            raise FitsError(
                f"truncated: HDU{hdu} data needs {pos + need} bytes, file has {len(self._buf)}"
            )
        table = np.frombuffer(self._buf, dtype=dtype, count=nrows, offset=pos)
        out: dict[str, np.ndarray] = {}
        missing = [c for c in columns if c.lower() not in index]
        if missing:
            raise FitsError(f"HDU{hdu} lacks column(s) {', '.join(missing)}")
        for col in columns:
            i, name = index[col.lower()]
            values = table[name]
            scale = _value(header[f"TSCAL{i}"]) if f"TSCAL{i}" in header else None
            zero = _value(header[f"TZERO{i}"]) if f"TZERO{i}" in header else None
            tform = _str(header, f"TFORM{i}").upper()
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
