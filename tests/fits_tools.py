"""The field's own FITS tools, run on what specetl writes: fitsverify (NASA's checker), fitsio
(CFITSIO's Python binding, a reader other than astropy) and STILTS (TOPCAT on the command line).

Not a test module. `make fits-tools` installs fitsverify and stilts (Debian packages) where apt
is usable; the tests that need one skip and say so where it is missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest


def fitsverify(path: Path) -> str:
    """fitsverify's report on `path`; fails the test unless it finds 0 warnings and 0 errors."""
    exe = shutil.which("fitsverify")
    if not exe:
        pytest.skip("fitsverify is not installed (`make fits-tools` installs it)")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    report = res.stdout + res.stderr
    found = re.search(r"Verification found (\d+) warning\(s\) and (\d+) error\(s\)", report)
    assert found, report
    assert found.groups() == ("0", "0"), f"{path}:\n{report}"
    return report


def stilts_meta(path: Path, fmt: str = "fits") -> str:
    """`stilts tpipe cmd=meta` of a table: one line per column with units, description and UCD."""
    exe = shutil.which("stilts")
    if not exe:
        pytest.skip("stilts is not installed (`make fits-tools` installs it)")
    res = subprocess.run(
        [exe, "tpipe", f"in={path}", f"ifmt={fmt}", "cmd=meta", "omode=out", "ofmt=csv"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def fitsio_columns(path: Path, ext: int = 1) -> dict[str, dict[str, str]]:
    """Column name -> {unit, comment, ucd} as CFITSIO (fitsio) reads the table's header."""
    fitsio = pytest.importorskip("fitsio", reason="fitsio is a dev dependency (pip install fitsio)")
    with fitsio.FITS(str(path)) as f:
        h = f[ext].read_header()
    out = {}
    for i in range(1, int(h["TFIELDS"]) + 1):
        out[str(h[f"TTYPE{i}"]).strip()] = {
            k: str(h.get(f"{card}{i}", "")).strip()
            for k, card in (("unit", "TUNIT"), ("comment", "TCOMM"), ("ucd", "TUCD"))
        }
    return out
