"""`specetl embed` on shards of real galaxies, `--spectra` on real files, and the outlier model."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from explore_fixtures import non_galaxy_paths, trained_galaxy_run

from cli import main
from model.data import file_sha256, index_sha256
from model.density import (
    OUTLIERS_FILE,
    GaussianMixture,
    fit_outlier_model,
    load_outlier_model,
    outlier_rank,
    roc_auc,
)
from model.embed import embed_shards, read_embedding


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    return trained_galaxy_run(tmp_path_factory)


def _shard_rows(shards: Path) -> dict[str, dict]:
    index = json.loads((shards / "index.json").read_text())
    out = {}
    for e in index["shards"]:
        with h5py.File(shards / e["path"], "r") as f:
            for k in range(e["rows"]):
                out[str(int(f["specobjid"][k]))] = {
                    "split": e["split"],
                    "plate": int(f["plate"][k]),
                    "mjd": int(f["mjd"][k]),
                    "fiberid": int(f["fiberid"][k]),
                    "z": float(f["z"][k]),
                }
    return out


@pytest.mark.slow
def test_embed_cli_writes_exact_ids_scores_and_provenance(trained, tmp_path):
    shards, run, _ = trained
    out = tmp_path / "emb.fits"
    res = CliRunner().invoke(main, ["embed", "--run", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    cols, header = read_embedding(out)
    rows = _shard_rows(shards)
    assert len(cols["specobjid"]) == len(rows)
    assert set(cols["specobjid"]) == set(rows)  # exact decimal strings of the uint64 ids
    for k, sid in enumerate(cols["specobjid"]):
        r = rows[sid]
        assert (cols["plate"][k], cols["mjd"][k], cols["fiberid"][k]) == (
            r["plate"],
            r["mjd"],
            r["fiberid"],
        )
        assert cols["split"][k] == r["split"] and cols["z"][k] == pytest.approx(r["z"])
    assert cols["s"].shape == (len(rows), 2)
    assert np.isfinite(cols["chi2"]).all() and (cols["chi2"] > 0).all()
    # rank 1 = highest score, a permutation of 1..N
    order = np.argsort(cols["outlier_rank"])
    assert sorted(cols["outlier_rank"]) == list(range(1, len(rows) + 1))
    assert np.all(np.diff(cols["outlier_score"][order]) <= 0)
    assert header["OBJKEY"] == "PLATE,MJD,FIBERID"
    assert header["CKPTSHA"] == file_sha256(run / "best.pt")
    assert header["ENCFRAME"] == "restframe"  # the frame `specetl train` defaults to
    assert header["INDEXSHA"] == index_sha256(shards)
    assert header["OUTLSHA"] == file_sha256(run / OUTLIERS_FILE)
    # the score is the sum of its three terms, robust z-scores against the train split
    terms = cols["r_density"] + cols["r_chi2"] + cols["r_signal"]
    np.testing.assert_allclose(cols["outlier_score"], terms, rtol=1e-5, atol=1e-5)
    assert np.isfinite(cols["snr"]).all() and (cols["snr"] > 0).all()
    assert "log snr" in header["SCOREDEF"]
    train_rows = cols["split"] == "train"
    assert abs(np.median(cols["r_chi2"][train_rows])) < 1e-3

    # a rerun gives the same table and leaves no temporary file behind
    first = out.read_bytes()
    res = CliRunner().invoke(main, ["embed", "--run", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.fits"]


@pytest.mark.slow
def test_killed_embed_leaves_no_partial_file(trained, tmp_path, monkeypatch):
    shards, run, _ = trained
    out = tmp_path / "emb.fits"
    out.write_bytes(b"previous complete file")
    from astropy.io import fits

    def die(self, name, **kw):
        Path(name).write_bytes(b"half a FITS file")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(fits.HDUList, "writeto", die)
    with pytest.raises(KeyboardInterrupt):
        embed_shards(run, out, split="test", device="cpu")
    assert out.read_bytes() == b"previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.fits"]


@pytest.mark.slow
def test_embed_spectra_of_a_run_without_a_release_is_one_line(trained, tmp_path):
    """--spectra needs the release whose preprocessing to apply: with no shards index to read it
    from (and no --release), or an unknown --release, the user gets one line and exit 1. (A
    --shards folder without index.json is refused first, by the run's shard check.)"""
    _, run, held_out = trained
    no_index = tmp_path / "no-index"
    no_index.mkdir()
    base = ["embed", "--run", str(run), "--out", str(tmp_path / "x.fits"), "--spectra"]
    res = CliRunner().invoke(main, [*base, "--shards", str(no_index), str(held_out[0])])
    assert res.exit_code == 1 and not isinstance(res.exception, ValueError), res.output
    assert res.output.strip().splitlines() == [
        f"Error: no shards at {no_index} (index.json missing)"
    ]
    res = CliRunner().invoke(main, [*base, "--release", "dr99", str(held_out[0])])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert res.output.startswith(f"Error: run {run}: ") and "dr99" in res.output
    assert not (tmp_path / "x.fits").exists()


def test_embed_spectra_agrees_with_shards_and_scores_real_non_galaxies(trained, tmp_path):
    """A held-out galaxy file embedded with --spectra lands exactly where its shard row does."""
    shards, run, held_out = trained
    emb = tmp_path / "test.fits"
    embed_shards(run, emb, split="all", device="cpu")
    by_id, _ = read_embedding(emb)
    files = [*held_out[:5], *non_galaxy_paths()[:3]]
    out = tmp_path / "cand.fits"
    res = CliRunner().invoke(
        main, ["embed", "--run", str(run), "--out", str(out), "--spectra", *map(str, files)]
    )
    assert res.exit_code == 0, res.output
    cols, header = read_embedding(out)
    assert list(cols["file"]) == [str(f) for f in files]
    assert header["SPLIT"] == "none" and header["RELEASE"] == "dr16"
    assert set(cols["class"][5:]) <= {"QSO", "STAR"} and set(cols["class"][:5]) == {"GALAXY"}
    for k in range(5):
        j = int(np.flatnonzero(by_id["specobjid"] == cols["specobjid"][k])[0])
        np.testing.assert_allclose(cols["s"][k], by_id["s"][j], rtol=1e-4, atol=1e-6)
        assert cols["chi2"][k] == pytest.approx(by_id["chi2"][j], rel=1e-4)
        assert cols["outlier_score"][k] == pytest.approx(by_id["outlier_score"][j], abs=1e-3)


@pytest.mark.slow
def test_v2_shard_ids_as_bytes_with_object_key_and_sky_position(trained, tmp_path):
    """Shard format v2 as shardio writes it: specobjid as ASCII bytes, the `object_key`
    attribute, ra/dec per row — all carried exactly into the embedding."""
    shards, run, _ = trained
    index = json.loads((shards / "index.json").read_text())
    want = {}
    for e in index["shards"]:
        with h5py.File(shards / e["path"], "r") as f:
            assert f["specobjid"].dtype.kind == "S"
            assert json.loads(f.attrs["object_key"]) == ["plate", "mjd", "fiberid"]
            for k, s in enumerate(f["specobjid"][:]):
                want[s.decode()] = (f["ra"][k], f["dec"][k], int(f["fiberid"][k]))
    out = tmp_path / "v2.fits"
    embed_shards(run, out, shards_dir=shards, split="all", device="cpu")
    cols, _ = read_embedding(out)
    assert set(cols["specobjid"]) == set(want)
    for k, s in enumerate(cols["specobjid"]):
        ra, dec, fiberid = want[s]
        assert (cols["ra"][k], cols["dec"][k]) == pytest.approx((ra, dec))
        assert int(cols["fiberid"][k]) == fiberid


@pytest.mark.slow
def test_outlier_model_round_trip_and_mixture_density(trained, tmp_path):
    shards, run, _ = trained
    emb = tmp_path / "e.fits"
    embed_shards(run, emb, split="train", device="cpu")
    cols, _ = read_embedding(emb)
    om = load_outlier_model(run / OUTLIERS_FILE)
    # auto: the density kept is the better one on the valid split's latents, both recorded
    sel = om.selection
    assert sel["mode"] == "auto" and sel["n_valid"] > 0, sel
    ll = sel["valid_mean_logp"]
    assert sel["chosen"] == om.density.kind == max(ll, key=ll.get), sel
    # the same density refitted on the train latents scores them as the embedding did
    again = fit_outlier_model(
        cols["s"], cols["chi2"], density=om.density.kind, snr_train=cols["snr"]
    )
    np.testing.assert_allclose(
        again.score(cols["s"], cols["chi2"], cols["snr"]), cols["outlier_score"], 1e-4, 1e-4
    )
    assert again.density.to_dict() == om.density.to_dict()
    _, header = read_embedding(emb)
    assert header["DENSITY"] == om.density.kind and header["DENSMODE"] == "auto"
    assert header["VLLGMM"] == pytest.approx(ll["gmm"]), header
    # forcing the other density (`embed --density`) refits RUN/outliers.json with it
    other = "gmm" if om.density.kind == "flow" else "flow"
    args = ["embed", "--run", str(run), "--out", str(emb), "--split", "test", "--device", "cpu"]
    res = CliRunner().invoke(main, [*args, "--density", other])
    assert res.exit_code == 0, res.output
    forced = load_outlier_model(run / OUTLIERS_FILE)
    assert forced.density.kind == other and forced.selection["mode"] == other
    assert read_embedding(emb)[1]["DENSITY"] == other
    embed_shards(run, emb, split="test", device="cpu")  # back to auto for the other tests
    assert load_outlier_model(run / OUTLIERS_FILE).to_dict()["density"] == om.to_dict()["density"]
    # our numpy log-density equals scikit-learn's for the same mixture
    from sklearn.mixture import GaussianMixture as SkMixture

    sk = SkMixture(2, covariance_type="full", random_state=0).fit(cols["s"])
    ours = GaussianMixture(sk.weights_, sk.means_, sk.covariances_)
    np.testing.assert_allclose(ours.log_prob(cols["s"]), sk.score_samples(cols["s"]), rtol=1e-6)


def test_rank_and_auc_on_scores():
    score = np.array([0.5, 3.0, -1.0, 3.0, 2.0])
    assert outlier_rank(score).tolist() == [4, 1, 5, 2, 3]
    positive = np.array([False, True, False, True, False])
    assert roc_auc(score, positive) == 1.0
    assert roc_auc(-score, positive) == 0.0
    assert roc_auc(np.zeros(5), positive) == 0.5
    # one of the two positives below one negative: 5 of 6 pairs ordered; NaN counts as lowest
    assert roc_auc(np.array([0.5, 3.0, -1.0, 1.0, 2.0]), positive) == pytest.approx(5 / 6)
    assert roc_auc(np.array([0.5, 3.0, -1.0, np.nan, 2.0]), positive) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="one positive and one negative"):
        roc_auc(score, np.zeros(5, dtype=bool))


@pytest.mark.slow
def test_damaged_outlier_model_is_fitted_again(trained, tmp_path):
    shards, run, _ = trained
    good = (run / OUTLIERS_FILE).read_text() if (run / OUTLIERS_FILE).exists() else None
    (run / OUTLIERS_FILE).write_text('{"format": "specetl-outliers", "truncated')
    embed_shards(run, tmp_path / "e.fits", split="test", device="cpu")
    om = load_outlier_model(run / OUTLIERS_FILE)  # readable again, for this checkpoint
    assert om.provenance["checkpoint_sha256"] == file_sha256(run / "best.pt")
    if good is not None:
        assert json.loads(good)["density"] == om.to_dict()["density"]
