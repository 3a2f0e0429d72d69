"""The command answers at once: importing it, every ``--help`` and a usage error load none of the
heavy libraries (PyTorch, Lightning, timm, plotting, statistics), which the commands load when run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = (
    "torch",
    "torchvision",
    "lightning",
    "pytorch_lightning",
    "timm",
    "numpy",
    "PIL",
    "matplotlib",
    "scipy",
    "pandas",
    "sklearn",
    "statsmodels",
    "onnx",
    "onnxruntime",
)
"""Top-level packages that ``headstart --help`` must not import (pydantic is absent: Typer loads it)."""

_PROBE = """
import json, sys

HEAVY = set(json.loads(sys.argv[1]))


def loaded():
    return sorted({name.split(".")[0] for name in sys.modules} & HEAVY)


import headstart.cli

found = {"import headstart.cli": loaded()}

import typer
from typer.testing import CliRunner

from headstart.cli import app


def command_paths(command, path=()):
    yield path
    for name, sub in getattr(command, "commands", {}).items():  # a group's sub-commands
        yield from command_paths(sub, (*path, name))


runner = CliRunner()
paths = list(command_paths(typer.main.get_command(app)))
for path in paths:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, (path, result.output)
    found[" ".join(["headstart", *path, "--help"])] = loaded()
    if path:
        result = runner.invoke(app, [*path, "--no-such-option"])
        assert result.exit_code == 2, (path, result.output)
        found[" ".join(["headstart", *path, "--no-such-option"])] = loaded()
print(json.dumps({"paths": [" ".join(path) for path in paths], "found": found}))
"""


def _probe() -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(HEAVY)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_help_and_usage_errors_load_no_heavy_library():
    probed = _probe()
    # the walk reached every command, so a command added later is checked too
    assert {"predict", "run", "demo", "compare", "zoo list", "check-data"} <= set(probed["paths"])
    first = next(((step, modules) for step, modules in probed["found"].items() if modules), None)
    assert first is None, f"{first[0]} imports {', '.join(first[1])}; import them inside the command that uses them"


_FIRST_LINE = """
import json, sys

import typer
from typer.testing import CliRunner

from headstart.cli import app

seen = []


def first_line(message=None, *args, **options):
    seen.append([message, sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[2])))])
    raise SystemExit(0)  # the line is what is measured, not the training


typer.echo = first_line
CliRunner().invoke(app, ["run", sys.argv[1]])
print(json.dumps(seen))
"""


def test_the_first_line_of_run_comes_before_lightning_loads(tmp_path):
    """``headstart run`` names what it is about to train once its file is read, before Lightning
    and timm load (seconds more on a small machine)."""
    file = tmp_path / "run.yaml"
    file.write_text(
        "name: quick\nmodel: {name: test_resnet, weights: null, image_size: 16}\n"
        "data: {source: {kind: digits}}\nstages:\n  - {name: task, epochs: 1}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", _FIRST_LINE, str(file), json.dumps(HEAVY)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    [(line, loaded)] = json.loads(result.stdout.splitlines()[-1])
    assert line == f"run 'quick': test_resnet, task, into {Path('runs') / 'quick'}", line
    assert not {"lightning", "pytorch_lightning", "timm"} & set(loaded), loaded
