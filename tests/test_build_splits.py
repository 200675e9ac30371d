"""Split assignment: a keyed hash of the object's HEALPix cell, on real SDSS positions.

Positions: the 10,000 real SkyServer rows in tests/data/splits (ra/dec/plate/mjd/fiberid) and
the bundled sample's own catalogue (repeat observations on plates 411/412 and 7338-7340).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from etl.release import ManifestError, load_release
from etl.splits import (
    SPLITS,
    cell_splits,
    near_cell_edge,
    object_cells,
    repeat_groups,
    sky_cells,
    split_of,
)

DATA = Path(__file__).parent / "data" / "splits"


def _skyserver() -> dict[str, np.ndarray]:
    with open(DATA / "skyserver-dr14-10k-positions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "ra": np.array([float(r["ra"]) for r in rows]),
        "dec": np.array([float(r["dec"]) for r in rows]),
        "mjd": np.array([int(r["mjd"]) for r in rows]),
        "plate": np.array([int(r["plate"]) for r in rows]),
    }


@pytest.fixture(scope="module")
def sky():
    return _skyserver()


def test_fractions_on_10k_real_positions(sky, dr16):
    s = dr16.splits
    split = split_of(sky["ra"], sky["dec"], sky["mjd"], s)
    cells = sky_cells(sky["ra"], sky["dec"], s.nside)
    _, per_cell = np.unique(cells, return_counts=True)
    # objects move in whole cells: the scatter of a fraction p is sqrt(p(1-p)/n_eff) with
    # n_eff = (sum w)^2 / sum w^2 over the occupied cells (118 here: 487 plates, clustered)
    n_eff = per_cell.sum() ** 2 / (per_cell**2).sum()
    assert 100 < n_eff < 200
    for name, want in zip(SPLITS, (s.train, s.valid, s.test), strict=True):
        got = np.mean(split == name)
        assert abs(got - want) < 3 * np.sqrt(want * (1 - want) / n_eff), (name, got)
    # and per cell, over every cell of the sphere (12,288 at nside 32): within 1%
    every = cell_splits(np.arange(12 * s.nside**2), s.nside, s.salt, (s.train, s.valid, s.test))
    for name, want in zip(SPLITS, (s.train, s.valid, s.test), strict=True):
        assert abs(np.mean(every == name) - want) < 0.01, name


def test_independent_of_order_and_of_other_objects(sky, dr16, sample):
    s = dr16.splits
    base = split_of(sky["ra"], sky["dec"], sky["mjd"], s)
    perm = np.random.default_rng(2).permutation(len(base))
    got = split_of(sky["ra"][perm], sky["dec"][perm], sky["mjd"][perm], s)
    assert (got == base[perm]).all()
    extra_ra = np.array([o_ra for o_ra, _ in _sample_positions()])
    extra_dec = np.array([o_dec for _, o_dec in _sample_positions()])
    grown = split_of(
        np.r_[extra_ra, sky["ra"][:500]],
        np.r_[extra_dec, sky["dec"][:500]],
        np.r_[np.full(len(extra_ra), 51000), sky["mjd"][:500]],
        s,
    )
    assert (grown[len(extra_ra) :] == base[:500]).all()
    assert (split_of(sky["ra"][:7], sky["dec"][:7], sky["mjd"][:7], s) == base[:7]).all()


def _sample_positions() -> list[tuple[float, float]]:
    with open(Path(__file__).parent.parent / "sample" / "catalog.csv", newline="") as fh:
        return [(float(r["RA"]), float(r["DEC"])) for r in csv.DictReader(fh)]


def test_dr16_and_dr17_share_the_split_settings(dr16, dr17):
    # the split depends on position, nside, salt and fractions only: equal settings, equal splits
    assert dr16.manifest_sha256 != dr17.manifest_sha256
    assert dr16.splits == dr17.splits


def test_salt_and_nside_matter(sky, dr16):
    s = dr16.splits
    a = split_of(sky["ra"], sky["dec"], sky["mjd"], s)
    b = split_of(sky["ra"], sky["dec"], sky["mjd"], dataclasses.replace(s, salt="other"))
    c = split_of(sky["ra"], sky["dec"], sky["mjd"], dataclasses.replace(s, nside=64))
    assert (a != b).mean() > 0.2 and (a != c).mean() > 0.2


def test_close_pairs_share_a_split_far_more_often_than_chance(sky, dr16):
    # real objects within 0.15 deg (about 1 Mpc at z = 0.1): same cell unless an edge runs
    # between them; a per-object hash would split train/test 21% of such pairs
    s = dr16.splits
    split = split_of(sky["ra"], sky["dec"], sky["mjd"], s)
    xyz = np.stack(
        [
            np.cos(np.radians(sky["dec"])) * np.cos(np.radians(sky["ra"])),
            np.cos(np.radians(sky["dec"])) * np.sin(np.radians(sky["ra"])),
            np.sin(np.radians(sky["dec"])),
        ],
        axis=1,
    )
    i, j = np.nonzero(np.triu(xyz[:3000] @ xyz[:3000].T >= np.cos(np.radians(0.15)), k=1))
    assert len(i) > 1000
    crossed = np.mean(
        [{a, b} == {"train", "test"} for a, b in zip(split[i], split[j], strict=True)]
    )
    assert crossed < 0.05, crossed


def test_repeat_observations_in_the_sample_land_together(sample, dr16):
    ra = np.array([ra for ra, _ in _sample_positions()])
    dec = np.array([dec for _, dec in _sample_positions()])
    mjd = np.array([o.mjd for o in sample])
    split = split_of(ra, dec, mjd, dr16.splits)
    # 411: one galaxy on three nights; 6717 and 7338-7340: one quasar (SDSS-RM) on 23 nights,
    # its position on plate 6717 differs by 0.018" from the others
    galaxy = [k for k, o in enumerate(sample) if o.plate == 411]
    # on plate 412, 8 nights of a galaxy 15" from 411's (z 0.0286 vs 0.0293): one cell, so
    # together too (not merged as repeats: 15" is beyond the 3" radius)
    near = [k for k, o in enumerate(sample) if o.plate == 412 and abs(o.z - 0.0286) < 0.0002]
    quasar = [k for k, o in enumerate(sample) if o.plate in (6717, 7338, 7339, 7340)]
    assert len(galaxy) == 3 and len(near) == 8 and len(quasar) >= 20
    assert len(set(zip(ra[quasar], dec[quasar], strict=True))) > 1  # not bit-identical
    for group in (galaxy, galaxy + near, quasar):
        assert len(set(split[group])) == 1
    assert len(set(repeat_groups(ra[quasar], dec[quasar], 3.0))) == 1


def test_real_repeats_two_arcsec_apart_follow_the_earliest_across_a_cell_edge(sky):
    # two real stars observed twice, 2.1" and 2.2" apart (plates 2558/2568 and 294/2901)
    group = repeat_groups(sky["ra"], sky["dec"], 3.0)
    labels, counts = np.unique(group, return_counts=True)
    pairs = [np.flatnonzero(group == g) for g in labels[counts > 1]]
    assert sorted(sorted(sky["plate"][p].tolist()) for p in pairs) == [[294, 2901], [2558, 2568]]
    found = 0
    for pair in pairs:
        ra, dec, mjd = sky["ra"][pair], sky["dec"][pair], sky["mjd"][pair]
        earliest = int(np.argmin(mjd))
        # resolutions at which a cell edge runs between them: both follow the earliest
        for nside in (2**k for k in range(5, 18)):
            cells = sky_cells(ra, dec, nside)
            if cells[0] == cells[1]:
                continue
            found += 1
            got = object_cells(ra, dec, mjd, nside, 3.0)
            assert got[0] == got[1] == cells[earliest], nside
            assert (object_cells(ra, dec, mjd, nside, 0.0) == cells).all()  # radius 0: no merge
    assert found >= 2


def test_edge_filter_finds_every_straddling_pair(sky):
    # real positions, each with 8 partners 2" away in seeded random directions (synthetic
    # offsets): every partner pair that a nside-32 edge separates must be merged
    rng = np.random.default_rng(0)
    ra0 = np.repeat(sky["ra"], 8)
    dec0 = np.repeat(sky["dec"], 8)
    phi = rng.uniform(0, 2 * np.pi, len(ra0))
    ra1 = (ra0 + 2.0 / 3600 * np.cos(phi) / np.cos(np.radians(dec0))) % 360
    dec1 = dec0 + 2.0 / 3600 * np.sin(phi)
    straddle = sky_cells(ra0, dec0, 32) != sky_cells(ra1, dec1, 32)
    assert straddle.sum() >= 5
    assert near_cell_edge(ra0, dec0, 32, 3.0)[straddle].all()
    assert near_cell_edge(ra1, dec1, 32, 3.0)[straddle].all()
    assert near_cell_edge(ra0, dec0, 32, 3.0).mean() < 0.05
    # one pair at a time (the real positions themselves are up to 2.2" apart)
    for k in np.flatnonzero(straddle)[:20]:
        ra, dec = np.array([ra0[k], ra1[k]]), np.array([dec0[k], dec1[k]])
        got = object_cells(ra, dec, np.array([55000, 56000]), 32, 3.0)
        assert got[0] == got[1] == sky_cells(ra[:1], dec[:1], 32)[0]


def test_many_copies_of_one_position_cost_one_point():
    ra, dec = np.zeros(20_000), np.zeros(20_000)  # e.g. a catalogue filling missing positions
    assert (repeat_groups(ra, dec, 3.0) == 0).all()


def test_manifest_checks_nside_and_radius(tmp_path, dr16):
    text = dr16.manifest_path.read_text()
    for bad, match in (
        ("nside = 32", "nside = 33"),
        ("repeat_radius = 3.0", "repeat_radius = 99.0"),
    ):
        path = tmp_path / "bad.toml"
        path.write_text(
            text.replace(bad, match).replace('"lines/', f'"{dr16.manifest_path.parent}/lines/')
        )
        with pytest.raises(ManifestError, match="splits"):
            load_release(path)
