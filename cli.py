"""specetl command line: thin click commands over the `etl` and `model` libraries.

Each command parses its options, calls one library function, and turns the library's named
exceptions into a one-line error. The libraries never import click.
"""

from __future__ import annotations

import sys
import time

import click

from cli_guard import OneLineGroup
from cli_support import (
    EXISTING_DIR,
    EXISTING_FILE,
    count_option,
    data_dir_option,
    density_option,
    device_option,
    out_file_option,
    release_option,
    run_option,
    run_shards_option,
    scheduler_option,
    seed_option,
    setup_logging,
    split_option,
    train_options,
)


@click.group(
    cls=OneLineGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "-v", "--verbose", count=True, help="More log output: -v debug, -vv also Dask's own logs."
)
@click.version_option(package_name="specetl")
def main(verbose: int) -> None:
    """specetl: SDSS spectra -> training shards -> a redshift-invariant spectrum autoencoder.

    \b
    The pipeline, one command per step:
      specetl fetch         select galaxies and download their spec-lite FITS files
      specetl build-shards  grid, mask, normalise, write sharded HDF5 with 70/15/15 splits
      specetl train         train the autoencoder (fidelity / similarity / consistency)
      specetl evaluate      Table 1 metrics and Figure 2 plots
      specetl embed         latents, chi2 and outlier scores of every object (FITS table)
      specetl explore       an offline HTML page of an embedding: latent map, spectra, outliers
      specetl demo          all of the above on the bundled real sample, offline
    """
    setup_logging(verbose)


@main.command("fetch")
@release_option
@data_dir_option("Data root; files land in DATA/<release>/ (catalog.fits, spectra/, report).")
@click.option(
    "--catalog",
    "catalog_source",
    default="sql",
    show_default=True,
    help="sql: SkyServer via astroquery (SDSS-I-IV releases); specobj: the release's bulk "
    "summary table (specObj/spAll FITS, SDSS-V spAll-lite .fits.gz; resumable download, "
    "bounded memory); or PATH to a local FITS(.gz)/CSV/ECSV table. Column names: README.",
)
@click.option(
    "--base-url",
    default=None,
    help="Replaces https://data.sdss.org/sas in every URL (a mirror, http(s):// or file://).",
)
@count_option("--limit", 0, None, "Keep only the first N selected objects (by specObjID).")
@count_option(
    "--workers",
    1,
    None,
    "Local Dask worker processes, one download task each (default: an "
    "in-process cluster running 2 tasks in threads: downloads are I/O bound). DESI: "
    "batches of 32 coadds per task (default: threads of this process).",
)
@count_option(
    "--connections", 1, 8, "Concurrent HTTP connections per download task (SDSS asks for few)."
)
@scheduler_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Select and write the catalogue, report what would be downloaded and its estimated "
    "size (HEAD requests on a sample; DESI: the wanted HDUs' sizes from a sample's headers) "
    "against the free space of DATA; download nothing. Exits 1 when it will not fit.",
)
@click.option(
    "--whole-files",
    is_flag=True,
    help="DESI: fetch whole coadd files, verified against their directory's sha256sum list, "
    "instead of range reads of the HDUs training needs.",
)
def fetch_cmd(release: str, data_dir: str, **options: object) -> None:
    """Select the release's galaxies and download their spec-lite files, verified and resumable.

    A rerun skips files already verified (ledger with size + sha256) and retries only failures.
    Writes DATA/<release>/fetch-report.json; exits 1 if any object failed.

    \b
    Example:
      specetl fetch --release dr16 --data-dir DATA --catalog sample/catalog.csv --limit 1000
    """
    from etl.catalog import CatalogError
    from etl.fetch import fetch
    from etl.release import ManifestError, load_release

    try:
        report = fetch(load_release(release), data_dir, **options)
    except (ManifestError, CatalogError) as err:  # OSError: one line by OneLineGroup
        raise click.ClickException(str(err)) from None
    space = report.space or {}
    if report.dry_run:
        from etl.diskspace import dry_run_line

        click.echo(dry_run_line(report.to_download, space, data_dir))
    if space.get("warning"):
        click.echo(f"fetch --dry-run: WARNING: {space['warning']}", err=True)
    if space.get("fits") is False:
        sys.exit(1)
    if not report.ok:
        click.echo(
            f"fetch: {report.n_failed} object(s) failed; see "
            f"{data_dir}/{report.release}/fetch-report.json",
            err=True,
        )
        sys.exit(1)


@main.command("build-shards")
@release_option
@data_dir_option("Data root: reads DATA/<release>/catalog.fits and spectra/, writes shards/.")
@count_option("--shard-size", 1, None, "Spectra per shard (default: the manifest's, 4096).")
@count_option("--workers", 1, None, "Local Dask worker processes (default: usable cores).")
@scheduler_option
@click.option(
    "--compression",
    type=click.Choice(["none", "lzf", "gzip"]),
    default="none",
    show_default=True,
    help="HDF5 compression of flux/ivar (saves little on floats).",
)
@click.option(
    "--rebuild", is_flag=True, help="Rewrite every shard, even those whose inputs did not change."
)
@click.option(
    "--verify",
    is_flag=True,
    help="Check the sha256 of every shard that would be kept (reads them all) and rebuild any "
    "that differs from index.json; by default a kept shard is checked by size only.",
)
def build_shards_cmd(release: str, data_dir: str, **options: object) -> None:
    """Grid, mask and normalise the fetched spectra into HDF5 shards with 70/15/15 splits.

    Writes DATA/<release>/shards/{train,valid,test}/shard-NNNNN.h5, index.json (last) and
    build-report.json (rejections with reasons). A rerun rewrites only shards whose inputs
    changed. Format: docs/shard-format.md.

    \b
    Example:
      specetl build-shards --release dr16 --data-dir DATA --workers 4
    """
    from etl.build import BuildError, build_shards
    from etl.catalog import CatalogError
    from etl.release import ManifestError, load_release
    from shardio import ShardError

    try:
        result = build_shards(
            load_release(release), data_dir, progress=sys.stderr.isatty(), **options
        )
    except (ManifestError, CatalogError, BuildError, ShardError) as err:  # OSError: OneLineGroup
        raise click.ClickException(str(err)) from None
    click.echo(result.summary())


@main.command("train")
@train_options
def train_cmd(skip_verify: bool, **options: object) -> None:
    """Train the redshift-aware autoencoder on shards (CPU or GPU, picked automatically).

    \b
    Example (CPU, minutes):
      specetl train --shards DATA/dr16/shards --run runs/sim --objective similarity --epochs 20
      specetl train --shards DATA/dr16/shards --run runs/con --objective consistency \\
          --init runs/sim --epochs 10
    The paper's encoder (observed pixels, interpolated copies; ~1.7x faster per CPU step):
      specetl train ... --encoder-frame observed --augment interpolate
    Several GPUs/processes (DDP; rank 0 writes; "--" keeps torchrun off our options):
      torchrun --nproc_per_node 4 -m cli -- train --shards ... --run ...
    """
    from model.data import ShardError
    from model.train import TrainConfig, TrainError, train

    try:
        train(TrainConfig(**options, verify_shards=not skip_verify))  # options: its fields
    except (TrainError, ShardError) as e:
        raise click.ClickException(str(e)) from None


@main.command("evaluate")
@run_option("Run folder to evaluate (its best.pt, else last.pt), e.g. runs/con.", required=False)
@click.option(
    "--compare",
    multiple=True,
    type=EXISTING_DIR,
    help="Evaluate several runs and print one table row per run: "
    "--compare runs/fid runs/sim runs/con (the runs may follow one --compare).",
)
@click.argument(
    "more_runs",
    nargs=-1,
    metavar="[RUN_B RUN_C ...]",
    type=EXISTING_DIR,
)
@split_option(["train", "valid", "test"], "test", "Which split of the shards to evaluate on.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Output folder for metrics.json and the PNGs (default: RUN/eval-<split>/; "
    "with --compare always each RUN/eval-<split>/).",
)
@run_shards_option
@seed_option("Seeds the augmentation redshifts z_aug ~ U[0, 0.5] of mean |s - s_aug| and L_c.")
@device_option
def evaluate_cmd(
    run_dir: str | None, compare: tuple[str, ...], more_runs: tuple[str, ...], **options: object
) -> None:
    """Table 1 metrics and Figure 2 of trained runs.

    Writes RUN/eval-<split>/metrics.json (L_fid, L_sim at k0 = 2.5 and k1 = 1, L_c, mean
    |s - s_aug| for copies moved to z_aug ~ U[0, 0.5], provenance), figure2.png (a spectrum,
    its reconstruction and those of its redshifted copies; the latent map) and training.png,
    then prints a markdown table and the figure paths.

    \b
    Examples:
      specetl evaluate --run runs/con
      specetl evaluate --run runs/con --split valid --out eval/con-valid --seed 1
      specetl evaluate --compare runs/fid runs/sim runs/con
    """
    from model.evaluate import EvaluateError, evaluate_runs, format_table

    if more_runs and not compare and run_dir is None:
        raise click.ClickException(
            f"unexpected argument(s) {' '.join(more_runs)}; did you mean --compare?"
        )
    try:
        rows = evaluate_runs(run_dir, [*compare, *more_runs], **options)
    except EvaluateError as e:
        raise click.ClickException(str(e)) from None
    click.echo(format_table(rows))
    for r in rows:
        click.echo(f"{r['run']}: {r['metrics_path']}")
        for name in ("figure2", "training"):
            if r["figures"].get(name):
                click.echo(f"  {name}: {r['figures'][name]}")


@main.command("embed")
@run_option("Trained run folder (its best.pt, else last.pt).")
@out_file_option("FITS table to write (one row per object); replaced atomically.")
@run_shards_option
@split_option(["train", "valid", "test", "all"], "all", "Which split of the shards to embed.")
@click.option(
    "--spectra",
    "spectra_mode",
    is_flag=True,
    help="Embed the spec-lite files (or folders of spec-*.fits) given as arguments instead of "
    "shards: same preprocessing, scored against the run's outlier model. For a DESI run: coadd "
    "files (or folders of coadd-*.fits), every target --catalog lists.",
)
@click.argument("paths", nargs=-1, metavar="[PATH ...]", type=click.Path(exists=True))
@click.option(
    "--catalog",
    type=EXISTING_FILE,
    default=None,
    help="With --spectra: CSV/FITS with SPECOBJID, PLATE, MJD, FIBERID, RA, DEC, CLASS, Z (a "
    "selection saved by the explorer page has them) whose Z replaces each file's HDU 2 redshift. "
    "DESI coadds: the redrock file or a zall table (TARGETID, Z), required.",
)
@click.option(
    "--release",
    default=None,
    help="With --spectra: release whose preprocessing to apply (default: that of the run's shards).",
)
@count_option(
    "--batch-size",
    1,
    256,
    "Spectra per forward pass (memory: ~120 kB of spectra per row, plus the model's).",
)
@density_option
@device_option
def embed_cmd(
    run_dir: str,
    out: str,
    shards: str | None,
    split: str,
    spectra_mode: bool,
    paths: tuple[str, ...],
    catalog: str | None,
    release: str | None,
    batch_size: int,
    density: str,
    device: str,
) -> None:
    """Latents, reconstruction chi2 and outlier scores of every object, as a FITS table.

    \b
    Columns: SPECOBJID (exact, as text), the release's object key (PLATE, MJD, FIBERID), RA, DEC
    (when stored), Z, SPLIT, S (latent vector), CHI2 (fidelity term per valid pixel), SNR
    (median S/N per valid pixel), LOGP, R_DENSITY, R_CHI2, R_SIGNAL, OUTLIER_SCORE,
    OUTLIER_RANK (1 = most anomalous), SHARD/ROW or FILE.
    OUTLIER_SCORE = R_DENSITY + R_CHI2 + R_SIGNAL, robust z-scores against the train split: how
    far a latent lies from the dense part of the training latents (a Gaussian mixture or a flow,
    --density); how far log chi2 lies above the training spectra's at the same S/N (a spectrum
    the model cannot reconstruct); and, beyond 3 sigma, how far its S/N lies below theirs (no
    source: e.g. a sky fibre). Fitted once, saved as RUN/outliers.json. The header records the
    run, checkpoint sha256, shards index sha256 and the density chosen (DENSITY, with
    VLLGMM/VLLFLOW, the valid log-likelihoods).

    \b
    Examples:
      specetl embed --run runs/con --out runs/con/embedding.fits
      specetl embed --run runs/con --split test --out test.fits
      specetl embed --run runs/con --out candidates.fits --spectra candidates/*.fits
    """

    from model.data import ShardError
    from model.density import DensityError
    from model.embed import EmbedError, embed_shards
    from model.train import TrainError

    try:
        if spectra_mode or paths:
            if not paths:
                raise click.ClickException("--spectra needs at least one file or folder")
            from workflows.spectra import embed_spectra, spectrum_files

            files = spectrum_files(paths)
            path, errors = embed_spectra(
                run_dir, files, out, catalog, release, shards, device, batch_size, density
            )
            for e in errors:
                click.echo(f"skipped {e}", err=True)
            from astropy.io import fits

            rows = int(fits.getheader(path, 1)["NAXIS2"])  # a DESI coadd holds many spectra
            click.echo(
                f"{path}: {rows} spectra embedded from {len(files)} file(s), {len(errors)} skipped"
            )
        else:
            path = embed_shards(run_dir, out, shards, split, device, batch_size, density=density)
            click.echo(f"{path}: split {split} embedded")
    except (EmbedError, DensityError, ShardError, TrainError) as e:
        raise click.ClickException(str(e)) from None


@main.command("explore")
@click.option(
    "--embedding",
    required=True,
    type=EXISTING_FILE,
    help="FITS table written by `specetl embed`.",
)
@run_option("The run that made the embedding (draws the reconstructions).")
@out_file_option("HTML file to write.")
@count_option("--top", 1, 50, "Top outliers listed.")
@count_option(
    "--sample",
    0,
    150,
    "Other objects whose spectra the page carries (random), besides the top outliers.",
)
@count_option(
    "--max-points",
    1000,
    100_000,
    "Points drawn on the map; beyond, a random sample (said on the page).",
)
@device_option
def explore_cmd(
    embedding: str, run_dir: str, out: str, top: int, sample: int, max_points: int, device: str
) -> None:
    """One self-contained HTML page to explore an embedding (opens from file://, no network).

    \b
    The latent map (colour by z, OUTLIER_SCORE, CHI2, split, ...), hover for id, z and score,
    click for the object's observed spectrum, reconstruction and restframe model and its
    SkyServer page; the top outliers one click away.

    \b
    Example:
      specetl explore --embedding runs/con/embedding.fits --run runs/con --out explore.html
    """
    from model.embed import EmbedError
    from model.train import TrainError
    from workflows.spectra import explore_page

    try:
        path = explore_page(embedding, run_dir, out, top, sample, max_points, device)
    except (EmbedError, TrainError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")


@main.command("demo")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="demo-out",
    show_default=True,
    help="Folder for everything the demo makes (data, runs, figures).",
)
@click.option(
    "--release",
    default="dr16",
    show_default=True,
    help="Release manifest whose archive layout the loopback server imitates.",
)
@count_option(
    "--epochs",
    1,
    None,
    "Epochs of the fidelity run (similarity gets a third, consistency a sixth); default 12 "
    "on the SYNTHETIC population, 60 on the real sample.",
)
@count_option(
    "--population",
    0,
    2400,
    "Train and evaluate on a SYNTHETIC galaxy population of N galaxies (bagpipes, real "
    "SDSS noise; needs the population extra); 0: on the bundled real galaxies only.",
)
@count_option(
    "--workers", 1, None, "Local Dask worker processes for fetch and build-shards (default: cores)."
)
def demo_cmd(
    out_dir: str, release: str, epochs: int | None, population: int, workers: int | None
) -> None:
    """Run the whole pipeline offline: the ETL on the bundled real SDSS sample (sample/), the
    models on a SYNTHETIC galaxy population (or, with --population 0, on the real sample).

    \b
    1. serve sample/sdss on 127.0.0.1 in the SDSS archive's layout (a real HTTP server),
    2. specetl fetch   : select with the release's cuts from sample/catalog.csv and download
                         through the real downloader (verified, resumable),
    3. specetl build-shards : grid, mask, normalise, write HDF5 shards with 70/15/15 splits,
    4. a SYNTHETIC population (bagpipes galaxies, real SDSS noise and masks) → shards,
    5. specetl train   : fidelity, similarity, then consistency (from the similarity run),
                         cpu-small preset,
    6. specetl evaluate: Table-1 metrics on the population's test split + Figure-2 PNGs;
                         what the latents know (kNN R² of sSFR, age, A_V, σ, z); the models
                         on the real galaxies; latent maps.

    Only 86 real galaxies pass the DR16 cuts: without the population this shows the
    machinery, not the science. Rerunning reuses what is done.

    \b
    Example:
      specetl demo --out demo-out
    """
    from workflows.demo import WorkflowError, run_demo

    t0 = time.perf_counter()

    def step(text: str) -> None:
        click.secho(f"[{time.perf_counter() - t0:6.1f} s] {text}", fg="cyan", err=True)

    try:
        run_demo(
            out_dir, release, epochs, workers, step=step, echo=click.echo, population=population
        )
    except WorkflowError as err:
        raise click.ClickException(str(err)) from None


if __name__ == "__main__":
    main()
