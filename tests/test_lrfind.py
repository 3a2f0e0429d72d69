"""The learning-rate finder of a stage: the valley rule on the smoothed sweep, run folder untouched,
lr: find in a run."""

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
from headstart.errors import HeadstartError
from headstart.lrfind import LRSweep, smooth, suggest, valley
from headstart.stage import StageRecord, lr_find
from headstart.structure import find_learning_rate, run
from helpers import digit_data, digit_network, digit_run


def _spec(output: Path, stages: list[dict], **extra) -> dict:
    return digit_run(output, stages, labels_per_class=20, name="sweep", **extra)


TWO_STAGES = [
    {"name": "head", "freeze": ["backbone"], "epochs": 1, "batch_size": 32, "optimizer": {"lr": 0.01}},
    {"name": "fine-tune", "epochs": 1, "batch_size": 32, "steps_per_epoch": 2},
]


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _follows_the_valley_rule(sweep: LRSweep, *, falls: bool = False) -> None:
    """The sweep's curve is the bias-corrected smoothing of its step losses; the rule read it from
    the end of the first tenth of the planned steps to five points before its end (or to its first
    non-finite point); the suggestion is the rate at the index ``valley`` gives for that stretch.

    ``falls``: the curve really falls (a stage that trains the whole network), and the suggestion
    lies on the way down: at a rate no higher than that of the lowest smoothed loss (so below where
    the loss turns up and diverges), with a loss below the one the stretch starts at. (A head on
    frozen random features barely moves the loss: its curve is flat noise around log 10.)"""
    assert sweep.losses == pytest.approx(smooth(sweep.raw_losses))
    start, stop = sweep.window
    finite = [index for index, loss in enumerate(sweep.losses) if not math.isfinite(loss)]
    assert start == sweep.steps // 10 and stop == min([len(sweep.losses) - 5, *finite])
    offset, _ = valley(sweep.losses[start:stop])
    suggested = start + offset
    assert sweep.suggestion == sweep.learning_rates[suggested]
    if falls:
        lowest = min(range(start, stop), key=sweep.losses.__getitem__)
        assert suggested <= lowest and sweep.losses[suggested] < sweep.losses[start], (suggested, lowest, sweep.losses)


def test_valley_is_half_way_down_the_longest_fall():
    # flat at 5, a strict fall over 60 steps, then a climb: the valley is the fall (plus one flat point)
    losses = [5.0] * 5 + [4.9 - 0.06 * step for step in range(60)] + [1.5 + 0.2 * step for step in range(20)]
    index, length = valley(losses)
    assert length == 61 and index == (64 - 61) + 20 + 10
    rates = [1e-7 * 10 ** (8 * step / len(losses)) for step in range(len(losses))]
    rate, window = suggest(rates, losses, steps=len(losses))
    assert window == (len(losses) // 10, len(losses) - 5) == (8, 80)
    # inside the window the fall is steps 8..64 (57 points); counted from the point before it, as
    # fastai counts, the rule goes ⌊57/3⌋ + ⌊57/6⌋ = 28 steps down it: step 35, well above the bottom (64)
    assert valley(losses[8:80]) == (27, 57)
    assert rate == rates[35]
    # a non-finite loss ends the window there
    diverged = losses[:70] + [math.inf] * 15
    assert suggest(rates, diverged, steps=len(losses))[1] == (8, 70)
    # bias-corrected smoothing keeps a constant loss constant from the first step on
    assert smooth([2.3] * 5) == pytest.approx([2.3] * 5)
    with pytest.raises(HeadstartError, match="too early to suggest"):
        suggest(rates[:12], losses[:12], steps=100)


def test_a_stage_sweep_suggests_a_rate_inside_the_range_and_leaves_the_run_folder_unchanged(tmp_path):
    spec = parse_run(_spec(tmp_path / "run", TWO_STAGES))
    result = run(spec)
    before = _hashes(result.folder)
    sweep = find_learning_rate(spec, "fine-tune", steps=40)
    assert _hashes(result.folder) == before  # not a file added, removed or changed
    _follows_the_valley_rule(sweep, falls=True)
    # the rates grow exponentially from min_lr towards max_lr, one rate per step of the sweep
    assert sweep.learning_rates[0] == pytest.approx(sweep.min_lr) and sweep.learning_rates[-1] <= sweep.max_lr
    rates = sweep.learning_rates
    ratios = [later / earlier for earlier, later in zip(rates[1:], rates[2:], strict=False)]
    assert ratios == pytest.approx([(sweep.max_lr / sweep.min_lr) ** (1 / sweep.steps)] * len(ratios))
    assert len(sweep.losses) == len(sweep.raw_losses) == len(sweep.learning_rates)
    # the sweep trained the stage as fit_stage trains it: nothing frozen, BatchNorm training, not cached
    assert (sweep.frozen_parameters, sweep.bn_policy, sweep.cached_features) == (0, "train", False)
    png = sweep.plot(tmp_path / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_head_sweep_keeps_the_stage_freezing_and_the_caller_network():
    data = digit_data(20)
    network = digit_network()
    weights = {key: value.clone() for key, value in network.state_dict().items()}
    sweep = lr_find(network, {"name": "head", "freeze": ["backbone"], "batch_size": 16}, data, image_size=16, steps=30)
    # the stage's freezing and BatchNorm policy, features cached as fit_stage would
    assert sweep.bn_policy == "frozen" and sweep.cached_features
    backbone = [name for name, _ in network.named_parameters() if name.startswith("backbone.")]
    assert sweep.frozen_parameters == len(backbone)
    _follows_the_valley_rule(sweep)
    # the caller's network is as it was: same weights, no head put on it
    assert isinstance(network.head, torch.nn.Identity) and not network.frozen_parameter_names()
    for key, value in network.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_earlier_stages_must_have_run_or_run_in_a_temporary_folder(tmp_path):
    spec = parse_run(_spec(tmp_path / "fresh", TWO_STAGES))
    with pytest.raises(HeadstartError, match="earlier stage\\(s\\) head, not finished"):
        find_learning_rate(spec, "fine-tune", steps=30)
    sweep = find_learning_rate(spec, "fine-tune", steps=30, run_earlier=True)
    _follows_the_valley_rule(sweep, falls=True)
    assert not (tmp_path / "fresh").exists()  # the earlier stage trained in a temporary folder


def test_lr_find_in_a_run_file_sweeps_records_and_trains_with_the_suggestion(tmp_path):
    stages = [{"name": "head", "freeze": ["backbone"], "epochs": 2, "batch_size": 32, "optimizer": {"lr": "find"}}]
    result = run(parse_run(_spec(tmp_path / "find", stages)))
    folder = result.folder / "0-head"
    record = StageRecord.read(folder)
    assert record.stage.optimizer.lr == "find" and record.lr_find is not None
    suggestion = record.lr_find.suggestion
    _follows_the_valley_rule(record.lr_find)
    assert len(record.lr_find.losses) > 20
    # constant schedule: every planned step trained at the suggested rate
    assert record.learning_rates == pytest.approx([suggestion] * record.steps)
    assert (folder / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert LRSweep.model_validate(json.loads((folder / "lr_find.json").read_text())) == record.lr_find
    assert result.test["accuracy"] > 0.2  # chance is 0.1: the head learnt at the suggested rate
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


def test_a_sweep_on_the_cpu_trains_as_the_stage_would_and_gives_the_network_back_plain():
    """Channels-last order and one-pixel convolutions as matrix products during the sweep, as in the
    stage's fit; afterwards plain ``Conv2d`` modules with contiguous weights."""
    from headstart.engine.accelerate import OnePixelConv2d

    network = digit_network()
    convolutions = [module for module in network.modules() if isinstance(module, torch.nn.Conv2d)]
    seen: list[tuple[bool, bool]] = []

    def record(module, args) -> None:
        seen.append(
            (isinstance(module, OnePixelConv2d), module.weight.is_contiguous(memory_format=torch.channels_last))
        )

    hook = convolutions[0].register_forward_pre_hook(record)
    lr_find(network, {"name": "task", "batch_size": 16}, digit_data(20), image_size=16, steps=20)
    hook.remove()
    assert seen and all(swapped and channels_last for swapped, channels_last in seen), seen
    assert not any(isinstance(module, OnePixelConv2d) for module in network.modules())
    assert all(parameter.is_contiguous() for parameter in network.parameters())
