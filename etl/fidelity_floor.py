"""The fidelity floor of a SYNTHETIC population: L_fid of the true spectra against the data.

A SYNTHETIC spec-lite file (`SYNTHETIC = T`) carries the noiseless model it was drawn from in
its COADD column ``model``. Put on the observed grid and divided by the row's ``norm`` exactly as
the shard's flux was, it is what a perfect autoencoder would output, and

    L_fid(truth) = 1/(2NM) Σ_i Σ_k w_ik (x_ik − t_ik)²

(the same sum and normalisation as `model.losses.fidelity_loss`) is the lowest L_fid any model
can reach on those rows on average: about ½ × the fraction of unmasked pixels when the noise is
what ivar says. The gap between a run's L_fid and this floor is what training can still win.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from etl.fitsread import FitsError, FitsFile
from etl.objects import spec_lite_name
from etl.release import Grid
from etl.spectrum import place_on_grid
from shardio import object_key, read_shard


class FloorError(ValueError):
    """The truth of a row cannot be read (no SYNTHETIC file, or a file without ``model``)."""


def truth_on_grid(path: str | Path, grid: Grid) -> np.ndarray:
    """The noiseless ``model`` column of a SYNTHETIC spec-lite file on ``grid`` (0 off its
    coverage), in the file's flux units (1e-17 erg/s/cm²/Å). Only a file whose HDU2 row says
    SYNTHETIC holds a truth: a real file's ``model`` is the pipeline's fit, not the truth, so it
    raises FloorError."""
    try:
        fits = FitsFile.read(path)
        cols = fits.table(1, ("loglam", "model"))
        synthetic = fits.table(2, ("SYNTHETIC",), rows=1)["SYNTHETIC"]
    except (OSError, FitsError) as err:
        raise FloorError(f"{Path(path).name}: no truth to compare ({err})") from None
    if not (len(synthetic) == 1 and bool(synthetic[0])):
        raise FloorError(f"{Path(path).name}: not a SYNTHETIC file (no truth to compare)")
    n = len(cols["loglam"])
    zeros = np.zeros(n)
    truth, _, _ = place_on_grid(
        cols["loglam"].astype(np.float64), cols["model"].astype(np.float64), zeros, zeros, grid
    )
    return truth


def fidelity_floor(shard_paths: list[Path], spectra_dir: str | Path, grid: Grid) -> dict:
    """L_fid of the truth on every row of ``shard_paths``, whose files lie under ``spectra_dir``.

    Returns {"L_fid_truth", "n", "unmasked_fraction"}. Raises FloorError when a row's file is
    missing or holds no truth.
    """
    files = {p.name: p for p in Path(spectra_dir).rglob("spec-*.fits")}
    total, n_rows, n_pix, n_valid = 0.0, 0, 0, 0
    for shard in shard_paths:
        rows = read_shard(shard)
        key = object_key(rows["attrs"])
        if key != ("plate", "mjd", "fiberid"):
            raise FloorError(f"{shard}: the floor reads SDSS-I-IV spec-lite files, not {key}")
        for i in range(len(rows["norm"])):
            name = spec_lite_name(
                int(rows["plate"][i]), int(rows["mjd"][i]), int(rows["fiberid"][i])
            )
            if name not in files:
                raise FloorError(f"{name}: not under {spectra_dir} (regenerate the population)")
            truth = truth_on_grid(files[name], grid) / float(rows["norm"][i])
            w = rows["ivar"][i].astype(np.float64)
            total += float(np.sum(w * (rows["flux"][i] - truth) ** 2))
            n_rows += 1
            n_pix += w.size
            n_valid += int((w > 0).sum())
    if n_rows == 0:
        raise FloorError("no rows to compare")
    return {
        "L_fid_truth": total / (2 * n_pix),
        "n": n_rows,
        "unmasked_fraction": n_valid / n_pix,
    }
