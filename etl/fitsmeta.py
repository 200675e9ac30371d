"""What each column of ``catalog.fits`` is, in the FITS cards other tools read: unit, words, UCD.

astropy keeps a column's ``description`` only in a YAML comment block that STILTS, TOPCAT, fitsio
and CFITSIO ignore; the cards they do read are ``TUNITn`` (FITS standard), ``TCOMMn`` (a short
description: the HEASARC convention TOPCAT shows as "Description") and ``TUCDn`` (an IVOA UCD,
e.g. ``pos.eq.ra``, by which TOPCAT recognises sky positions). ``etl.catalog.write_catalog``
calls :func:`describe_columns` on every catalogue it writes.

Units follow the FITS standard's spelling (deg, Angstrom, km/s, Gyr, mag), so astropy, CFITSIO
and STILTS parse them; a dimensionless column has no ``TUNITn``. A logarithm is dimensionless
too: its description names the quantity and unit inside (``log10(M / solMass)``), since
astropy rejects the standard's ``log(solMass)`` with a warning on every read. Descriptions fit
one card (at most 68 characters). The embedding's columns are described the same way in
``model/fitsmeta.py`` (``model`` does not import ``etl``, so each side holds its own table; the
card writer both use is :mod:`shardio.columns`).
"""

from __future__ import annotations

from collections.abc import Mapping

from shardio.columns import ColumnMeta, describe_columns

__all__ = ["ColumnMeta", "describe_columns"]

_KEY = "meta.id;instr.param"

#: Every column a catalogue can hold (contract v2, etl.catalog; the SYNTHETIC population's
#: flag and true parameters, docs/population.md), upper case as written.
CATALOG_COLUMNS: Mapping[str, ColumnMeta] = {
    "SPECOBJID": ColumnMeta(
        "", "spectrum id of the release, exact decimal digits", "meta.id;meta.main"
    ),
    "PLATE": ColumnMeta("", "SDSS plate number (object key)", _KEY),
    "MJD": ColumnMeta("d", "MJD of the observation (object key)", "time.epoch;obs"),
    "FIBERID": ColumnMeta("", "fibre number on the plate (object key)", _KEY),
    "FIELD": ColumnMeta("", "SDSS-V field id (object key)", _KEY),
    "CATALOGID": ColumnMeta("", "SDSS-V catalogdb target id (object key)", "meta.id"),
    "TARGETID": ColumnMeta("", "DESI target id (object key)", "meta.id"),
    "SURVEY": ColumnMeta("", "DESI survey, e.g. main, sv3 (object key)", "meta.id;obs"),
    "PROGRAM": ColumnMeta("", "DESI programme, e.g. dark, bright (object key)", "meta.id;obs"),
    "HEALPIX": ColumnMeta("", "DESI coadd HEALPix pixel (nside 64, nested)", "pos.healpix"),
    "OBJTYPE": ColumnMeta("", "DESI fibre type: TGT (target), SKY, BAD, ...", "meta.code"),
    "FIBERSTATUS": ColumnMeta("", "DESI COADD_FIBERSTATUS bitmask (0: good fibre)", "meta.code"),
    "DELTACHI2": ColumnMeta(
        "", "redrock chi2 gap to the 2nd-best fit (larger: surer z)", "stat.fit.chi2"
    ),
    "RA": ColumnMeta(
        "deg", "right ascension (ICRS): catalogue, else fibre position", "pos.eq.ra;meta.main"
    ),
    "DEC": ColumnMeta(
        "deg", "declination (ICRS): catalogue, else fibre position", "pos.eq.dec;meta.main"
    ),
    "RUN2D": ColumnMeta("", "spectroscopic reduction (pipeline version)", "meta.version"),
    "CLASS": ColumnMeta("", "pipeline spectral class (GALAXY, QSO, STAR)", "src.class"),
    "Z": ColumnMeta("", "redshift", "src.redshift"),
    "Z_ERR": ColumnMeta("", "redshift error (-1: the fit failed)", "stat.error;src.redshift"),
    "ZWARNING": ColumnMeta(
        "", "redshift warning bitmask (0: no problem flagged)", "meta.code.qual"
    ),
    "SPECPRIMARY": ColumnMeta(
        "", "science-primary flag: 1, 0, or -1 (source has none)", "meta.code"
    ),
    "SYNTHETIC": ColumnMeta("", "T: a SYNTHETIC population galaxy, not a real object", "meta.code"),
    # the SYNTHETIC population's true parameters (docs/population.md)
    "TRUE_Z": ColumnMeta("", "true redshift", "src.redshift"),
    "TRUE_TYPE": ColumnMeta("", "0 star-forming, 1 green valley, 2 quiescent", "src.class"),
    "TRUE_AGE": ColumnMeta("Gyr", "time since star formation began (delayed tau)", "time.age"),
    "TRUE_TAU": ColumnMeta("Gyr", "e-folding time of the delayed-tau history", "time.scale"),
    "TRUE_LOG_MFORMED": ColumnMeta("", "log10(stellar mass formed / solMass)", "phys.mass"),
    "TRUE_LOG_ZMET": ColumnMeta("", "log10 metallicity Z/Zsun (stars and gas)", "phys.abund.Z"),
    "TRUE_AV": ColumnMeta("mag", "Calzetti dust attenuation A_V", "phys.absorption;em.opt.V"),
    "TRUE_LOGU": ColumnMeta("", "log10 nebular ionisation parameter", "phys.ionization"),
    "TRUE_SIGMA": ColumnMeta("km/s", "stellar velocity dispersion", "phys.veloc.dispersion"),
    "TRUE_SN": ColumnMeta("", "target median S/N per good pixel", "stat.snr"),
    "TRUE_LOG_MSTAR": ColumnMeta("", "log10(living stellar mass / solMass)", "phys.mass"),
    "TRUE_LOG_SSFR": ColumnMeta(
        "", "log10(sSFR * yr): SFR over 100 Myr / M*, floor -13", "phys.SFR"
    ),
    "TRUE_AGE_MW": ColumnMeta("Gyr", "mass-weighted stellar age", "time.age"),
    "TRUE_D4000": ColumnMeta("", "Dn4000 break strength (Balogh et al. 1999)", "spect.index"),
    "TRUE_HA_EW": ColumnMeta(
        "Angstrom", "rest-frame H-alpha emission equivalent width", "spect.line.eqWidth"
    ),
}
