"""`specetl demo` end to end (reduced epochs): loopback archive → fetch → build → train ×3 → evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "demo",
        "--out",
        str(out),
        "--epochs",
        "2",
        "--workers",
        "1",
        "--population",
        "0",  # the real-sample path; test_demo_population_path covers the population
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # fetch went through the real downloader: every selected object verified, nothing failed
    report = json.loads((out / "data" / "dr16" / "fetch-report.json").read_text())
    assert report["selected"] == 86 and report["downloaded"] == 86
    assert not report.get("failed")
    index = json.loads((out / "data" / "dr16" / "shards" / "index.json").read_text())
    assert sum(s["rows"] for s in index["shards"]) == 84  # two real galaxies rejected
    assert {s["split"] for s in index["shards"]} == {"train", "valid", "test"}

    # the Table-1-style table: one row per objective, and the figures exist
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")]
    assert [ln.split("|")[1].strip() for ln in lines[1:]] == [
        "fidelity",
        "similarity",
        "consistency",
    ]
    for objective in ("fidelity", "similarity", "consistency"):
        ev = out / "runs" / objective / "eval-test"
        metrics = json.loads((ev / "metrics.json").read_text())
        assert metrics["objective"] == objective and metrics["n"] >= 1
        for png in ("figure2.png", "training.png"):
            assert (ev / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[" in proc.stderr and "done" in proc.stderr  # progress was visible

    # after training: every shard row embedded and scored by the last run, and the page of it
    from model.embed import read_embedding

    cols, header = read_embedding(out / "embedding.fits")
    assert len(cols["specobjid"]) == 84 and header["RUN"].endswith("consistency")
    # the demo keeps the paper's encoder, which its 10-minute plan was timed with, although
    # `specetl train`'s default is the restframe encoder
    assert header["ENCFRAME"] == "observed"
    assert sorted(cols["outlier_rank"]) == list(range(1, 85))
    assert "synthetic" not in cols  # real galaxies: the embedding has no SYNTHETIC column
    assert (out / "explore.html").stat().st_size > 10_000
    # what a person checks on the page: every embedded galaxy is a point, the top 20 outliers
    # are listed in rank order with their spectra, and real galaxies link to SkyServer
    import re

    html = (out / "explore.html").read_text()
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    data = json.loads(m.group(1))
    assert sorted(data["points"]["id"]) == sorted(cols["specobjid"])
    assert [data["points"]["rank"][i] for i in data["top"]] == list(range(1, 21))
    assert set(data["top"]) <= {sp["i"] for sp in data["spectra"]}
    assert all(data["points"]["linkable"])
    # every FITS table the demo wrote (not the archive's spec-lite files) verifies clean
    written = [p for p in out.rglob("*.fits") if "spectra" not in p.relative_to(out).parts]
    assert {p.name for p in written} == {"catalog.fits", "embedding.fits"}
    if shutil.which("fitsverify"):  # else tests/test_fits_outputs.py skips and says why
        from fits_tools import fitsverify

        for p in written:
            fitsverify(p)

    # a rerun reuses everything: nothing downloaded, no shard rewritten, no run retrained
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "86 already present" in again.stderr and "reusing" in again.stderr


@pytest.mark.slow
def test_demo_population_path(tmp_path):
    """The demo's science path: ETL on the real sample, models on a small SYNTHETIC population."""
    pytest.importorskip("bagpipes")
    pytest.importorskip("sklearn")
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "cli", "demo", "--out", str(out), "--epochs", "1"]
    cmd += ["--workers", "1", "--population", "200"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the ETL still ran on the real files through the loopback archive
    report = json.loads((out / "data" / "dr16" / "fetch-report.json").read_text())
    assert report["downloaded"] == 86
    # the models trained on the population and say so
    index = json.loads((out / "population" / "dr16" / "shards" / "index.json").read_text())
    assert sum(s["rows"] for s in index["shards"]) >= 190
    text = proc.stdout
    assert "SYNTHETIC population's test split" in text and "What the 2-D latents know" in text
    assert "REAL bundled SDSS galaxies" in text and "| consistency |" in text
    # the fidelity floor, measured from the true spectra before their files were deleted, is
    # printed beside L_fid: about half the unmasked fraction of the test pixels
    floor = json.loads((out / "population" / "dr16" / "fidelity-floor.json").read_text())
    assert floor["L_fid_truth"] == pytest.approx(0.5 * floor["unmasked_fraction"], rel=0.05)
    assert (
        f"fidelity floor (L_fid of the true noiseless spectra, test split): {floor['L_fid_truth']:.3f}"
        in text
    )
    assert "σ_min/σ_max" in text
    assert (out / "runs" / "latent-maps.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "consistency" / "eval-real-test" / "figure2.png").exists()
    # the population's spec-lite files are gone once sharded (the shards and truths stay) ...
    assert not (out / "population" / "dr16" / "spectra").exists()
    assert (out / "population" / "dr16" / "catalog.fits").exists()
    assert "deleted the population's spec-lite files" in proc.stderr
    # the embedding of the population's shards says every row is SYNTHETIC (from the catalogue)
    from model.embed import read_embedding

    cols, _ = read_embedding(out / "embedding.fits")
    assert len(cols["synthetic"]) == sum(s["rows"] for s in index["shards"])
    assert cols["synthetic"].all()
    # ... and a rerun reuses those shards instead of rebuilding them from missing files
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"reuse the {sum(s['rows'] for s in index['shards'])} SYNTHETIC spectra" in again.stderr
    assert json.loads((out / "population" / "dr16" / "shards" / "index.json").read_text()) == index
    assert "| consistency |" in again.stdout
