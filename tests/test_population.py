"""The SYNTHETIC galaxy population (etl/synthetic/population.py, etl/synthetic/population_corpus.py).

Pure parts (resampling, the noise model on a real SDSS galaxy's ivar/and_mask) run in the default
suite; generating spectra needs bagpipes (the ``population`` extra) and is marked slow.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from conftest import sample_objects

from etl.build import build_shards
from etl.release import load_release
from etl.synthetic import population

N_POP = 240


def _real_galaxy():
    """A bundled real DR16 galaxy (its HDU1 columns)."""
    obj = next(o for o in sample_objects() if o.cls == "GALAXY" and o.run2d == "26" and o.z > 0.05)
    with fits.open(obj.path) as hdul:
        d = hdul[1].data
        return {k: np.asarray(d[k], dtype=np.float64) for k in ("loglam", "flux", "ivar")} | {
            "and_mask": np.asarray(d["and_mask"], dtype=np.int64)
        }


def test_rebin_conserves_flux_and_matches_exact_bin_averages():
    rng = np.random.default_rng(0)
    wave = np.sort(rng.uniform(3000, 4000, 500))
    flux = rng.normal(1, 0.3, 500)
    new = np.linspace(3100, 3900, 120)
    out = population.rebin(new, wave, flux)
    edges, new_edges = population.bin_edges(wave), population.bin_edges(new)
    # flux integral over the new pixels == integral of the step function over the same range
    fine = np.linspace(new_edges[0], new_edges[-1], 400001)
    step = flux[np.clip(np.searchsorted(edges, fine, side="right") - 1, 0, len(flux) - 1)]
    exact = np.trapezoid(step, fine)
    assert np.sum(out * np.diff(new_edges)) == pytest.approx(exact, rel=1e-4)
    # outside the input range: 0, as spectres' fill=0
    assert population.rebin(np.array([2000.0, 2001.0, 2002.0]), wave, flux).tolist() == [0, 0, 0]


def test_observe_reaches_target_sn_and_keeps_the_real_mask():
    real = _real_galaxy()
    rng = np.random.default_rng(1)
    model = np.abs(real["flux"]) + 5.0  # positive noiseless stand-in of the real shape
    flux, ivar, sn = population.observe(rng, model, real["ivar"], real["and_mask"], 12.0)
    good = (real["ivar"] > 0) & (real["and_mask"] == 0)
    assert sn == pytest.approx(12.0, rel=1e-9)
    assert np.all(ivar[real["ivar"] == 0] == 0)  # masked pixels stay masked
    # the ivar keeps the real spectrum's shape (one overall scale)
    ratio = ivar[good] / real["ivar"][good]
    assert np.allclose(ratio, ratio[0])
    chi2 = np.mean((flux[good] - model[good]) ** 2 * ivar[good])
    assert 0.9 < chi2 < 1.1  # Gaussian noise drawn from that ivar


def test_priors_stay_in_their_documented_ranges():
    rng = np.random.default_rng(2)
    p = population.draw_parameters(rng, 5000, t_univ=lambda z: 13.8 - 10 * z)
    assert np.all((p["Z"] > 0) & (p["Z"] <= 0.5))
    counts, edges = np.histogram(p["Z"], bins=np.linspace(0, 0.5, 21))
    assert 0.05 <= edges[np.argmax(counts)] <= 0.125  # SDSS-like n(z): peaks near z ~ 0.1
    assert np.mean(p["Z"] > 0.25) > 0.15  # with an LRG-like tail
    assert np.all((p["SIGMA"] >= 50) & (p["SIGMA"] <= 350))
    assert np.all((p["SN"] >= 3) & (p["SN"] <= 40))
    assert np.all(p["AGE"] <= 13.8 - 10 * p["Z"])  # no stars before the Big Bang
    for code, (frac, _) in enumerate(population.TYPES.values()):
        assert abs(np.mean(p["TYPE"] == code) - frac) < 0.03


# --- generating spectra: needs bagpipes ---------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    pytest.importorskip("bagpipes")
    from etl.synthetic import population_corpus

    root = tmp_path_factory.mktemp("population")
    population_corpus.make_population(root, N_POP, seed=5, processes=2, chunk=120)
    return root


@pytest.mark.slow
def test_population_passes_build_shards_with_few_rejections(corpus):
    release = load_release("dr16")
    built = build_shards(release, corpus, workers=1, progress=False)
    accepted = sum(s["rows"] for s in built.shards)
    assert accepted >= 0.95 * N_POP
    # the catalogue's SYNTHETIC column travels into every shard row
    from shardio import read_shard

    assert all(read_shard(built.shards_dir / s["path"])["synthetic"].all() for s in built.shards)


@pytest.mark.slow
def test_population_is_bimodal(corpus):
    cat = Table.read(corpus / "dr16" / "catalog.fits")
    d4000, ew = np.asarray(cat["TRUE_D4000"]), np.asarray(cat["TRUE_HA_EW"])
    for label, frac in {
        "D4000 > 1.6": np.mean(d4000 > 1.6),
        "D4000 < 1.3": np.mean(d4000 < 1.3),
        "EW(Ha) > 10": np.mean(ew > 10),
        "EW(Ha) < 3": np.mean(ew < 3),
    }.items():
        assert frac >= 0.15, f"{label}: {frac:.0%} of the population"
    # quiescent galaxies carry no emission: star formation stopped means no nebular lines
    quiescent = np.asarray(cat["TRUE_TYPE"]) == 2
    assert np.all(ew[quiescent] < 3)


@pytest.mark.slow
def test_population_files_are_specobj_shaped_and_labelled_synthetic(corpus):
    cat = Table.read(corpus / "dr16" / "catalog.fits")
    assert np.all(cat["SYNTHETIC"]) and np.all(cat["CLASS"] == "GALAXY")
    assert len(set(cat["SPECOBJID"])) == len(cat)
    assert len(set(zip(cat["RA"], cat["DEC"], strict=True))) == len(cat)
    assert cat["PLATE"].min() >= 14000  # above every real SDSS plate
    files = sorted((corpus / "dr16" / "spectra").rglob("spec-*.fits"))
    assert len(files) == N_POP
    real_template = fits.open(next(o.path for o in sample_objects() if o.run2d == "26"))
    with fits.open(files[7]) as hdul:
        assert hdul[0].header["SYNTHETIC"] is True
        row = hdul[2].data[0]
        assert row["CLASS"].strip() == "GALAXY" and row["ZWARNING"] == 0
        assert row["SPECPRIMARY"] == 1 and 0 < row["Z_ERR"] < 1e-4
        match = cat[(cat["PLATE"] == row["PLATE"]) & (cat["FIBERID"] == row["FIBERID"])]
        assert int(row["SPECOBJID"]) == int(match["SPECOBJID"][0])
        assert row["Z"] == pytest.approx(match["Z"][0], rel=1e-6)
        assert row["PLUG_RA"] == pytest.approx(match["RA"][0])
        assert row["TRUE_SIGMA"] == pytest.approx(match["TRUE_SIGMA"][0])
        # every column of a real specObj row is there, with the same FITS format
        real_cols = {c.name: c.format for c in real_template[2].columns}
        cols = {c.name: c.format for c in hdul[2].columns}
        assert all(cols[k] == v for k, v in real_cols.items())
        # noise consistent with the ivar written next to it
        d = hdul[1].data
        good = (d["ivar"] > 0) & (d["and_mask"] == 0)
        chi2 = np.mean((d["flux"][good] - d["model"][good]) ** 2 * d["ivar"][good])
        assert 0.85 < chi2 < 1.15


@pytest.mark.slow
def test_population_is_byte_identical_per_seed_whatever_the_processes(corpus, tmp_path):
    from etl.synthetic import population_corpus

    population_corpus.make_population(tmp_path, N_POP, seed=5, processes=1, chunk=120)

    def digest(root):
        files = sorted((root / "dr16" / "spectra").rglob("*.fits"))
        return [
            (f.relative_to(root).as_posix(), hashlib.sha1(f.read_bytes()).hexdigest())
            for f in files
        ]

    assert digest(tmp_path) == digest(corpus)
    other = tmp_path / "other-seed"
    population_corpus.make_population(other, 3, seed=6, processes=1, chunk=120)
    assert digest(other)[0][1] != digest(corpus)[0][1]


def test_knn_r2_and_scale_free_shift_measure_what_they_claim():
    pytest.importorskip("sklearn")
    import model.interpretability as ps

    rng = np.random.default_rng(3)
    truth = {s: rng.normal(size=n) for s, n in (("train", 600), ("valid", 200), ("test", 200))}
    informative = {s: np.c_[t, rng.normal(0, 0.05, len(t))] for s, t in truth.items()}
    useless = {s: rng.normal(size=(len(t), 2)) for s, t in truth.items()}
    truths = {s: {p: t for p in ps.TARGETS} for s, t in truth.items()}
    assert ps.interpretability(informative, truths)["TRUE_Z"]["r2"] > 0.9
    assert ps.interpretability(useless, truths)["TRUE_Z"]["r2"] < 0.1
    # the validation split's predictions (what settings are chosen by) use the same k
    on_valid, k_valid = ps.knn_test_predictions(informative, truths, "TRUE_Z", "valid")
    on_test, k_test = ps.knn_test_predictions(informative, truths, "TRUE_Z")
    assert k_valid == k_test and len(on_valid) == 200
    assert np.corrcoef(on_valid, truth["valid"])[0, 1] > 0.95
    assert abs(np.corrcoef(on_valid, truth["test"])[0, 1]) < 0.3  # not the test split's
    # scale-free: shrinking every latent by 10 leaves the ratio unchanged
    s = informative["test"]
    a, b = ps.scale_free_shift(s, 0.1), ps.scale_free_shift(s / 10, 0.01)
    assert a["scale_free_shift"] == pytest.approx(b["scale_free_shift"])


def test_real_sample_shards_put_every_real_galaxy_in_the_test_split(tmp_path):
    """table1.py --population's 'sim to real' set: the bundled real galaxies that pass the DR16
    cuts, built by the real ETL with every object in the test split."""
    import json

    from etl.synthetic.real_sample import real_sample_shards

    shards = real_sample_shards(load_release("dr16"), tmp_path)
    index = json.loads((shards / "index.json").read_text())
    rows = {split: sum(s["rows"] for s in index["shards"] if s["split"] == split)
            for split in ("train", "valid", "test")}  # fmt: skip
    # 86 pass the cuts; the ETL rejects two of them by name (see test_build_shards)
    assert rows == {"train": 0, "valid": 0, "test": 84}, rows
    from shardio import read_shard  # real galaxies: no SYNTHETIC rows

    assert not any("synthetic" in read_shard(shards / s["path"]) for s in index["shards"])


@pytest.mark.slow
def test_population_catalogue_verifies_clean_and_says_what_each_truth_is(corpus):
    from fits_tools import fitsio_columns, fitsverify

    from etl.fitsmeta import CATALOG_COLUMNS

    path = corpus / "dr16" / "catalog.fits"
    fitsverify(path)
    got = fitsio_columns(path)
    assert {"SYNTHETIC", "TRUE_SIGMA", "TRUE_HA_EW"} <= set(got)
    for name, meta in got.items():
        want = CATALOG_COLUMNS[name]
        assert meta == {"unit": want.unit, "comment": want.description, "ucd": want.ucd}, name
    assert got["TRUE_SIGMA"]["unit"] == "km/s" and got["TRUE_HA_EW"]["unit"] == "Angstrom"
    # the generated spec-lite files (real SDSS files with the truths added) verify clean too
    fitsverify(next((corpus / "dr16" / "spectra").rglob("spec-*.fits")))


def test_singular_ratio_tells_a_line_from_a_cloud():
    """The demo's 'both latent dimensions used' measure: 0 for latents on a line, ~1 for an
    isotropic cloud, the axis ratio for an ellipse."""
    from model.interpretability import singular_ratio

    rng = np.random.default_rng(0)
    t = rng.normal(size=2000)
    assert singular_ratio(np.stack([t, 2 * t + 1], 1)) < 1e-9
    assert singular_ratio(rng.normal(size=(20000, 2))) == pytest.approx(1.0, abs=0.03)
    ellipse = rng.normal(size=(20000, 2)) * [1.0, 0.3]
    assert singular_ratio(ellipse @ np.array([[0.6, 0.8], [-0.8, 0.6]])) == pytest.approx(
        0.3, abs=0.02
    )


def test_paired_r2_bootstrap_tells_a_real_gain_from_noise():
    pytest.importorskip("sklearn")
    from sklearn.metrics import r2_score

    import model.interpretability as ps

    rng = np.random.default_rng(4)
    y = rng.normal(size=329)  # the population's test split size
    good = y + rng.normal(0, 0.3, len(y))
    worse = y + rng.normal(0, 0.6, len(y))
    twin = good + rng.normal(0, 0.02, len(y))  # a model that differs from `good` by a hair
    r = ps.paired_r2_bootstrap(y, good, worse)
    assert r["delta"] == pytest.approx(r2_score(y, good) - r2_score(y, worse))
    assert r["lo"] <= r["delta"] <= r["hi"] and r["lo"] > 0  # a real gain: interval above 0
    same = ps.paired_r2_bootstrap(y, twin, good)
    assert same["lo"] < 0 < same["hi"], same  # noise: the interval straddles 0
    assert (
        ps.paired_r2_bootstrap(y, good, good)["lo"]
        == ps.paired_r2_bootstrap(y, good, good)["hi"]
        == 0
    )
    # the shared draw cancels what both models share: the paired interval is narrower than
    # the spread of either R² alone would suggest
    assert same["hi"] - same["lo"] < 0.02
