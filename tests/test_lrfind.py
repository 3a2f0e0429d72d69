"""The learning-rate finder of a stage: suggestion within the sweep, run folder untouched, lr: find in a run."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from headstart.cli import app
from headstart.config import parse_run
from headstart.data import TaskData
from headstart.errors import HeadstartError
from headstart.lrfind import LRSweep, find_for_run, lr_find, smooth, suggest, valley
from headstart.stage import StageRecord
from headstart.structure import run
from headstart.zoo import load


def _spec(output: Path, stages: list[dict], **extra) -> dict:
    return {"name": "sweep", "output": str(output), "progress": False, **extra,
            "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 20}},
            "model": {"name": "test_resnet", "weights": None, "image_size": 16}, "stages": stages}


TWO_STAGES = [
    {"name": "head", "freeze": ["backbone"], "epochs": 1, "batch_size": 32, "optimizer": {"lr": 0.01}},
    {"name": "fine-tune", "epochs": 1, "batch_size": 32, "steps_per_epoch": 2},
]


def _hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_valley_is_half_way_down_the_longest_fall():
    # flat at 5, a strict fall over 60 steps, then a climb: the valley is the fall (plus one flat point)
    losses = [5.0] * 5 + [4.9 - 0.06 * step for step in range(60)] + [1.5 + 0.2 * step for step in range(20)]
    index, length = valley(losses)
    assert length == 61 and index == (64 - 61) + 20 + 10
    rates = [1e-7 * 10 ** (8 * step / len(losses)) for step in range(len(losses))]
    rate, window = suggest(rates, losses, steps=len(losses))
    assert window == (len(losses) // 10, len(losses) - 5)
    assert rates[window[0]] <= rate <= rates[window[1] - 1]
    # bias-corrected smoothing keeps a constant loss constant from the first step on
    assert smooth([2.3] * 5) == pytest.approx([2.3] * 5)
    with pytest.raises(HeadstartError, match="too early to suggest"):
        suggest(rates[:12], losses[:12], steps=100)


def test_a_stage_sweep_suggests_a_rate_inside_the_range_and_leaves_the_run_folder_unchanged(tmp_path):
    spec = parse_run(_spec(tmp_path / "run", TWO_STAGES))
    result = run(spec)
    before = _hashes(result.folder)
    sweep = find_for_run(spec, "fine-tune", steps=40)
    assert _hashes(result.folder) == before  # not a file added, removed or changed
    assert sweep.min_lr <= sweep.suggestion <= sweep.max_lr
    assert min(sweep.learning_rates) <= sweep.suggestion <= max(sweep.learning_rates)
    assert sweep.learning_rates == sorted(sweep.learning_rates) and len(sweep.losses) == len(sweep.learning_rates)
    # the sweep trained the stage as fit_stage trains it: nothing frozen, BatchNorm training, not cached
    assert (sweep.frozen_parameters, sweep.bn_policy, sweep.cached_features) == (0, "train", False)
    png = sweep.plot(tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_head_sweep_keeps_the_stage_freezing_and_the_caller_network():
    data = TaskData.load({"kind": "digits"}, {"labels_per_class": 20, "seed": 0})
    torch.manual_seed(0)
    network = load("test_resnet", weights=None, include_top=False, in_chans=1)
    weights = {key: value.clone() for key, value in network.state_dict().items()}
    sweep = lr_find(network, {"name": "head", "freeze": ["backbone"], "batch_size": 16}, data, image_size=16, steps=30)
    # the stage's freezing and BatchNorm policy, features cached as fit_stage would
    assert sweep.bn_policy == "frozen" and sweep.cached_features and sweep.frozen_parameters > 0
    assert 1e-7 <= sweep.suggestion <= 10
    # the caller's network is as it was: same weights, no head put on it
    assert isinstance(network.head, torch.nn.Identity) and not network.frozen_parameter_names()
    for key, value in network.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_earlier_stages_must_have_run_or_run_in_a_temporary_folder(tmp_path):
    spec = parse_run(_spec(tmp_path / "fresh", TWO_STAGES))
    with pytest.raises(HeadstartError, match="earlier stage\\(s\\) head, not finished"):
        find_for_run(spec, "fine-tune", steps=30)
    sweep = find_for_run(spec, "fine-tune", steps=30, run_earlier=True)
    assert 1e-7 <= sweep.suggestion <= 10
    assert not (tmp_path / "fresh").exists()  # the earlier stage trained in a temporary folder


def test_lr_find_in_a_run_file_sweeps_records_and_trains_with_the_suggestion(tmp_path):
    stages = [{"name": "head", "freeze": ["backbone"], "epochs": 2, "batch_size": 32, "optimizer": {"lr": "find"}}]
    result = run(parse_run(_spec(tmp_path / "find", stages)))
    folder = result.folder / "0-head"
    record = StageRecord.read(folder)
    assert record.stage.optimizer.lr == "find" and record.lr_find is not None
    suggestion = record.lr_find.suggestion
    assert 1e-7 <= suggestion <= 10 and len(record.lr_find.losses) > 20
    # constant schedule: every planned step trained at the suggested rate
    assert record.learning_rates == pytest.approx([suggestion] * record.steps)
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert LRSweep.model_validate(json.loads((folder / "lr_find.json").read_text())) == record.lr_find
    assert math.isfinite(result.test["accuracy"])
    # the report, built from the run's files, shows the sweep
    from headstart.report.html import render

    assert "Learning-rate sweep: sweep / head" in render(result.folder)


def test_the_command_line_sweeps_and_refuses_bad_input_in_one_line(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(_spec(tmp_path / "cli", TWO_STAGES)))
    runner = CliRunner()
    unknown = runner.invoke(app, ["lr-find", str(file), "--stage", "tune"])
    assert unknown.exit_code == 2 and "Traceback" not in unknown.output
    assert "no stage named 'tune'; its stages are head, fine-tune" in unknown.output
    missing = runner.invoke(app, ["lr-find", str(tmp_path / "absent.yaml"), "--stage", "head"])
    assert missing.exit_code == 2 and "no such run file" in missing.output
    done = runner.invoke(app, ["lr-find", str(file), "--stage", "head", "--steps", "30"])
    assert done.exit_code == 0, done.output
    assert "suggested learning rate" in done.output and (tmp_path / "lr-find-sweep-head.png").is_file()
    assert not (tmp_path / "cli").exists()
