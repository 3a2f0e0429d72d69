"""Rotation labels are right by construction, and agree with the chapter's scipy rotation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext.rotation import RotationTask, rotate


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rotating_back_by_the_label_restores_the_image_exactly():
    task = pretext.get("rotation")
    images = torch.rand(16, 3, 12, 12)
    inputs, labels = task.alter(images, generator())
    angles = torch.tensor(task.angles)[labels]
    assert torch.equal(rotate(inputs, -angles), images)
    assert set(labels.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("angle", [90, 180, 270])
def test_quarter_turns_match_scipy_ndimage_rotate_of_listing_2_20(angle):
    image = np.random.default_rng(0).random((10, 10, 3)).astype(np.float32)
    expected = scipy.ndimage.rotate(image, angle)
    ours = rotate(torch.from_numpy(image).permute(2, 0, 1)[None], torch.tensor([float(angle)]))
    np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_resampled_angles_turn_the_same_way_as_quarter_turns():
    """A grid_sample rotation by 90° (forced through the resampling path) equals torch.rot90."""
    images = torch.rand(3, 3, 16, 16)
    nearly_quarter = rotate(images, torch.full((3,), 90.0 + 1e-4))
    assert torch.allclose(nearly_quarter, torch.rot90(images, 1, dims=(-2, -1)), atol=1e-3)


def test_forty_five_degrees_matches_scipy_bilinear_inside_the_image():
    image = np.random.default_rng(1).random((24, 24)).astype(np.float32)
    expected = scipy.ndimage.rotate(image, 45, reshape=False, order=1)
    ours = rotate(torch.from_numpy(image)[None, None], torch.tensor([45.0]))[0, 0].numpy()
    centre = np.s_[8:16, 8:16]
    np.testing.assert_allclose(ours[centre], expected[centre], atol=1e-4)


def test_eight_angles_mix_exact_and_resampled_rotations():
    task = pretext.get("rotation", angles=tuple(range(0, 360, 45)))
    assert task.num_outputs == 8
    images = torch.rand(32, 1, 16, 16)
    inputs, labels = task.alter(images, generator())
    for index in range(32):
        angle = task.angles[labels[index]]
        expected = rotate(images[index : index + 1], torch.tensor([angle]))
        assert torch.equal(inputs[index : index + 1], expected)
        if angle % 90 == 0:
            assert torch.equal(expected[0], torch.rot90(images[index], int(angle // 90), dims=(-2, -1)))
    logits = torch.nn.functional.one_hot(torch.arange(8), 8).float()
    assert task.decode(logits) == [f"rot={a}" for a in range(0, 360, 45)]


def test_all_rotations_feeds_every_rotation_of_every_image():
    task = pretext.get("rotation", all_rotations=True)
    images = torch.rand(5, 3, 8, 8)
    inputs, labels = task.alter(images, generator())
    assert inputs.shape == (20, 3, 8, 8)
    assert labels.tolist() == [k for k in range(4) for _ in range(5)]
    for k in range(4):
        assert torch.equal(inputs[5 * k : 5 * (k + 1)], torch.rot90(images, k, dims=(-2, -1)))


@pytest.mark.parametrize("angles, quarter", [((0, 180), False), ((90, 270), True)])
def test_two_angle_sets_of_the_paper(angles, quarter):
    task = pretext.get("rotation", angles=angles)
    images = torch.rand(10, 3, 8, 12)
    inputs, labels = task.alter(images, generator())
    assert labels.max() <= 1 and task.chance_level() == {"accuracy": 0.5}
    assert inputs.shape[-2:] == ((8, 8) if quarter else (8, 12)) == task.input_size((8, 12))


def test_non_square_images_are_centre_cropped_for_quarter_turns():
    task = RotationTask()
    images = torch.rand(4, 3, 10, 16)
    inputs, labels = task.alter(images, generator())
    assert inputs.shape == (4, 3, 10, 10)
    angles = torch.tensor(task.angles)[labels]
    assert torch.equal(rotate(inputs, -angles), images[..., 3:13])


def test_repeated_or_single_angles_are_refused():
    with pytest.raises(HeadstartError, match="repeat"):
        RotationTask(angles=(0, 360))
    with pytest.raises(HeadstartError, match="at least two"):
        RotationTask(angles=(90,))
