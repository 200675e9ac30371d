"""Shared fixtures: the bundled real SDSS sample (``sample/``) and the release manifests."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest

from etl.release import load_release, spec_lite_relpath

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample"


@dataclass(frozen=True)
class SampleObject:
    """One row of sample/catalog.csv (real SPECOBJ values) and its bundled file."""

    specobjid: int
    plate: int
    mjd: int
    fiberid: int
    run2d: str
    cls: str
    z: float
    z_err: float
    zwarning: int
    science_primary: int
    path: Path

    @property
    def name(self) -> str:
        return self.path.name


def sample_objects() -> list[SampleObject]:
    rows = list(csv.DictReader(open(SAMPLE / "catalog.csv", newline="")))
    out = []
    for r in rows:
        plate, mjd, fiberid = int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])
        out.append(
            SampleObject(
                specobjid=int(r["SPECOBJID"]),
                plate=plate,
                mjd=mjd,
                fiberid=fiberid,
                run2d=r["RUN2D"],
                cls=r["CLASS"],
                z=float(r["Z"]),
                z_err=float(r["Z_ERR"]),
                zwarning=int(r["ZWARNING"]),
                science_primary=int(r["SCIENCEPRIMARY"]),
                path=SAMPLE / "sdss" / spec_lite_relpath(r["RUN2D"], plate, mjd, fiberid),
            )
        )
    return out


@pytest.fixture(scope="session")
def sample() -> list[SampleObject]:
    """Every object of the bundled real sample."""
    return sample_objects()


@pytest.fixture(scope="session")
def dr16():
    return load_release("dr16")


@pytest.fixture(scope="session")
def release(dr16):
    """The release most tests run against (DR16)."""
    return dr16


@pytest.fixture
def archive_server(dr16):
    """A real HTTP/1.1 server on 127.0.0.1 (port 0) serving the bundled sample in the SDSS
    archive's layout; pass ``archive_server.base_url`` as ``--base-url``."""
    from etl.mirror import ArchiveMirror

    with ArchiveMirror(SAMPLE / "sdss", dr16) as mirror:
        yield mirror


@pytest.fixture(scope="session")
def dr17():
    return load_release("dr17")
