"""DESI range-read fetch against a loopback archive serving the real coadds in DESI's layout,
with the fault injection the SDSS fetch tests use (truncated bodies, resets, 5xx, wrong bytes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from astropy.io import fits
from fetch_support import FAST, leftovers

from etl.desi.rangefetch import fetch_coadd, planned_bytes
from etl.download import make_session
from etl.fetch import fetch
from etl.mirror import ArchiveMirror, Fault, FaultPlan
from etl.release import load_release

DESI = Path(__file__).resolve().parent.parent / "sample" / "desi"
SV3 = ("sv3", "dark", 26065)
SPECIAL = ("special", "dark", 27247)
FILES = {SV3: "coadd-sv3-dark-26065.fits", SPECIAL: "coadd-special-dark-27247.fits"}


@pytest.fixture(scope="module")
def edr():
    return load_release("desi-edr")


def _path(release, url: str) -> str:
    return urlsplit(url).path


def _mirror(release, tmp_path: Path, faults=None, files=FILES, sums=True) -> ArchiveMirror:
    """The real coadds at their DESI URLs, with each directory's sha256sum list."""
    m = ArchiveMirror(None, release, prefix="/public", faults=faults)
    for key, name in files.items():
        url = release.coadd_url(*key, base_url=m.base_url)
        m.add_file(_path(release, url).removeprefix("/public"), DESI / name)
        if sums:
            digest = hashlib.sha256((DESI / name).read_bytes()).hexdigest()
            listing = tmp_path / f"{key[2]}.sha256sum"
            listing.write_text(f"{digest}  {url.rsplit('/', 1)[-1]}\n")
            sum_url = release.sha256sum_url(*key, base_url=m.base_url)
            m.add_file(_path(release, sum_url).removeprefix("/public"), listing)
    return m


def _expected_bytes(path: Path, wanted: tuple[str, ...]) -> bytes:
    """Primary + wanted HDUs of the archive's file, located by astropy (not by our walker)."""
    raw = path.read_bytes()
    out = []
    with fits.open(path) as h:
        for i, hdu in enumerate(h):
            if i == 0 or hdu.name in wanted:
                info = hdu.fileinfo()
                out.append(raw[info["hdrLoc"] : info["datLoc"] + info["datSpan"]])
    return b"".join(out)


def _fetch(release, m, key, dest, **kw):
    return fetch_coadd(
        make_session(2),
        release.coadd_url(*key, base_url=m.base_url),
        release.sha256sum_url(*key, base_url=m.base_url),
        release.coadd.hdus,
        dest,
        FAST,
        **kw,
    )


def test_fetch_reads_only_the_wanted_hdus_and_a_rerun_fetches_nothing(edr, tmp_path):
    catalog = DESI / "redrock-special-dark-27247.fits"
    with _mirror(edr, tmp_path) as m:
        report = fetch(
            edr, tmp_path / "data", catalog_source=str(catalog), base_url=m.base_url, config=FAST
        )
        assert report.ok and report.selected == 1 and report.downloaded == 1
        stored = (
            tmp_path / "data/desi-edr/coadds/special/dark/272/27247/coadd-special-dark-27247.fits"
        )
        assert stored.read_bytes() == _expected_bytes(DESI / FILES[SPECIAL], edr.coadd.hdus)
        with fits.open(stored, checksum=True) as h:  # a valid FITS file, checksums intact
            assert [x.name for x in h][1:] == list(edr.coadd.hdus)
        doc = json.loads((tmp_path / "data/desi-edr/fetch-report.json").read_text())
        assert doc["coadds_by_mode"] == {"ranges": 1}
        assert (
            doc["bytes_downloaded"]
            < doc["whole_file_bytes"]
            == (DESI / FILES[SPECIAL]).stat().st_size
        )
        hits = sum(m.hits.values())
        again = fetch(
            edr, tmp_path / "data", catalog_source=str(catalog), base_url=m.base_url, config=FAST
        )
        assert sum(m.hits.values()) == hits  # nothing fetched
        assert again.ok and again.already_present == 1 and again.bytes == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault("short", at_bytes=100),
        Fault("reset", at_bytes=10),
        Fault("status", status=503, headers={"Retry-After": "0"}),
    ],
    ids=["truncated", "reset", "5xx"],
)
def test_a_broken_transfer_is_retried_and_the_file_is_exact(edr, tmp_path, fault):
    url_path = urlsplit(edr.coadd_url(*SV3, base_url="http://x/public")).path
    plan = FaultPlan({url_path: [None, None, fault]})  # the third request breaks
    with _mirror(edr, tmp_path, faults=plan) as m:
        out = _fetch(edr, m, SV3, tmp_path / "c.fits")
    # a 5xx is asked again by the session's urllib3 Retry (one more request, no retry of ours);
    # a broken body is seen only by our loop, which reads that range again
    retried_by_us = 0 if fault.kind == "status" else 1
    assert out.status == "ranges" and out.retries == retried_by_us
    assert (tmp_path / "c.fits").read_bytes() == _expected_bytes(DESI / FILES[SV3], edr.coadd.hdus)
    # the 5-row coadd: FIBERMAP + 12 arm HDUs + headers read to walk the file, not the rest
    assert out.bytes < 0.35 * (DESI / FILES[SV3]).stat().st_size


def _corrupted_copy(tmp_path: Path) -> Path:
    """The sv3 coadd with one byte changed in the data of each wanted HDU (headers intact)."""
    raw = bytearray((DESI / FILES[SV3]).read_bytes())
    with fits.open(DESI / FILES[SV3]) as h:
        for hdu in h[1:]:
            info = hdu.fileinfo()
            raw[info["datLoc"] + 7] ^= 0x40
    bad = tmp_path / "corrupt.fits"
    bad.write_bytes(bytes(raw))
    return bad


def test_wrong_bytes_in_an_hdu_are_refused_then_fetched_again(edr, tmp_path):
    url_path = urlsplit(edr.coadd_url(*SV3, base_url="http://x/public")).path
    bad = _corrupted_copy(tmp_path)
    wrong = Fault("substitute", other="/public/corrupt.fits")
    # a window of six requests answered from the corrupted copy: at least one data read
    plan = FaultPlan({url_path: [None, None, None] + [wrong] * 6})
    with _mirror(edr, tmp_path, faults=plan) as m:
        m.add_file("corrupt.fits", bad)
        out = _fetch(edr, m, SV3, tmp_path / "c.fits")
    assert out.status == "ranges" and out.retries >= 1
    assert (tmp_path / "c.fits").read_bytes() == _expected_bytes(DESI / FILES[SV3], edr.coadd.hdus)


def test_a_corrupt_hdu_is_never_kept(edr, tmp_path):
    url_path = urlsplit(edr.coadd_url(*SV3, base_url="http://x/public")).path
    bad = _corrupted_copy(tmp_path)
    plan = FaultPlan({url_path: [Fault("substitute", other="/public/corrupt.fits")]}, always=True)
    with _mirror(edr, tmp_path, faults=plan) as m:
        m.add_file("corrupt.fits", bad)
        out = _fetch(edr, m, SV3, tmp_path / "out" / "c.fits")
    assert out.status == "failed" and out.reason == "corrupt HDU" and "DATASUM" in out.detail
    assert not (tmp_path / "out" / "c.fits").exists() and not leftovers(tmp_path / "out")


def test_hdus_without_checksums_fall_back_to_the_verified_whole_file(edr, tmp_path):
    # the real per-exposure spectra file: its arm HDUs carry no DATASUM/CHECKSUM
    spectra = {SV3: "spectra-sv3-dark-26065.fits"}
    with _mirror(edr, tmp_path, files=spectra) as m:
        out = _fetch(edr, m, SV3, tmp_path / "c.fits")
    assert out.status == "whole"
    assert (tmp_path / "c.fits").read_bytes() == (DESI / spectra[SV3]).read_bytes()
    with _mirror(edr, tmp_path, files=spectra, sums=False) as m:
        out = _fetch(edr, m, SV3, tmp_path / "d.fits")
    assert out.status == "failed" and out.reason == "unverifiable"
    assert not (tmp_path / "d.fits").exists()


def test_a_whole_file_that_does_not_match_its_sha256_is_refused(edr, tmp_path):
    with _mirror(edr, tmp_path) as m:
        (tmp_path / f"{SV3[2]}.sha256sum").write_text(f"{'0' * 64}  {FILES[SV3]}\n")
        out = _fetch(edr, m, SV3, tmp_path / "c.fits", whole_file=True)
        assert out.status == "failed" and out.reason == "sha256 mismatch"
        assert not (tmp_path / "c.fits").exists()
        listing = hashlib.sha256((DESI / FILES[SV3]).read_bytes()).hexdigest()
        (tmp_path / f"{SV3[2]}.sha256sum").write_text(f"{listing}  {FILES[SV3]}\n")
        out = _fetch(edr, m, SV3, tmp_path / "c.fits", whole_file=True)
    assert out.status == "whole"
    assert (tmp_path / "c.fits").read_bytes() == (DESI / FILES[SV3]).read_bytes()


def test_a_server_that_ignores_range_gets_the_verified_whole_file(edr, tmp_path):
    """Every answer is the whole file with 200 (a server or proxy that ignores Range): the
    coadd is fetched whole and verified by its sha256sum entry, and the dry run's estimate for
    it is the whole file's size."""
    whole = (DESI / FILES[SV3]).read_bytes()
    ignores_range = FaultPlan({FILES[SV3]: [Fault("status", 200, body=whole)]}, always=True)
    with _mirror(edr, tmp_path, faults=ignores_range) as m:
        out = _fetch(edr, m, SV3, tmp_path / "c.fits")
        size = planned_bytes(make_session(2), edr.coadd_url(*SV3, base_url=m.base_url),
                             edr.coadd.hdus, FAST)  # fmt: skip
    assert out.status == "whole" and (tmp_path / "c.fits").read_bytes() == whole
    assert size == len(whole)
