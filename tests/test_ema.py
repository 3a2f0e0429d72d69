"""A stage that ends with the exponential moving average of its weights (``ema``): the average the
FixMatch paper evaluates, kept in the checkpoint so a resumed stage ends the same, and refused
beside early stopping's best weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from headstart.config import StageSpec, parse_run
from headstart.data import TaskData
from headstart.errors import HeadstartError
from headstart.stage import fit_stage
from headstart.zoo import load
from helpers import digit_run


def _network():
    torch.manual_seed(0)
    return load("test_resnet", weights=None, include_top=False, in_chans=1)


def _stage(**extra) -> StageSpec:
    return StageSpec(
        name="task", epochs=2, steps_per_epoch=6, batch_size=16, augment="crop", optimizer={"lr": 1e-2}, **extra
    )


def _weights(folder) -> dict[str, torch.Tensor]:
    return {key: value for key, value in load_file(folder / "weights.safetensors").items() if value.is_floating_point()}


def _distance(a: dict, b: dict) -> float:
    return sum(float((a[key] - b[key]).norm()) for key in a if key.endswith("weight") and "bn" not in key)


@pytest.fixture(scope="module")
def digits() -> TaskData:
    return TaskData.load({"kind": "digits"}, {"labels_per_class": 20, "seed": 0})


def test_the_stage_ends_with_the_average_not_the_last_step(tmp_path, digits):
    start = {key: value.clone() for key, value in _network().state_dict().items() if value.is_floating_point()}
    plain = fit_stage(_network(), _stage(), digits, folder=tmp_path / "plain", image_size=16)
    fit_stage(_network(), _stage(ema=1e-9), digits, folder=tmp_path / "none", image_size=16)
    fit_stage(_network(), _stage(ema=0.99), digits, folder=tmp_path / "slow", image_size=16)
    last, instant, slow = _weights(tmp_path / "plain"), _weights(tmp_path / "none"), _weights(tmp_path / "slow")
    # a decay of ~0 keeps only the last step: the stage's own last weights
    assert all(torch.allclose(last[key], instant[key], atol=1e-5) for key in last)
    # twelve steps at 0.99 move the average about 11% of the way: it stays near the start
    moved, averaged = _distance(start, last), _distance(start, slow)
    assert 0.02 * moved < averaged < 0.3 * moved, (moved, averaged)
    assert plain.stage.ema is None


def test_an_interrupted_stage_with_an_average_resumes_to_the_same_weights(tmp_path, digits, interrupted_then_resumed):
    spec = _stage(ema=0.9)
    fit_stage(_network(), spec, digits, folder=tmp_path / "whole", image_size=16)
    interrupted_then_resumed(
        lambda folder, resume, callbacks: fit_stage(
            _network(), spec, digits, folder=folder, image_size=16, resume=resume, callbacks=callbacks
        ),
        tmp_path / "cut",
    )
    whole, cut = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(torch.equal(whole[key], cut[key]) for key in whole)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"ema": 1.0}, "ema"),
        ({"ema": 0.999, "early_stopping": {"patience": 2}}, "keep one"),
    ],
)
def test_bad_averages_are_refused_naming_the_key(tmp_path, extra, message):
    with pytest.raises(HeadstartError, match=message):
        parse_run(digit_run(tmp_path, [{"name": "task", **extra}]), "run.yaml")


def test_a_stage_without_an_average_keeps_its_config_hash(tmp_path):
    with_default = parse_run(digit_run(tmp_path, [{"name": "task"}]), "run.yaml")
    assert "ema" not in with_default.results_payload()["stages"][0]
    averaged = parse_run(digit_run(tmp_path, [{"name": "task", "ema": 0.99}]), "run.yaml")
    assert averaged.config_hash() != with_default.config_hash()
