"""DESI as a release family: healpix coadds (EDR fuji, DR1 iron) read by byte ranges.

- :mod:`etl.desi.manifest`: a DESI manifest (``data_manifests/desi-*.toml``) -> :class:`DesiRelease`
- :mod:`etl.desi.catalog`: zall-pix / redrock tables -> the selected catalogue, cuts as data
- :mod:`etl.desi.coadd`: a coadd's FIBERMAP and arms, from a file or from fetched HDUs
- :mod:`etl.desi.preprocess`: pure science: mask, arm join, flux-conserving resample
- :mod:`etl.desi.rangefetch`: plan, read and verify HTTP range reads per HDU (DATASUM/CHECKSUM)
"""
