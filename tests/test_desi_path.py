"""DESI through the whole path: fetch (loopback archive in DESI's layout) -> build-shards ->
train -> embed, with TARGETID/SURVEY/PROGRAM carried exactly; and the sky-cell split shared
with SDSS."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy.table import Table, vstack
from desi_support import DESI, real_zall_rows, serve, synthetic_sky
from fetch_support import FAST, SAMPLE_CATALOG

from etl.build import build_shards
from etl.catalog import as_catalog
from etl.fetch import fetch
from etl.mirror import ArchiveMirror, Fault, FaultPlan
from etl.release import load_release
from etl.splits import split_of

REAL = 39089837499744649  # the real healpix target with a real redshift (special/dark 27247)


@pytest.fixture(scope="module")
def dr1():
    return load_release("desi-dr1")


def _real_fetch_and_build(dr1, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        serve(m, dr1, ("special", "dark", 27247), DESI / "coadd-special-dark-27247.fits", tmp_path)
        report = fetch(dr1, data, catalog_source=str(DESI / "redrock-special-dark-27247.fits"),
                       base_url=m.base_url, config=FAST)  # fmt: skip
    assert report.ok
    result = build_shards(dr1, data, workers=1)
    assert result.accepted == 1 and not result.rejected
    return data / "desi-dr1" / "shards"


def test_real_fixture_fetch_build_carries_the_ids_exactly(dr1, tmp_path):
    shards = _real_fetch_and_build(dr1, tmp_path)
    index = json.loads((shards / "index.json").read_text())
    assert index["object_key"] == ["targetid", "survey", "program"] and index["npix"] == 4360
    (entry,) = index["shards"]
    with h5py.File(shards / entry["path"]) as h5:
        assert h5["targetid"].dtype == np.int64 and h5["targetid"][:].tolist() == [REAL]
        assert h5["specobjid"][0].decode() == str(REAL)
        assert (h5["survey"][0], h5["program"][0]) == (b"special", b"dark")
        assert h5["z"][0] == pytest.approx(0.0072697, abs=1e-7)
        assert h5["flux"].shape == (1, 4360) and (h5["ivar"][0] > 0).sum() > 3500
    again = build_shards(dr1, tmp_path / "data", workers=1)  # unchanged inputs: none rewritten
    assert again.written == 0 and again.kept == 1


def test_a_desi_target_and_an_sdss_row_at_its_position_share_a_split(dr1, tmp_path):
    shards = _real_fetch_and_build(dr1, tmp_path)
    (entry,) = json.loads((shards / "index.json").read_text())["shards"]
    desi_split = entry["split"]
    # a real SDSS catalogue row (the bundled sample's first galaxy), placed 1" from the target
    with open(SAMPLE_CATALOG, newline="") as f:
        row = dict(next(csv.DictReader(f)))
    real = real_zall_rows()
    row["RA"] = str(float(real["TARGET_RA"][0]) + 1.0 / 3600)
    row["DEC"] = str(float(real["TARGET_DEC"][0]))
    dr16 = load_release("dr16")
    cat = as_catalog({k: np.array([v]) for k, v in row.items()}, "sdss row", dr16.key)
    sdss_split = split_of(cat["RA"], cat["DEC"], cat["MJD"], dr16.splits)[0]
    assert sdss_split == desi_split
    # and the other way round: every split reachable, so the agreement is not a constant
    ra = np.linspace(0, 359, 200)
    assert set(split_of(ra, np.zeros(200), np.zeros(200, int), dr16.splits)) == {
        "train",
        "valid",
        "test",
    }


@pytest.mark.slow
def test_desi_through_train_and_embed(dr1, tmp_path):
    from model.embed import embed_shards, read_embedding
    from model.train import TrainConfig, train

    data = tmp_path / "data"
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        serve(m, dr1, ("special", "dark", 27247), DESI / "coadd-special-dark-27247.fits", tmp_path)
        synthetic = synthetic_sky(dr1, n_coadds=10, per_coadd=6, tmp=tmp_path, mirror=m)
        real = real_zall_rows()[:1]  # the real target, as its redrock file has it
        real.remove_column("SOURCE")
        real["SURVEY"], real["PROGRAM"], real["HEALPIX"] = ["special"], ["dark"], [27247]
        real["ZCAT_PRIMARY"] = [True]
        zall = vstack([synthetic, real])
        zall.write(tmp_path / "zall-SYNTHETIC.fits")
        report = fetch(dr1, data, catalog_source=str(tmp_path / "zall-SYNTHETIC.fits"),
                       base_url=m.base_url, config=FAST)  # fmt: skip
    assert report.ok and report.coadds == len(set(zall["HEALPIX"]))
    result = build_shards(dr1, data)
    assert result.accepted == len(zall)
    shards = data / "desi-dr1" / "shards"
    run = tmp_path / "run"
    train(
        TrainConfig(
            shards=str(shards), run=str(run), epochs=1, batch_size=8, device="cpu", progress=False
        )
    )
    out = embed_shards(run, tmp_path / "embedding.fits", split="all", device="cpu")
    table, header = read_embedding(out)
    ids = [int(t) for t in table["targetid"]]
    assert sorted(ids) == sorted(int(t) for t in zall["TARGETID"])
    i = ids.index(REAL)
    assert (str(table["survey"][i]), str(table["program"][i])) == ("special", "dark")
    assert str(table["specobjid"][i]) == str(REAL)
    assert Table.read(out)["TARGETID"].dtype.kind == "i"

    # the real coadd embedded from its own file with its real redrock table: the same
    # preprocessing as build-shards, so the latents of its shard row
    from click.testing import CliRunner

    from cli import main

    coadd = DESI / "coadd-special-dark-27247.fits"
    base = ["embed", "--run", str(run), "--device", "cpu", "--spectra", str(coadd)]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "coadd.fits"),
                                    "--catalog", str(DESI / "redrock-special-dark-27247.fits")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "1 spectra embedded from 1 file(s), 0 skipped" in res.output
    got, got_header = read_embedding(tmp_path / "coadd.fits")
    assert [int(t) for t in got["targetid"]] == [REAL] and got_header["RELEASE"] == "desi-dr1"
    assert (str(got["survey"][0]), str(got["program"][0])) == ("special", "dark")
    assert np.allclose(got["s"][0], table["s"][i], atol=1e-5)
    assert np.isclose(got["chi2"][0], table["chi2"][i], rtol=1e-4)
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "none.fits")])
    assert res.exit_code == 1 and "hold no redshift" in res.output, res.output


def _synthetic_release_fetched(dr1, tmp: Path, n_coadds: int) -> tuple[Path, Table]:
    data = tmp / "data"
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        zall = synthetic_sky(dr1, n_coadds=n_coadds, per_coadd=6, tmp=tmp, mirror=m)
        zall.write(tmp / "zall-SYNTHETIC.fits")
        report = fetch(dr1, data, catalog_source=str(tmp / "zall-SYNTHETIC.fits"),
                       base_url=m.base_url, config=FAST)  # fmt: skip
    assert report.ok
    return data, zall


def test_desi_build_memory_stays_flat_as_the_catalogue_grows(dr1, tmp_path):
    """SYNTHETIC coadds of real spectra: six times the targets must not raise the build's peak
    (numpy's allocations, traced): rows stream into shards of --shard-size, not into one array
    of the whole catalogue (35 kB a target: 170 GB for DR1's five million)."""
    import tracemalloc

    peaks, shards = {}, {}
    for n_coadds in (2, 12):
        data, zall = _synthetic_release_fetched(dr1, tmp_path / str(n_coadds), n_coadds)
        tracemalloc.start()
        try:
            result = build_shards(dr1, data, shard_size=4, workers=1)
            peaks[n_coadds] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.accepted == len(zall) and not result.rejected
        shards[n_coadds] = data / "desi-dr1" / "shards"
    row_bytes = 2 * 4 * dr1.grid.npix  # flux + ivar, float32
    grown = peaks[12] - peaks[2]
    assert grown < 15 * row_bytes, f"peak grew by {grown / row_bytes:.0f} rows' worth for 60 rows"
    index = json.loads((shards[12] / "index.json").read_text())
    assert max(e["rows"] for e in index["shards"]) <= 4
    assert sum(e["rows"] for e in index["shards"]) == 72
    # shards in coadd order, TARGETID order within a coadd; the same bytes when rebuilt
    for name in ("train", "valid", "test"):
        ids = []
        for e in (e for e in index["shards"] if e["split"] == name):
            with h5py.File(shards[12] / e["path"]) as h5:
                ids += h5["targetid"][:].tolist()
        assert ids == sorted(ids)  # synthetic_sky numbers targets coadd after coadd
    # the same bytes again on two Dask worker processes (the build above ran in this one)
    again = build_shards(dr1, shards[12].parent.parent, shard_size=4, rebuild=True, workers=2)
    assert [e["sha256"] for e in again.shards] == [e["sha256"] for e in index["shards"]]


def _jobs(sizes, start=0, healpix=None):
    """Coadd jobs main/dark/<healpix> of ``sizes`` rows (catalogue rows numbered from ``start``,
    TARGETID = 1000 + row)."""
    from etl.desi.build import CoaddJob

    jobs = []
    for k, n in enumerate(sizes):
        rows = np.arange(start, start + n)
        h = healpix[k] if healpix else 100 * k
        job = CoaddJob(
            f"c{h}.fits", f"c{h}", rows, 1000 + rows, np.full(n, 0.1), ("main", "dark", h)
        )
        jobs.append(job)
        start += n
    return jobs


def test_shards_are_planned_from_the_catalogue_alone():
    """Each split's rows, coadd after coadd, are cut into equal shards of at most shard_size rows
    before anything is read, so every shard can be written by its own task; a coadd whose rows
    straddle a boundary is read by both shards, each for its own rows only."""
    from etl.desi.build import plan_shards

    rng = np.random.default_rng(0)
    split = rng.choice(np.array(["train", "valid", "test"]), size=40, p=[0.7, 0.15, 0.15])
    jobs = _jobs((9, 1, 14, 0, 16))  # an empty coadd group among them
    plans = plan_shards(jobs, split, shard_size=5)
    assert sorted(np.concatenate([p.rows for p in plans]).tolist()) == list(range(40))
    for name in ("train", "valid", "test"):
        mine = [p for p in plans if p.split == name]
        in_order = [r for job in jobs for r in job.rows if split[r] == name]
        assert len(mine) == -(-len(in_order) // 5)
        sizes = [len(p.rows) for p in mine]
        assert max(sizes) <= 5 and max(sizes) - min(sizes) <= 1  # equal pieces
        assert all((split[p.rows] == name).all() for p in mine)
        assert np.concatenate([p.rows for p in mine]).tolist() == in_order
        for p in mine:  # each coadd's piece keeps its targets, redshifts and key with its rows
            for job in p.jobs:
                assert (job.targetids == 1000 + job.rows).all() and len(job.z) == len(job.rows)
                assert job.coadd == ("main", "dark", int(job.label[1:]))
            assert p.first["targetid"] == str(1000 + p.rows[0]) and p.path == ""
    straddling = {job.label for p in plans for job in p.jobs}
    assert sum(job.label == "c400" for p in plans for job in p.jobs) > 1
    assert "c300" not in straddling
    again = plan_shards(jobs, split, 5)  # the catalogue alone decides
    assert [p.rows.tolist() for p in again] == [p.rows.tolist() for p in plans]


def test_a_grown_catalogue_changes_only_the_shards_its_new_targets_fall_in():
    """The previous index's shard starts are the next plan's boundaries: targets in a new coadd
    and new targets of an old coadd change only the ranges they fall into (cut again into equal
    pieces when they outgrow shard_size); every other shard is planned with the same rows."""
    from etl.desi.build import plan_shards

    rng = np.random.default_rng(1)
    split = rng.choice(np.array(["train", "valid", "test"]), size=200, p=[0.7, 0.15, 0.15])
    old_jobs = _jobs((30, 25, 40, 35), healpix=[100, 200, 400, 500])
    plans = plan_shards(old_jobs, split, shard_size=8)
    previous = [{"split": p.split, "first": p.first, "path": f"x{k}"} for k, p in enumerate(plans)]
    # growth: a new coadd (healpix 300, between 200 and 400) and 5 targets appended to coadd 500
    grown = _jobs((30, 25), healpix=[100, 200]) + _jobs((12,), start=130, healpix=[300])
    grown += _jobs((40,), start=55, healpix=[400])
    last = _jobs((35,), start=95, healpix=[500])[0]
    extra = np.arange(142, 147)  # new catalogue rows; TARGETIDs above the coadd's old ones
    grown.append(type(last)(last.path, last.label, np.r_[last.rows, extra],
                            np.r_[last.targetids, 5000 + extra], np.full(40, 0.1), last.coadd))  # fmt: skip
    new_rows = set(range(130, 147))
    replans = plan_shards(grown, split, 8, previous)

    def key(job, i):
        return (*job.coadd, int(job.targetids[i]))

    joined: dict[int, int] = {}  # old plan (index) -> new rows in its range [first, next first)
    for name in ("train", "valid", "test"):
        mine = [k for k, p in enumerate(plans) if p.split == name]
        starts = [(plans[k].first["survey"], plans[k].first["program"], plans[k].first["healpix"],
                   int(plans[k].first["targetid"])) for k in mine]  # fmt: skip
        for job in grown:
            for i, r in enumerate(job.rows):
                if r in new_rows and split[r] == name:
                    at = max([j for j, s in enumerate(starts) if s <= key(job, i)], default=0)
                    joined[mine[at]] = joined.get(mine[at], 0) + 1
    before = {(p.split, tuple(p.rows.tolist())) for k, p in enumerate(plans) if k not in joined}
    after = {(p.split, tuple(p.rows.tolist())) for p in replans}
    assert before <= after  # every untouched shard is planned again with the same rows
    assert 0 < len(joined) < len(plans)
    # each range that took new rows is cut again into equal pieces, and nothing else changes
    recut = sum(-(-(len(plans[k].rows) + a) // 8) for k, a in joined.items())
    assert len(after - before) == recut == len(replans) - len(before)
    changed = {r for _, rows in after - before for r in rows}
    assert changed == new_rows | {r for k in joined for r in plans[k].rows.tolist()}
    assert all(len(p.rows) <= 8 for p in replans)
    assert sorted(np.concatenate([p.rows for p in replans]).tolist()) == list(range(147))
    assert plan_shards(grown, split, 8, previous) and [p.rows.tolist() for p in replans] == [
        p.rows.tolist() for p in plan_shards(grown, split, 8, previous)
    ]
    # an entry whose start cannot be read (an older or hand-edited index) is one boundary fewer
    broken = [dict(e, first={"survey": "main"}) if k == 1 else e for k, e in enumerate(previous)]
    broken += [{"split": "train", "first": None}, {"split": "train", "first": {"healpix": "x"}}]
    fewer = [e for k, e in enumerate(previous) if k != 1]
    assert [p.rows.tolist() for p in plan_shards(grown, split, 8, broken)] == [
        p.rows.tolist() for p in plan_shards(grown, split, 8, fewer)
    ]


def test_a_killed_build_keeps_its_finished_shards_and_a_touched_coadd_rewrites_its_own(
    dr1, tmp_path, monkeypatch
):
    """SYNTHETIC coadds of real spectra. A rebuild stopped after three shards leaves the old
    index over intact files. A first build stopped after three shards leaves no index but a
    journal; the rerun writes only the rest, and the shards are the bytes of an uninterrupted
    build. A coadd that changes on disk rewrites only the shards that hold its targets."""
    import os
    import shutil

    import etl.desi.build as desi_build
    from etl.build import verify_shards

    data, zall = _synthetic_release_fetched(dr1, tmp_path, 4)
    shards = data / "desi-dr1" / "shards"
    clean = build_shards(dr1, data, shard_size=4, workers=1)
    want = {e["path"]: e["sha256"] for e in clean.shards}
    in_order = [e["sha256"] for e in clean.shards]
    real_write, calls = desi_build.write_planned_shard, []

    def write(*args):
        calls.append(args[2].path)
        if len(calls) == 4 and stop:
            raise RuntimeError("killed")  # the fourth shard never finishes
        return real_write(*args)

    def on_disk() -> set[str]:
        return {f"{p.parent.name}/{p.name}" for p in shards.glob("*/*")}

    monkeypatch.setattr(desi_build, "write_planned_shard", write)
    stop = True
    with pytest.raises(RuntimeError, match="killed"):
        build_shards(dr1, data, shard_size=4, rebuild=True, workers=1)
    index = json.loads((shards / "index.json").read_text())
    assert {e["path"]: e["sha256"] for e in index["shards"]} == want  # the old index, intact
    assert verify_shards(shards) == [] and not set(calls) & set(want)  # new files, new names
    stop, calls[:] = False, []
    kept = build_shards(dr1, data, shard_size=4, workers=1)  # the old shards are still good
    assert (kept.kept, kept.written, calls) == (len(want), 0, [])
    assert on_disk() == set(want)  # the killed rebuild's files are swept

    shutil.rmtree(shards)
    stop = True
    with pytest.raises(RuntimeError, match="killed"):
        build_shards(dr1, data, shard_size=4, workers=1)
    assert not (shards / "index.json").exists()
    assert len((shards / ".journal.jsonl").read_text().splitlines()) == 3
    stop, calls[:] = False, []
    again = build_shards(dr1, data, shard_size=4, workers=1)
    assert (again.kept, again.written) == (3, len(want) - 3) and len(calls) == len(want) - 3
    assert {e["path"]: e["sha256"] for e in again.shards} == want
    assert again.accepted == len(zall) and not (shards / ".journal.jsonl").exists()
    # one coadd touched: only the shards holding its targets are written again (new names)
    coadd = sorted((data / "desi-dr1" / "coadds").rglob("coadd-*.fits"))[1]
    st = coadd.stat()
    os.utime(coadd, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls[:] = []
    touched = build_shards(dr1, data, shard_size=4, workers=1)
    assert 0 < len(calls) < len(want) and touched.written == len(calls)
    assert touched.kept == len(want) - len(calls)
    assert [e["sha256"] for e in touched.shards] == in_order  # same content, same bytes
    assert on_disk() == {e["path"] for e in touched.shards} and set(calls) <= on_disk()
    # a flipped byte keeps the size: only --verify (sha256 of every kept shard) finds it
    victim = touched.shards[0]["path"]
    raw = bytearray((shards / victim).read_bytes())
    raw[-100] ^= 0xFF
    (shards / victim).write_bytes(bytes(raw))
    assert build_shards(dr1, data, shard_size=4, workers=1).written == 0
    calls[:] = []
    checked = build_shards(dr1, data, shard_size=4, workers=1, verify=True)
    assert checked.written == 1 and len(calls) == 1 and victim not in on_disk()
    assert [e["sha256"] for e in checked.shards] == in_order


def test_targets_added_to_the_catalogue_rewrite_only_the_shards_they_join(dr1, tmp_path):
    """SYNTHETIC coadds of real spectra. Built without one coadd's targets, then with them: the
    rerun writes only the shards of the key range they fall into; every other shard keeps its
    file and bytes, and every target is built. When they leave again, only the shards that
    held them are written."""
    data, zall = _synthetic_release_fetched(dr1, tmp_path, 5)
    root = data / "desi-dr1"
    full = Table.read(root / "catalog.fits")
    split = split_of(full["RA"], full["DEC"], np.zeros(len(full), int), dr1.splits)
    pixels = sorted(set(full["HEALPIX"][split == "train"].tolist()))
    assert len(pixels) >= 3
    later = full["HEALPIX"] == pixels[1]  # a train coadd's six targets arrive later
    full[~later].write(root / "catalog.fits", overwrite=True)
    first = build_shards(dr1, data, shard_size=4, workers=1)
    assert first.accepted == len(zall) - 6
    full.write(root / "catalog.fits", overwrite=True)
    grown = build_shards(dr1, data, shard_size=4, workers=1)
    assert grown.accepted == len(zall) and not grown.rejected
    before = {e["path"]: e["sha256"] for e in first.shards}
    after = {e["path"]: e["sha256"] for e in grown.shards}
    same = {p for p in before if after.get(p) == before[p]}
    assert len(same) == len(before) - 1 == grown.kept  # one old range took the six
    assert grown.written == len(after) - len(same) >= 2  # 6 + its rows: cut again
    assert all(e["rows"] <= 4 for e in grown.shards)
    new_ids = {int(t) for t in full["TARGETID"][later]}
    for p in set(after) - same:
        assert new_ids & set(_ids(root / "shards" / p)) or p not in before
    # and when they leave again, only the shards that held them are written
    holding = {p for p in after if new_ids & set(_ids(root / "shards" / p))}
    full[~later].write(root / "catalog.fits", overwrite=True)
    shrunk = build_shards(dr1, data, shard_size=4, workers=1)
    assert shrunk.accepted == len(zall) - 6
    assert shrunk.kept == len(after) - len(holding)  # a shard of new targets only is gone
    assert 1 <= shrunk.written <= len(holding) and not holding & {e["path"] for e in shrunk.shards}
    assert {p: h for p, h in after.items() if p not in holding} == {
        e["path"]: e["sha256"] for e in shrunk.shards if e["path"] in after
    }


def test_bad_coadds_and_a_stray_target_are_counted_and_the_rest_is_built(dr1, tmp_path):
    """SYNTHETIC coadds of real spectra, built on two Dask workers: a truncated coadd, a missing
    one and a catalogue target its coadd does not hold are each rejected by name and counted,
    every other target is built; once the files are back, the rerun builds them all."""
    data, zall = _synthetic_release_fetched(dr1, tmp_path, 4)
    root = data / "desi-dr1"
    coadds = sorted((root / "coadds").rglob("coadd-*.fits"))
    truncated, missing = coadds[0], coadds[1]
    saved = {p: p.read_bytes() for p in (truncated, missing)}
    truncated.write_bytes(saved[truncated][:5000])
    missing.unlink()
    catalog = Table.read(root / "catalog.fits")
    original = catalog.copy()
    stray = int(catalog["TARGETID"][-1])
    catalog["TARGETID"][-1] = 7  # a target no coadd holds
    catalog.write(root / "catalog.fits", overwrite=True)

    result = build_shards(dr1, data, shard_size=4, workers=2)
    report = json.loads((root / "shards" / "build-report.json").read_text())
    by_reason = report["rejected_by_reason"]
    assert by_reason == {"unreadable coadd": 6, "missing coadd": 6, "not in coadd": 1}
    assert result.accepted == len(zall) - 13 == report["accepted"]
    (stray_row,) = [r for r in report["rejected"] if r["reason"] == "not in coadd"]
    assert stray_row["targetid"] == "7" and stray_row["detail"].endswith(".fits")
    assert all(truncated.name in r["detail"] for r in report["rejected"]
               if r["reason"] == "unreadable coadd")  # fmt: skip

    for p, blob in saved.items():
        p.write_bytes(blob)
    original.write(root / "catalog.fits", overwrite=True)
    again = build_shards(dr1, data, shard_size=4, workers=2)
    assert again.accepted == len(zall) and not again.rejected
    assert stray in {int(t) for e in again.shards for t in _ids(root / "shards" / e["path"])}


def _ids(path: Path) -> list[int]:
    with h5py.File(path) as h5:
        return h5["targetid"][:].tolist()


def test_fetch_on_dask_workers_stores_the_same_coadds_and_counts_the_same_failures(
    dr1, tmp_path, monkeypatch, caplog
):
    """SYNTHETIC coadds of real spectra on a loopback archive, one of them missing upstream:
    fetched by threads of this process and by two Dask worker processes in batches of two
    coadds, the stored files are the same bytes and the reports count the same."""
    import etl.desi.fetch as desi_fetch

    monkeypatch.setattr(desi_fetch, "BATCH", 2)
    caplog.set_level(logging.INFO, logger="etl.cluster")
    with ArchiveMirror(None, dr1, prefix="/public") as m:
        zall = synthetic_sky(dr1, n_coadds=5, per_coadd=3, tmp=tmp_path, mirror=m)
        zall.write(tmp_path / "zall-SYNTHETIC.fits")
        gone = f"coadd-main-dark-{int(zall['HEALPIX'][0])}.fits"
        m.faults = FaultPlan({gone: [Fault("status", 404)]}, always=True)
        reports, files = {}, {}
        for label, kw in (("threads", {}), ("dask", {"workers": 2})):
            data = tmp_path / label
            reports[label] = fetch(dr1, data, catalog_source=str(tmp_path / "zall-SYNTHETIC.fits"),
                                   base_url=m.base_url, config=FAST, **kw)  # fmt: skip
            root = data / "desi-dr1" / "coadds"
            files[label] = {p.relative_to(root): p.read_bytes() for p in root.rglob("*.fits")}
    threads, dask = reports["threads"], reports["dask"]
    assert files["dask"] == files["threads"] and len(files["dask"]) == 4
    assert (dask.downloaded, dask.n_failed) == (threads.downloaded, threads.n_failed) == (12, 3)
    assert dask.to_dict()["failed_by_reason"] == threads.to_dict()["failed_by_reason"]
    assert {r["healpix"] for rows in dask.failed.values() for r in rows} == {
        int(zall["HEALPIX"][0])
    }
    assert "local Dask cluster with 2 worker process(es)" in caplog.text  # workers were used
