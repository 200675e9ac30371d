"""The fidelity floor (etl/fidelity_floor.py): L_fid of the true spectra of a SYNTHETIC population.

The population's noise is Gaussian with exactly the variance its ivar says, so E[w (x − t)²] = 1
on every unmasked pixel and the floor must come out at ½ × the unmasked fraction; a truth that
is misplaced on the grid, or normalised differently from the flux, misses it by far.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import sample_objects

from etl.build import build_shards
from etl.fidelity_floor import FloorError, fidelity_floor, truth_on_grid
from etl.objects import spec_lite_name
from etl.release import load_release


@pytest.fixture(scope="module")
def built_population(tmp_path_factory):
    pytest.importorskip("bagpipes")
    from etl.synthetic import population_corpus

    root = tmp_path_factory.mktemp("floor")
    population_corpus.make_population(root, 60, seed=11, processes=1, chunk=60)
    release = load_release("dr16")
    build_shards(release, root, workers=1, progress=False)
    return root, release


@pytest.mark.slow
def test_floor_is_half_the_unmasked_fraction(built_population):
    root, release = built_population
    shards = sorted((root / "dr16" / "shards").rglob("shard-*.h5"))
    floor = fidelity_floor(shards, root / "dr16" / "spectra", release.grid)
    assert floor["n"] >= 55
    assert floor["L_fid_truth"] == pytest.approx(0.5 * floor["unmasked_fraction"], rel=0.03)


@pytest.mark.slow
def test_a_misplaced_truth_is_far_above_the_floor(built_population):
    """The same sum with the truth shifted by one pixel: the check above can fail."""
    root, release = built_population
    shard = sorted((root / "dr16" / "shards").rglob("shard-*.h5"))[0]
    from shardio import read_shard

    rows = read_shard(shard)
    i = 0
    name = spec_lite_name(int(rows["plate"][i]), int(rows["mjd"][i]), int(rows["fiberid"][i]))
    f = next((root / "dr16" / "spectra").rglob(name))
    truth = truth_on_grid(f, release.grid) / float(rows["norm"][i])
    w = rows["ivar"][i]
    right = np.sum(w * (rows["flux"][i] - truth) ** 2) / np.sum(w > 0)
    shifted = np.sum(w * (rows["flux"][i] - np.roll(truth, 3)) ** 2) / np.sum(w > 0)
    assert right == pytest.approx(1.0, abs=0.15)
    assert shifted > 1.5 * right


def test_a_real_galaxy_has_no_truth():
    """A real spec-lite file's ``model`` is the pipeline's fit, not a truth: refused by name."""
    obj = next(o for o in sample_objects() if o.cls == "GALAXY")
    with pytest.raises(FloorError, match=Path(obj.path).name):
        truth_on_grid(obj.path, load_release("dr16").grid)
