"""A run's record says what happened: launch checks refuse before anything is written, a run that
fails says ``failed`` with its error (and leaves no empty stage folder), and resuming finishes it."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from headstart.cli import app
from helpers import digit_run

STAGE = {"name": "task", "epochs": 1, "batch_size": 50}


def test_accelerator_gpu_without_a_gpu_is_refused_before_anything_is_written(tmp_path):
    output = tmp_path / "run"
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(digit_run(output, [STAGE], accelerator="gpu")))
    result = CliRunner().invoke(app, ["run", str(file)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: accelerator: gpu, but this machine has no GPU")
    assert "Traceback" not in result.output
    assert not output.exists()  # no run.json saying "running", no empty stage folder


def test_a_run_that_fails_says_so_and_resuming_finishes_it(tmp_path):
    from lightning.pytorch.callbacks import Callback

    from headstart.config import parse_run
    from headstart.structure import run

    class FailsAsTheSecondStageStarts(Callback):
        def on_train_start(self, trainer, pl_module):
            if "pretext" in type(pl_module).__name__.lower() or trainer.max_epochs == 2:
                raise RuntimeError("disk on fire")

    stages = [
        {"name": "first", "epochs": 1, "batch_size": 50},
        {"name": "second", "epochs": 2, "batch_size": 50},
    ]
    spec = parse_run(digit_run(tmp_path / "run", stages))
    try:
        run(spec, progress=False, callbacks=[FailsAsTheSecondStageStarts()])
    except RuntimeError as error:
        assert "disk on fire" in str(error)
    else:
        raise AssertionError("the run should have failed")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"] == "RuntimeError: disk on fire"
    assert record["finished_stages"] == ["0-first"]
    second = tmp_path / "run" / "1-second"
    assert not second.exists()  # it started and wrote nothing: no empty stage folder is left
    result = run(spec, resume=True, progress=False)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "finished" and record["error"] is None and result.resumed == ("first",)
    assert record["threads"] >= 1
