"""After training, outside the shards: `specetl embed --spectra` and `specetl explore`.

Composes `etl` and `model` (neither imports the other), like `workflows.demo`:

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

from etl.paths import under

log = logging.getLogger(__name__)


def _release_of(run: str | Path, release: str | None, shards_dir: str | Path | None):
    """The release whose preprocessing the run's shards were made with (index.json `release`).

    Raises EmbedError (what `specetl embed` and `explore` turn into one line), also for a
    release manifest that cannot be loaded or an index.json without a readable release."""
    from etl.release import ManifestError, load_release
    from model.embed import EmbedError

    index = Path(shards_dir) / "index.json" if shards_dir else None
    try:
        if release:
            return load_release(release)
        try:
            name = json.loads(index.read_text())["release"] if index else None
        except (OSError, ValueError, KeyError, TypeError):
            name = None
        if not isinstance(name, str):
            raise EmbedError(
                f"run {run}: cannot tell its release (no readable release in {index}); "
                "pass --release"
            )
        return load_release(name)
    except ManifestError as e:
        raise EmbedError(f"run {run}: {e}") from None


#: what `embed --spectra --catalog` needs of a table (its --help says so): the key and Z; the
#: rest (SPECOBJID, CLASS, RA/DEC) comes from the file's HDU 2 when the table lacks it
_CATALOG_OPTIONAL = ("SPECOBJID", "CLASS", "RA", "DEC")


def _catalog_rows(path: str | Path, key: Sequence[str]) -> dict[tuple[int, ...], dict]:
    """Rows of a catalogue by the release's key: the key columns and Z (any spelling of
    etl.catalog's alias table), plus SPECOBJID, CLASS, RA, DEC where present."""
    from etl.catalog import POSITION_PAIRS, SOURCE_ALIASES, CatalogError
    from etl.tables import iter_table_columns

    want = {k.upper(): (k.upper(),) for k in key} | {"Z": SOURCE_ALIASES["Z"]}
    optional = {
        "SPECOBJID": SOURCE_ALIASES["SPECOBJID"],
        "CLASS": SOURCE_ALIASES["CLASS"],
        "RA": tuple(ra for ra, _ in POSITION_PAIRS),
        "DEC": tuple(dec for _, dec in POSITION_PAIRS),
    }

    def column(chunk: dict, aliases: tuple[str, ...]) -> np.ndarray | None:
        upper = {name.upper(): name for name in chunk}
        name = next((upper[a] for a in aliases if a in upper), None)
        return None if name is None or chunk[name] is None else np.asarray(chunk[name])

    out = {}
    for chunk in iter_table_columns(path, key):
        cols = {c: column(chunk, a) for c, a in want.items()}
        missing = [c for c, v in cols.items() if v is None]
        if missing:
            raise CatalogError(
                f"{path}: lacks column(s) {', '.join(missing)} (has {', '.join(chunk) or 'none'})"
            )
        cols |= {c: v for c, a in optional.items() if (v := column(chunk, a)) is not None}
        for i in range(len(cols["Z"])):
            row = {name: values[i] for name, values in cols.items()}
            try:
                ids = tuple(int(row[k.upper()]) for k in key)
            except (TypeError, ValueError) as err:
                raise CatalogError(
                    f"{path}: row {i + 1} has a key that is no integer ({err})"
                ) from None
            out[ids] = row
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
                meta = {**meta, **cat[ids]}  # the table's Z (and ids it has) over HDU 2's
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


def preprocess_desi_coadds(
    paths: Sequence[str | Path], release, catalog: str | Path | None
) -> tuple[list[dict], list[str]]:
    """Read and preprocess every target of DESI coadd files that `catalog` lists (a coadd holds
    no redshift: the catalogue is the coadd's redrock file or a zall table, DESI's column
    names). The same steps as `build-shards` (etl.desi.build.preprocess_coadd), so a target
    embedded from its coadd gets the latents its shard row gets. One error line per file or
    target that cannot be used."""
    from etl.desi.build import CoaddJob, preprocess_coadd_rows
    from etl.desi.catalog import iter_desi_table
    from etl.desi.coadd import CoaddError, read_coadd
    from etl.desi.preprocess import DesiPreprocessor
    from model.embed import EmbedError

    if catalog is None:
        raise EmbedError(
            f"{release.name}: DESI coadds hold no redshift; pass --catalog with the targets' "
            "TARGETID and Z (the coadd's redrock file, or a zall table)"
        )
    cat: dict[int, dict] = {}
    for chunk in iter_desi_table(catalog, release):
        for k, tid in enumerate(chunk["TARGETID"]):
            cat.setdefault(int(tid), {c: v[k] for c, v in chunk.items()})
    pre = DesiPreprocessor(release)
    rows, errors = [], []
    for p in map(Path, paths):
        try:
            coadd = read_coadd(p, release.coadd.arms, release.coadd.table_hdu)
            header = _primary_header(p)
        except (CoaddError, OSError) as e:
            errors.append(f"{p}: {e}")
            log.warning("%s: skipped: %s", p, e)
            continue
        tids = np.array([t for t in coadd.targetid if int(t) in cat], dtype=np.int64)
        if not len(tids):
            errors.append(f"{p}: none of its {len(coadd.targetid)} targets is in {catalog}")
            continue
        z = np.array([float(cat[int(t)]["Z"]) for t in tids])
        job = CoaddJob(str(p), p.name, np.arange(len(tids)), tids, z)
        out = preprocess_coadd_rows(pre, coadd, job)  # the coadd is read once
        for i, reason, detail in out.rejected:
            errors.append(f"{p}: targetid {tids[i]}: {reason} ({detail})")
            log.warning("%s: targetid %s skipped: %s (%s)", p, tids[i], reason, detail)
        for j, i in enumerate(out.rows):
            meta = cat[int(tids[i])]
            rows.append(
                {
                    "flux": out.flux[j],
                    "ivar": out.ivar[j],
                    "z": np.float32(meta["Z"]),
                    "specobjid": str(int(tids[i])),
                    "targetid": int(tids[i]),
                    # a tile redrock file has no SURVEY/PROGRAM: the coadd's header has them
                    "survey": str(meta.get("SURVEY", header.get("SURVEY", ""))),
                    "program": str(meta.get("PROGRAM", header.get("PROGRAM", ""))),
                    "ra": float(meta["TARGET_RA"]),
                    "dec": float(meta["TARGET_DEC"]),
                    "split": "none",
                    "class": str(meta.get("SPECTYPE", "")),
                    "file": str(p),
                }
            )
    return rows, errors


def _primary_header(path: Path) -> dict:
    from astropy.io import fits

    return dict(fits.getheader(path, 0))


def _batches(rows: list[dict], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for a in range(0, len(rows), batch_size):
        part = rows[a : a + batch_size]
        yield {k: np.stack([r[k] for r in part]) for k in part[0]}


def spectrum_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files named, a folder standing for its spec-*.fits (SDSS) and coadd-*.fits (DESI),
    recursively, sorted."""

    def found(folder: Path) -> list[Path]:
        return sorted({*folder.rglob("spec-*.fits"), *folder.rglob("coadd-*.fits")})

    return [f for p in (Path(x) for x in paths) for f in (found(p) if p.is_dir() else [p])]


def embed_spectra(
    run: str | Path,
    paths: Sequence[str | Path],
    out: str | Path,
    catalog: str | Path | None = None,
    release: str | None = None,
    shards_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 256,
    density: str = "auto",
) -> tuple[Path, list[str]]:
    """`specetl embed --spectra`: embed and score spec-lite files (or DESI coadds: every target
    `catalog` lists); returns (FITS path, errors).

    z comes from each file's HDU 2, or from `catalog` (matched on the release's object key). The
    files go through the same grid/mask/normalise as the shards (the release of the run's
    shards, or `release`), and are scored against the run's outlier model (fitted on the train
    split of the run's shards if the run has none yet, or none chosen by `density`).
    """
    from model.checkpoint import load_model, pick_device
    from model.embed import (
        EmbedError,
        add_scores,
        embed_stream,
        ensure_outlier_model,
        provenance_header,
        write_embedding,
    )
    from model.run_checks import check_pixels, shards_of_run

    dev = pick_device(device)
    model, ckpt = load_model(run, device=dev)
    shards_dir = shards_of_run(run, ckpt, shards_dir)
    rel = _release_of(run, release, shards_dir)
    check_pixels(ckpt, rel.grid.npix, f"embed {run} with release {rel.name}", shards_dir)
    if getattr(rel, "family", "") == "desi":  # coadds of many targets, z from the catalogue
        rows, errors = preprocess_desi_coadds(paths, rel, catalog)
    else:
        rows, errors = preprocess_spectra(paths, rel, catalog)
    if not rows:
        raise EmbedError(f"none of the {len(paths)} spectra could be preprocessed")
    om = ensure_outlier_model(run, shards_dir, model, dev, batch_size, density=density)
    table = embed_stream(model, _batches(rows, batch_size), dev)
    table["_object_key"] = np.array(rel.key)
    add_scores(table, om)
    header = provenance_header(run, shards_dir, om, ckpt)
    header.update(SPLIT="none", RELEASE=rel.name, NSKIPPED=len(errors))
    return write_embedding(table, out, header), errors


def _embedding_shards(header: dict) -> Path:
    """The shards an embedding's rows come from: its SHARDS card, absolute, holding the same
    index.json (INDEXSHA) as when it was embedded; EmbedError otherwise (no silent substitute)."""
    from model.data import index_sha256
    from model.embed import EmbedError

    recorded = str(header.get("SHARDS") or "")
    path = Path(recorded)
    made_from = header.get("INDEXSHA")
    if not path.is_absolute():
        # an embedding of an older version: its relative path is accepted only where it holds
        # exactly the shards it was made from
        if (path / "index.json").is_file() and made_from and index_sha256(path) == made_from:
            return path.resolve()
        raise EmbedError(
            f"the embedding records its shards as {recorded!r}, not an absolute path, and that "
            "is not the shard set it was made from here; embed it again with this version"
        )
    if not (path / "index.json").is_file():
        raise EmbedError(f"the shards this embedding was made from are gone ({path})")
    if made_from and index_sha256(path) != made_from:
        raise EmbedError(f"the shards at {path} changed since this embedding was made; embed again")
    return path


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

    from model.checkpoint import load_model, pick_device
    from model.embed import embed_batch, read_rows

    dev = pick_device(device)
    model, ckpt = load_model(run, device=dev)
    model.eval()
    shards_dir = _embedding_shards(header) if "shard" in cols else None
    arrays: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    files = {}
    for r in rows:
        r = int(r)
        if "shard" in cols and str(cols["shard"][r]):
            # the table names the shard; it may name only a file under the shards folder
            shard = under(shards_dir, str(cols["shard"][r]))
            d = read_rows(shard, int(cols["row"][r]), int(cols["row"][r]) + 1)
            arrays[r] = (d["flux"][0], d["ivar"][0], float(d["z"][0]))
        elif "file" in cols:
            files[r] = str(cols["file"][r])
    if files:
        rel = _release_of(run, release or header.get("RELEASE"), header.get("SHARDS"))
        # a FILE cell is read as a spec-lite file and nothing else
        pre, _ = preprocess_spectra([f for f in files.values() if f.endswith(".fits")], rel)
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
    from model.data import file_sha256
    from model.embed import EmbedError, checkpoint_path, read_embedding
    from model.explore.page import choose_rows, write_page

    cols, header = read_embedding(embedding)
    missing = [c for c in ("s", "outlier_score", "z") if c not in cols]
    if missing or not ("shard" in cols or "file" in cols):
        raise EmbedError(
            f"{embedding} is not an embedding made by `specetl embed` (lacks "
            f"{', '.join(c.upper() for c in missing) or 'SHARD/FILE'})"
        )
    made_by = header.get("CKPTSHA")
    if made_by and made_by != file_sha256(checkpoint_path(run)):
        # the page draws this run's reconstructions next to another model's latents and scores
        raise EmbedError(
            f"{embedding} was made by another checkpoint than {checkpoint_path(run)}; "
            "pass the --run that made it, or embed again with this one"
        )
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
