"""Workflows that compose `etl` and `model` (neither imports the other): the offline demo.

`run_demo` is the whole pipeline on the bundled real sample (sample/), one function per step:

  demo_catalog      the sample's catalogue, cut to the reductions the release serves
  fetch_sample      serve sample/sdss on 127.0.0.1 in the archive layout and fetch through the
                    real downloader (verified, resumable)
  build_demo_shards grid, mask, normalise into HDF5 shards with 70/15/15 splits
  train_objectives  fidelity, similarity, then consistency started from the similarity run
  evaluate_runs     Table-1 metrics of the runs on the test split and their Figure-2 PNGs

  embed_demo        `specetl embed` of every shard row + `specetl explore`'s page

After training (`specetl embed --spectra`, `specetl explore`):

  embed_spectra     spec-lite files outside the shards, through the release's own preprocessing
                    (etl.spectrum.Preprocessor), embedded and scored against the run's outliers
  explore_page      the offline HTML page of an embedding; `explorer_spectra` gathers the
                    observed spectra (from shards or files) and the model's reconstructions

Every step reuses what an earlier run left in OUT, so a rerun is quick. Progress lines go to
`step` (the CLI prints them to stderr with the elapsed time), results to `echo` (stdout); this
module never imports click. Errors that stop the demo are `WorkflowError` with a one-line message.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SAMPLE = Path(__file__).resolve().parent / "sample"

# (objective, which share of --epochs it trains, the objective whose run initialises it)
DEMO_PLAN: tuple[tuple[str, float, str | None], ...] = (
    ("fidelity", 1.0, None),
    ("similarity", 1.0, None),
    ("consistency", 0.5, "similarity"),
)

Say = Callable[[str], None]


class WorkflowError(RuntimeError):
    """A workflow cannot go on (a failed fetch, ...); the message is one line naming the cause."""


@dataclass
class DemoResult:
    """What the demo made: where things are and the evaluation rows (one per run)."""

    out: Path
    catalog_csv: Path
    shards_dir: Path
    runs: list[Path]
    accepted: int
    rows: list[dict] = field(default_factory=list)


def demo_catalog(rel, out: Path, sample: Path = SAMPLE, step: Say = log.info) -> Path:
    """Write OUT/sample-catalog.csv: the rows of sample/catalog.csv of reductions `rel` serves.

    The sample holds a few files of older BOSS reductions (DR14's v5_10_0/v5_11_0) that the
    release's archive does not serve; a real release catalogue never lists them, so the demo's
    catalogue leaves them out rather than asking the archive for paths it does not have.
    """
    out.mkdir(parents=True, exist_ok=True)
    lines = (sample / "catalog.csv").read_text().splitlines(keepends=True)
    run2d_col = lines[0].strip().split(",").index("RUN2D")
    kept = [ln for ln in lines[1:] if ln.split(",")[run2d_col] in rel.run2ds]
    catalog_csv = out / "sample-catalog.csv"
    catalog_csv.write_text(lines[0] + "".join(kept))
    step(f"{len(kept)} of {len(lines) - 1} sample rows are of reductions {rel.name} serves")
    return catalog_csv


def fetch_sample(
    rel,
    catalog_csv: Path,
    data: Path,
    workers: int | None = None,
    sample: Path = SAMPLE,
    step: Say = log.info,
):
    """Fetch the catalogue's spectra from sample/sdss served on loopback; raises WorkflowError."""
    from etl.fetch import fetch
    from etl.mirror import ArchiveMirror

    with ArchiveMirror(sample / "sdss", rel) as mirror:
        step(f"serving the bundled sample at {mirror.base_url} (archive layout)")
        report = fetch(
            rel,
            data,
            catalog_source=str(catalog_csv),
            base_url=mirror.base_url,
            workers=workers,
        )
    if not report.ok:
        raise WorkflowError(
            f"fetch failed for {report.n_failed} object(s); "
            f"see {data / rel.name / 'fetch-report.json'}"
        )
    step(
        f"fetched {report.selected} selected spectra "
        f"({report.downloaded} downloaded, {report.already_present} already present)"
    )
    return report


def build_demo_shards(rel, data: Path, workers: int | None = None, step: Say = log.info):
    """Build the fetched spectra into shards (a rerun keeps unchanged shards)."""
    from etl.build import build_shards

    built = build_shards(rel, data, workers=workers, progress=sys.stderr.isatty())
    step(
        f"built {built.accepted} spectra into {len(built.shards)} shard(s), "
        f"{len(built.rejected)} rejected -> {built.shards_dir}"
    )
    return built


def train_objectives(
    shards_dir: Path,
    runs: Path,
    epochs: int,
    batch_size: int,
    plan: tuple[tuple[str, float, str | None], ...] = DEMO_PLAN,
    step: Say = log.info,
) -> list[Path]:
    """Train one cpu-small run per objective of `plan` into RUNS/<objective>; returns the runs.

    A run that finished (its last.pt reached the epochs it was started with) is reused, not
    retrained; an interrupted one (a Ctrl-C mid-run) is resumed from its last.pt. Raises
    WorkflowError when a run cannot be trained or resumed.
    """
    from model.train import TrainConfig, TrainError, load_checkpoint, train

    done = []
    for objective, share, init in plan:
        run = runs / objective
        done.append(run)
        n_epochs = max(1, int(epochs * share))
        resume = False
        if (run / "config.json").exists() and (run / "last.pt").exists():
            try:
                last = load_checkpoint(run / "last.pt")
            except TrainError as e:
                raise WorkflowError(str(e)) from None
            if last["epoch"] >= last["config"]["epochs"]:
                step(f"train {objective}: reusing {run}")
                continue
            resume = True
            n_epochs = last["config"]["epochs"]  # --resume needs the run's own settings
            step(f"train {objective}: resuming {run} after epoch {last['epoch']}/{n_epochs}")
        else:
            step(f"train {objective} ({n_epochs} epochs, cpu-small)")
        try:
            train(
                TrainConfig(
                    shards=str(shards_dir),
                    run=str(run),
                    objective=objective,
                    preset="cpu-small",
                    epochs=n_epochs,
                    batch_size=batch_size,
                    init=str(runs / init) if init else None,
                    resume=resume,
                    progress=sys.stderr.isatty(),
                )
            )
        except TrainError as e:
            raise WorkflowError(f"train {objective}: {e}") from None
    return done


def evaluate_runs(runs: list[Path], step: Say = log.info, echo: Say = print) -> list[dict]:
    """Evaluate `runs` on the test split; echo a Table-1-style table and the figure paths."""
    from model.evaluate import compare_runs, format_table

    step("evaluate on the test split")
    rows = compare_runs(runs, split="test")
    echo(format_table(rows, blank_untrained=True))
    for r in rows:
        for name, path in r["figures"].items():
            if path:
                echo(f"{r['run']} {name}: {path}")
    return rows


def embed_demo(run: Path, out: Path, step: Say = log.info, echo: Say = print) -> tuple[Path, Path]:
    """`specetl embed` of every shard row with `run`, then `specetl explore`'s page of it."""
    from model.embed import embed_shards

    step(f"embed every shard row with {run.name}; outlier scores against its train split")
    emb = embed_shards(run, out / "embedding.fits", device="cpu")
    page = explore_page(emb, run, out / "explore.html", top_n=20, n_sample=60, device="cpu")
    echo(f"embedding: {emb}")
    echo(f"explorer page (open in a browser): {page}")
    return emb, page


def run_demo(
    out_dir: str | Path = "demo-out",
    release: str = "dr16",
    epochs: int = 60,
    workers: int | None = None,
    step: Say = log.info,
    echo: Say = print,
) -> DemoResult:
    """The whole pipeline offline on the bundled real sample, into OUT (data/, runs/).

    `epochs` is for the fidelity and similarity runs (consistency gets half); `workers` are
    local Dask worker processes for fetch and build (None: the libraries' defaults).
    """
    from etl.release import load_release

    out = Path(out_dir)
    data = out / "data"
    rel = load_release(release)

    catalog_csv = demo_catalog(rel, out, step=step)
    fetch_sample(rel, catalog_csv, data, workers, step=step)
    built = build_demo_shards(rel, data, workers, step=step)
    n_train = sum(s["rows"] for s in built.shards if s["split"] == "train")
    batch_size = max(1, min(64, n_train // 2))  # at least two steps per epoch on a tiny sample
    runs = train_objectives(built.shards_dir, out / "runs", epochs, batch_size, step=step)
    rows = evaluate_runs(runs, step=step, echo=echo)
    embed_demo(runs[-1], out, step=step, echo=echo)
    step("done")
    echo(
        f"Note: only {built.accepted} bundled real galaxies pass the {rel.name} cuts, so these "
        "numbers show the machinery, not the science; docs/table1.md has Table 1 on a larger "
        "(synthetic-from-real) corpus."
    )
    return DemoResult(out, catalog_csv, Path(built.shards_dir), runs, built.accepted, rows)


# --- after training: embed files outside the shards, explore an embedding ---


def _release_of(run: str | Path, release: str | None, shards_dir: str | Path | None):
    """The release whose preprocessing the run's shards were made with (index.json `release`)."""
    from etl.release import load_release

    if release:
        return load_release(release)
    index = Path(shards_dir) / "index.json" if shards_dir else None
    if index and index.exists():
        return load_release(json.loads(index.read_text())["release"])
    raise ValueError(f"run {run}: cannot tell its release (no shards index); pass --release")


def _catalog_rows(path: str | Path) -> dict[tuple[int, int, int], dict]:
    """Rows of a catalogue (CSV or FITS with specObj column names) by (plate, mjd, fiberid)."""
    from astropy.table import Table

    t = Table.read(path, format="ascii.csv" if str(path).endswith(".csv") else None)
    names = {n.upper(): n for n in t.colnames}
    out = {}
    for r in t:
        key = (int(r[names["PLATE"]]), int(r[names["MJD"]]), int(r[names["FIBERID"]]))
        out[key] = {k: r[v] for k, v in names.items()}
    return out


def _spec_header(path: Path) -> dict:
    """SPECOBJID (exact string), Z, CLASS, RA, DEC from HDU 2 (SPECOBJ) of a spec-lite file."""
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        row = hdul[2].data[0]
        names = set(hdul[2].columns.names)
        ra = row["RA"] if "RA" in names else row["PLUG_RA"]
        dec = row["DEC"] if "DEC" in names else row["PLUG_DEC"]
        return {
            "SPECOBJID": str(row["SPECOBJID"]).strip(),
            "Z": float(row["Z"]),
            "CLASS": str(row["CLASS"]).strip() if "CLASS" in names else "",
            "RA": float(ra),
            "DEC": float(dec),
        }


def preprocess_spectra(
    paths: Sequence[str | Path], release, catalog: str | Path | None = None
) -> tuple[list[dict], list[str]]:
    """Read and preprocess spec-lite files; rows with ids and arrays, and one error line each."""
    from etl.spectrum import Preprocessor, SpectrumRejected, read_spec_lite

    prep = Preprocessor(release)
    cat = _catalog_rows(catalog) if catalog else None
    rows, errors = [], []
    for p in map(Path, paths):
        try:
            raw = read_spec_lite(p, with_ids=True)
            meta = _spec_header(p)
            key = (raw.plate, raw.mjd, raw.fiberid)
            if cat is not None:
                if key not in cat:
                    raise SpectrumRejected(p.name, "not in catalogue", f"{key} not in {catalog}")
                c = cat[key]
                meta["Z"] = float(c["Z"])
                meta["SPECOBJID"] = str(c.get("SPECOBJID", meta["SPECOBJID"])).strip()
                meta["CLASS"] = str(c.get("CLASS", meta["CLASS"])).strip()
            pre = prep.preprocess(raw, meta["Z"], p.name)
        except (SpectrumRejected, OSError, KeyError, IndexError, ValueError) as e:
            errors.append(f"{p}: {e}")
            log.warning("%s: skipped: %s", p, e)
            continue
        rows.append(
            {
                "flux": pre.flux,
                "ivar": pre.ivar,
                "z": np.float32(meta["Z"]),
                "specobjid": meta["SPECOBJID"],
                "plate": raw.plate,
                "mjd": raw.mjd,
                "fiberid": raw.fiberid,
                "ra": meta["RA"],
                "dec": meta["DEC"],
                "split": "none",
                "class": meta["CLASS"],
                "file": str(p),
            }
        )
    return rows, errors


def _batches(rows: list[dict], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    for a in range(0, len(rows), batch_size):
        part = rows[a : a + batch_size]
        yield {k: np.stack([r[k] for r in part]) for k in part[0]}


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

    z comes from each file's HDU 2, or from `catalog` (matched on plate, mjd, fiberid). The
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
    table["_object_key"] = np.array(["plate", "mjd", "fiberid"])
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
