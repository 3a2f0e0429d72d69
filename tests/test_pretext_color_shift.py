"""Brightness and hue shift: the targets rebuild the altered image; YIQ hue rotation behaves."""

from __future__ import annotations

import pytest
import torch

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext import SimpleEncoder
from headstart.pretext.color_shift import hue_rotation
from headstart.pretext.colorization import luminance


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_targets_rebuild_the_altered_image():
    task = pretext.get("color_shift")
    images = 0.3 + 0.4 * torch.rand(12, 3, 8, 8)
    inputs, targets = task.alter(images, generator())
    brightness, hue = targets[:, 0], targets[:, 1]
    assert brightness.abs().max() <= 0.2 and hue.abs().max() <= 0.1
    rebuilt = (hue_rotation(images, hue) + brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    assert torch.allclose(inputs, rebuilt, atol=1e-6)


def test_hue_rotation_keeps_luminance_and_undoes_itself():
    images = torch.rand(5, 3, 6, 6)
    turns = torch.tensor([0.0, 0.1, -0.25, 0.5, 1.0])
    rotated = hue_rotation(images, turns)
    assert torch.allclose(luminance(rotated), luminance(images), atol=1e-5)
    assert torch.allclose(hue_rotation(rotated, -turns), images, atol=1e-5)
    assert torch.allclose(rotated[0], images[0], atol=1e-6) and torch.allclose(rotated[4], images[4], atol=1e-5)
    assert not torch.allclose(rotated[1], images[1], atol=1e-2)


def test_a_third_of_a_turn_moves_red_towards_green():
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    shifted = hue_rotation(red, torch.tensor([1 / 3]))[0, :, 0, 0]
    assert shifted.argmax() == 1


def test_grey_images_shift_brightness_only():
    task = pretext.get("color_shift")
    images = 0.3 + 0.4 * torch.rand(6, 1, 8, 8)
    inputs, targets = task.alter(images, generator())
    assert targets.shape == (6, 1)
    assert torch.allclose(inputs, images + targets.view(-1, 1, 1, 1), atol=1e-6)
    encoder = SimpleEncoder(torch.nn.Identity(), 1, 1)
    outputs = task.forward(encoder, task.build_head(encoder, (8, 8)), inputs)
    assert outputs.shape == (6, 1)
    assert set(task.metrics(outputs, targets)) == {"mae", "mae_brightness"}
    assert task.decode(torch.tensor([[0.123]])) == ["brightness=+0.12"]


def test_decode_and_chance_level_for_colour_images():
    task = pretext.get("color_shift")
    assert task.decode(torch.tensor([[0.12, -0.05]])) == ["brightness=+0.12 hue=-0.05"]
    assert task.chance_level() == pytest.approx({"mae": 0.075, "mae_brightness": 0.1, "mae_hue": 0.05})
    with pytest.raises(HeadstartError, match="maximum_hue"):
        pretext.get("color_shift", maximum_hue=0.7)


def test_hue_turns_the_same_way_as_torchvision_adjust_hue():
    """YIQ and HSV hue shifts differ in detail but must agree in direction."""
    import torchvision.transforms.functional as TF

    torch.manual_seed(0)
    images = 0.25 + 0.5 * torch.rand(4, 3, 16, 16)
    ours = hue_rotation(images, torch.full((4,), 0.05)) - images
    reference = TF.adjust_hue(images, 0.05) - images
    assert torch.nn.functional.cosine_similarity(ours.flatten(), reference.flatten(), dim=0) > 0.5
