"""The S/N terms of OUTLIER_SCORE (format 3): χ² measured against its trend in S/N, and the
no-signal term (model/density.py), plus the median S/N the embedder computes (model/embed.py).

The train sets here are SYNTHETIC (seeded): median S/N log-normal around 10 (σ 0.55 in ln, as the
population's shards) and a model wrong by a fixed 10% of the flux, so χ² ≈ (1 + (0.1·SNR)²)·scatter — the shape an imperfect model gives
real spectra. tests/test_outliers.py scores the real sky fibres.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.density import (
    FORMAT_VERSION,
    SIGNAL_GRACE,
    DensityError,
    fit_outlier_model,
    load_outlier_model,
    log_snr,
    save_outlier_model,
)
from model.embed import median_snr


def chi2_of(snr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SYNTHETIC: χ² per pixel of a model 10% off, with a log-normal scatter of 0.1 dex."""
    return (1 + (0.1 * snr) ** 2) * np.exp(0.23 * rng.standard_normal(len(snr)))


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(3)
    n = 2000
    s = rng.standard_normal((n, 2))
    snr = 10 * np.exp(0.55 * rng.standard_normal(n))  # as the SYNTHETIC population's shards
    chi2 = chi2_of(snr, rng)
    v3 = fit_outlier_model(s, chi2, density="gmm", snr_train=snr)
    v2 = fit_outlier_model(s, chi2, density="gmm")
    return s, chi2, snr, v3, v2


def test_chi2_is_judged_against_spectra_of_the_same_snr(trained):
    s, chi2, snr, v3, v2 = trained
    # a bright typical spectrum and a faint one whose model is 3x worse than its peers'
    probe_snr = np.array([30.0, 4.0])  # both inside the train split's 1st-99th percentiles
    typical = 1 + (0.1 * probe_snr) ** 2
    probe_chi2 = typical * np.array([1.0, 3.0])
    at0 = np.zeros((2, 2))
    new = v3.terms(at0, probe_chi2, probe_snr)["R_CHI2"]
    old = v2.terms(at0, probe_chi2)["R_CHI2"]
    # raw χ² calls the bright typical spectrum odd and the faint bad fit ordinary; given S/N,
    # the order turns round
    assert old[0] > 2 and old[0] > old[1], old
    assert new[1] > 3.0 and new[0] < new[1] - 2 and new[0] < old[0] - 1, (new, old)
    # on the train split the χ² term is centred (median 0) like the other robust z-scores
    assert abs(np.median(v3.terms(s, chi2, snr)["R_CHI2"])) < 1e-9


def test_trend_is_the_least_squares_line_clamped_to_the_train_range(trained):
    _, chi2, snr, v3, _ = trained
    x = np.log(snr)
    slope, intercept = np.polyfit(x, np.log(chi2), 1)
    t = v3.chi2_trend
    assert (t.slope, t.intercept) == pytest.approx((slope, intercept), rel=1e-9)
    assert (t.lo, t.hi) == pytest.approx(tuple(np.quantile(x, [0.01, 0.99])))
    # outside the train split's S/N it does not extrapolate
    assert t(np.log([1e-3, 1e4])) == pytest.approx([t(t.lo), t(t.hi)])


def test_a_spectrum_without_signal_scores_high_and_train_spectra_do_not(trained):
    s, chi2, snr, v3, _ = trained
    train_terms = v3.terms(s, chi2, snr)
    # zero within 3σ of the train split's S/N: all but its ~0.1% faintest
    assert np.mean(train_terms["R_SIGNAL"] == 0) > 0.995
    # a sky fibre: noise around zero, median S/N ~0 (or below it, or no valid pixel at all),
    # which the decoder "fits" with χ² ≈ 1 — below the bright galaxies'
    probe_snr = np.array([0.08, -0.06, np.nan, 2.0])
    terms = v3.terms(np.zeros((4, 2)), np.ones(4), probe_snr)
    z = -(np.log(np.fmax(probe_snr, 1e-2)) - v3.snr_scale.median) / v3.snr_scale.sigma
    np.testing.assert_allclose(terms["R_SIGNAL"], np.maximum(0, z - SIGNAL_GRACE))
    assert np.all(terms["R_SIGNAL"][:3] > 2) and terms["R_SIGNAL"][3] == 0
    # the three no-signal spectra outrank every train spectrum
    assert terms["OUTLIER_SCORE"][:3].min() > np.percentile(train_terms["OUTLIER_SCORE"], 99)
    np.testing.assert_allclose(
        terms["OUTLIER_SCORE"], terms["R_DENSITY"] + terms["R_CHI2"] + terms["R_SIGNAL"]
    )
    assert log_snr(np.array([np.nan]))[0] == log_snr(np.array([-1.0]))[0] == np.log(1e-2)


def test_format_3_round_trip_and_format_2_without_snr(trained, tmp_path):
    s, chi2, snr, v3, v2 = trained
    path = tmp_path / "outliers.json"
    save_outlier_model(v3, path)
    d = json.loads(path.read_text())
    assert d["version"] == FORMAT_VERSION == 3 and "log snr" in d["score"]
    again = load_outlier_model(path)
    assert again.chi2_trend == v3.chi2_trend and again.snr_scale == v3.snr_scale
    np.testing.assert_array_equal(again.score(s, chi2, snr), v3.score(s, chi2, snr))
    # a format 3 model needs the S/N; a format 2 one (no S/N reference) scores without it
    with pytest.raises(DensityError, match="SNR"):
        v3.score(s, chi2)
    d.pop("chi2_trend"), d.pop("snr_scale")
    d["version"] = 2
    path.write_text(json.dumps(d))
    old = load_outlier_model(path)
    assert not old.scores_snr and "snr" not in old.definition
    assert np.all(old.terms(s, chi2)["R_SIGNAL"] == 0)


def test_median_snr_of_the_valid_pixels():
    flux = torch.tensor([[1.0, 2.0, 3.0, 100.0, 5.0], [0.1, -0.2, 0.0, 0.3, 0.2]])
    ivar = torch.tensor([[4.0, 4.0, 4.0, 0.0, 4.0], [1.0, 1.0, 1.0, 1.0, 0.0]])
    got = median_snr(flux, ivar)
    # row 0: S/N 2, 4, 6, 10 over the valid pixels (the masked 100 is ignored); lower median 4
    # row 1: 0.1, -0.2, 0.0, 0.3 → lower median 0.0
    assert got.tolist() == pytest.approx([4.0, 0.0])
    # independent of the flux scale: x·c with ivar/c² gives the same S/N
    np.testing.assert_allclose(median_snr(flux * 7, ivar / 49).numpy(), got.numpy(), rtol=1e-6)
    assert torch.isnan(median_snr(flux, torch.zeros_like(ivar))).all()


def test_trend_without_spread_in_snr_is_flat():
    from model.density import SnrTrend

    y = np.log([0.5, 1.0, 2.0, 4.0])
    flat = SnrTrend.fit(np.full(4, 2.0), y)  # every spectrum at one S/N: no slope to measure
    assert flat.slope == 0 and flat.intercept == pytest.approx(np.median(y))
    assert SnrTrend.fit(np.array([]), np.array([])).slope == 0
