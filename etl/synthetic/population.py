"""A SYNTHETIC population of SDSS-like galaxies: priors, bagpipes physics, SDSS observation model.

THE SPECTRA ARE SYNTHETIC (stellar-population models, not observations); their noise and masks
are real. Each galaxy is:

1. **Parameters** (:func:`draw_parameters`, pure numpy): a star-forming / green-valley /
   quiescent mixture with delayed-τ star-formation histories, stellar mass, metallicity, Calzetti
   A_V, nebular log U, velocity dispersion σ and a redshift from an SDSS-like n(z). The priors and
   why they look like the SDSS main sample are in ``docs/population.md``.
2. **Physics** (:class:`Synthesiser`): a bagpipes model (BC03 + MILES stellar library, Cloudy
   nebular grids shipped in its wheel) evaluated on the SDSS log-λ lattice in the observed frame,
   in SDSS flux units (1e-17 erg/s/cm²/Å); σ broadens stars and gas alike. Nebular emission
   comes only from stars younger than 10 Myr (bagpipes' birth clouds), so it vanishes where star
   formation has stopped. True derived quantities (living stellar mass, sSFR over 100 Myr,
   mass-weighted age, Dn4000, rest-frame Hα emission EW) come from the same model.
3. **Observation** (:func:`observe`, pure): the ivar vector and and_mask of a real bundled SDSS
   galaxy (chosen at random), rescaled so the median S/N per good pixel is the drawn one,
   Gaussian noise drawn from that ivar.

``etl.synthetic.population_corpus`` writes the files (``python -m etl.synthetic population``);
this module holds the science.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np

FLUX_UNIT = 1e-17  #: SDSS flux unit, erg/s/cm²/Å
DLOGLAM = 1e-4
LOGLAM0 = 3.578
LOG_SSFR_FLOOR = -13.0  #: log10 sSFR/yr assigned where the SFR over 100 Myr is ~0
R_MODEL = 2000.0  #: bagpipes sampling λ/Δλ over the spectrum (SDSS R ≈ 1800-2200)
MAX_Z = 0.6  #: bagpipes builds its high-resolution range for z <= this (speed)
SN_RANGE = (3.0, 40.0)  #: median S/N per pixel, truncated log-normal centred on 10

#: type name -> (fraction of the population, code stored in the files)
TYPES = {"star-forming": (0.45, 0), "green-valley": (0.15, 1), "quiescent": (0.40, 2)}

#: the parameter columns every galaxy has (float64); docs/population.md defines each
PARAMS = (
    "Z",
    "TYPE",
    "AGE",  # Gyr since star formation began (delayed-τ "age")
    "TAU",  # Gyr
    "LOG_MFORMED",  # log10 Msun formed
    "LOG_ZMET",  # log10 Z/Zsun (stars and gas)
    "AV",  # Calzetti A_V, mag
    "LOGU",  # nebular ionisation parameter
    "SIGMA",  # km/s
    "SN",  # target median S/N per good pixel
)
#: what the model gives back about each galaxy
DERIVED = ("LOG_MSTAR", "LOG_SSFR", "AGE_MW", "D4000", "HA_EW")


def age_of_universe(z: np.ndarray) -> np.ndarray:
    """Age of the universe at redshift ``z`` in Gyr (bagpipes' cosmology table)."""
    with contextlib.redirect_stdout(io.StringIO()):  # its import prints banners to stdout
        from bagpipes import utils

    return np.interp(z, utils.z_array, utils.age_at_z)


def draw_redshifts(rng: np.random.Generator, n: int) -> np.ndarray:
    """SDSS-like n(z) on 0.005 < z <= 0.5: 75 % main sample (Gamma k=3, θ=0.05: mode 0.1) and
    25 % LRG-like (Normal 0.30 ± 0.09)."""
    z = np.empty(n)
    filled = 0
    while filled < n:
        m = n - filled
        main = rng.random(m) < 0.75
        cand = np.where(main, rng.gamma(3.0, 0.05, m), rng.normal(0.30, 0.09, m))
        cand = cand[(cand > 0.005) & (cand <= 0.5)]
        take = min(len(cand), n - filled)
        z[filled : filled + take] = cand[:take]
        filled += take
    return z


def _log_uniform(rng: np.random.Generator, lo, hi, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def draw_parameters(rng: np.random.Generator, n: int, t_univ=age_of_universe) -> dict:
    """Draw ``n`` galaxies' parameters (arrays keyed by :data:`PARAMS`); z independent of type.

    ``t_univ(z)`` gives the age of the universe in Gyr (bounds the SFH age).
    """
    z = draw_redshifts(rng, n)
    t_u = t_univ(z) - 0.1  # stars must form after the Big Bang, with a little margin
    fractions = np.array([f for f, _ in TYPES.values()])
    kind = rng.choice(len(TYPES), size=n, p=fractions / fractions.sum())
    sf, gv, q = (kind == c for c in range(3))

    age = np.empty(n)
    tau = np.empty(n)
    # star-forming: long τ (rising or flat SFR); ages spread so that young and mature discs exist
    age[sf] = np.exp(rng.uniform(np.log(3.0), np.log(t_u[sf])))
    tau[sf] = _log_uniform(rng, 1.5, 10.0, sf.sum())
    # green valley: τ ~ 1-2.5 Gyr, several τ old: declining but not yet dead
    age[gv] = rng.uniform(0.45, 1.0, gv.sum()) * t_u[gv]
    tau[gv] = _log_uniform(rng, 0.9, 2.5, gv.sum())
    # quiescent: formed early and fast (τ <= 0.7 Gyr, age >= half the universe's)
    age[q] = rng.uniform(0.55, 1.0, q.sum()) * t_u[q]
    tau[q] = _log_uniform(rng, 0.1, 0.7, q.sum())

    centre = np.select([sf, gv, q], [10.2, 10.5, 10.9])
    width = np.select([sf, gv, q], [0.5, 0.4, 0.35])
    log_mformed = np.clip(rng.normal(centre, width), 9.0, 11.9)
    # mass-metallicity relation with scatter; old populations slightly richer
    log_zmet = 0.05 + 0.25 * (log_mformed - 10.5) + 0.1 * q + rng.normal(0, 0.15, n)
    log_zmet = np.clip(log_zmet, -1.0, 0.4)
    av = np.select(
        [sf, gv, q],
        [rng.gamma(2.0, 0.35, n), rng.gamma(2.0, 0.2, n), rng.exponential(0.12, n)],
    )
    av = np.clip(av, 0.0, 2.5)
    logu = rng.uniform(-3.8, -2.2, n)
    # σ rises with mass (Faber-Jackson-like); discs are dynamically colder than spheroids
    log_sigma = np.where(
        q,
        2.25 + 0.25 * (log_mformed - 10.9) + rng.normal(0, 0.08, n),
        1.90 + 0.25 * (log_mformed - 10.2) + rng.normal(0, 0.10, n),
    )
    sigma = np.clip(10**log_sigma, 50.0, 350.0)
    lo, hi = np.log10(SN_RANGE)
    sn = 10 ** np.clip(rng.normal(1.0, 0.25, n), lo, hi)
    return {
        "Z": z,
        "TYPE": kind.astype(np.float64),
        "AGE": age,
        "TAU": tau,
        "LOG_MFORMED": log_mformed,
        "LOG_ZMET": log_zmet,
        "AV": av,
        "LOGU": logu,
        "SIGMA": sigma,
        "SN": sn,
    }


def model_components(p: dict, i: int) -> dict:
    """The bagpipes ``model_components`` of galaxy ``i`` of the parameter arrays ``p``."""
    return {
        "redshift": float(p["Z"][i]),
        "veldisp": float(p["SIGMA"][i]),
        "delayed": {
            "age": float(p["AGE"][i]),
            "tau": float(p["TAU"][i]),
            "massformed": float(p["LOG_MFORMED"][i]),
            "metallicity": float(10 ** p["LOG_ZMET"][i]),
        },
        # eta = 2: birth clouds (and so the emission lines) see twice the diffuse A_V
        "dust": {"type": "Calzetti", "Av": float(p["AV"][i]), "eta": 2.0},
        "nebular": {"logU": float(p["LOGU"][i])},
    }


def dn4000(wave_rest: np.ndarray, flam: np.ndarray) -> float:
    """Narrow 4000 Å break (Balogh et al. 1999): <f_ν> in 4000-4100 Å over 3850-3950 Å."""
    fnu = flam * wave_rest**2
    red = (wave_rest >= 4000) & (wave_rest <= 4100)
    blue = (wave_rest >= 3850) & (wave_rest <= 3950)
    return float(fnu[red].mean() / fnu[blue].mean())


def halpha_ew(wave_rest: np.ndarray, flam_obs: np.ndarray, line_flux: float, z: float) -> float:
    """Rest-frame Hα emission equivalent width in Å (positive = emission).

    ``flam_obs`` is the observed-frame f_λ tabulated at rest wavelengths, ``line_flux`` the
    attenuated Hα flux (erg/s/cm²); the continuum is the median of side bands clear of [N II].
    """
    side = ((wave_rest > 6480) & (wave_rest < 6530)) | ((wave_rest > 6600) & (wave_rest < 6650))
    continuum = float(np.median(flam_obs[side]))
    return line_flux / continuum / (1 + z)


def bin_edges(wave: np.ndarray) -> np.ndarray:
    """Pixel edges of a wavelength grid: midpoints, ends extrapolated by half a pixel."""
    mid = 0.5 * (wave[1:] + wave[:-1])
    return np.concatenate([[2 * wave[0] - mid[0]], mid, [2 * wave[-1] - mid[-1]]])


def rebin(new_wave: np.ndarray, wave: np.ndarray, flux: np.ndarray) -> np.ndarray:
    """Flux-conserving resampling (what ``spectres`` computes), vectorised; 0 outside ``wave``.

    The cumulative integral of a piecewise-constant spectrum is piecewise linear in λ, so
    interpolating it at the new pixel edges and differencing is exact.
    """
    edges = bin_edges(wave)
    cum = np.concatenate([[0.0], np.cumsum(flux * np.diff(edges))])
    new_edges = bin_edges(new_wave)
    inside = (new_edges[:-1] >= edges[0]) & (new_edges[1:] <= edges[-1])
    out = np.diff(np.interp(new_edges, edges, cum)) / np.diff(new_edges)
    return np.where(inside, out, 0.0)


def broaden_and_redshift(
    wave_rest: np.ndarray, flam: np.ndarray, z: float, sigma: float, r_model: float
) -> tuple[np.ndarray, np.ndarray]:
    """bagpipes' Gaussian velocity broadening (σ in km/s, model pixels of c/(2 R) km/s)."""
    sigma_pix = sigma / (2.998e5 / r_model / 2.0)
    k_size = 4 * int(sigma_pix + 1)
    x = np.arange(-k_size, k_size + 1)
    kernel = np.exp(-(x**2) / (2 * sigma_pix**2))
    kernel /= np.trapezoid(kernel)
    flam = np.convolve(flam, kernel, mode="valid")
    return (1 + z) * wave_rest[k_size:-k_size], flam


def _fast_model_class(bagpipes):
    """bagpipes' model_galaxy with its last step vectorised: ``spectres`` loops in Python over
    output pixels and takes most of a model's time; :func:`rebin` computes the same flux-
    conserving averages (benchmarks/population_speed.py times both and compares them)."""

    class FastSpectrumModel(bagpipes.model_galaxy):
        def _calculate_spectrum(self, model_comp):
            wave, flam = broaden_and_redshift(
                self.wavelengths,
                self.spectrum_full,
                model_comp["redshift"],
                model_comp["veldisp"],
                bagpipes.config.R_spec,
            )
            self.spectrum = np.c_[self.spec_wavs, rebin(self.spec_wavs, wave, flam)]

    return FastSpectrumModel


@dataclass
class Synthesiser:
    """bagpipes model on the SDSS lattice pixels ``k_lo..k_hi`` (observed frame)."""

    k_lo: int
    k_hi: int

    def __post_init__(self) -> None:
        os.environ.setdefault("MPLBACKEND", "Agg")
        with contextlib.redirect_stdout(io.StringIO()):  # its import prints banners to stdout
            import bagpipes
            from bagpipes import config

        # bagpipes samples its model at R_spec over [λ_min/(1+max_redshift), λ_max]; our z <= 0.5
        # and SDSS's R ~ 2000 make a far smaller (faster) grid than its defaults (1000, z 10)
        config.R_spec = R_MODEL
        config.max_redshift = MAX_Z
        self._config = config
        self._bagpipes = bagpipes
        self.wave_obs = 10 ** (LOGLAM0 + DLOGLAM * np.arange(self.k_lo, self.k_hi + 1))
        self._model = None
        self._model_class = _fast_model_class(bagpipes)
        self._ha = next(n for n in config.line_names if n.startswith("H  1  6562"))

    def spectrum(self, p: dict, i: int) -> tuple[np.ndarray, dict]:
        """(flux on the lattice in 1e-17 erg/s/cm²/Å, derived truths) of galaxy ``i``."""
        comps = model_components(p, i)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if self._model is None:
                self._model = self._model_class(comps, spec_wavs=self.wave_obs)
            else:
                self._model.update(comps)
        m = self._model
        flux = m.spectrum[:, 1] / FLUX_UNIT
        sfh = m.sfh
        log_ssfr = sfh.ssfr if np.isfinite(sfh.ssfr) else LOG_SSFR_FLOOR
        derived = {
            "LOG_MSTAR": float(sfh.stellar_mass),
            "LOG_SSFR": float(max(log_ssfr, LOG_SSFR_FLOOR)),
            "AGE_MW": float(sfh.mass_weighted_age),
            "D4000": dn4000(m.wavelengths, m.spectrum_full),
            "HA_EW": halpha_ew(
                m.wavelengths, m.spectrum_full, float(m.line_fluxes[self._ha]), comps["redshift"]
            ),
        }
        return flux, derived


def observe(
    rng: np.random.Generator,
    model: np.ndarray,
    ivar_real: np.ndarray,
    and_mask: np.ndarray,
    sn_target: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Noisy flux and ivar from a noiseless ``model`` and a real spectrum's ivar and and_mask.

    The real ivar keeps its shape (sky lines, throughput, the dichroic) and is scaled so that
    the median of model·sqrt(ivar) over good pixels (ivar > 0, and_mask 0) is ``sn_target``;
    masked pixels keep ivar 0. Returns (flux, ivar, the median S/N reached before noise).
    """
    good = (ivar_real > 0) & (and_mask == 0)
    if not good.any():
        raise ValueError("the noise template has no good pixel")
    sn_now = np.median(model[good] * np.sqrt(ivar_real[good]))
    if not sn_now > 0:
        raise ValueError("the model has no positive flux on the good pixels")
    scale = (sn_target / sn_now) ** 2
    ivar = ivar_real * scale
    sigma = np.where(ivar > 0, 1.0 / np.sqrt(np.where(ivar > 0, ivar, 1.0)), 0.0)
    flux = model + rng.standard_normal(len(model)) * sigma
    return flux, ivar, float(np.median(model[good] * np.sqrt(ivar[good])))
