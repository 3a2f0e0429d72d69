"""``headstart export``: the format follows the output's suffix, a contradicting ``--format`` is refused
before anything is written; help texts and error messages that name an extra print it whole."""

from __future__ import annotations

import importlib
import re
import sys

import pytest
import typer
import yaml
from typer.testing import CliRunner

from headstart import interop
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.zoo import load
from helpers import TINY_RESNET, digit_run

export_module = importlib.import_module("headstart.interop.export")  # the module; `interop.export` is the function
WIDE = {"COLUMNS": "400"}  # one help text per line, so that nothing is cut by wrapping


def _export(path, *extra):
    return CliRunner().invoke(app, ["export", TINY_RESNET, "--weights", "none", "-o", str(path), *extra], env=WIDE)


@pytest.fixture
def recorded(monkeypatch):
    """Stand-ins for the two exporters that record which one ran (and write nothing)."""
    calls: list[tuple[str, str]] = []

    def stand_in(format):
        def exporter(model, path, **options):
            calls.append((format, str(path)))
            return interop.ExportReport(path=str(path), format=format, model_name=str(model), dynamic_axes=["batch"])

        return exporter

    monkeypatch.setattr(export_module, "export_onnx", stand_in("onnx"))
    monkeypatch.setattr(export_module, "export_keras", stand_in("keras"))
    return calls


@pytest.mark.parametrize("name, format", [("m.onnx", "onnx"), ("m.keras", "keras"), ("m.h5", "keras")])
def test_without_format_the_suffix_chooses_it(tmp_path, recorded, name, format):
    result = _export(tmp_path / name)
    assert result.exit_code == 0, result.output
    assert recorded == [(format, str(tmp_path / name))]
    assert interop.export_format(tmp_path / name) == format


@pytest.mark.parametrize(
    "name, extra, message",
    [
        ("model.keras", ["--format", "onnx"], "model.keras: --format onnx writes a file ending with .onnx"),
        ("model.h5", ["-f", "onnx"], "model.h5: --format onnx writes a file ending with .onnx"),
        ("model.onnx", ["--format", "keras"], "model.onnx: --format keras writes a file ending with .keras or .h5"),
        ("model.bin", [], "model.bin: cannot tell the export format from the file name"),
        ("model", [], "model: cannot tell the export format from the file name"),
    ],
)
def test_a_suffix_that_contradicts_the_format_is_refused_before_anything_is_written(tmp_path, name, extra, message):
    result = _export(tmp_path / name, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_the_onnx_export_follows_the_suffix_for_real(tmp_path):
    import onnx

    result = _export(tmp_path / "tiny.onnx", "--fixed-size")
    assert result.exit_code == 0, result.output
    assert "tiny.onnx: onnx via torch.onnx" in result.output
    onnx.checker.check_model(onnx.load(str(tmp_path / "tiny.onnx")))


def test_from_python_an_onnx_export_refuses_another_suffix(tmp_path):
    network = load(TINY_RESNET, weights=None)
    with pytest.raises(HeadstartError, match=r"model.keras: an ONNX file ends with \.onnx"):
        interop.export_onnx(network, tmp_path / "model.keras")
    with pytest.raises(HeadstartError, match=r"model.keras: --format onnx writes a file ending with \.onnx"):
        interop.export(network, tmp_path / "model.keras", format="onnx")
    with pytest.raises(HeadstartError, match=r"--format 'tflite': expected one of onnx, keras"):
        interop.export(network, tmp_path / "model.onnx", format="tflite")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- extras, printed whole


def _commands(group, path=()):
    for name, command in getattr(group, "commands", {}).items():
        yield (*path, name), command
        yield from _commands(command, (*path, name))


def test_export_help_names_the_keras_extra_and_the_suffix_rule():
    result = CliRunner().invoke(app, ["export", "--help"], env=WIDE)
    assert result.exit_code == 0
    assert "pip install 'headstart[keras]'" in result.output
    assert "default: the format the suffix of --output names" in result.output


def test_every_bracket_in_every_help_text_is_printed():
    """Rich reads ``[keras]`` as markup and drops it unless escaped: every ``[...]`` of a help text,
    option or command, must reach the rendered help."""
    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        shown = " ".join(CliRunner().invoke(app, [*path, "--help"], env=WIDE).output.replace("│", " ").split())
        texts = [command.help or ""] + [getattr(param, "help", None) or "" for param in command.params]
        for text in texts:
            for bracket in re.findall(r"\[[^\]]*\]", text.replace("\\[", "[")):
                checked += 1
                assert bracket in shown, f"headstart {' '.join(path)} --help lost {bracket!r}"
    assert checked >= 2  # the keras extra and the --freeze selector at least


def _run_file(tmp_path, loggers):
    spec = digit_run(tmp_path / "out", [{"name": "task", "epochs": 1}], loggers=loggers)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    "loggers, missing, install",
    [
        (["csv", "mlflow"], ["mlflow"], 'pip install "headstart[mlflow]"'),
        (["csv", "tensorboard"], ["tensorboard", "tensorboardX"], "pip install 'headstart[tensorboard]'"),
    ],
)
def test_an_error_naming_an_extra_prints_it_whole(tmp_path, monkeypatch, loggers, missing, install):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importlib finds no spec
    result = CliRunner().invoke(app, ["run", str(_run_file(tmp_path, loggers))], env=WIDE)
    assert result.exit_code == 2, result.output
    said, error = result.output.strip().splitlines()  # what it was about to train, then why it cannot
    assert said.startswith("run 'run': ") and error.startswith("error: ") and install in error
    assert not (tmp_path / "out").exists()
