"""build-shards on the bundled real files and on the synthetic corpus generator.

Every build here runs on a real distributed LocalCluster (2 worker processes unless noted).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from etl.build import BuildError, build_shards, read_index, verify_shards
from etl.catalog import as_catalog, read_catalog, write_catalog
from etl.release import load_release, spec_lite_relpath
from etl.spectrum import Preprocessor, SpectrumRejected
from etl.splits import split_of
from etl.synthetic import from_real
from shardio import read_shard, row_datasets, sha256_file

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample"


def layout_sample(data_dir: Path, release: str = "dr16") -> dict[str, np.ndarray]:
    """Lay the bundled sample out like a fetch would: DATA/<release>/{catalog.fits,spectra/}."""
    with open(SAMPLE / "catalog.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cat = as_catalog({c: np.array([r[c] for r in rows]) for c in rows[0]}, "sample")
    for run2d, plate, mjd, fib in zip(
        cat["RUN2D"], cat["PLATE"], cat["MJD"], cat["FIBERID"], strict=True
    ):
        rel = spec_lite_relpath(run2d, plate, mjd, fib)
        dst = data_dir / release / "spectra" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / "sdss" / rel, dst)
    write_catalog(cat, data_dir / release / "catalog.fits")
    return cat


def shard_rows(shards_dir: Path) -> dict[int, tuple[str, dict]]:
    """specobjid (decimal str) -> (shard path, that object's row) over every indexed shard."""
    out: dict[str, tuple[str, dict]] = {}
    for e in read_index(shards_dir)["shards"]:
        data = read_shard(shards_dir / e["path"])
        assert data["attrs"]["split"] == e["split"]
        names = row_datasets(data["attrs"])
        for i, sid in enumerate(data["specobjid"].astype(str).tolist()):
            assert sid not in out, f"{sid} in two shards"
            out[sid] = (e["path"], {k: data[k][i] for k in names})
    return out


def mtimes(shards_dir: Path) -> dict[str, int]:
    return {p.name + p.parent.name: p.stat().st_mtime_ns for p in shards_dir.glob("*/*.h5")}


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    cat = layout_sample(data)
    release = load_release("dr16")
    result = build_shards(release, data, shard_size=8, workers=2, progress=False)
    return data, cat, release, result


def test_shards_equal_preprocessor_output(sample_build):
    data, cat, release, result = sample_build
    shards_dir = data / "dr16" / "shards"
    rows = shard_rows(shards_dir)
    pre = Preprocessor(release)
    rejected = {r["specobjid"]: r for r in result.rejected}
    split = dict(
        zip(
            cat["SPECOBJID"].tolist(),
            split_of(cat["RA"], cat["DEC"], cat["MJD"], release.splits),
            strict=True,
        )
    )
    index = {e["path"]: e for e in read_index(shards_dir)["shards"]}
    for i, sid in enumerate(cat["SPECOBJID"].tolist()):
        ids = (int(cat["PLATE"][i]), int(cat["MJD"][i]), int(cat["FIBERID"][i]))
        path = data / "dr16/spectra" / spec_lite_relpath(cat["RUN2D"][i], *ids)
        try:
            want = pre.preprocess_file(path, float(cat["Z"][i]), ids)
        except SpectrumRejected as err:
            assert sid not in rows
            assert rejected[sid]["reason"] == err.reason
            continue
        assert sid not in rejected
        shard, got = rows[sid]
        assert index[shard]["split"] == split[sid]
        np.testing.assert_array_equal(got["flux"], want.flux)
        np.testing.assert_array_equal(got["ivar"], want.ivar)
        assert got["norm"] == np.float32(want.norm)
        assert got["z"] == np.float32(cat["Z"][i])
        assert got["zerr"] == np.float32(cat["Z_ERR"][i])
        assert (got["plate"], got["mjd"], got["fiberid"]) == ids
        assert (got["ra"], got["dec"]) == (cat["RA"][i], cat["DEC"][i])  # float64, exact
    assert len(rows) + len(rejected) == len(cat["SPECOBJID"])
    assert len(rows) >= 33  # at least the galaxies that pass the cuts
    assert result.accepted == len(rows)


def test_shard_files_format_and_index(sample_build):
    data, _, release, result = sample_build
    shards_dir = data / "dr16" / "shards"
    assert verify_shards(shards_dir) == []
    index = read_index(shards_dir)
    assert index["release"] == "dr16" and index["manifest_sha256"] == release.manifest_sha256
    assert index["format_version"] == 2
    s = release.splits
    assert index["split"] == {
        "key": "healpix",
        "order": "nested",
        "nside": s.nside,
        "salt": s.salt,
        "fractions": [s.train, s.valid, s.test],
        "repeat_radius_arcsec": s.repeat_radius,
    }
    report = json.loads((shards_dir / "build-report.json").read_text())
    assert report["accepted"] == result.accepted
    assert sum(report["rejected_by_reason"].values()) == report["rejected_count"]
    for e in index["shards"]:
        with h5py.File(shards_dir / e["path"], "r") as h5:
            assert h5["flux"].dtype == np.float32 and h5["flux"].shape == (e["rows"], 3921)
            assert h5["flux"].chunks[1] == 3921  # whole rows per chunk
            assert h5["specobjid"].dtype == np.dtype("S32")  # format v2: exact ASCII ids
            assert h5["plate"].dtype == np.int64 and h5["ra"].dtype == np.float64
            assert h5["dec"].dtype == np.float64 and h5.attrs["format_version"] == 2
            np.testing.assert_allclose(h5["wave_obs"][:], release.grid.wave_obs)
            attrs = dict(h5.attrs)
            assert attrs["split"] == e["split"] and attrs["inputs_sha256"] == e["inputs_sha256"]
            ids = [int(v) for v in h5["specobjid"][:]]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            assert (e["specobjid_min"], e["specobjid_max"]) == (str(ids[0]), str(ids[-1]))
            assert json.loads(attrs["object_key"]) == ["plate", "mjd", "fiberid"]
        assert e["rows"] <= 8
    # ordered by split, then ids
    keys = [
        (("train", "valid", "test").index(e["split"]), int(e["specobjid_min"]))
        for e in index["shards"]
    ]
    assert keys == sorted(keys)


def test_rerun_is_a_noop(sample_build):
    data, _, release, first = sample_build
    shards_dir = data / "dr16" / "shards"
    before, index_before = mtimes(shards_dir), read_index(shards_dir)
    t0 = time.perf_counter()
    result = build_shards(release, data, shard_size=8, workers=2, progress=False)
    assert time.perf_counter() - t0 < 5
    assert result.written == 0 and result.kept == len(first.shards)
    assert mtimes(shards_dir) == before
    assert read_index(shards_dir)["shards"] == index_before["shards"]
    # the rejections of kept shards are carried over into the new report
    assert len(result.rejected) == len(first.rejected)


def test_verify_rebuilds_a_kept_shard_whose_bytes_changed(tmp_path):
    layout_sample(tmp_path)
    release = load_release("dr16")
    first = build_shards(release, tmp_path, shard_size=8, workers=1, progress=False)
    shards_dir = tmp_path / "dr16" / "shards"
    victim = shards_dir / first.shards[0]["path"]
    data = bytearray(victim.read_bytes())
    data[-100] ^= 0xFF  # same size, one flipped byte
    victim.write_bytes(bytes(data))
    # by default a kept shard is checked by size only: a no-op
    assert build_shards(release, tmp_path, shard_size=8, workers=1, progress=False).written == 0
    assert verify_shards(shards_dir)  # ... and verify_shards sees the damage
    again = build_shards(release, tmp_path, shard_size=8, workers=1, progress=False, verify=True)
    assert again.written == 1 and again.kept == len(first.shards) - 1
    assert verify_shards(shards_dir) == []


def test_all_rejected_shards_are_not_redone(tmp_path):
    layout_sample(tmp_path)
    release = load_release("dr16")
    first = build_shards(release, tmp_path, shard_size=2, workers=1, progress=False)
    index = read_index(tmp_path / "dr16" / "shards")
    assert index["empty"], "expected a shard whose candidates were all rejected"
    assert all(e["rows"] > 0 for e in index["shards"])
    again = build_shards(release, tmp_path, shard_size=2, workers=1, progress=False)
    assert again.written == 0 and len(again.rejected) == len(first.rejected)


def test_shuffled_catalogue_changes_nothing(tmp_path):
    cat = layout_sample(tmp_path)
    release = load_release("dr16")
    build_shards(release, tmp_path, shard_size=8, workers=1, progress=False)
    shards_dir = tmp_path / "dr16" / "shards"
    before = mtimes(shards_dir)
    perm = np.random.default_rng(0).permutation(len(cat["SPECOBJID"]))
    write_catalog({k: v[perm] for k, v in cat.items()}, tmp_path / "dr16" / "catalog.fits")
    result = build_shards(release, tmp_path, shard_size=8, workers=1, progress=False)
    assert result.written == 0 and mtimes(shards_dir) == before


def test_corrupt_and_missing_files_are_rejected_rest_built(tmp_path):
    cat = layout_sample(tmp_path)
    release = load_release("dr16")
    build_shards(release, tmp_path, shard_size=8, workers=2, progress=False)
    shards_dir = tmp_path / "dr16" / "shards"
    good_before = shard_rows(shards_dir)
    victims = list(good_before)[:3]
    where = {sid: i for i, sid in enumerate(cat["SPECOBJID"].tolist())}
    paths = []
    for sid in victims:
        i = where[sid]
        ids = (cat["PLATE"][i], cat["MJD"][i], cat["FIBERID"][i])
        paths.append(tmp_path / "dr16/spectra" / spec_lite_relpath(cat["RUN2D"][i], *ids))
    raw = paths[0].read_bytes()
    paths[0].write_bytes(raw[: len(raw) // 2])  # truncated download
    paths[1].write_bytes(b"<html>503 Service Unavailable</html>")  # an error page
    paths[2].unlink()
    touched = {good_before[sid][0] for sid in victims}
    result = build_shards(release, tmp_path, shard_size=8, workers=2, progress=False)
    reasons = {r["specobjid"]: r["reason"] for r in result.rejected}
    assert reasons[victims[0]] == "unreadable"
    assert reasons[victims[1]] == "unreadable"
    assert reasons[victims[2]] == "not downloaded"
    after = shard_rows(shards_dir)
    assert set(after) == set(good_before) - set(victims)
    assert result.written == len(touched)  # only the shards holding a victim were rewritten
    assert verify_shards(shards_dir) == []
    # every shard file on disk is listed: superseded ones were removed
    listed = {e["path"] for e in read_index(shards_dir)["shards"]}
    assert {f"{p.parent.name}/{p.name}" for p in shards_dir.glob("*/*")} == listed


def test_dr16_and_dr17_builds_agree_on_splits(tmp_path):
    for rel in ("dr16", "dr17"):
        layout_sample(tmp_path, rel)
        build_shards(load_release(rel), tmp_path, shard_size=8, workers=1, progress=False)
    split = {}
    for rel in ("dr16", "dr17"):
        idx = read_index(tmp_path / rel / "shards")
        split[rel] = {
            int(sid): e["split"]
            for e in idx["shards"]
            for sid in read_shard(tmp_path / rel / "shards" / e["path"])["specobjid"]
        }
    assert split["dr16"] == split["dr17"] and len(split["dr16"]) > 30


def test_shards_of_an_older_format_are_rebuilt_and_the_log_says_so(tmp_path, caplog):
    layout_sample(tmp_path)
    release = load_release("dr16")
    first = build_shards(release, tmp_path, shard_size=8, workers=1, progress=False)
    shards_dir = tmp_path / "dr16" / "shards"
    # make the build look like one of format 1 (split by specobjid): index and shards say v1
    index = read_index(shards_dir)
    index["format_version"] = 1
    for e in index["shards"]:
        path = shards_dir / e["path"]
        with h5py.File(path, "r+") as h5:
            h5.attrs["format_version"] = 1
            del h5["ra"], h5["dec"]
        e["bytes"], e["sha256"] = path.stat().st_size, sha256_file(path)
    (shards_dir / "index.json").write_text(json.dumps(index))
    old_files = {e["path"] for e in index["shards"]}
    # a v1 shard still reads (without ra/dec)
    v1 = read_shard(shards_dir / index["shards"][0]["path"])
    assert "ra" not in v1 and len(v1["specobjid"]) == index["shards"][0]["rows"]
    with caplog.at_level("WARNING", logger="etl.build"):
        again = build_shards(release, tmp_path, shard_size=8, workers=1, progress=False)
    assert "format v1" in caplog.text and "rebuilding every shard" in caplog.text
    assert again.written == len(first.shards) and again.kept == 0
    assert again.replaced_format_version == 1
    report = json.loads((shards_dir / "build-report.json").read_text())
    assert report["replaced_format_version"] == 1
    new = read_index(shards_dir)
    assert new["format_version"] == 2 and not old_files & {e["path"] for e in new["shards"]}
    on_disk = {f"{p.parent.name}/{p.name}" for p in shards_dir.glob("*/*.h5")}
    assert on_disk == {e["path"] for e in new["shards"]}  # the v1 files are gone
    for e in new["shards"]:
        with h5py.File(shards_dir / e["path"], "r") as h5:
            assert h5.attrs["format_version"] == 2 and "ra" in h5
    # and the next run keeps them
    assert build_shards(release, tmp_path, shard_size=8, workers=1, progress=False).written == 0


def test_catalogue_without_positions_asks_for_a_new_fetch(tmp_path):
    cat = layout_sample(tmp_path)
    from astropy.table import Table

    Table({k: v for k, v in cat.items() if k not in ("RA", "DEC")}).write(
        tmp_path / "dr16" / "catalog.fits", overwrite=True
    )
    with pytest.raises(BuildError, match="missing column.*RA.*specetl fetch"):
        build_shards(load_release("dr16"), tmp_path, shard_size=8, workers=1, progress=False)


def test_invalid_positions_are_rejected_before_any_work(tmp_path):
    cat = layout_sample(tmp_path)
    cat["RA"][:2] = np.nan
    cat["DEC"][2] = 91.0
    write_catalog(cat, tmp_path / "dr16" / "catalog.fits")
    result = build_shards(load_release("dr16"), tmp_path, shard_size=8, workers=1, progress=False)
    bad = {r["specobjid"] for r in result.rejected if r["reason"] == "invalid position"}
    assert bad == set(cat["SPECOBJID"][:3].tolist())


# --- generator ---------------------------------------------------------------------------------


def test_corpus_is_on_the_lattice_consistent_and_deterministic(tmp_path):
    mc = from_real
    mc.make_corpus(tmp_path / "a", 120, seed=7)
    mc.make_corpus(tmp_path / "b", 120, seed=7, processes=2)
    cat = read_catalog(tmp_path / "a/dr16/catalog.fits")
    assert len(np.unique(cat["SPECOBJID"])) == 120
    assert ((cat["Z"] > 0) & (cat["Z"] < 0.5)).all()
    assert (cat["CLASS"] == "GALAXY").all()
    release = load_release("dr16")
    pre = Preprocessor(release)
    templates = {round(t.z, 9): t for t in mc.load_templates("dr16")}
    from astropy.io import fits

    for i in range(0, 120, 13):
        ids = (int(cat["PLATE"][i]), int(cat["MJD"][i]), int(cat["FIBERID"][i]))
        rel = spec_lite_relpath(cat["RUN2D"][i], *ids)
        a, b = tmp_path / "a/dr16/spectra" / rel, tmp_path / "b/dr16/spectra" / rel
        assert a.read_bytes() == b.read_bytes()  # same corpus whatever the process count
        out = pre.preprocess_file(a, float(cat["Z"][i]), ids)  # on the grid, ids match HDU2
        assert np.isfinite(out.flux).all() and out.norm > 0
        with fits.open(a) as h:
            assert int(h[2].data["SPECOBJID"][0]) == int(cat["SPECOBJID"][i])
            assert h[2].data["Z"][0] == np.float32(cat["Z"][i])
            assert h[0].header["PLATEID"] == ids[0]
            loglam = h[1].data["loglam"].astype(np.float64)
            flux, ivar = h[1].data["flux"].astype(np.float64), h[1].data["ivar"]
        # restframe wavelengths are the template's: the shift is log10((1+z)/(1+z_t)) up to
        # float32 rounding of loglam (< 0.005 px)
        matches = [
            t
            for t in templates.values()
            if len(t.flux) == len(flux) and np.allclose(ivar, t.ivar / 2, rtol=1e-6)
        ]
        assert len(matches) == 1
        t = matches[0]
        t_loglam = mc.LOGLAM0 + t.loglam_index * mc.DLOGLAM
        shift = loglam - t_loglam
        np.testing.assert_allclose(
            shift, np.log10((1 + cat["Z"][i]) / (1 + t.z)), atol=5e-7
        )  # float32
        good = t.ivar > 0
        pull = (flux[good] - t.flux[good]) * np.sqrt(t.ivar[good])
        assert 0.9 < np.std(pull) < 1.1  # noise drawn from the template's own ivar


@pytest.mark.slow
def test_build_on_corpus_then_growth_rewrites_only_touched_shards(tmp_path):
    mc = from_real
    mc.make_corpus(tmp_path, 1000, seed=1)
    release = load_release("dr16")
    first = build_shards(release, tmp_path, shard_size=200, workers=2, progress=False)
    assert first.accepted == 1000 and not first.rejected
    shards_dir = tmp_path / "dr16" / "shards"
    old = {e["path"]: e for e in read_index(shards_dir)["shards"]}
    # a larger catalogue: 1500 more objects (new plates, larger ids), the first 1000 unchanged
    # (generate 2500 elsewhere; plates are seeded independently, so plate 13000 holds the same
    # objects: copy only the new plates' files, as a fetch would, and the new catalogue)
    mc.make_corpus(tmp_path / "more", 2500, seed=1)
    for plate_dir in (tmp_path / "more/dr16/spectra/26").iterdir():
        if int(plate_dir.name) >= 13001:
            shutil.copytree(plate_dir, tmp_path / "dr16/spectra/26" / plate_dir.name)
    shutil.copy(tmp_path / "more/dr16/catalog.fits", tmp_path / "dr16/catalog.fits")
    grown = build_shards(release, tmp_path, shard_size=200, workers=2, progress=False)
    assert grown.accepted == 2500
    new = {e["path"]: e for e in read_index(shards_dir)["shards"]}
    kept = [p for p in old if p in new and new[p]["sha256"] == old[p]["sha256"]]
    # only the last shard of each split (whose id range is open-ended) may change
    assert len(kept) >= len(old) - 3 and grown.kept == len(kept)
    assert verify_shards(shards_dir) == []
    assert len(shard_rows(shards_dir)) == 2500


def assert_complete_build(release_dir: Path) -> None:
    """After an interrupted build finished: shards verify, every catalogue object is in exactly
    one shard, and the folder holds exactly the shards the index lists (nothing left over)."""
    shards_dir = release_dir / "shards"
    assert verify_shards(shards_dir) == []
    rows = shard_rows(shards_dir)
    cat = read_catalog(release_dir / "catalog.fits")
    assert sorted(rows) == sorted(cat["SPECOBJID"].tolist())  # each accepted object exactly once
    listed = {e["path"] for e in read_index(shards_dir)["shards"]}
    assert {f"{p.parent.name}/{p.name}" for p in shards_dir.glob("*/*")} == listed


@pytest.mark.slow
def test_sigkill_midrun_then_rerun(tmp_path):
    from_real.make_corpus(tmp_path, 3000, seed=2)
    shards_dir = tmp_path / "dr16" / "shards"
    cmd = [
        str(Path(sys.executable).parent / "specetl"),
        "build-shards",
        "--data-dir",
        str(tmp_path),
        "--shard-size",
        "100",
        "--workers",
        "1",
    ]
    for attempt, wait_for in enumerate((4, 12)):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        # kill once some shards are finished (and the next ones are being written)
        while time.time() < deadline and len(list(shards_dir.glob("*/shard-*.h5"))) < wait_for:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if (shards_dir / "index.json").exists():
            # whatever index exists lists only complete shards whose checksums verify
            assert verify_shards(shards_dir) == []
        assert attempt < 1 or (shards_dir / ".journal.jsonl").exists()
    time.sleep(1)  # let the orphaned worker notice its scheduler is gone
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_complete_build(tmp_path / "dr16")
    m = re.search(r"\((\d+) written, (\d+) unchanged\)", done.stdout)
    assert m, done.stdout
    assert int(m.group(1)) > 0 and int(m.group(2)) > 0  # finished work was kept, the rest done


@pytest.mark.slow
def test_a_worker_process_killed_midrun_is_replaced_and_the_build_completes(tmp_path):
    """SIGKILL of the Dask worker process (the out-of-memory killer's way), not of the build:
    the nanny starts a new worker, Dask reruns what the dead one held (the preprocessor is a
    task result, recomputable, not scattered data), and the same run finishes every shard."""
    import psutil

    from_real.make_corpus(tmp_path, 3000, seed=2)
    shards_dir = tmp_path / "dr16" / "shards"
    cmd = [str(Path(sys.executable).parent / "specetl"), "build-shards", "--data-dir",
           str(tmp_path), "--shard-size", "100", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, killed = time.time() + 120, []
    while time.time() < deadline and not killed and proc.poll() is None:
        if len(list(shards_dir.glob("*/shard-*.h5"))) >= 3:
            workers = [
                c
                for c in psutil.Process(proc.pid).children(recursive=True)
                if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in c.cmdline()
            ]
            for w in workers:
                w.kill()
                killed.append(w.pid)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert killed, "no worker process was found to kill"
    assert proc.returncode == 0, err[-3000:]
    assert_complete_build(tmp_path / "dr16")


def test_a_rerun_task_finding_its_own_shard_keeps_it_and_a_different_one_is_refused(tmp_path):
    """A worker killed after linking its shard: Dask reruns the task, which meets the same bytes
    under the final name (accepted); different bytes there are still never overwritten."""
    from etl.shard_index import BuildError
    from etl.shard_task import _link_no_clobber
    from shardio.format import sha256_file

    final, staging = tmp_path / "shard-00001.h5", tmp_path / ".shard-00001.h5.1.part"
    final.write_bytes(b"shard bytes")
    staging.write_bytes(b"shard bytes")
    _link_no_clobber(staging, final, sha256_file(staging))
    staging.write_bytes(b"other bytes")
    with pytest.raises(BuildError, match="exists already"):
        _link_no_clobber(staging, final, sha256_file(staging))
    assert final.read_bytes() == b"shard bytes"


def test_a_worker_that_dies_every_time_is_named_as_such():
    from distributed import KilledWorker

    from etl.shard_task import _task_failure

    dead = _task_failure(KilledWorker("shard-train/shard-00001.h5", "tcp://127.0.0.1:1", 3))
    assert "worker process died each time" in dead and "rerun" in dead
    assert _task_failure(ValueError("bad row")) == "task failed (ValueError: bad row)"


def test_cli_build_shards_prints_counts_per_reason(tmp_path):
    from click.testing import CliRunner

    from cli import main

    layout_sample(tmp_path)
    runner = CliRunner()
    help_text = runner.invoke(main, ["build-shards", "--help"]).output
    assert "Example" in help_text and "--compression" in help_text
    res = runner.invoke(
        main,
        ["build-shards", "--data-dir", str(tmp_path), "--shard-size", "16", "--workers", "1",
         "--compression", "lzf"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "rejected, no normalisation:" in res.output
    with h5py.File(next((tmp_path / "dr16/shards/train").glob("*.h5")), "r") as h5:
        assert h5["flux"].compression == "lzf"
    bad = runner.invoke(main, ["build-shards", "--data-dir", str(tmp_path / "nowhere")])
    assert bad.exit_code != 0 and "catalog" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_existing_scheduler(tmp_path):
    from distributed import LocalCluster

    layout_sample(tmp_path)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as c:
        result = build_shards(
            load_release("dr16"), tmp_path, shard_size=16, scheduler=c.scheduler_address,
            progress=False,
        )  # fmt: skip
    assert result.accepted >= 33 and verify_shards(tmp_path / "dr16" / "shards") == []
