"""`specetl embed`: latents, χ² and outlier scores of every object in the shards, as a FITS table.

Reads the shards (docs/shard-format.md) in order, a batch at a time, with the next batch read in a
background thread while the model runs on the current one (so I/O hides behind compute, on CPU or
GPU); memory holds one batch of spectra plus the per-object columns (~100 bytes a row).

The FITS table (one row per object, `EMBEDDING` HDU) has the release's ids exact: SPECOBJID as a
string (SDSS-V ids have 28-29 digits and eBOSS ids pass 2⁶³), each column the shard lists in its
`object_key` attribute (PLATE, MJD, FIBERID for SDSS-I–IV, v1 shards) as int64, RA/DEC when the
shards store them, Z, SPLIT, S (vector of the latent dimension), CHI2 (fidelity term per valid
pixel), LOGP, R_DENSITY, R_CHI2, OUTLIER_SCORE, OUTLIER_RANK (1 = most anomalous in this file)
and where each row came from (SHARD + ROW, or FILE). The header carries the provenance (run,
checkpoint and its sha256, shards folder and index.json sha256, outlier model). The file is
written under a temporary name and renamed when complete; the same inputs give the same table.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch

from model.autoencoder import SpectrumAutoencoder
from model.data import ShardError, file_sha256, index_sha256, list_shards
from model.density import (
    OUTLIERS_FILE,
    DensityError,
    OutlierModel,
    fit_outlier_model,
    load_outlier_model,
    outlier_rank,
    save_outlier_model,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
V1_OBJECT_KEY = ("plate", "mjd", "fiberid")
EXTNAME = "EMBEDDING"


class EmbedError(RuntimeError):
    """An embedding cannot be made or read; the message names the file and the cause."""


# --- tensors ---------------------------------------------------------------------------------


def chi2_per_pixel(x: torch.Tensor, x_model: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k (x_k − x″_k)² / #(w_k > 0) per spectrum: (B,), the fidelity term per valid pixel.

    `x`, `x_model`, `w` are (B, M) normalised flux, model on the observed grid and inverse
    variance; a spectrum the model reproduces within its noise has χ² ≈ 1.
    """
    n_valid = (w > 0).sum(-1).clamp(min=1)
    return (w * (x - x_model) ** 2).sum(-1) / n_valid


@torch.no_grad()
def embed_batch(
    model: SpectrumAutoencoder,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    z: torch.Tensor,
    with_models: bool = False,
) -> dict[str, torch.Tensor]:
    """Latents `s` (B, S) and `chi2` (B,) of a batch already on the model's device.

    With `with_models`, also the restframe model `x_rest` (B, n_rest) and the observed-frame
    reconstruction `x_obs` (B, M) (the explorer draws them).
    """
    s, x_rest, x_obs = model(flux, ivar, z)
    out = {"s": s.float(), "chi2": chi2_per_pixel(flux, x_obs.float(), ivar)}
    if with_models:
        out.update(x_rest=x_rest.float(), x_obs=x_obs.float())
    return out


# --- reading shards --------------------------------------------------------------------------


def object_key_of(f: h5py.File) -> list[str]:
    """The object-key columns a shard lists (format v2 `object_key`), or v1's plate/mjd/fiberid."""
    raw = f.attrs.get("object_key")
    if raw is None:
        return list(V1_OBJECT_KEY)
    if isinstance(raw, bytes):
        raw = raw.decode()
    return list(json.loads(raw)) if isinstance(raw, str) else [str(k) for k in raw]


def specobjid_strings(values: np.ndarray) -> np.ndarray:
    """Exact decimal strings of specobjids: v2 stores ASCII bytes, v1 uint64 (no float detour)."""
    if values.dtype.kind == "S":
        return np.char.strip(values.astype("U"))
    if values.dtype.kind == "U":
        return np.char.strip(values)
    return np.array([str(int(v)) for v in values.tolist()], dtype="U")


def read_rows(path: Path, start: int, stop: int) -> dict[str, np.ndarray]:
    try:
        with h5py.File(path, "r") as f:
            keys = object_key_of(f)
            out = {
                "flux": f["flux"][start:stop],
                "ivar": f["ivar"][start:stop],
                "z": f["z"][start:stop].astype(np.float32),
                "specobjid": specobjid_strings(f["specobjid"][start:stop]),
            }
            for k in keys:
                v = f[k][start:stop]  # int64, or ASCII for a text key (DESI survey, program)
                out[k] = np.char.strip(v.astype("U")) if v.dtype.kind == "S" else v.astype(np.int64)
            for k in ("ra", "dec"):
                if k in f:
                    out[k] = f[k][start:stop].astype(np.float64)
            out["_key"] = np.array(keys)
            return out
    except (OSError, KeyError, ValueError) as e:
        raise ShardError(f"cannot read shard {path} rows {start}:{stop}: {e}") from e


def iter_shard_batches(
    shards_dir: str | Path, splits: Sequence[str], batch_size: int = 256, verify: bool = False
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of rows of `splits`, in index order, with ids, split, shard path and row number.

    The next batch is read in a background thread while the caller works on the current one.
    """
    jobs = []
    for split in splits:
        for info in list_shards(shards_dir, split, verify=verify):
            rel = info.path.relative_to(Path(shards_dir)).as_posix()
            for a in range(0, info.rows, batch_size):
                jobs.append((split, info.path, rel, a, min(a + batch_size, info.rows)))

    def load(job: tuple) -> dict[str, np.ndarray]:
        split, path, rel, a, b = job
        d = read_rows(path, a, b)
        d["split"] = np.full(b - a, split)
        d["shard"] = np.full(b - a, rel)
        d["row"] = np.arange(a, b, dtype=np.int64)
        return d

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load, jobs[0]) if jobs else None
        for j in range(len(jobs)):
            batch = pending.result()
            pending = pool.submit(load, jobs[j + 1]) if j + 1 < len(jobs) else None
            yield batch


# --- embedding a stream of batches -----------------------------------------------------------

#: columns that are spectra, never copied into the table
_ARRAY_KEYS = ("flux", "ivar", "_key")


def embed_stream(
    model: SpectrumAutoencoder,
    batches: Iterator[dict[str, np.ndarray]],
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Run every batch through the model; return per-object columns (ids, Z, S, CHI2, …).

    Each batch is a dict of numpy arrays with `flux`, `ivar` (B, M) and `z` (B,) plus any
    per-object columns (ids, split, …), which are passed through.
    """
    model.eval()
    cols: dict[str, list[np.ndarray]] = {}
    key: list[str] = []
    for batch in batches:
        flux = torch.from_numpy(np.ascontiguousarray(batch["flux"])).to(device, non_blocking=True)
        ivar = torch.from_numpy(np.ascontiguousarray(batch["ivar"])).to(device, non_blocking=True)
        z = torch.from_numpy(np.asarray(batch["z"], dtype=np.float32)).to(device)
        out = embed_batch(model, flux, ivar, z)
        if "_key" in batch:
            key = [str(k) for k in batch["_key"]]
        for name, v in batch.items():
            if name not in _ARRAY_KEYS:
                cols.setdefault(name, []).append(np.asarray(v))
        cols.setdefault("s", []).append(out["s"].cpu().numpy())
        cols.setdefault("chi2", []).append(out["chi2"].cpu().numpy().astype(np.float64))
    if not cols:
        raise EmbedError("nothing to embed: no rows")
    table = {k: np.concatenate(v) for k, v in cols.items()}
    table["_object_key"] = np.array(key)
    return table


# --- the outlier reference of a run ----------------------------------------------------------


def checkpoint_path(run: str | Path) -> Path:
    """The checkpoint `model.train.load_model` reads: best.pt, else last.pt."""
    run = Path(run)
    return run / "best.pt" if (run / "best.pt").exists() else run / "last.pt"


def ensure_outlier_model(
    run: str | Path,
    shards_dir: str | Path,
    model: SpectrumAutoencoder,
    device: torch.device,
    batch_size: int = 256,
    refit: bool = False,
    train_table: dict[str, np.ndarray] | None = None,
) -> OutlierModel:
    """The run's outlier model (RUN/outliers.json); fitted on the train split if missing or stale.

    Stale means fitted for another checkpoint (its sha256 differs); new spectra are then scored
    against the latents of the model that embeds them. `train_table` (the train split already
    embedded, with `s` and `chi2`) spares embedding it again.
    """
    run = Path(run)
    path = run / OUTLIERS_FILE
    ckpt_sha = file_sha256(checkpoint_path(run))
    if path.exists() and not refit:
        try:
            om = load_outlier_model(path)
        except DensityError as e:  # derived data: an old or damaged file is fitted again
            log.warning("%s; refitting", e)
        else:
            if om.provenance.get("checkpoint_sha256") == ckpt_sha:
                return om
            log.info("%s was fitted for another checkpoint; refitting", path)
    log.info("fitting the latent density on the train split of %s", shards_dir)
    train = train_table or embed_stream(
        model, iter_shard_batches(shards_dir, ["train"], batch_size), device
    )
    om = fit_outlier_model(
        train["s"],
        train["chi2"],
        provenance={
            "checkpoint": checkpoint_path(run).name,
            "checkpoint_sha256": ckpt_sha,
            "shards": str(shards_dir),
            "index_sha256": index_sha256(shards_dir),
        },
    )
    save_outlier_model(om, path)
    return om


def add_scores(table: dict[str, np.ndarray], om: OutlierModel) -> dict[str, np.ndarray]:
    """Add LOGP, R_DENSITY, R_CHI2, OUTLIER_SCORE and OUTLIER_RANK to an embedded table."""
    terms = om.terms(table["s"], table["chi2"])
    table.update({k.lower(): v for k, v in terms.items()})
    table["outlier_rank"] = outlier_rank(terms["OUTLIER_SCORE"])
    return table


# --- the FITS table --------------------------------------------------------------------------

_FLOAT32 = ("z", "chi2", "logp", "r_density", "r_chi2", "outlier_score")


def write_embedding(table: dict[str, np.ndarray], path: str | Path, header: dict) -> Path:
    """Write the embedded table as a FITS binary table (HDU 1, EXTNAME EMBEDDING), atomically.

    Column order: SPECOBJID, the object key, RA, DEC, Z, SPLIT, S, CHI2, LOGP, R_DENSITY,
    R_CHI2, OUTLIER_SCORE, OUTLIER_RANK, then any other columns (CLASS, SHARD, ROW, FILE, …).
    `header` values (str/int/float) go into the table header; long strings use CONTINUE cards.
    """
    from astropy.io import fits

    path = Path(path)
    key = [str(k) for k in table.get("_object_key", np.array(V1_OBJECT_KEY))]
    first = ["specobjid", *key, "ra", "dec", "z", "split", "s", "chi2", "logp"]
    first += ["r_density", "r_chi2", "outlier_score", "outlier_rank"]
    names = [n for n in first if n in table]
    names += [n for n in table if n not in names and not n.startswith("_")]
    cols = []
    for name in names:
        v = np.asarray(table[name])
        if v.dtype.kind in "US":
            width = max(1, int(max((len(x) for x in v.astype("U").tolist()), default=1)))
            cols.append(fits.Column(name.upper(), f"{width}A", array=v.astype(f"S{width}")))
        elif v.ndim == 2:
            cols.append(fits.Column(name.upper(), f"{v.shape[1]}E", array=v.astype(np.float32)))
        elif name in _FLOAT32:
            cols.append(fits.Column(name.upper(), "E", array=v.astype(np.float32)))
        elif v.dtype.kind == "f":
            cols.append(fits.Column(name.upper(), "D", array=v.astype(np.float64)))
        else:
            cols.append(fits.Column(name.upper(), "K", array=v.astype(np.int64)))
    hdu = fits.BinTableHDU.from_columns(cols, name=EXTNAME)
    hdu.header["OBJKEY"] = (",".join(k.upper() for k in key), "object-key columns of the release")
    for k, v in header.items():
        hdu.header[k] = v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_embedding(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Columns (lower-case names → numpy arrays, strings as str) and header of an embedding."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul[EXTNAME]
            data, header = hdu.data, dict(hdu.header)
            cols = {}
            for name in data.columns.names:
                v = np.asarray(data[name])
                cols[name.lower()] = np.char.strip(v.astype("U")) if v.dtype.kind == "S" else v
    except (OSError, KeyError, ValueError) as e:
        raise EmbedError(f"cannot read embedding {path}: {e}") from e
    return cols, header


def provenance_header(
    run: str | Path, shards_dir: str | Path | None, om: OutlierModel, ckpt: dict
) -> dict:
    """FITS header cards saying what made an embedding (keys of at most 8 characters)."""
    run = Path(run)
    cp = checkpoint_path(run)
    card = {
        "RUN": str(run),
        "CKPT": cp.name,
        "CKPTSHA": file_sha256(cp),
        "EPOCH": int(ckpt.get("epoch", 0)),
        "OBJECTIV": str(ckpt.get("config", {}).get("objective", "")),
        "NLATENT": int(ckpt["model_config"]["n_latent"]),
        "OUTLIERS": str(run / OUTLIERS_FILE),
        "OUTLSHA": file_sha256(run / OUTLIERS_FILE),
        "SCOREDEF": "robust_z(density distance) + robust_z(log chi2) vs train split",
    }
    if shards_dir is not None:
        card["SHARDS"] = str(shards_dir)
        card["INDEXSHA"] = index_sha256(shards_dir)
    return card


# --- the command -----------------------------------------------------------------------------


def embed_shards(
    run: str | Path,
    out: str | Path,
    shards_dir: str | Path | None = None,
    split: str = "all",
    device: str | torch.device = "auto",
    batch_size: int = 256,
    verify: bool = True,
) -> Path:
    """`specetl embed`: embed `split` (train/valid/test/all) of the shards into the FITS `out`.

    `shards_dir` defaults to the shards the run was trained on. Fits RUN/outliers.json on the
    train split first if the run has none for its checkpoint.
    """
    from model.train import load_model, pick_device

    dev = pick_device(device) if isinstance(device, str) else device
    model, ckpt = load_model(run, device=dev)
    shards_dir = Path(shards_dir or ckpt["config"]["shards"])
    splits = list(SPLITS) if split == "all" else [split]
    if any(s not in SPLITS for s in splits):
        raise EmbedError(f"--split must be one of train, valid, test, all, not {split!r}")
    if verify:
        for s in splits:
            list_shards(shards_dir, s, verify=True)
    table = embed_stream(model, iter_shard_batches(shards_dir, splits, batch_size), dev)
    is_train = table["split"] == "train"
    train = {"s": table["s"][is_train], "chi2": table["chi2"][is_train]} if is_train.any() else None
    om = ensure_outlier_model(run, shards_dir, model, dev, batch_size, train_table=train)
    add_scores(table, om)
    header = provenance_header(run, shards_dir, om, ckpt)
    header["SPLIT"] = split
    return write_embedding(table, out, header)
