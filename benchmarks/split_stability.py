"""Do objects keep their split from DR16 to DR17? The old key (specObjID) against the new (sky).

Real positions and plates: the 10,000 real SkyServer DR14 rows in
``tests/data/splits/skyserver-dr14-10k-positions.csv`` (ra, dec, plate, mjd, fiberid). For
each row the DR16 and DR17 specObjIDs are re-derived from plate, fiber and MJD with SDSS's bit
packing (``tests/sdss_ids.py``; it reproduces the real ids of the bundled sample): BOSS/eBOSS
spectra (MJD >= 55000, the BOSS spectrographs) were reduced with ``v5_13_0`` in DR16 and
re-reduced with ``v5_13_2`` in DR17; legacy SDSS-I/II spectra keep their reduction (and id).

Printed, for both keys: the fraction of objects whose split is the same in DR16 and DR17 (all,
and BOSS/eBOSS only), how many of DR17's test objects were in DR16's train split, and the split
fractions. Also the time to assign 1M positions (SYNTHETIC, uniform on the sky) with each key,
and their ratio.

Old key: a keyed BLAKE2b of the specObjID (specetl's format-1 ``split_of``, re-implemented
here with its salt). New key: :func:`etl.splits.split_of` with the DR16 manifest's ``[splits]``.

Usage: ``python benchmarks/split_stability.py``
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "tests"):  # run as a script from anywhere; the id helpers are tests'
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from sdss_ids import sdss_specobjid, v1_split_of  # noqa: E402

from etl.release import load_release  # noqa: E402
from etl.splits import SPLITS, split_of  # noqa: E402

POSITIONS = ROOT / "tests" / "data" / "splits" / "skyserver-dr14-10k-positions.csv"
#: the salt of specetl's format-1 split (keyed on specObjID)
V1_SALT = "specetl-splits-v1"
FIRST_BOSS_MJD = 55000  # BOSS spectrographs from late 2009 (MJD ~55170); legacy ended 2008


def load_positions(path: Path = POSITIONS) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {k: np.array([float(r[k]) for r in rows]) for k in ("ra", "dec")}
    out.update({k: np.array([int(r[k]) for r in rows]) for k in ("plate", "mjd", "fiberid")})
    return out


def release_ids(rows: dict[str, np.ndarray], boss_run2d: str) -> list[int]:
    """The specObjIDs of ``rows`` in a release that reduced BOSS with ``boss_run2d``."""
    return [
        sdss_specobjid(int(p), int(f), int(m), boss_run2d if m >= FIRST_BOSS_MJD else "26")
        for p, f, m in zip(rows["plate"], rows["fiberid"], rows["mjd"], strict=True)
    ]


def compare(a: np.ndarray, b: np.ndarray, boss: np.ndarray) -> dict[str, float]:
    """Stability of splits ``a`` (DR16) -> ``b`` (DR17)."""
    test17 = b == "test"
    return {
        "kept": float(np.mean(a == b)),
        "kept_boss": float(np.mean(a[boss] == b[boss])),
        "dr17_test": int(test17.sum()),
        "dr17_test_in_dr16_train": int((test17 & (a == "train")).sum()),
        "dr17_test_boss": int((test17 & boss).sum()),
        "dr17_test_boss_in_dr16_train": int((test17 & boss & (a == "train")).sum()),
    }


def main() -> None:
    rows = load_positions()
    boss = rows["mjd"] >= FIRST_BOSS_MJD
    s16, s17 = load_release("dr16").splits, load_release("dr17").splits
    fractions = (s16.train, s16.valid, s16.test)
    ids16, ids17 = release_ids(rows, "v5_13_0"), release_ids(rows, "v5_13_2")
    print(
        f"{len(boss)} real SkyServer rows, {int(boss.sum())} BOSS/eBOSS (v5_13_0 -> v5_13_2), "
        f"{len(np.unique(rows['plate']))} plates; ids changed: {np.mean(np.array(ids16) != np.array(ids17)):.1%}"
    )
    print()
    old = compare(
        v1_split_of(ids16, V1_SALT, fractions), v1_split_of(ids17, V1_SALT, fractions), boss
    )
    new16 = split_of(rows["ra"], rows["dec"], rows["mjd"], s16)
    new17 = split_of(rows["ra"], rows["dec"], rows["mjd"], s17)
    new = compare(new16, new17, boss)
    print(f"{'':34s} {'old key (specObjID)':>22s} {'new key (sky cell)':>22s}")
    for label, key in (
        ("keep their split, all", "kept"),
        ("keep their split, BOSS/eBOSS", "kept_boss"),
    ):
        print(f"{label:34s} {old[key]:>22.1%} {new[key]:>22.1%}")
    for label, n, k in (
        ("DR17 test objects in DR16 train", "dr17_test_in_dr16_train", "dr17_test"),
        ("  of them BOSS/eBOSS", "dr17_test_boss_in_dr16_train", "dr17_test_boss"),
    ):
        o = f"{old[n]} of {old[k]} ({old[n] / max(old[k], 1):.0%})"
        w = f"{new[n]} of {new[k]} ({new[n] / max(new[k], 1):.0%})"
        print(f"{label:34s} {o:>22s} {w:>22s}")
    v1 = v1_split_of(ids17, V1_SALT, fractions)
    for name in SPLITS:
        print(
            f"{'DR17 fraction ' + name:34s} {np.mean(v1 == name):>22.1%} {np.mean(new17 == name):>22.1%}"
        )

    # speed: 1M SYNTHETIC positions (uniform on the sky) and ids, each key once
    rng = np.random.default_rng(0)
    n = 1_000_000
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    mjd = rng.integers(51000, 59000, n)
    ids = rng.integers(1, 2**63, n, dtype=np.uint64).tolist()
    t0 = time.perf_counter()
    v1_split_of(ids, V1_SALT, fractions)
    t_old = time.perf_counter() - t0
    t0 = time.perf_counter()
    split_of(ra, dec, mjd, s16)
    t_new = time.perf_counter() - t0
    print(
        f"assigning 1M SYNTHETIC objects: old key {t_old:.2f} s, new key {t_new:.2f} s "
        f"(new/old {t_new / t_old:.2f}x)"
    )


if __name__ == "__main__":
    main()
