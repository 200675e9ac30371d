"""A re-reduction changes every id but no split: the same real spectra as DR16 and DR17 serve
them, through `fetch` (loopback archive) and `build-shards`.

The bundled BOSS quasars are DR17 files (run2d v5_13_2, real HDU 2 rows). Their DR16 copies
are the same files with the reduction DR16 served, v5_13_0, written into HDU 2's RUN2D and
SPECOBJID (SDSS's bit packing, which reproduces every real id of the sample; see
``benchmarks/split_stability.py``) and laid out in DR16's archive tree. The pixels stay those
of v5_13_2: this tests the ids and the split, not the reduction's flux differences. The
manifests are the shipped DR16/DR17 ones with quasar cuts (their [splits] untouched).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from fetch_support import FAST

from etl.build import build_shards, read_index
from etl.fetch import fetch
from etl.mirror import ArchiveMirror
from etl.release import MANIFEST_DIR, load_release
from shardio import read_shard

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample"
BOSS_DR17 = SAMPLE / "sdss" / "v5_13_2"
HDU2_COLUMNS = (
    *("SPECOBJID", "PLATE", "MJD", "FIBERID", "RUN2D", "CLASS", "Z", "Z_ERR", "ZWARNING"),
    *("PLUG_RA", "PLUG_DEC"),
)


import sdss_ids as stability  # noqa: E402  (SDSS's id packing and the format-1 split)


def _quasar_manifest(tmp_path: Path, name: str) -> Path:
    """The shipped manifest with cuts that select every bundled BOSS quasar."""
    text = (MANIFEST_DIR / f"{name}.toml").read_text()
    text = text.replace('class = "GALAXY"', 'class = "QSO"')
    text = text.replace("z_max = 0.5 ", "z_max = 10.0")
    text = text.replace("z_err_max = 1.0e-4", "z_err_max = 1.0")
    text = text.replace("science_primary = true", "science_primary = false")
    text = text.replace('"lines/', f'"{MANIFEST_DIR}/lines/')
    path = tmp_path / "manifests" / f"{name}.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _hdu2_row(path: Path) -> dict[str, str]:
    """The file's real HDU 2 values of the catalogue columns (floats exactly, via repr)."""
    with fits.open(path) as h:
        row = h[2].data[0]
        return {
            c: repr(float(row[c])) if isinstance(row[c], np.floating) else str(row[c]).strip()
            for c in HDU2_COLUMNS
        }


def _write_csv(rows: list[dict[str, str]], path: Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(HDU2_COLUMNS))
        w.writeheader()
        w.writerows(rows)
    return path


def _dr16_copy(src: Path, tree: Path) -> Path:
    """``src`` (v5_13_2) as DR16 served it: HDU 2 and HDU 0 say v5_13_0, the id follows."""
    plate = src.parent.name
    dst = tree / "v5_13_0" / plate / src.name
    dst.parent.mkdir(parents=True, exist_ok=True)
    with fits.open(src) as h:
        row = h[2].data
        sid = stability.sdss_specobjid(
            int(row["PLATE"][0]), int(row["FIBERID"][0]), int(row["MJD"][0]), "v5_13_0"
        )
        row["RUN2D"][0] = "v5_13_0"
        row["SPECOBJID"][0] = np.uint64(sid)
        h[0].header["RUN2D"] = "v5_13_0"
        h.writeto(dst)
    return dst


def _splits_by_object(data: Path, release: str, result) -> dict[tuple, tuple[str, int, bool]]:
    """(plate, mjd, fiberid) -> (split, specobjid, stored in a shard) of every candidate."""
    shards = data / release / "shards"
    out = {}
    for e in read_index(shards)["shards"]:
        d = read_shard(shards / e["path"])
        for p, m, f, sid in zip(d["plate"], d["mjd"], d["fiberid"], d["specobjid"], strict=True):
            out[(int(p), int(m), int(f))] = (e["split"], int(sid), True)
    for r in result.rejected:  # rows rejected in a shard task keep the split they were given
        if r["shard"]:
            key = (r["plate"], r["mjd"], r["fiberid"])
            out[key] = (r["shard"].split("/")[0], int(r["specobjid"]), False)
    return out


def test_specobjid_packing_reproduces_the_real_ids():
    with open(SAMPLE / "catalog.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        got = stability.sdss_specobjid(
            int(r["PLATE"]), int(r["FIBERID"]), int(r["MJD"]), r["RUN2D"]
        )
        assert got == int(r["SPECOBJID"]), r
    assert stability.run2d_code("v5_13_0") == 1300 and stability.run2d_code("v5_13_2") == 1302


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("releases")
    files = sorted(BOSS_DR17.glob("*/spec-*.fits"))
    assert len(files) >= 30
    dr16_tree = tmp / "archive16"
    catalogs = {
        "dr17": _write_csv([_hdu2_row(f) for f in files], tmp / "dr17.csv"),
        "dr16": _write_csv([_hdu2_row(_dr16_copy(f, dr16_tree)) for f in files], tmp / "dr16.csv"),
    }
    trees = {"dr16": dr16_tree, "dr17": SAMPLE / "sdss"}
    data = tmp / "DATA"
    out = {}
    for name in ("dr16", "dr17"):
        release = load_release(_quasar_manifest(tmp, name))
        with ArchiveMirror(trees[name], release) as mirror:
            report = fetch(
                release,
                data,
                str(catalogs[name]),
                base_url=mirror.base_url,
                config=FAST,
                progress=False,
            )
            assert sum(mirror.served.values()) == len(files)  # every file came over HTTP
        assert report.ok and report.selected == len(files), report.to_dict()
        result = build_shards(release, data, shard_size=8, workers=1, progress=False)
        out[name] = _splits_by_object(data, name, result)
    return files, out


@pytest.mark.slow  # two fetches and two builds on Dask: about a minute
def test_every_object_keeps_its_split_across_the_re_reduction(two_releases):
    files, by_release = two_releases
    dr16, dr17 = by_release["dr16"], by_release["dr17"]
    assert set(dr16) == set(dr17) and len(dr16) == len(files)
    for key in dr16:
        (split16, id16, _), (split17, id17, _) = dr16[key], dr17[key]
        assert id16 != id17  # each release's own id went through to the shards ...
        assert id16 == stability.sdss_specobjid(key[0], key[2], key[1], "v5_13_0")
        assert split16 == split17, key  # ... and the split did not move
    # the shards hold most of them (quasars whose restframe 5300-5850 A is on the grid)
    assert sum(stored for _, _, stored in dr16.values()) >= 20
    assert {s for s, _, _ in dr16.values()} == {"train", "valid", "test"}


@pytest.mark.slow  # two fetches and two builds on Dask: about a minute
def test_the_old_key_would_have_moved_them(two_releases, dr16):
    # the same comparison under format 1's key (a hash of the id): this test can fail
    _, by_release = two_releases
    keys = sorted(by_release["dr16"])
    s = dr16.splits
    fractions = (s.train, s.valid, s.test)
    old16 = stability.v1_split_of([by_release["dr16"][k][1] for k in keys], "v1", fractions)
    old17 = stability.v1_split_of([by_release["dr17"][k][1] for k in keys], "v1", fractions)
    assert (old16 != old17).sum() >= 5


@pytest.mark.slow  # two fetches and two builds on Dask: about a minute
def test_repeat_observations_share_a_split_in_both_releases(two_releases):
    # one SDSS-RM quasar observed on 23 nights (plates 6717, 7338-7340) lands in one split
    _, by_release = two_releases
    for objects in by_release.values():
        rm = [
            s for (plate, _, _), (s, _, _) in objects.items() if plate in (6717, 7338, 7339, 7340)
        ]
        assert len(rm) == 23 and len(set(rm)) == 1
