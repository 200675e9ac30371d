"""Where the command line meets bad input: validated option types, and the one place where an
error becomes one line and an exit code.

- Option types (:data:`LEARNING_RATE`, :data:`DEVICE`) reject what can only fail later (a NaN or
  negative learning rate, a device torch cannot name) while click still has the option's name.
- :class:`OneLineGroup` is the ``specetl`` group: whatever a command raises is printed as one
  line ``Error: ...`` with a non-zero exit, never a traceback. The libraries' named errors
  (``ManifestError``, ``TrainError``, ...) carry a message that names the object and the cause and
  are printed as they are; an ``OSError`` is printed as "path: reason"; anything else is a bug,
  printed as one line that says so (``-v`` shows its traceback). Ctrl-C exits 130.
"""

from __future__ import annotations

import math
import re
from typing import Any

import click

#: exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 130
#: modules whose exceptions are the product's named, user-facing errors
_PRODUCT_MODULES = ("etl", "model", "workflows", "shardio", "cli")


class PositiveFiniteFloat(click.ParamType):
    """A float > 0 that is finite: ``nan``, ``inf``, 0 and negatives are refused by name."""

    name = "float"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} must be a finite number > 0", param, ctx)
        return number


_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")


class Device(click.ParamType):
    """auto, cpu, mps, cuda or cuda:N; a CUDA device must be visible to this process."""

    name = "device"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if not _DEVICE_RE.match(text):
            self.fail(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N", param, ctx)
        if text.startswith("cuda"):
            import torch  # only when a GPU is asked for: importing torch takes a second

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(text.split(":")[1]) if ":" in text else 0
            if index >= n:
                self.fail(f"{value!r}: this machine has {n} visible CUDA device(s)", param, ctx)
        return text


class Widths(click.ParamType):
    """Comma-separated layer widths, each an integer >= 1: ``64,256,1024`` → (64, 256, 1024)."""

    name = "widths"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if not all(p.isdigit() and int(p) >= 1 for p in parts):
            self.fail(
                f"{value!r} is not comma-separated widths >= 1 (e.g. 64,256,1024)", param, ctx
            )
        return tuple(int(p) for p in parts)


LEARNING_RATE = PositiveFiniteFloat()
POSITIVE_FINITE = PositiveFiniteFloat()
DEVICE = Device()
WIDTHS = Widths()


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (the first line of a multi-line one)."""
    if isinstance(err, OSError) and err.strerror and not _is_named(err):
        where = err.filename if err.filename is not None else ""
        text = f"{where}: {err.strerror}" if where else err.strerror
    else:
        text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _is_named(err: BaseException) -> bool:
    module = type(err).__module__.split(".")[0]
    return module in _PRODUCT_MODULES


class OneLineGroup(click.Group):
    """A click group whose commands never end in a traceback (see the module's docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Error: interrupted (Ctrl-C); rerun the same command to resume", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as err:  # noqa: BLE001 - the one place errors become one line
            if ctx.params.get("verbose"):
                raise
            if _is_named(err) or isinstance(err, OSError):
                raise click.ClickException(one_line(err)) from None
            raise click.ClickException(
                f"unexpected {type(err).__name__}: {one_line(err)} "
                "(a bug in specetl; -v shows where)"
            ) from None
