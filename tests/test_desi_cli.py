"""`specetl fetch` / `build-shards` with `--release desi-edr|desi-dr1`: the same commands, one-line
errors for what a user can get wrong."""

from __future__ import annotations

import json

from click.testing import CliRunner
from desi_support import DESI, serve

from cli import main
from etl.mirror import ArchiveMirror
from etl.release import load_release


def test_sql_is_refused_for_desi_with_the_reason(tmp_path):
    r = CliRunner().invoke(main, ["fetch", "--release", "desi-dr1", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "DESI has no SkyServer SQL; use --catalog specobj" in r.output


def test_a_tile_redrock_table_selects_nothing_and_says_why(tmp_path):
    args = ["fetch", "--release", "desi-edr", "--data-dir", str(tmp_path)]
    r = CliRunner().invoke(main, [*args, "--catalog", str(DESI / "redrock-test.fits")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "'has a healpix coadd (SURVEY, PROGRAM, HEALPIX)' removed the last 1 of 3" in r.output


def test_fetch_and_build_through_the_cli(tmp_path):
    dr1 = load_release("desi-dr1")
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        serve(m, dr1, ("special", "dark", 27247), DESI / "coadd-special-dark-27247.fits", tmp_path)
        common = ["--release", "desi-dr1", "--data-dir", str(tmp_path / "d")]
        r = CliRunner().invoke(
            main,
            ["fetch", *common, "--catalog", str(DESI / "redrock-special-dark-27247.fits"),
             "--base-url", m.base_url, "--whole-files"],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "d/desi-dr1/fetch-report.json").read_text())
    assert report["coadds_by_mode"] == {"whole": 1}  # --whole-files: verified by sha256sum
    # the DESI catalogue says what every column is, as the SDSS one does (TCOMMn for TOPCAT)
    from astropy.io import fits

    header = fits.getheader(tmp_path / "d/desi-dr1/catalog.fits", 1)
    names = [header[f"TTYPE{i}"] for i in range(1, header["TFIELDS"] + 1)]
    assert {"TARGETID", "SURVEY", "PROGRAM", "OBJTYPE", "FIBERSTATUS", "DELTACHI2"} <= set(names)
    undescribed = [n for i, n in enumerate(names, 1) if not header.get(f"TCOMM{i}")]
    assert undescribed == []
    r = CliRunner().invoke(main, ["build-shards", *common])
    assert r.exit_code == 0 and r.output.startswith("1 spectra in 1 shard(s)"), r.output


def test_dry_run_counts_the_coadds_and_fetches_nothing(tmp_path):
    args = ["fetch", "--release", "desi-dr1", "--data-dir", str(tmp_path), "--dry-run"]
    catalog = str(DESI / "redrock-special-dark-27247.fits")
    r = CliRunner().invoke(main, [*args, "--catalog", catalog])
    assert r.exit_code == 0 and "dry run: 1 file(s) to download, ~?;" in r.output
    assert not (tmp_path / "desi-dr1" / "coadds").exists()


def test_dry_run_estimates_the_bytes_a_fetch_then_stores(tmp_path):
    """The real coadd on a loopback archive: the dry run's estimate (the wanted HDUs' sizes, read
    from the headers alone) is exactly what the range fetch then stores; with --whole-files it
    is the file's size."""
    dr1 = load_release("desi-dr1")
    coadd = DESI / "coadd-special-dark-27247.fits"
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        serve(m, dr1, ("special", "dark", 27247), coadd, tmp_path)
        common = ["fetch", "--release", "desi-dr1", "--data-dir", str(tmp_path / "d"),
                  "--catalog", str(DESI / "redrock-special-dark-27247.fits"),
                  "--base-url", m.base_url]  # fmt: skip
        estimates = {}
        for extra in ([], ["--whole-files"]):
            r = CliRunner().invoke(main, [*common, "--dry-run", *extra])
            assert r.exit_code == 0 and "dry run: 1 file(s) to download, ~" in r.output, r.output
            report = json.loads((tmp_path / "d/desi-dr1/fetch-report.json").read_text())
            estimates[bool(extra)] = report["disk_space"]["to_download_bytes_estimate"]
            by = report["disk_space"]["estimate"]["by_survey_program"]
            assert by == {"special/dark": {"files": 1, "sampled": 1,
                                           "mean_file_bytes": estimates[bool(extra)]}}  # fmt: skip
        assert not (tmp_path / "d/desi-dr1/coadds").exists()
        assert estimates[True] == coadd.stat().st_size
        r = CliRunner().invoke(main, common)
        assert r.exit_code == 0, r.output
    (stored,) = (tmp_path / "d/desi-dr1/coadds").rglob("coadd-*.fits")
    assert estimates[False] == stored.stat().st_size < coadd.stat().st_size
