"""Split assignment: a keyed hash of specobjid, stable under reordering, growth and release."""

from __future__ import annotations

import numpy as np

from etl.release import load_release
from etl.shards import split_of


def _fractions(release):
    s = release.splits
    return (s.train, s.valid, s.test)


def _ids(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(1, 2**63, size=n, dtype=np.uint64))


def test_fractions_within_one_percent_at_10k():
    r = load_release("dr16")
    ids = _ids(10_000)
    split = split_of(ids, r.splits.salt, _fractions(r))
    for name, want in zip(("train", "valid", "test"), _fractions(r), strict=True):
        assert abs(np.mean(split == name) - want) < 0.01, name


def test_independent_of_order_and_of_other_objects():
    r = load_release("dr16")
    ids = _ids(3000, seed=1)
    base = dict(zip(ids.tolist(), split_of(ids, r.splits.salt, _fractions(r)), strict=True))
    shuffled = np.random.default_rng(2).permutation(ids)
    grown = np.concatenate([shuffled[:1000], _ids(5000, seed=3), shuffled[1000:]])
    for sample in (shuffled, grown, ids[:7]):
        got = split_of(sample, r.splits.salt, _fractions(r))
        for sid, split in zip(sample.tolist(), got, strict=True):
            if sid in base:
                assert base[sid] == split


def test_same_split_in_dr16_and_dr17():
    r16, r17 = load_release("dr16"), load_release("dr17")
    assert r16.manifest_sha256 != r17.manifest_sha256
    ids = _ids(5000, seed=4)
    a = split_of(ids, r16.splits.salt, _fractions(r16))
    b = split_of(ids, r17.splits.salt, _fractions(r17))
    assert (a == b).all()


def test_salt_matters():
    ids = _ids(2000, seed=5)
    a = split_of(ids, "salt-a", (0.7, 0.15, 0.15))
    b = split_of(ids, "salt-b", (0.7, 0.15, 0.15))
    assert (a != b).mean() > 0.2
