"""After training, outside the shards: `specetl embed --spectra` and `specetl explore`.

Composes `etl` and `model` (neither imports the other), like `workflows` (the demo):

  embed_spectra     spec-lite files outside the shards, through the release's own preprocessing
                    (etl.spectrum.Preprocessor), embedded and scored against the run's outliers
  explore_page      the offline HTML page of an embedding; `explorer_spectra` gathers the
                    observed spectra (from shards or files) and the model's reconstructions

This module never imports click; errors are the libraries' named exceptions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def _release_of(run: str | Path, release: str | None, shards_dir: str | Path | None):
    """The release whose preprocessing the run's shards were made with (index.json `release`)."""
    from etl.release import load_release

    if release:
        return load_release(release)
    index = Path(shards_dir) / "index.json" if shards_dir else None
    if index and index.exists():
        return load_release(json.loads(index.read_text())["release"])
    raise ValueError(f"run {run}: cannot tell its release (no shards index); pass --release")


def _catalog_rows(path: str | Path, key: Sequence[str]) -> dict[tuple[int, ...], dict]:
    """Rows of a catalogue (any spelling of etl.catalog's alias table) by the release's key.

    Only the key, SPECOBJID, RA/DEC, Z and CLASS are used, so a table without RUN2D, Z_ERR or
    ZWARNING (a selection saved by the explorer) is read too: placeholders stand in for them.
    """
    from etl.catalog import SOURCE_ALIASES, as_catalog
    from etl.tables import iter_table_columns

    out = {}
    for chunk in iter_table_columns(path, key):
        have = {str(n).upper() for n in chunk}
        n = max((len(v) for v in chunk.values() if v is not None), default=0)
        for col, fill in (("RUN2D", ""), ("Z_ERR", -1.0), ("ZWARNING", 0)):
            if not have & set(SOURCE_ALIASES[col]):
                chunk[col] = np.full(n, fill)
        cat = as_catalog(chunk, str(path), key)
        for i in range(len(cat["SPECOBJID"])):
            row = {name: values[i] for name, values in cat.items()}
            out[tuple(int(row[k.upper()]) for k in key)] = row
    return out


def _spec_header(path: Path, key: Sequence[str]) -> dict:
    """The catalogue row of a spec-lite file's HDU 2 (SPECOBJ / SPALL), read through the same
    alias table as every catalogue: SPECOBJID (exact string), the key, Z, CLASS, RA, DEC."""
    from astropy.table import Table

    from etl.catalog import as_catalog

    table = Table.read(path, hdu=2, character_as_bytes=False)
    cat = as_catalog({n: np.asarray(table[n]) for n in table.colnames}, path.name, key)
    return {name: values[0] for name, values in cat.items()}


def preprocess_spectra(
    paths: Sequence[str | Path], release, catalog: str | Path | None = None
) -> tuple[list[dict], list[str]]:
    """Read and preprocess spec-lite files; rows with ids and arrays, and one error line each.

    Ids, z and position come from each file's HDU 2, or from `catalog` matched on the
    release's object key (plate/mjd/fiberid, or field/mjd/catalogid for SDSS-V).
    """
    from etl.spectrum import Preprocessor, SpectrumRejected, read_spec_lite

    key = list(release.key)
    prep = Preprocessor(release)
    cat = _catalog_rows(catalog, key) if catalog else None
    rows, errors = [], []
    for p in map(Path, paths):
        try:
            raw = read_spec_lite(p, with_ids=False)
            meta = _spec_header(p, key)
            ids = tuple(int(meta[k.upper()]) for k in key)
            if cat is not None:
                if ids not in cat:
                    raise SpectrumRejected(p.name, "not in catalogue", f"{ids} not in {catalog}")
                meta = cat[ids]
            pre = prep.preprocess(raw, float(meta["Z"]), p.name)
        except (SpectrumRejected, OSError, KeyError, IndexError, ValueError) as e:
            errors.append(f"{p}: {e}")
            log.warning("%s: skipped: %s", p, e)
            continue
        rows.append(
            {
                "flux": pre.flux,
                "ivar": pre.ivar,
                "z": np.float32(meta["Z"]),
                "specobjid": str(meta["SPECOBJID"]),
                **dict(zip(key, ids, strict=True)),
                "ra": float(meta["RA"]),
                "dec": float(meta["DEC"]),
                "split": "none",
                "class": str(meta["CLASS"]),
                "file": str(p),
            }
        )
    return rows, errors


def _batches(rows: list[dict], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for a in range(0, len(rows), batch_size):
        part = rows[a : a + batch_size]
        yield {k: np.stack([r[k] for r in part]) for k in part[0]}


def spectrum_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, a folder standing for its spec-*.fits (recursively, sorted)."""
    return [
        f
        for p in (Path(x) for x in paths)
        for f in (sorted(p.rglob("spec-*.fits")) if p.is_dir() else [p])
    ]


def embed_spectra(
    run: str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    catalog: str | Path | None = None,
    release: str | None = None,
    shards_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
) -> tuple[Path, list[str]]:
    """`specetl embed --spectra`: embed and score spec-lite files; returns (FITS path, errors).

    z comes from each file's HDU 2, or from `catalog` (matched on the release's object key). The
    files go through the same grid/mask/normalise as the shards (the release of the run's
    shards, or `release`), and are scored against the run's outlier model (fitted on the train
    split of the run's shards if the run has none yet).
    """
    from model.embed import (
        EmbedError,
        add_scores,
        embed_stream,
        ensure_outlier_model,
        provenance_header,
        write_embedding,
    )
    from model.train import load_model, pick_device

    dev = pick_device(device)
    model, ckpt = load_model(run, device=dev)
    shards_dir = Path(shards_dir or ckpt["config"]["shards"])
    rel = _release_of(run, release, shards_dir)
    rows, errors = preprocess_spectra(paths, rel, catalog)
    if not rows:
        raise EmbedError(f"none of the {len(paths)} spectra could be preprocessed")
    om = ensure_outlier_model(run, shards_dir, model, dev, batch_size)
    table = embed_stream(model, _batches(rows, batch_size), dev)
    table["_object_key"] = np.array(rel.key)
    add_scores(table, om)
    header = provenance_header(run, shards_dir, om, ckpt)
    header.update(SPLIT="none", RELEASE=rel.name, NSKIPPED=len(errors))
    return write_embedding(table, out, header), errors


def explorer_spectra(
    run: str | Path,
    cols: dict[str, np.ndarray],
    rows: Sequence[int],
    header: dict,
    device: str = "auto",
    release: str | None = None,
) -> tuple[dict[int, dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Observed flux (NaN where masked), reconstruction and restframe model of embedding `rows`.

    A row from the shards (SHARD, ROW columns) is read from the shards folder named in the
    header; a row from a spec-lite file (FILE column) is preprocessed again. Returns
    ({row: {flux, model, rest}}, wave_obs, wave_rest[::2]); the restframe model is kept at every
    second pixel (the page stays small; 7000 → 3500 points is still finer than the screen).
    """
    import torch

    from model.embed import embed_batch, read_rows
    from model.train import load_model, pick_device

    dev = pick_device(device)
    model, ckpt = load_model(run, device=dev)
    model.eval()
    shards_dir = Path(str(header.get("SHARDS") or ckpt["config"]["shards"]))
    arrays: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    files = {}
    for r in rows:
        r = int(r)
        if "shard" in cols and str(cols["shard"][r]):
            d = read_rows(
                shards_dir / str(cols["shard"][r]), int(cols["row"][r]), int(cols["row"][r]) + 1
            )
            arrays[r] = (d["flux"][0], d["ivar"][0], float(d["z"][0]))
        elif "file" in cols:
            files[r] = str(cols["file"][r])
    if files:
        rel = _release_of(run, release or header.get("RELEASE"), shards_dir)
        pre, _ = preprocess_spectra(list(files.values()), rel)
        by_file = {p["file"]: p for p in pre}
        for r, f in files.items():
            if f in by_file:
                arrays[r] = (by_file[f]["flux"], by_file[f]["ivar"], float(by_file[f]["z"]))
    out = {}
    keys = sorted(arrays)
    for a in range(0, len(keys), 64):
        part = keys[a : a + 64]
        flux = torch.from_numpy(np.stack([arrays[r][0] for r in part])).to(dev)
        ivar = torch.from_numpy(np.stack([arrays[r][1] for r in part])).to(dev)
        z = torch.tensor([arrays[r][2] for r in part], dtype=torch.float32, device=dev)
        m = embed_batch(model, flux, ivar, z, with_models=True)
        for k, r in enumerate(part):
            f = flux[k].cpu().numpy().copy()
            f[ivar[k].cpu().numpy() <= 0] = np.nan
            out[r] = {
                "flux": f,
                "model": m["x_obs"][k].cpu().numpy(),
                "rest": m["x_rest"][k].cpu().numpy()[::2],
            }
    wave_obs = model.wave_obs.cpu().numpy()
    wave_rest = model.wave_rest.cpu().numpy()[::2]
    return out, wave_obs, wave_rest


def explore_page(
    embedding: str | Path,
    run: str | Path,
    out: str | Path,
    top_n: int = 50,
    n_sample: int = 150,
    max_points: int = 100_000,
    device: str = "auto",
) -> Path:
    """`specetl explore`: the self-contained HTML page of an embedding made by `run`."""
    from model.embed import read_embedding
    from model.explore.page import choose_rows, write_page

    cols, header = read_embedding(embedding)
    top, sample = choose_rows(cols["outlier_score"], top_n, n_sample)
    spectra, wave_obs, wave_rest = explorer_spectra(
        run, cols, [*top.tolist(), *sample.tolist()], header, device
    )
    return write_page(
        out,
        cols,
        header,
        spectra,
        wave_obs,
        wave_rest,
        top,
        len(sample),
        max_points,
        title=Path(embedding).name,
    )
