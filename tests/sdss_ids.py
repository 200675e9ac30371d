"""SDSS's specObjID bit packing and specetl's format-1 split (keyed on specObjID): reference
code for the split tests (``test_split_releases.py``) and ``benchmarks/split_stability.py``."""

from __future__ import annotations

import hashlib

import numpy as np

from shardio import SPLITS


def run2d_code(run2d: str) -> int:
    """SDSS's 14-bit run2d code in a specObjID: N for run2d "N", (N-5)*10000 + M*100 + P for
    "vN_M_P" (v5_13_0 -> 1300, v5_13_2 -> 1302)."""
    if run2d.isdigit():
        return int(run2d)
    n, m, p = (int(x) for x in run2d.lstrip("v").split("_"))
    return (n - 5) * 10000 + m * 100 + p


def sdss_specobjid(plate: int, fiberid: int, mjd: int, run2d: str) -> int:
    """SDSS specObjID: plate (14 bits) | fiber (12) | mjd - 50000 (14) | run2d code (14) | 10 zero bits."""
    return (plate << 50) | (fiberid << 38) | ((mjd - 50000) << 24) | (run2d_code(run2d) << 10)


def v1_split_of(specobjid, salt: str, fractions: tuple[float, float, float]) -> np.ndarray:
    """specetl format 1's split: keyed BLAKE2b of the 8-byte little-endian specObjID."""
    key = salt.encode("utf-8")[:64]
    u = np.array(
        [
            int.from_bytes(
                hashlib.blake2b(int(s).to_bytes(8, "little"), digest_size=8, key=key).digest(),
                "little",
            )
            / 2.0**64
            for s in specobjid
        ]
    )
    return np.asarray(SPLITS)[np.searchsorted(np.cumsum(fractions)[:-1], u, side="right")]
