"""The FITS tables specetl writes, read by the field's own tools: fitsverify clean, and units,
descriptions and UCDs that a reader other than astropy (CFITSIO's fitsio, STILTS) sees."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from astropy import units as u
from explore_fixtures import SAMPLE, non_galaxy_paths, trained_galaxy_run
from fits_tools import fitsio_columns, fitsverify, stilts_meta

from etl.catalog import as_catalog, write_catalog
from etl.fitsmeta import CATALOG_COLUMNS
from etl.release import load_release
from etl.tables import iter_table_columns
from model.embed import embed_shards, read_embedding, write_embedding
from model.fitsmeta import EMBEDDING_COLUMNS
from workflows.spectra import embed_spectra

#: FITS keywords with a meaning of their own that a table header must not reuse for another
RESERVED = {"EPOCH", "EQUINOX", "RADESYS", "DATE-OBS", "MJD-OBS", "EXPTIME", "OBJECT", "TELESCOP"}


@pytest.mark.parametrize("table", [CATALOG_COLUMNS, EMBEDDING_COLUMNS], ids=["catalog", "embed"])
def test_every_description_fits_one_card_and_every_unit_parses(table):
    for name, m in table.items():
        # "TCOMMnn = '…'": 68 characters between the quotes, or a CONTINUE card few tools follow
        assert 0 < len(m.description) <= 68, name
        assert m.description.isascii() and "'" not in m.description, name
        if m.unit:
            u.Unit(m.unit, format="fits")  # raises on a unit astropy/CFITSIO would not read


def test_catalogue_and_embedding_say_the_same_of_the_columns_they_share():
    shared = set(CATALOG_COLUMNS) & set(EMBEDDING_COLUMNS)
    assert {"SPECOBJID", "PLATE", "MJD", "FIBERID", "RA", "DEC", "Z", "CLASS"} <= shared
    for name in shared - {"RA", "DEC", "Z"}:  # those say where the value came from
        assert CATALOG_COLUMNS[name] == EMBEDDING_COLUMNS[name], name
    for name in ("RA", "DEC"):
        assert CATALOG_COLUMNS[name].unit == EMBEDDING_COLUMNS[name].unit == "deg"
        assert CATALOG_COLUMNS[name].ucd == EMBEDDING_COLUMNS[name].ucd


def _assert_described(path: Path, table) -> dict[str, dict[str, str]]:
    """Every column of `path` has, as CFITSIO reads it, the unit, description and UCD of
    `table`; returns what fitsio read."""
    got = fitsio_columns(path)
    for name, meta in got.items():
        want = table[name.upper()]
        assert meta == {"unit": want.unit, "comment": want.description, "ucd": want.ucd}, name
    return got


@pytest.mark.parametrize(
    "source,key",
    [
        (SAMPLE / "catalog.csv", ("plate", "mjd", "fiberid")),
        (SAMPLE / "sdss-v" / "spall-rows.fits", ("field", "mjd", "catalogid")),
    ],
    ids=["sdss", "sdss-v"],
)
def test_catalogue_verifies_clean_with_units_and_descriptions(tmp_path, source, key):
    cat = as_catalog(next(iter_table_columns(source, key)), source.name, key)
    path = tmp_path / "catalog.fits"
    write_catalog(cat, path)
    fitsverify(path)
    got = _assert_described(path, CATALOG_COLUMNS)
    assert got["RA"] == {
        "unit": "deg",
        "comment": CATALOG_COLUMNS["RA"].description,
        "ucd": "pos.eq.ra;meta.main",
    }
    assert list(got) == list(cat)


def test_catalogue_keeps_a_missing_science_primary_flag(tmp_path):
    # SPECPRIMARY -1 (the source has no flag) was written as logical T: astropy writes int8 as L
    cols = next(iter_table_columns(SAMPLE / "catalog.csv"))
    cols = {k: v for k, v in cols.items() if k.upper() != "SCIENCEPRIMARY"}
    cat = as_catalog(cols, "sample without the flag")
    assert set(cat["SPECPRIMARY"].tolist()) == {-1}
    write_catalog(cat, tmp_path / "catalog.fits")
    fitsverify(tmp_path / "catalog.fits")
    fitsio = pytest.importorskip("fitsio", reason="fitsio is a dev dependency (pip install fitsio)")
    assert set(
        fitsio.read(str(tmp_path / "catalog.fits"), columns=["SPECPRIMARY"])["SPECPRIMARY"]
    ) == {-1}


def test_shards_say_the_unit_of_every_dataset_and_attribute(tmp_path):
    from etl.shard_task import shard_attrs
    from shardio import row_datasets, write_shard
    from shardio.format import ATTR_UNITS, DATASET_UNITS

    release = load_release("dr16")
    attrs = shard_attrs(release, "train")
    n, m = 3, len(release.wave_obs)
    cols = {k: np.ones((n, m) if k in ("flux", "ivar") else n) for k in row_datasets(attrs)}
    cols["specobjid"] = np.array(["1", "2", "3"])
    write_shard(tmp_path / "s.h5", cols, release.wave_obs, attrs)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name in f:
            assert f[name].attrs["units"] == DATASET_UNITS.get(name, ""), name
        assert f["ra"].attrs["units"] == "deg" and f["wave_obs"].attrs["units"] == "Angstrom"
        units = json.loads(f.attrs["units"])
        assert units == dict(ATTR_UNITS) and set(units) <= set(f.attrs)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> dict[str, Path]:
    """The two kinds of embedding: of the shards, and of spec-lite files (`--spectra`)."""
    shards, run, held_out = trained_galaxy_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("fitsout")
    out = {"shards": embed_shards(run, root / "embedding.fits", device="cpu")}
    files = [*held_out[:3], *non_galaxy_paths()[:3]]
    out["spectra"], _ = embed_spectra(run, files, root / "spectra.fits", device="cpu")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["shards", "spectra"])
def test_embedding_verifies_clean_and_fitsio_reads_units_and_descriptions(embeddings, kind):
    path = embeddings[kind]
    fitsverify(path)
    got = _assert_described(path, EMBEDDING_COLUMNS)
    assert got["DEC"]["unit"] == "deg" and got["DEC"]["ucd"] == "pos.eq.dec;meta.main"
    assert got["OUTLIER_SCORE"]["comment"].startswith("R_DENSITY + R_CHI2")
    _, header = read_embedding(path)
    # the training epoch is TRAINEP: EPOCH is the FITS keyword for the coordinates' epoch
    assert not RESERVED & set(header) and isinstance(header["TRAINEP"], int)
    assert all(len(k) <= 8 for k in header)


@pytest.mark.slow
def test_long_provenance_paths_verify_clean(embeddings, tmp_path):
    """Absolute paths outgrow a card: CONTINUE cards, announced by LONGSTRN, still verify."""
    cols, header = read_embedding(embeddings["shards"])
    long_run = "/" + "/".join(["a-rather-long-folder-name"] * 8) + "/runs/consistency"
    keep = {k: header[k] for k in ("CKPT", "TRAINEP", "SCOREDEF", "SPLIT")}
    path = write_embedding(cols, tmp_path / "long.fits", {**keep, "RUN": long_run})
    fitsverify(path)
    _, again = read_embedding(path)
    assert again["RUN"] == long_run and again["LONGSTRN"] == "OGIP 1.0"


@pytest.mark.slow
def test_stilts_shows_each_column_with_its_unit_description_and_ucd(embeddings):
    rows = {r["Name"]: r for r in csv.DictReader(io.StringIO(stilts_meta(embeddings["spectra"])))}
    for name in ("RA", "DEC", "Z", "CHI2", "LOGP", "OUTLIER_SCORE", "FILE"):
        want = EMBEDDING_COLUMNS[name]
        assert (rows[name]["Units"], rows[name]["Description"], rows[name]["UCD"]) == want, name
    assert rows["RA"]["Class"] == "Double" and rows["S"]["Shape"] == "(2)"
