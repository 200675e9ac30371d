"""specetl command line: thin click commands over the `etl` and `model` libraries.

Each command parses its options, calls one library function, and turns the library's named
exceptions into a one-line error. The libraries never import click.
"""

from __future__ import annotations

import logging
import sys

import click

log = logging.getLogger("specetl")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-v: debug).")
@click.version_option(package_name="specetl")
def main(verbose: int) -> None:
    """specetl: SDSS spectra -> training shards -> a redshift-invariant spectrum autoencoder.

    \b
    The pipeline, one command per step:
      specetl fetch         select galaxies and download their spec-lite FITS files
      specetl build-shards  grid, mask, normalise, write sharded HDF5 with 70/15/15 splits
      specetl train         train the autoencoder (fidelity / similarity / consistency)
      specetl evaluate      Table 1 metrics and Figure 2 plots
      specetl demo          all of the above on the bundled real sample, offline
    """
    _setup_logging(verbose)


@main.command("fetch")
@click.option("--release", default="dr16", show_default=True,
              help="Release manifest name (data_manifests/<name>.toml) or path.")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Data root; files land in DATA/<release>/ (catalog.fits, spectra/, report).")
@click.option("--catalog", "catalog_source", default="sql", show_default=True,
              help="sql: SkyServer via astroquery; specobj: the bulk specObj FITS (resumable "
              "download, bounded memory); or PATH to a local FITS/CSV/ECSV table.")
@click.option("--base-url", default=None,
              help="Replaces https://data.sdss.org/sas in every URL (a mirror, http(s):// or file://).")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Keep only the first N selected objects (by specObjID).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local Dask worker processes (default: usable cores).")
@click.option("--connections", type=click.IntRange(min=1), default=8, show_default=True,
              help="Concurrent HTTP connections per worker process (SDSS asks for few).")
@click.option("--scheduler", default=None,
              help="Address of a running Dask scheduler (tcp://host:8786) instead of a local cluster.")
@click.option("--dry-run", is_flag=True,
              help="Select and write the catalogue, report what would be downloaded, download nothing.")
def fetch_cmd(release: str, data_dir: str, catalog_source: str, base_url: str | None,
              limit: int | None, workers: int | None, connections: int, scheduler: str | None,
              dry_run: bool) -> None:
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
        report = fetch(load_release(release), data_dir, catalog_source, base_url, limit, workers,
                       connections, scheduler, dry_run)
    except (ManifestError, CatalogError, OSError) as err:
        raise click.ClickException(str(err)) from None
    if not report.ok:
        click.echo(f"fetch: {report.n_failed} object(s) failed; see "
                   f"{data_dir}/{report.release}/fetch-report.json", err=True)
        sys.exit(1)


@main.command("build-shards")
@click.option("--release", default="dr16", show_default=True,
              help="Release manifest name (data_manifests/<name>.toml) or path.")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False),
              help="Data root: reads DATA/<release>/catalog.fits and spectra/, writes shards/.")
@click.option("--shard-size", type=click.IntRange(min=1), default=None,
              help="Spectra per shard (default: the manifest's, 4096).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local Dask worker processes (default: usable cores).")
@click.option("--scheduler", default=None,
              help="Address of a running Dask scheduler (tcp://host:8786) instead of a local cluster.")
@click.option("--compression", type=click.Choice(["none", "lzf", "gzip"]), default="none",
              show_default=True, help="HDF5 compression of flux/ivar (saves little on floats).")
@click.option("--rebuild", is_flag=True,
              help="Rewrite every shard, even those whose inputs did not change.")
def build_shards_cmd(release: str, data_dir: str, shard_size: int | None, workers: int | None,
                     scheduler: str | None, compression: str, rebuild: bool) -> None:
    """Grid, mask and normalise the fetched spectra into HDF5 shards with 70/15/15 splits.

    Writes DATA/<release>/shards/{train,valid,test}/shard-NNNNN.h5, index.json (last) and
    build-report.json (rejections with reasons). A rerun rewrites only shards whose inputs
    changed. Format: docs/shard-format.md.

    \b
    Example:
      specetl build-shards --release dr16 --data-dir DATA --workers 4
    """
    import distributed  # noqa: F401  (importing configures its loggers; quiet them afterwards)

    from etl.build import BuildError, build_shards
    from etl.catalog import CatalogError
    from etl.release import ManifestError, load_release
    from etl.shards import ShardError

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(logging.WARNING)  # keep the console readable
    try:
        result = build_shards(load_release(release), data_dir, shard_size, workers, scheduler,
                              compression, rebuild, progress=sys.stderr.isatty())
    except (ManifestError, CatalogError, BuildError, ShardError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{result.accepted} spectra in {len(result.shards)} shard(s) "
               f"({result.written} written, {result.kept} unchanged), "
               f"{len(result.rejected)} rejected -> {result.shards_dir}")
    for reason, count in result.rejected_by_reason.items():
        click.echo(f"  rejected, {reason}: {count}")


@main.command("train")
@click.option("--shards", required=True, type=click.Path(exists=True, file_okay=False),
              help="Shards folder with index.json (e.g. DATA/dr16/shards).")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False),
              help="Run folder: config.json, metrics.jsonl, last.pt, best.pt land here.")
@click.option("--objective", type=click.Choice(["fidelity", "similarity", "consistency"]),
              default="fidelity", show_default=True,
              help="fidelity: reconstruction only; similarity: + similarity loss (k1 annealed); "
              "consistency: + redshift-augmentation consistency (start it with --init SIM_RUN).")
@click.option("--preset", type=click.Choice(["paper", "cpu-small"]), default="cpu-small",
              show_default=True,
              help="paper: full-size encoder (~3.2M params, batch 512); cpu-small: narrower "
              "encoder, batch 64, same grids.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Epochs over the train split.")
@click.option("--batch-size", type=int, default=None,
              help="Spectra per step and rank (default: the preset's).")
@click.option("--lr", type=float, default=1e-3, show_default=True,
              help="Peak learning rate of the OneCycle schedule (Adam).")
@click.option("--init", "init_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="Start from the best model of this run (same preset), e.g. a similarity run.")
@click.option("--resume", is_flag=True,
              help="Continue RUN from its last.pt exactly (same settings required).")
@click.option("--cache-on-device", is_flag=True,
              help="Load the whole train/valid split onto the device instead of streaming.")
@click.option("--compile", "compile_", is_flag=True, help="Wrap the model in torch.compile.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="DataLoader worker processes reading shards (0: the training process).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds initialisation, data order, dropout and augmentation.")
@click.option("--checkpoint-every", type=int, default=1, show_default=True,
              help="Write RUN/last.pt every N epochs (and at the end); best.pt follows validation.")
@click.option("--skip-verify", is_flag=True,
              help="Do not check shard sha256 against index.json before training.")
def train_cmd(shards: str, run_dir: str, objective: str, preset: str, epochs: int,
              batch_size: int | None, lr: float, init_run: str | None, resume: bool,
              cache_on_device: bool, compile_: bool, workers: int, seed: int,
              checkpoint_every: int, skip_verify: bool) -> None:
    """Train the redshift-aware autoencoder on shards (CPU or GPU, picked automatically).

    \b
    Example (CPU, minutes):
      specetl train --shards DATA/dr16/shards --run runs/sim --objective similarity --epochs 20
      specetl train --shards DATA/dr16/shards --run runs/con --objective consistency \\
          --init runs/sim --epochs 10
    Several GPUs/processes: torchrun --nproc_per_node 4 -m cli train ... (DDP; rank 0 writes).
    """
    from model.data import ShardError
    from model.train import TrainConfig, TrainError, train

    try:
        cfg = TrainConfig(
            shards=shards, run=run_dir, objective=objective, preset=preset, epochs=epochs,
            batch_size=batch_size, lr=lr, init=init_run, resume=resume,
            cache_on_device=cache_on_device, compile=compile_, workers=workers, seed=seed,
            checkpoint_every=checkpoint_every, verify_shards=not skip_verify,
        )
        train(cfg)
    except (TrainError, ShardError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
