"""Reference implementations the tests hold the product's fast code against (test code only):
the textbook order of a conv block (model.autoencoder.ConvBlock reorders it for speed) and a
spec-lite reader through astropy (etl.fitsread is the strict fast one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from etl.spectrum import SPECOBJ_ID_COLUMNS, RawSpectrum


def conv_block_reference_forward(block, x: torch.Tensor) -> torch.Tensor:
    """model.autoencoder.ConvBlock in the textbook order: conv, norm, PReLU, dropout, pool."""
    h = block.dropout(block.act(F.instance_norm(block.conv(x))))
    if block.pool is None:
        return h
    return F.max_pool1d(h, block.pool, padding=block.pool // 2)


def read_spec_lite_astropy(
    path: str | Path, key: tuple[str, ...] = SPECOBJ_ID_COLUMNS
) -> RawSpectrum:
    """Reference reader through astropy (the slow, trusted path; used to validate the fast one).

    astropy matches column names case-insensitively, as the fast reader does."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        coadd = hdul[1].data
        specobj = hdul[2].data
        return RawSpectrum(
            loglam=np.asarray(coadd["loglam"], dtype=np.float64),
            flux=np.asarray(coadd["flux"], dtype=np.float64),
            ivar=np.asarray(coadd["ivar"], dtype=np.float64),
            and_mask=np.asarray(coadd["and_mask"], dtype=np.int64),
            ids={k.lower(): int(specobj[k][0]) for k in key},
        )
