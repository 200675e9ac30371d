"""Every command and every option explains itself in --help (the CLI is the product's face)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli import main

REPO = Path(__file__).resolve().parent.parent


def _examples(text: str) -> list[str]:
    """`specetl …` command lines of a help text or README (continuation lines joined)."""
    lines, out, i = [ln.strip() for ln in text.splitlines()], [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("specetl "):
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i]
            out.append(line)
        i += 1
    return out


def _parse(line: str) -> dict:
    """Parse a `specetl CMD …` line with the command's own option parser (no file checks):
    click.NoSuchOption / BadOptionUsage when it names an option the command does not have."""
    _, name, *args = shlex.split(line, comments=True)
    command = main.commands[name]
    opts, _, _ = command.make_parser(click.Context(command, info_name=name)).parse_args(args)
    return opts


def test_readme_documents_every_command_and_its_examples_parse():
    """The README's command lines name real commands and options (a renamed or removed option
    fails here), and every command has one."""
    readme = (REPO / "README.md").read_text()
    lines = _examples(readme)
    assert {ln.split()[1] for ln in lines} >= set(main.commands) - {"demo"}
    assert "specetl demo" in readme
    for line in lines:
        _parse(line)
    with pytest.raises(click.NoSuchOption):
        _parse("specetl fetch --release dr16 --data-dri DATA")  # the check can fail


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_example_in_help_parses(name):
    out = CliRunner().invoke(main, [name, "--help"], terminal_width=200).output
    examples = _examples(out)
    assert examples, f"{name} --help has no example"
    for line in examples:
        assert line.split()[1] == name, line
        _parse(line)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_option_has_help_and_every_command_an_example(name):
    command = main.commands[name]
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"{name} --help has no example"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts[0]} has no help text"
            assert param.opts[0] in result.output


def test_choices_and_defaults_are_the_models_own():
    """cli_support spells the model's choices as literals (torch stays out of CLI start-up);
    this ties each list, and each default, to the constant the model checks against."""
    import dataclasses

    from model.augment import AUGMENT_MODES
    from model.autoencoder import DECODER_ACTIVATIONS, ENCODER_FRAMES, PRESETS
    from model.latent_density import DENSITY_CHOICES
    from model.objectives import LOSS_FAMILIES, OBJECTIVES
    from model.scalefree import CONSISTENCY_NORMS, SIM_FORMS
    from model.train import TrainConfig

    expected = {
        "objective": OBJECTIVES,
        "losses": tuple(LOSS_FAMILIES),
        "sim_form": SIM_FORMS,
        "consistency_norm": CONSISTENCY_NORMS,
        "augment": AUGMENT_MODES,
        "encoder_frame": ENCODER_FRAMES,
        "decoder_activation": DECODER_ACTIVATIONS,
        "preset": tuple(PRESETS),
    }
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    train_params = {p.name: p for p in main.commands["train"].params}
    for name, choices in expected.items():
        p = train_params[name]
        assert isinstance(p.type, click.Choice), name
        assert sorted(p.type.choices) == sorted(choices), name
        assert p.default == defaults[name], name
    density = {p.name: p for p in main.commands["embed"].params}["density"]
    assert sorted(density.type.choices) == sorted(DENSITY_CHOICES)
