"""What each column of an embedding is, in the FITS cards other tools read: unit, words, UCD.

astropy keeps a column's ``description`` only in a YAML comment block that STILTS, TOPCAT, fitsio
and CFITSIO ignore; the cards they do read are ``TUNITn`` (FITS standard), ``TCOMMn`` (a short
description: the HEASARC convention TOPCAT shows as "Description") and ``TUCDn`` (an IVOA UCD,
e.g. ``pos.eq.ra``, by which TOPCAT recognises sky positions). :func:`describe_columns`
(:mod:`shardio.columns`, shared with ``etl``'s catalogue writer) writes them for every column
it knows; the embedding writer (`model.embed.write_embedding`) calls it.

Units follow the FITS standard's spelling (deg, Angstrom, km/s, d), so astropy, CFITSIO and
STILTS parse them; a dimensionless column has no ``TUNITn``. Descriptions fit one card (at most
68 characters), so no reader has to follow a CONTINUE card to see one.
"""

from __future__ import annotations

from collections.abc import Mapping

from shardio.columns import ColumnMeta, describe_columns

__all__ = ["ColumnMeta", "describe_columns"]


#: Every column an embedding can hold (upper case, as written), what it is and its unit.
EMBEDDING_COLUMNS: Mapping[str, ColumnMeta] = {
    "SPECOBJID": ColumnMeta(
        "", "spectrum id of the release, exact decimal digits", "meta.id;meta.main"
    ),
    "PLATE": ColumnMeta("", "SDSS plate number (object key)", "meta.id;instr.param"),
    "MJD": ColumnMeta("d", "MJD of the observation (object key)", "time.epoch;obs"),
    "FIBERID": ColumnMeta("", "fibre number on the plate (object key)", "meta.id;instr.param"),
    "FIELD": ColumnMeta("", "SDSS-V field id (object key)", "meta.id;instr.param"),
    "CATALOGID": ColumnMeta("", "SDSS-V catalogdb target id (object key)", "meta.id"),
    "TARGETID": ColumnMeta("", "DESI target id (object key)", "meta.id"),
    "SURVEY": ColumnMeta("", "DESI survey, e.g. main, sv3 (object key)", "meta.id;obs"),
    "PROGRAM": ColumnMeta("", "DESI programme, e.g. dark, bright (object key)", "meta.id;obs"),
    "HEALPIX": ColumnMeta("", "DESI coadd HEALPix pixel (nside 64, nested)", "pos.healpix"),
    "RA": ColumnMeta(
        "deg", "right ascension (ICRS) of the fibre or catalogue", "pos.eq.ra;meta.main"
    ),
    "DEC": ColumnMeta(
        "deg", "declination (ICRS) of the fibre or catalogue", "pos.eq.dec;meta.main"
    ),
    "Z": ColumnMeta("", "catalogue redshift the spectrum was embedded at", "src.redshift"),
    "SPLIT": ColumnMeta(
        "", "train/valid/test split (none: a file outside the shards)", "meta.code"
    ),
    "S": ColumnMeta("", "latent vector s of the autoencoder", "stat.fit.param"),
    "CHI2": ColumnMeta(
        "", "reconstruction chi2 per valid pixel (1: within the noise)", "stat.fit.chi2"
    ),
    "SNR": ColumnMeta("", "median S/N per valid pixel, flux*sqrt(ivar)", "stat.snr"),
    "LOGP": ColumnMeta(
        "", "ln density of s under the train-split latent density", "stat.likelihood"
    ),
    "R_DENSITY": ColumnMeta(
        "", "robust z-score of the latent density distance vs train", "stat.value"
    ),
    "R_CHI2": ColumnMeta("", "robust z-score of ln CHI2 vs train, given its S/N", "stat.value"),
    "R_SIGNAL": ColumnMeta("", "max(0, robust z of -ln SNR vs train - 3): no signal", "stat.value"),
    "OUTLIER_SCORE": ColumnMeta(
        "", "R_DENSITY + R_CHI2 + R_SIGNAL; larger is odder", "stat.value;meta.main"
    ),
    "OUTLIER_RANK": ColumnMeta(
        "", "rank of OUTLIER_SCORE in this file (1: most anomalous)", "meta.number"
    ),
    "CLASS": ColumnMeta("", "pipeline spectral class (GALAXY, QSO, STAR)", "src.class"),
    "SHARD": ColumnMeta("", "shard file of the row, relative to the SHARDS folder", "meta.file"),
    "ROW": ColumnMeta("", "row of the object in that shard (0-based)", "meta.number"),
    "FILE": ColumnMeta("", "spec-lite file the spectrum was read from", "meta.file"),
    "SYNTHETIC": ColumnMeta("", "T: a SYNTHETIC population galaxy, not a real object", "meta.code"),
}
