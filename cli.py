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


if __name__ == "__main__":
    main()
