"""One spectrum, from a spec-lite file to grid-aligned, masked, normalised arrays.

The science of the ETL lives here as pure functions (arrays in, arrays out):

1. :func:`place_on_grid` — spec-lite ``loglam`` sits on the same 1e-4 dex lattice as the
   observed grid, so placement is an integer offset (no interpolation); pixels outside either
   range are dropped (clipped at both ends) and uncovered grid pixels get flux 0, ivar 0.
2. :func:`apply_masks` — pipeline ``and_mask``, ``ivar <= 1e-6`` and non-finite values, then the
   telluric mask, set ivar to 0; flux is kept where finite (only weights are zeroed).
3. :func:`normalise` — divide by the median flux of valid pixels whose restframe wavelength lies
   in the normalisation window; ivar scales by norm².

:class:`Preprocessor` binds a release's settings; :func:`read_spec_lite` is the I/O edge.
Every failure is a :class:`SpectrumRejected` whose message names the object and the cause.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etl.fitsread import FitsError, FitsFile
from etl.release import Grid, Release
from etl.telluric import release_telluric_mask

#: ivar at or below this is treated as no measurement (as SDSS and spender do)
IVAR_FLOOR = 1e-6
#: largest tolerated distance (pixels) of a file's wavelength grid from the 1e-4 dex lattice
MAX_GRID_OFFSET = 0.01

#: COADD (HDU1) columns read; matched case-insensitively (SDSS-V writes them upper case)
COADD_COLUMNS = ("loglam", "flux", "ivar", "and_mask")
#: HDU2 object key of SDSS-I–IV files (a release's manifest says its own: ``[object] key``)
SPECOBJ_ID_COLUMNS = ("plate", "mjd", "fiberid")


class GridMisaligned(ValueError):
    """A file's wavelengths are not on the grid's log-lambda lattice."""


class SpectrumRejected(ValueError):
    """A spectrum that cannot enter the training set. ``reason`` is a short category."""

    def __init__(self, obj: str, reason: str, detail: str = ""):
        self.obj = obj
        self.reason = reason
        self.detail = detail
        super().__init__(f"{obj}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class RawSpectrum:
    """The HDU1 (COADD) columns of a spec-lite file, native float64/int arrays.

    ``loglam`` is log10(λ/Å) (vacuum), ``flux`` in 1e-17 erg/s/cm²/Å, ``ivar`` its inverse variance.
    ``ids``: the object key read from HDU2 (SPECOBJ / SPALL), lower-case field -> value, e.g.
    ``{"plate": 266, "mjd": 51602, "fiberid": 1}``; None when HDU2 was not read.
    """

    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    ids: dict[str, int] | None = None

    @property
    def plate(self) -> int | None:
        return (self.ids or {}).get("plate")

    @property
    def mjd(self) -> int | None:
        return (self.ids or {}).get("mjd")

    @property
    def fiberid(self) -> int | None:
        return (self.ids or {}).get("fiberid")


@dataclass(frozen=True)
class Preprocessed:
    """A spectrum on the observed grid: normalised flux, its ivar (float32, npix) and the norm."""

    flux: np.ndarray
    ivar: np.ndarray
    norm: float


# --- I/O edge ----------------------------------------------------------------------------------


def read_spec_lite(
    path: str | Path,
    with_ids: bool = True,
    name: str | None = None,
    key: tuple[str, ...] = SPECOBJ_ID_COLUMNS,
) -> RawSpectrum:
    """Read the COADD columns (and, ``with_ids``, HDU2's object-key columns ``key``) of a file.

    Uses the strict fast reader in :mod:`etl.fitsread`; values equal astropy's (tested).
    Raises :class:`SpectrumRejected` naming the file on any problem.
    """
    obj = name or Path(path).name
    try:
        fits = FitsFile.read(path)
    except FileNotFoundError:
        raise SpectrumRejected(obj, "not downloaded", str(path)) from None
    except OSError as err:
        raise SpectrumRejected(obj, "unreadable", err.strerror or str(err)) from None
    except FitsError as err:
        raise SpectrumRejected(obj, "unreadable", str(err)) from None
    return _raw_from_fits(fits, obj, tuple(key) if with_ids else None)


def _raw_from_fits(fits: FitsFile, obj: str, key: tuple[str, ...] | None) -> RawSpectrum:
    try:
        cols = fits.table(1, COADD_COLUMNS)
        ids = fits.table(2, key, rows=1) if key else None
    except FitsError as err:
        raise SpectrumRejected(obj, "unreadable", str(err)) from None
    values = None
    if ids is not None:
        if len(ids[key[0]]) != 1:
            raise SpectrumRejected(obj, "unreadable", "HDU2 has no row")
        values = {k.lower(): int(ids[k][0]) for k in key}
    return RawSpectrum(
        loglam=cols["loglam"].astype(np.float64),
        flux=cols["flux"].astype(np.float64),
        ivar=cols["ivar"].astype(np.float64),
        and_mask=cols["and_mask"].astype(np.int64),
        ids=values,
    )


# --- pure science ------------------------------------------------------------------------------


def grid_indices(loglam: np.ndarray, grid: Grid) -> np.ndarray:
    """Index on ``grid`` of each of a file's pixels; :class:`GridMisaligned` if off the lattice.

    A pixel more than ``MAX_GRID_OFFSET`` pixels from a lattice point, or pixels that are not
    consecutive lattice points, mean the file is not on the grid and cannot be placed by offset.
    """
    exact = (np.asarray(loglam, dtype=np.float64) - grid.loglam0) / grid.dloglam
    index = np.rint(exact)
    worst = float(np.max(np.abs(exact - index))) if len(exact) else 0.0
    if not worst <= MAX_GRID_OFFSET:
        raise GridMisaligned(f"pixels lie up to {worst:.3f} px off the 1e-4 dex lattice")
    if len(index) > 1 and np.any(np.diff(index) != 1):
        raise GridMisaligned("pixels are not consecutive on the lattice")
    return index.astype(np.int64)


def place_on_grid(
    loglam: np.ndarray, flux: np.ndarray, ivar: np.ndarray, and_mask: np.ndarray, grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Copy a spectrum onto ``grid`` by integer offset; clip both ends; uncovered → flux 0, ivar 0.

    Returns (flux, ivar, and_mask) of length grid.npix (float64, float64, int64). Raises
    GridMisaligned if the file's pixels are not on the grid's lattice.
    """
    n = len(loglam)
    if not (len(flux) == len(ivar) == len(and_mask) == n) or n == 0:
        raise ValueError("COADD columns are empty or of unequal length")
    offset = int(grid_indices(loglam, grid)[0])
    out_flux = np.zeros(grid.npix)
    out_ivar = np.zeros(grid.npix)
    out_mask = np.zeros(grid.npix, dtype=np.int64)
    lo, hi = max(offset, 0), min(offset + n, grid.npix)  # grid range covered
    if lo < hi:
        src = slice(lo - offset, hi - offset)
        out_flux[lo:hi] = flux[src]
        out_ivar[lo:hi] = ivar[src]
        out_mask[lo:hi] = and_mask[src]
    return out_flux, out_ivar, out_mask


def apply_masks(
    flux: np.ndarray, ivar: np.ndarray, and_mask: np.ndarray, telluric: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Zero ivar where and_mask != 0, ivar <= 1e-6, flux or ivar not finite, or telluric.

    Non-finite flux at masked pixels becomes 0 so no NaN survives; finite flux is kept.
    """
    bad = (and_mask != 0) | ~np.isfinite(flux) | ~np.isfinite(ivar)
    with np.errstate(invalid="ignore"):
        bad |= ivar <= IVAR_FLOOR
    flux = np.where(np.isfinite(flux), flux, 0.0)
    ivar = np.where(bad | telluric, 0.0, ivar)
    return flux, ivar


def normalise(
    flux: np.ndarray, ivar: np.ndarray, wave_obs: np.ndarray, z: float, window: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, float]:
    """Divide by the median flux of valid pixels with λ_obs/(1+z) in ``window`` (Å).

    Returns (flux / norm, ivar · norm², norm). Raises ValueError with the cause when the window
    has no valid pixel or the median is not finite and positive (dividing by it would poison
    training with NaN or flip the spectrum).
    """
    if not np.isfinite(z) or z <= -1:
        raise ValueError(f"invalid redshift z={z!r}")
    restframe = wave_obs / (1.0 + z)
    in_window = (restframe >= window[0]) & (restframe <= window[1]) & (ivar > 0)
    if not in_window.any():
        raise ValueError(
            f"no valid pixel in the restframe normalisation window {window[0]:g}-{window[1]:g} Å at z={z:.4g}"
        )
    norm = float(np.median(flux[in_window]))
    if not np.isfinite(norm) or norm <= 0:
        raise ValueError(f"normalisation median is {norm:.4g} (must be finite and > 0)")
    return flux / norm, ivar * norm**2, norm


def mask_and_normalise(
    flux: np.ndarray,
    ivar: np.ndarray,
    and_mask: np.ndarray,
    telluric: np.ndarray,
    wave_obs: np.ndarray,
    z: float,
    window: tuple[float, float],
    obj: str,
) -> Preprocessed:
    """A spectrum already on the grid → masked (:func:`apply_masks`) and normalised
    (:func:`normalise`), float32; raises :class:`SpectrumRejected` naming ``obj`` when no pixel
    survives the mask or the window has none. The steps every release family shares."""
    flux, ivar = apply_masks(flux, ivar, and_mask, telluric)
    if not (ivar > 0).any():
        raise SpectrumRejected(obj, "empty mask", "no unmasked pixel on the grid")
    try:
        flux, ivar, norm = normalise(flux, ivar, wave_obs, z, window)
    except ValueError as err:
        raise SpectrumRejected(obj, "no normalisation", str(err)) from None
    return Preprocessed(flux.astype(np.float32), ivar.astype(np.float32), norm)


# --- bound to a release ------------------------------------------------------------------------


class Preprocessor:
    """A release's preprocessing settings, computed once (grid, telluric mask, window)."""

    def __init__(self, release: Release):
        self.grid = release.grid
        self.key = tuple(release.key)
        self.wave_obs = release.grid.wave_obs
        self.telluric = release_telluric_mask(release)
        n = release.normalisation
        self.window = (n.restframe_min, n.restframe_max)

    def preprocess(self, raw: RawSpectrum, z: float, obj: str = "spectrum") -> Preprocessed:
        """Grid, mask and normalise one spectrum; raise :class:`SpectrumRejected` naming ``obj``."""
        try:
            flux, ivar, and_mask = place_on_grid(
                raw.loglam, raw.flux, raw.ivar, raw.and_mask, self.grid
            )
        except GridMisaligned as err:
            raise SpectrumRejected(obj, "grid misaligned", str(err)) from None
        except ValueError as err:
            raise SpectrumRejected(obj, "unreadable", str(err)) from None
        return mask_and_normalise(
            flux, ivar, and_mask, self.telluric, self.wave_obs, z, self.window, obj
        )

    def preprocess_file(
        self, path: str | Path, z: float, expect_id: tuple[int, ...] | None = None
    ) -> Preprocessed:
        """Read and preprocess one file; with ``expect_id`` check HDU2's object key (the
        release's key fields, e.g. (plate, mjd, fiberid) or (field, mjd, catalogid))."""
        obj = Path(path).name
        raw = read_spec_lite(path, with_ids=expect_id is not None, key=self.key)
        if expect_id is not None:
            got = tuple((raw.ids or {}).get(k) for k in self.key)
            if got != tuple(expect_id):
                raise SpectrumRejected(
                    obj, "id mismatch", f"HDU2 holds {got}, expected {tuple(expect_id)}"
                )
        return self.preprocess(raw, z, obj)
