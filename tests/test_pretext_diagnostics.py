"""Diagnostics: too-easy and too-hard tasks, and the chromatic-aberration shortcut check."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext import SimpleEncoder
from headstart.pretext.context import GRID_CELLS
from headstart.pretext.diagnostics import collapse, context_shortcut_check, diagnose, embedding_spread


def test_rotation_solved_in_the_first_epoch_is_too_easy():
    warnings = diagnose([{"accuracy": 0.99}, {"accuracy": 1.0}], pretext.get("rotation"))
    assert len(warnings) == 1 and warnings[0].startswith("too easy: likely a shortcut")


def test_rotation_stuck_near_a_quarter_is_too_hard():
    warnings = diagnose([{"val_accuracy": 0.25}, {"val_accuracy": 0.31}], pretext.get("rotation"))
    assert len(warnings) == 1 and warnings[0].startswith("too hard: stuck at chance")


def test_a_healthy_history_gives_no_warning():
    history = [{"accuracy": 0.45, "loss": 1.2}, {"accuracy": 0.7, "loss": 0.8}, {"accuracy": 0.85, "loss": 0.4}]
    assert diagnose(history, pretext.get("rotation")) == []
    assert diagnose([{"mae": 0.09}, {"mae": 0.04}], pretext.get("noise_level")) == []


def test_regression_errors_against_range_and_chance():
    task = pretext.get("noise_level")  # range 0.5, chance mae 0.125
    assert diagnose([{"mae": 0.009}], task)[0].startswith("too easy")
    assert diagnose([{"mae": 0.13}, {"mae": 0.12}], task)[0].startswith("too hard")


def test_reconstruction_that_does_not_improve_is_flagged():
    task = pretext.get("colorization")
    assert diagnose([{"mse": 0.05}, {"mse": 0.049}], task)[0].startswith("too hard")
    assert diagnose([{"mse": 0.05}, {"mse": 0.02}], task) == []


@pytest.mark.parametrize("name", ["simclr", "byol", "dino", "rotation"])
def test_an_exactly_constant_loss_is_not_learning(name):
    task = pretext.get(name)
    metric = "val_accuracy" if name == "rotation" else "val_loss"
    # SimCLR on batches of one image: NT-Xent is exactly 0 in training; validation (larger batches) still moves
    history = [{"train_loss": 0.0, metric: 0.5}, {"train_loss": 0.0, metric: 0.45}, {"train_loss": 0.0, metric: 0.4}]
    warnings = diagnose(history, task)
    assert sum("not learning" in line for line in warnings) == 1, warnings
    assert f"{name} train_loss stayed exactly 0.0000 for all 3 epochs" in warnings[0]
    assert any("stayed exactly 5.0000" in line for line in diagnose([{"val_loss": 5.0}] * 2, pretext.get("simclr")))
    moving = [{"train_loss": 0.0, metric: 0.5}, {"train_loss": 1e-7, metric: 0.45}]
    assert not any("stayed exactly" in line for line in diagnose(moving, task))
    assert not any("stayed exactly" in line for line in diagnose(history[:1], task))  # one epoch: nothing to compare


def test_embedding_spread_is_about_one_for_spread_outputs_and_zero_for_collapsed_ones():
    """SimSiam's measure (Chen & He 2021, fig. 2): std of the ℓ2-normalised outputs per dimension × √d."""
    torch.manual_seed(0)
    spread = embedding_spread(torch.randn(2048, 64))
    collapsed = embedding_spread(torch.ones(2048, 64) + 1e-3 * torch.randn(2048, 64))
    assert 0.95 < spread < 1.05 and collapsed < 0.01, (spread, collapsed)
    half = embedding_spread(torch.cat([torch.randn(2048, 32), 5 * torch.ones(2048, 32)], dim=1))
    assert collapsed < half < spread  # a partly collapsed output lies between


@pytest.mark.parametrize(
    "name, metrics, expected",
    [
        ("simclr", {"val_embedding_spread": 0.03}, "all point the same way"),
        ("byol", {"val_embedding_spread": 0.8}, None),
        ("dino", {"val_teacher_entropy": 0.01}, "one prototype"),
        ("dino", {"val_teacher_entropy": 0.999 * math.log(pretext.get("dino").output_dim)}, "uniform"),
        ("dino", {"val_teacher_entropy": 2.0}, None),
    ],
)
def test_one_epochs_metrics_say_whether_a_joint_embedding_task_collapsed(name, metrics, expected):
    line = collapse(metrics, pretext.get(name))
    assert (line is None) if expected is None else (expected in line), line
    if expected is not None:  # the whole-stage diagnosis says the same of its last epoch
        history = [{"epoch": 0, "train_loss": 2.0, "val_loss": 1.9, **metrics}]
        metric = pretext.get(name).metric
        history[0].setdefault(f"val_{metric}", 0.5)
        assert any(expected in warning for warning in diagnose(history, pretext.get(name)))


def test_the_collapse_watch_warns_once_when_two_epochs_in_a_row_show_it(caplog):
    from headstart.engine.callbacks import EpochHistory
    from headstart.stage.fit import CollapseWatch

    history = EpochHistory()
    watch = CollapseWatch("simclr", pretext.get("simclr"), history)
    trainer = SimpleNamespace(current_epoch=0, max_epochs=30)
    for epoch, spread in enumerate([0.9, 0.05, 0.6, 0.04, 0.03, 0.02]):
        history.epochs.append({"epoch": epoch, "val_embedding_spread": spread})
        trainer.current_epoch = epoch
        with caplog.at_level(logging.WARNING):
            watch.on_train_epoch_end(trainer, None)
    assert len(watch.warnings) == 1 and watch.warnings[0].startswith("stage 'simclr', epoch 5 of 30: collapsed")
    assert sum("collapsed" in record.getMessage() for record in caplog.records) == 1


def test_missing_metric_or_empty_history_is_an_error():
    with pytest.raises(HeadstartError, match="'accuracy'"):
        diagnose([{"loss": 1.0}], pretext.get("rotation"))
    with pytest.raises(HeadstartError, match="empty"):
        diagnose([], pretext.get("rotation"))


def neighbour_offsets(step: int) -> torch.Tensor:
    """``[8, 2]`` (down, right) pixel offsets of the neighbour for each label."""
    return (torch.tensor(GRID_CELLS, dtype=torch.float32) - 1) * step


class ColourReader(nn.Module):
    """A hand-made context head that reads position from colour: red = row, green = column."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.expected = neighbour_offsets(step)

    def forward(self, features):  # [B, 2, 3] per-channel means of base and neighbour
        down_right = (features[:, 1] - features[:, 0])[:, :2]
        return -((down_right[:, None, :] - self.expected[None]) ** 2).sum(-1)


class BrightnessReader(nn.Module):
    """A hand-made context head that reads position from grey brightness = row + 4 × column."""

    def __init__(self, step: int) -> None:
        super().__init__()
        offsets = neighbour_offsets(step)
        self.expected = offsets[:, 0] + 4 * offsets[:, 1]

    def forward(self, features):
        difference = (features[:, 1] - features[:, 0]).mean(dim=1)
        return -((difference[:, None] - self.expected[None]) ** 2)


def channel_means() -> SimpleEncoder:
    return SimpleEncoder(nn.Identity(), 3, 3)


def position_images(red, green, blue, size=64):
    """64 identical images whose channels are functions of (rows, columns)."""
    rows = torch.arange(size, dtype=torch.float32).view(-1, 1).expand(size, size)
    columns = torch.arange(size, dtype=torch.float32).view(1, -1).expand(size, size)
    planes = [plane(rows, columns) for plane in (red, green, blue)]
    return torch.stack(planes)[None].repeat(64, 1, 1, 1)


def test_a_network_reading_colour_fringes_is_caught():
    """Position written in colour is lost when two of the three channels are dropped."""
    task = pretext.get("context")
    patch, gap, _ = task.geometry((64, 64))
    images = position_images(lambda rows, columns: rows, lambda rows, columns: columns, lambda rows, columns: 0 * rows)
    result = context_shortcut_check(
        channel_means(), ColourReader(patch + gap), images, task, torch.Generator().manual_seed(0)
    )
    assert result["accuracy_color_kept"] > 0.9
    assert result["accuracy_color_dropped"] < 0.6
    assert result["shortcut_suspected"] is True


def test_a_network_reading_grey_structure_is_cleared():
    """Position written in brightness, alike in every channel, survives colour dropping."""
    task = pretext.get("context")
    patch, gap, _ = task.geometry((64, 64))
    brightness = lambda rows, columns: rows + 4 * columns  # noqa: E731
    images = position_images(brightness, brightness, brightness)
    result = context_shortcut_check(
        channel_means(), BrightnessReader(patch + gap), images, task, torch.Generator().manual_seed(0)
    )
    assert result["accuracy_color_kept"] > 0.9
    assert abs(result["gap"]) < 0.05 and result["shortcut_suspected"] is False


def test_shortcut_check_needs_the_context_task_and_colour():
    with pytest.raises(HeadstartError, match="context"):
        context_shortcut_check(
            channel_means(), nn.Identity(), torch.rand(2, 3, 8, 8), pretext.get("rotation"), torch.Generator()
        )
    with pytest.raises(HeadstartError, match="RGB"):
        context_shortcut_check(
            channel_means(), nn.Identity(), torch.rand(2, 1, 64, 64), pretext.get("context"), torch.Generator()
        )
