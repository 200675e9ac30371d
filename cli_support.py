"""What every `specetl` command shares: logging set-up and the click options several commands
take (one definition, one help text each).

`cli.py` composes its commands from these, which leaves it to the commands themselves: what
each does, its examples, and the one library call it makes.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

import click

from cli_guard import DEVICE


def setup_logging(verbose: int) -> None:
    """INFO by default, DEBUG with -v; chatty libraries (Dask's cluster life cycle) only with -vv."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if verbose < 2:
        # distributed sets its own levels from dask's config when first imported (here and in
        # every worker process), so set the config through the environment as well
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for name in ("distributed", "tornado", "asyncio", "matplotlib", "PIL", "fsspec"):
            logging.getLogger(name).setLevel(logging.WARNING)


EXISTING_DIR = click.Path(exists=True, file_okay=False)
EXISTING_FILE = click.Path(exists=True, dir_okay=False)
Decorator = Callable[[Callable[..., None]], Callable[..., None]]

# Options shared by the ETL commands (one definition, one help text).
release_option = click.option(
    "--release",
    default="dr16",
    show_default=True,
    help="Release manifest name (data_manifests/<name>.toml) or path.",
)
scheduler_option = click.option(
    "--scheduler",
    default=None,
    help="Address of a running Dask scheduler (tcp://host:8786) instead of a local cluster.",
)

# Options shared by the model commands.
device_option = click.option(
    "--device",
    type=DEVICE,
    default="auto",
    show_default=True,
    help="auto (GPU if visible), cpu or cuda[:N].",
)
run_shards_option = click.option(
    "--shards",
    type=EXISTING_DIR,
    default=None,
    help="Shards folder with index.json (default: the one the run was trained on).",
)

# Option shapes several commands share, each with its own help text.


def data_dir_option(help_text: str) -> Decorator:
    """--data-dir: a required data root folder (fetch, build-shards)."""
    return click.option(
        "--data-dir", required=True, type=click.Path(file_okay=False), help=help_text
    )


def count_option(name: str, minimum: int, default: int | None, help_text: str) -> Decorator:
    """An integer option of at least `minimum`; its default shown unless the command picks it."""
    shown = {} if default is None else {"show_default": True}
    return click.option(
        name, type=click.IntRange(min=minimum), default=default, help=help_text, **shown
    )


def run_option(help_text: str, required: bool = True) -> Decorator:
    """--run RUN (an existing run folder) passed as run_dir; None when optional and not given."""
    default = {} if required else {"default": None}
    return click.option(
        "--run", "run_dir", required=required, type=EXISTING_DIR, help=help_text, **default
    )


def out_file_option(help_text: str) -> Decorator:
    """--out: the required output file (embed, explore)."""
    return click.option("--out", required=True, type=click.Path(dir_okay=False), help=help_text)


def seed_option(help_text: str) -> Decorator:
    """--seed: an integer seed, default 0."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help_text)


def split_option(choices: list[str], default: str, help_text: str) -> Decorator:
    """--split: which split of the shards a command reads."""
    return click.option(
        "--split", type=click.Choice(choices), default=default, show_default=True, help=help_text
    )
