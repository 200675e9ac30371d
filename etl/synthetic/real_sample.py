"""Shards of the bundled real galaxies (sample/), all in one split: the models trained on the
SYNTHETIC population are evaluated on them (sim to real: the demo, ``benchmarks/table1.py``)."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

import numpy as np

from etl.build import build_shards
from etl.catalog import as_catalog, selection_masks, write_catalog
from etl.release import Release, spec_lite_relpath

#: the package's root: sample/ ships beside etl/ (in a checkout and in an installed wheel)
ROOT = Path(__file__).resolve().parents[2]


def real_sample_shards(release: Release, work: str | Path) -> Path:
    """Shards of the bundled real galaxies that pass ``release``'s cuts, all in the test split.

    Copies the files into ``work/<release>/spectra`` (archive layout) with a catalogue of their
    real HDU2 values (``sample/catalog.csv``), then runs the real ``build_shards``.
    """
    work = Path(work)
    with open(ROOT / "sample" / "catalog.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    raw = {c: np.array([r[c] for r in rows]) for c in rows[0]}
    cat = as_catalog(raw, "sample/catalog.csv")
    cat["SCIENCEPRIMARY"] = raw["SCIENCEPRIMARY"].astype(int)
    keep = np.logical_and.reduce(list(selection_masks(cat, release.selection).values()))
    keep &= np.isin(cat["RUN2D"], release.run2ds)
    root = work / release.name
    for i in np.flatnonzero(keep):
        rel = spec_lite_relpath(cat["RUN2D"][i], cat["PLATE"][i], cat["MJD"][i], cat["FIBERID"][i])
        dest = root / "spectra" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "sample" / "sdss" / rel, dest)
    write_catalog({k: v[keep] for k, v in cat.items()}, root / "catalog.fits")
    one_split = dataclasses.replace(
        release, splits=dataclasses.replace(release.splits, train=0.0, valid=0.0, test=1.0)
    )
    return build_shards(one_split, work, workers=1, progress=False).shards_dir
