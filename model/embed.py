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

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from model.autoencoder import SpectrumAutoencoder
from model.data import file_sha256, index_sha256, list_shards, read_wave_obs
from model.density import (
    OUTLIERS_FILE,
    DensityError,
    OutlierModel,
    fit_outlier_model,
    load_outlier_model,
    outlier_rank,
    save_outlier_model,
)
from model.fitsmeta import EMBEDDING_COLUMNS, describe_columns
from model.run_checks import check_pixels, shards_of_run
from shardio import SPLITS, V1_OBJECT_KEY, read_rows, specobjid_strings  # noqa: F401

log = logging.getLogger(__name__)

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


def median_snr(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Median S/N per valid pixel, median over w_k > 0 of x_k·√w_k: (B,); NaN with none valid.

    The lower median of an even count (torch.nanmedian). Independent of the flux scale, so the
    normalised shards and the archive's flux give the same value.
    """
    per_pixel = torch.where(w > 0, x * w.clamp(min=0).sqrt(), torch.full_like(x, torch.nan))
    return torch.nanmedian(per_pixel, dim=-1).values


@torch.no_grad()
def embed_batch(
    model: SpectrumAutoencoder,
    flux: torch.Tensor,
    ivar: torch.Tensor,
    z: torch.Tensor,
    with_models: bool = False,
) -> dict[str, torch.Tensor]:
    """Latents `s` (B, S), `chi2` (B,) and `snr` (B,) of a batch already on the model's device.

    With `with_models`, also the restframe model `x_rest` (B, n_rest) and the observed-frame
    reconstruction `x_obs` (B, M) (the explorer draws them).
    """
    s, x_rest, x_obs = model(flux, ivar, z)
    out = {
        "s": s.float(),
        "chi2": chi2_per_pixel(flux, x_obs.float(), ivar),
        "snr": median_snr(flux, ivar),
    }
    if with_models:
        out.update(x_rest=x_rest.float(), x_obs=x_obs.float())
    return out


# --- reading shards --------------------------------------------------------------------------


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
    """Run every batch through the model; return per-object columns (ids, Z, S, CHI2, SNR, …).

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
        cols.setdefault("snr", []).append(out["snr"].cpu().numpy().astype(np.float64))
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
    valid_table: dict[str, np.ndarray] | None = None,
    density: str = "auto",
) -> OutlierModel:
    """The run's outlier model (RUN/outliers.json); fitted on the train split if missing or stale.

    Stale means fitted for another checkpoint (its sha256 differs), so new spectra are scored
    against the latents of the model that embeds them, or chosen another way than `density`
    asks (auto: the better of a mixture and a flow on the valid split's latents; gmm/flow:
    forced), or before the S/N terms (format version < 3). `train_table`/`valid_table` (the
    split already embedded, with `s`, `chi2` and `snr`) spare embedding it again.
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
            if om.provenance.get("checkpoint_sha256") != ckpt_sha:
                log.info("%s was fitted for another checkpoint; refitting", path)
            elif not om.scores_snr:
                log.info("%s predates the S/N terms of OUTLIER_SCORE; refitting", path)
            elif om.selection.get("mode") != density:
                log.info(
                    "%s chose its density by %s, not %s; refitting",
                    path,
                    om.selection.get("mode"),
                    density,
                )
            else:
                return om
    log.info("fitting the latent density on the train split of %s", shards_dir)
    train = train_table or embed_stream(
        model, iter_shard_batches(shards_dir, ["train"], batch_size), device
    )
    if valid_table is None and density == "auto" and list_shards(shards_dir, "valid"):
        valid_table = embed_stream(
            model, iter_shard_batches(shards_dir, ["valid"], batch_size), device
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
        s_valid=None if valid_table is None else valid_table["s"],
        density=density,
        snr_train=train["snr"],
    )
    sel = om.selection
    log.info(
        "latent density: %s (%s; mean valid log-likelihood %s)",
        sel["chosen"],
        sel["mode"],
        sel.get("valid_mean_logp"),
    )
    save_outlier_model(om, path)
    return om


def add_scores(table: dict[str, np.ndarray], om: OutlierModel) -> dict[str, np.ndarray]:
    """Add LOGP, R_DENSITY, R_CHI2, R_SIGNAL, OUTLIER_SCORE and OUTLIER_RANK to a table."""
    terms = om.terms(table["s"], table["chi2"], table.get("snr"))
    table.update({k.lower(): v for k, v in terms.items()})
    table["outlier_rank"] = outlier_rank(terms["OUTLIER_SCORE"])
    return table


# --- the FITS table --------------------------------------------------------------------------

_FLOAT32 = ("z", "chi2", "snr", "logp", "r_density", "r_chi2", "r_signal", "outlier_score")


def write_embedding(table: dict[str, np.ndarray], path: str | Path, header: dict) -> Path:
    """Write the embedded table as a FITS binary table (HDU 1, EXTNAME EMBEDDING), atomically.

    Column order: SPECOBJID, the object key, RA, DEC, Z, SPLIT, S, CHI2, SNR, LOGP, R_DENSITY,
    R_CHI2, R_SIGNAL, OUTLIER_SCORE, OUTLIER_RANK, then any other columns (CLASS, SHARD, ROW,
    FILE, …).
    `header` values (str/int/float) go into the table header; long strings use CONTINUE cards.
    """
    from astropy.io import fits

    path = Path(path)
    key = [str(k) for k in table.get("_object_key", np.array(V1_OBJECT_KEY))]
    first = ["specobjid", *key, "ra", "dec", "z", "split", "s", "chi2", "snr", "logp"]
    first += ["r_density", "r_chi2", "r_signal", "outlier_score", "outlier_rank"]
    names = [n for n in first if n in table]
    names += [n for n in table if n not in names and not n.startswith("_")]
    cols = []
    for name in names:
        v = np.asarray(table[name])
        if v.dtype.kind in "US":
            width = max(1, int(max((len(x) for x in v.astype("U").tolist()), default=1)))
            cols.append(fits.Column(name.upper(), f"{width}A", array=v.astype(f"S{width}")))
        elif v.dtype.kind == "b":  # SYNTHETIC: a FITS logical, T/F in TOPCAT
            cols.append(fits.Column(name.upper(), "L", array=v))
        elif v.ndim == 2:
            cols.append(fits.Column(name.upper(), f"{v.shape[1]}E", array=v.astype(np.float32)))
        elif name in _FLOAT32:
            cols.append(fits.Column(name.upper(), "E", array=v.astype(np.float32)))
        elif v.dtype.kind == "f":
            cols.append(fits.Column(name.upper(), "D", array=v.astype(np.float64)))
        else:
            cols.append(fits.Column(name.upper(), "K", array=v.astype(np.int64)))
    hdu = fits.BinTableHDU.from_columns(cols, name=EXTNAME)
    unknown = describe_columns(hdu.header, EMBEDDING_COLUMNS)
    if unknown:  # written all the same; tests/test_fits_outputs.py fails until it is described
        log.warning("%s: no unit/description for column(s) %s", path, ", ".join(unknown))
    hdu.header["OBJKEY"] = (",".join(k.upper() for k in key), "object-key columns of the release")
    for k, v in header.items():
        comment = HEADER_COMMENTS.get(k, "")
        if isinstance(v, str):
            v = header_text(v)  # printable ASCII only; unheader_text reverses it
            if len(v) > 68:  # a long path goes on CONTINUE cards
                hdu.header["LONGSTRN"] = ("OGIP 1.0", "long strings continue on CONTINUE cards")
            if len(v) + len(comment) > 65:  # the comment would not fit
                comment = ""
        hdu.header[k] = (v, comment)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    finally:  # a failed clean-up must not hide why the write failed
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return path


def read_embedding(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Columns (lower-case names → numpy arrays, strings as str) and header of an embedding."""
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul[EXTNAME]
            data = hdu.data
            header = {
                k: unheader_text(v) if isinstance(v, str) else v for k, v in hdu.header.items()
            }
            if data is None or not hasattr(data, "columns"):
                raise ValueError(f"HDU {EXTNAME} is not a table")
            cols = {}
            for name in data.columns.names:
                v = np.asarray(data[name])
                cols[name.lower()] = np.char.strip(v.astype("U")) if v.dtype.kind == "S" else v
    except (OSError, KeyError, ValueError) as e:
        raise EmbedError(f"cannot read embedding {path}: {e}") from e
    return cols, header


def header_text(value: str) -> str:
    """A header string as FITS allows (printable ASCII): other characters and '%' as UTF-8
    percent escapes, so a path like 'démo ✓/run' survives the round trip (unheader_text)."""
    from urllib.parse import quote

    return quote(value, safe="".join(chr(c) for c in range(32, 127) if chr(c) != "%"))


def unheader_text(value: str) -> str:
    """Inverse of header_text."""
    from urllib.parse import unquote

    return unquote(value) if "%" in value else value


#: the comment of each provenance card (fitsverify and STILTS show them beside the value)
HEADER_COMMENTS = {
    "RUN": "run folder that made this table",
    "CKPT": "checkpoint file in RUN",
    "CKPTSHA": "sha256 of the checkpoint",
    "TRAINEP": "training epoch of the checkpoint",
    "OBJECTIV": "training objective of the run",
    "NLATENT": "dimension of the latent vector S",
    "ENCFRAME": "frame the encoder reads: observed|restframe",
    "OUTLIERS": "outlier model (latent density, chi2/S/N scales)",
    "OUTLSHA": "sha256 of the outlier model",
    "SCOREDEF": "definition of OUTLIER_SCORE",
    "DENSITY": "latent density of LOGP: gmm or flow",
    "DENSMODE": "auto: better valid log-lik; else forced",
    "VLLGMM": "mean log-lik of valid latents, mixture",
    "VLLFLOW": "mean log-lik of valid latents, flow",
    "SHARDS": "shards folder embedded / the run's shards",
    "INDEXSHA": "sha256 of the shards' index.json",
    "SPLIT": "split embedded (none: spec-lite files)",
    "RELEASE": "data release of the preprocessing",
    "NSKIPPED": "spectra that could not be preprocessed",
}


def provenance_header(
    run: str | Path, shards_dir: str | Path | None, om: OutlierModel, ckpt: dict
) -> dict:
    """FITS header cards saying what made an embedding (keys of at most 8 characters)."""
    run = Path(run)
    cp = checkpoint_path(run)
    card = {
        "RUN": os.path.abspath(run),
        "CKPT": cp.name,
        "CKPTSHA": file_sha256(cp),
        # not EPOCH: that FITS keyword is the epoch of the coordinates (RA/DEC sit beside it)
        "TRAINEP": int(ckpt.get("epoch", 0)),
        "OBJECTIV": str(ckpt.get("config", {}).get("objective", "")),
        "NLATENT": int(ckpt["model_config"]["n_latent"]),
        # a restframe encoder's latents depend on the catalogue z it was given
        "ENCFRAME": str(ckpt["model_config"].get("encoder_frame", "observed")),
        "OUTLIERS": os.path.abspath(run / OUTLIERS_FILE),
        "OUTLSHA": file_sha256(run / OUTLIERS_FILE),
        "SCOREDEF": om.definition.removeprefix("OUTLIER_SCORE = "),
        "DENSITY": str(om.selection.get("chosen", om.density.kind)),
        "DENSMODE": str(om.selection.get("mode", "")),
    }
    for kind, ll in (om.selection.get("valid_mean_logp") or {}).items():
        if ll is not None and np.isfinite(ll):  # FITS has no NaN card
            card["VLLGMM" if kind == "gmm" else "VLLFLOW"] = float(ll)
    if shards_dir is not None:
        card["SHARDS"] = os.path.abspath(shards_dir)
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
    density: str = "auto",
) -> Path:
    """`specetl embed`: embed `split` (train/valid/test/all) of the shards into the FITS `out`.

    `shards_dir` defaults to the shards the run was trained on. Fits RUN/outliers.json on the
    train split first if the run has none for its checkpoint (or none chosen by `density`).
    """
    from model.checkpoint import load_model, pick_device

    dev = pick_device(device) if isinstance(device, str) else device
    model, ckpt = load_model(run, device=dev)
    shards_dir = shards_of_run(run, ckpt, shards_dir)
    splits = list(SPLITS) if split == "all" else [split]
    if any(s not in SPLITS for s in splits):
        raise EmbedError(f"--split must be one of train, valid, test, all, not {split!r}")
    for s in splits:
        listed = list_shards(shards_dir, s, verify=verify)
        if listed:
            check_pixels(ckpt, len(read_wave_obs(listed[0])), f"embed {run}", shards_dir)
    table = embed_stream(model, iter_shard_batches(shards_dir, splits, batch_size), dev)
    is_train = table["split"] == "train"
    train = {k: table[k][is_train] for k in ("s", "chi2", "snr")} if is_train.any() else None
    is_valid = table["split"] == "valid"
    valid = {"s": table["s"][is_valid]} if is_valid.any() else None
    om = ensure_outlier_model(
        run,
        shards_dir,
        model,
        dev,
        batch_size,
        train_table=train,
        valid_table=valid,
        density=density,
    )
    add_scores(table, om)
    header = provenance_header(run, shards_dir, om, ckpt)
    header["SPLIT"] = split
    return write_embedding(table, out, header)
