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

from cli_guard import DEVICE, LEARNING_RATE, POSITIVE_FINITE, WIDTHS


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
density_option = click.option(
    "--density",
    type=click.Choice(["auto", "gmm", "flow"]),
    default="auto",
    show_default=True,
    help="Latent density of the outlier score: auto fits a Gaussian mixture and a normalizing "
    "flow on the train split and keeps the one with the higher mean log-likelihood of the valid "
    "split's latents; gmm or flow forces one (RUN/outliers.json is refitted if it differs).",
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


def train_options(command: Callable) -> Callable:
    """The options of `specetl train` (the fields of model.train.TrainConfig), in --help order;
    kept here so that cli.py holds the commands themselves."""
    options = [
        click.option(
            "--shards",
            required=True,
            type=EXISTING_DIR,
            help="Shards folder with index.json (e.g. DATA/dr16/shards).",
        ),
        click.option(
            "--run",
            required=True,
            type=click.Path(file_okay=False),
            help="Run folder: config.json, metrics.jsonl, last.pt, best.pt land here.",
        ),
        click.option(
            "--objective",
            type=click.Choice(["fidelity", "similarity", "consistency"]),
            default="fidelity",
            show_default=True,
            help="fidelity: reconstruction only; similarity: + similarity loss (k1 annealed); "
            "consistency: + redshift-augmentation consistency (start it with --init SIM_RUN).",
        ),
        click.option(
            "--losses",
            type=click.Choice(["scale-free", "paper-2023"]),
            default="scale-free",
            show_default=True,
            help="Similarity/consistency equations: scale-free (each side in units of its batch "
            "scale; model/scalefree.py; won on validation, docs/convergence.md) or paper-2023 "
            "(absolute latent distances, sigma_s).",
        ),
        click.option(
            "--sim-form",
            type=click.Choice(["restframe", "observed"]),
            default="restframe",
            show_default=True,
            help="scale-free similarity: compare decoded restframe spectra, or the observed data "
            "resampled to the restframe.",
        ),
        click.option(
            "--consistency-weight",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Weight of the consistency loss in the total (objective consistency). "
            "[default: the family's: 100 scale-free, 1 paper-2023]",
        ),
        click.option(
            "--consistency-norm",
            type=click.Choice(["whitened", "mean-variance"]),
            default="whitened",
            show_default=True,
            help="scale-free consistency: shifts whitened by the batch covariance of the latents "
            "(a flattened latent dimension cannot lower it), or in units of their mean variance "
            "(spender 0.3's).",
        ),
        click.option(
            "--augment",
            type=click.Choice(["interpolate", "pixel-shift"]),
            default="pixel-shift",
            show_default=True,
            help="How consistency moves a spectrum to its new redshift: whole pixels on the "
            "log-uniform grid every release's shards have (z_new rounded to the nearest pixel "
            "step; line widths and noise untouched), or linear interpolation (broadens lines by "
            "up to half a pixel). Training's validation uses the same copies; specetl evaluate "
            "uses interpolate.",
        ),
        click.option(
            "--z-aug-max",
            type=POSITIVE_FINITE,
            default=0.5,
            show_default=True,
            help="Consistency's copies are moved to z_new ~ U[0, Z_AUG_MAX] (at most 1: beyond "
            "that a copy keeps little of a low-z galaxy's window). Smaller keeps Hα (6563 Å, "
            "out of the grid above z 0.42) in every copy. specetl evaluate always uses 0.5.",
        ),
        click.option(
            "--encoder-frame",
            type=click.Choice(["restframe", "observed"]),
            default="restframe",
            show_default=True,
            help="Frame the encoder reads spectra in: restframe (each spectrum first placed at "
            "λ/(1+z) with its catalogue z, so moving it in z only changes the wavelengths its "
            "window covers; the validation choice, ~1.7x per CPU consistency step), or "
            "observed pixels (the paper's; invariance to redshift must be learnt). An "
            "observed-frame run can --init a restframe one.",
        ),
        click.option(
            "--decoder-activation",
            type=click.Choice(["leaky-relu", "speculator"]),
            default="leaky-relu",
            show_default=True,
            help="Decoder activations: leaky-relu (piecewise linear in the latents) or "
            "speculator (smooth learnt gates, Alsing et al. 2020; spender 0.3's decoder, whose "
            "output adds 1).",
        ),
        click.option(
            "--decoder-mlp",
            type=WIDTHS,
            default=None,
            help="Decoder hidden widths, comma-separated (default: the preset's 256,512,1024; "
            "spender 0.3's decoder is 64,256,1024).",
        ),
        click.option(
            "--preset",
            type=click.Choice(["paper", "cpu-small"]),
            default="cpu-small",
            show_default=True,
            help="paper: full-size encoder (~3.2M params, batch 512); cpu-small: narrower "
            "encoder, batch 64, same grids.",
        ),
        click.option(
            "--epochs",
            type=click.IntRange(min=1),
            default=10,
            show_default=True,
            help="Epochs over the train split.",
        ),
        click.option(
            "--batch-size",
            type=click.IntRange(min=1),
            default=None,
            help="Spectra per step and rank (default: the preset's).",
        ),
        click.option(
            "--lr",
            type=LEARNING_RATE,
            default=1e-3,
            show_default=True,
            help="Peak learning rate of the OneCycle schedule (Adam).",
        ),
        click.option(
            "--init",
            type=EXISTING_DIR,
            default=None,
            help="Start from the best model of this run (same preset), e.g. a similarity run.",
        ),
        click.option(
            "--resume",
            is_flag=True,
            help="Continue RUN from its last.pt exactly (same settings required).",
        ),
        click.option(
            "--cache-on-device",
            is_flag=True,
            help="Load the whole train/valid split onto the device instead of streaming.",
        ),
        click.option("--compile", is_flag=True, help="Wrap the model in torch.compile."),
        click.option(
            "--workers",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="DataLoader worker processes reading shards (0: the training process).",
        ),
        seed_option("Seeds initialisation, data order, dropout and augmentation."),
        click.option(
            "--checkpoint-every",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Write RUN/last.pt every N epochs (and at the end); best.pt follows validation.",
        ),
        click.option(
            "--skip-verify",
            is_flag=True,
            help="Do not check shard sha256 against index.json before training.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command
