"""Noise presence and noise level: labels match the noise actually added."""

from __future__ import annotations

import pytest
import torch

import headstart.pretext as pretext
from headstart.errors import HeadstartError


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_noise_presence_noises_exactly_a_random_half_and_leaves_the_rest_untouched():
    task = pretext.get("noise_presence")
    images = torch.full((20, 3, 16, 16), 0.5)
    inputs, labels = task.alter(images, generator())
    assert labels.sum() == 10
    clean = labels == 0
    assert torch.equal(inputs[clean], images[clean])
    residual = (inputs[~clean] - images[~clean]).std(dim=(1, 2, 3))
    assert torch.allclose(residual, torch.full_like(residual, task.noise_std), rtol=0.08)
    other = task.alter(images, generator(1))[1]
    assert not torch.equal(labels, other)


def test_noise_presence_decodes_clean_and_noisy_and_clips():
    task = pretext.get("noise_presence", noise_std=0.3)
    inputs, _ = task.alter(torch.rand(6, 1, 8, 8), generator())
    assert inputs.min() >= 0 and inputs.max() <= 1
    assert task.decode(torch.tensor([[2.0, -1.0], [0.0, 3.0]])) == ["clean", "noisy"]


def test_noise_level_target_is_the_std_of_the_added_noise():
    task = pretext.get("noise_level", clip=False)
    images = torch.rand(32, 3, 32, 32)
    inputs, sigma = task.alter(images, generator())
    assert sigma.shape == (32, 1) and sigma.min() >= 0 and sigma.max() <= 0.5
    empirical = (inputs - images).std(dim=(1, 2, 3))
    assert torch.allclose(empirical, sigma[:, 0], rtol=0.05, atol=0.003)


def test_noise_level_clips_by_default_and_spans_the_chapter_range():
    task = pretext.get("noise_level")
    inputs, sigma = task.alter(torch.rand(400, 1, 4, 4), generator())
    assert inputs.min() >= 0 and inputs.max() <= 1
    assert sigma.min() < 0.01 and sigma.max() > 0.49
    assert task.chance_level() == {"mae": 0.125}
    assert task.decode(torch.tensor([[0.2149], [0.003]])) == ["σ≈0.21", "σ≈0.00"]


def test_noise_options_are_checked():
    with pytest.raises(HeadstartError, match="maximum_std"):
        pretext.get("noise_level", minimum_std=0.6, maximum_std=0.5)
    with pytest.raises(HeadstartError, match="noise_std"):
        pretext.get("noise_presence", noise_std=0)
