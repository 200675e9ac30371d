"""Telluric (night-sky) line mask on the observed grid.

The seed paper masks ±5 Å around the ~100 brightest sky lines in the observed range. With the
bundled line list (639 lines, wavelengths in nm) and the DR16 grid this masks 453 of 3921 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_sky_lines(path: str | Path, units: str = "nm") -> tuple[np.ndarray, np.ndarray]:
    """Read a sky-line list: whitespace columns wavelength, relative intensity, …; ``#`` comments.

    Returns (wavelength in Å, intensity), both float64.
    """
    wave, intensity = [], []
    for line in Path(path).read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        wave.append(float(fields[0]))
        intensity.append(float(fields[1]))
    scale = {"nm": 10.0, "angstrom": 1.0}[units]
    return np.asarray(wave) * scale, np.asarray(intensity)


def brightest_lines(
    line_wave: np.ndarray, intensity: np.ndarray, wave_min: float, wave_max: float, top_n: int
) -> np.ndarray:
    """Wavelengths (Å) of the ``top_n`` brightest lines with wave_min <= λ <= wave_max.

    Ties in intensity are broken by wavelength so the choice never depends on file order.
    """
    inside = (line_wave >= wave_min) & (line_wave <= wave_max)
    wave, inten = line_wave[inside], intensity[inside]
    order = np.lexsort((wave, -inten))
    return np.sort(wave[order[:top_n]])


def telluric_mask(
    wave_obs: np.ndarray,
    line_wave: np.ndarray,
    intensity: np.ndarray,
    top_n: int,
    half_width: float,
) -> np.ndarray:
    """Boolean mask over ``wave_obs`` (Å): True within ±half_width Å of a chosen sky line."""
    wave_obs = np.asarray(wave_obs, dtype=np.float64)
    lines = brightest_lines(line_wave, intensity, wave_obs[0], wave_obs[-1], top_n)
    # wave_obs is sorted, so each line masks one contiguous run of pixels.
    lo = np.searchsorted(wave_obs, lines - half_width, side="left")
    hi = np.searchsorted(wave_obs, lines + half_width, side="right")
    mask = np.zeros(wave_obs.shape, dtype=bool)
    for a, b in zip(lo, hi, strict=True):
        mask[a:b] = True
    return mask


def release_telluric_mask(release) -> np.ndarray:
    """The telluric pixel mask of a :class:`etl.release.Release` on its observed grid."""
    t = release.telluric
    wave, intensity = read_sky_lines(t.line_list, t.line_list_units)
    return telluric_mask(release.grid.wave_obs, wave, intensity, t.top_n, t.half_width)
