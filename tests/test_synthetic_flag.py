"""The SYNTHETIC flag travels from the generator's catalogue into the shards and the embedding,
and the explorer reads it (not a plate number) to decide which objects have a SkyServer page."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etl.build import build_shards
from etl.catalog import read_catalog
from etl.release import load_release
from etl.synthetic import from_real
from model.embed import read_embedding, write_embedding
from model.explore.page import page_data
from shardio import ShardWriter, read_rows, read_shard


def test_from_real_corpus_is_synthetic_in_catalogue_shards_and_rows(tmp_path):
    from_real.make_corpus(tmp_path, 60, seed=3, processes=1)
    assert read_catalog(tmp_path / "dr16" / "catalog.fits")["SYNTHETIC"].all()
    built = build_shards(load_release("dr16"), tmp_path, workers=1, progress=False)
    assert built.accepted == 60
    for entry in built.shards:
        path = built.shards_dir / entry["path"]
        assert read_shard(path)["synthetic"].dtype == bool
        assert read_shard(path)["synthetic"].all()
        assert read_rows(path, 0, entry["rows"])["synthetic"].all()


@pytest.fixture(scope="module")
def real_shard(tmp_path_factory):
    """A shard of real bundled galaxies (the model tests' fixture, written by shardio)."""
    from test_model_fixtures import build_sample_shards

    shards = build_sample_shards(tmp_path_factory.mktemp("real"))
    index = json.loads((shards / "index.json").read_text())
    return shards / index["shards"][0]["path"]


def test_real_shards_have_no_synthetic_rows(real_shard):
    assert "synthetic" not in read_shard(real_shard)
    assert "synthetic" not in read_rows(real_shard, 0, 2)


def test_every_block_of_a_shard_has_the_first_blocks_optional_columns(real_shard, tmp_path):
    shard = read_shard(real_shard)
    attrs = shard.pop("attrs")
    wave = shard.pop("wave_obs")
    block = {k: v[:2] for k, v in shard.items()}
    with ShardWriter(tmp_path / "s.h5", wave, attrs) as writer:
        writer.append({**block, "synthetic": np.ones(2, dtype=bool)})
        with pytest.raises(ValueError, match="optional column"):
            writer.append(block)


def test_embedding_keeps_synthetic_and_the_explorer_links_only_real_objects(tmp_path):
    """SYNTHETIC is a FITS logical column of the embedding; the page links a real object with a
    plate to SkyServer and never a SYNTHETIC one, whatever its plate number."""
    from astropy.io import fits

    table = {
        # a real galaxy of the bundled sample (sample/catalog.csv) and a generated one
        "specobjid": np.array(
            ["299489676975171584", str(from_real.specobjid(14000, 1, 59000, "26"))]
        ),
        "plate": np.array([266, 14000]),
        "mjd": np.array([51602, 59000]),
        "fiberid": np.array([1, 1]),
        "z": np.array([0.02127545, 0.1], dtype=np.float32),
        "s": np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32),
        "chi2": np.ones(2),
        "outlier_score": np.array([0.5, 1.5]),
        "outlier_rank": np.array([2, 1]),
        "synthetic": np.array([False, True]),
        "_object_key": np.array(["plate", "mjd", "fiberid"]),
    }
    path = write_embedding(table, tmp_path / "e.fits", {"RELEASE": "dr16"})
    with fits.open(path) as hdul:
        assert hdul[1].columns["SYNTHETIC"].format == "L"
    cols, header = read_embedding(path)
    assert cols["synthetic"].tolist() == [False, True]
    shown = np.arange(2)
    data = page_data(cols, header, {}, np.ones(3), np.ones(3), np.array([1]), shown)
    assert data["points"]["linkable"] == [1, 0]
    assert data["points"]["info"]["SYNTHETIC"] == ["False", "True"]
    # the real object marked SYNTHETIC is not linked either: the flag decides, not the plate
    cols["synthetic"] = np.array([True, True])
    data = page_data(cols, header, {}, np.ones(3), np.ones(3), np.array([1]), shown)
    assert data["points"]["linkable"] == [0, 0]
