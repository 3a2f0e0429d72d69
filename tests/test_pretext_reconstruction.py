"""Colourisation and masked patches: inputs, targets and the decoder head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext import SimpleEncoder
from headstart.pretext.colorization import luminance
from headstart.pretext.decoder import Decoder, stages_for
from headstart.pretext.masked_patches import random_patch_mask


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_colorization_input_is_replicated_luminance_and_target_is_the_image():
    task = pretext.get("colorization")
    images = torch.rand(4, 3, 8, 8)
    inputs, targets = task.alter(images, generator())
    assert torch.equal(targets, images)
    assert torch.equal(inputs[:, 0], inputs[:, 1]) and torch.equal(inputs[:, 1], inputs[:, 2])
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    assert torch.allclose(inputs[:, 0], expected, atol=1e-6)
    assert torch.allclose(luminance(images)[:, 0], expected, atol=1e-6)


def test_colorization_refuses_grey_data():
    with pytest.raises(HeadstartError, match="no colour to rebuild"):
        pretext.get("colorization").alter(torch.rand(2, 1, 8, 8), generator())


def test_masked_targets_hold_the_original_and_the_mask():
    task = pretext.get("masked_patches", patch_size=4, mask_ratio=0.5)
    images = torch.rand(6, 3, 16, 16)
    inputs, targets = task.alter(images, generator())
    original, mask = task.split_targets(targets)
    assert torch.equal(original, images)
    hidden = mask.expand_as(images).bool()
    assert torch.equal(inputs[~hidden], images[~hidden])
    assert torch.all(inputs[hidden] == 0.5)
    assert torch.all(mask.mean(dim=(1, 2, 3)) == 0.5)  # 8 of 16 patches in every image
    blocks = mask.unfold(2, 4, 4).unfold(3, 4, 4)  # each 4x4 patch is all hidden or all visible
    assert torch.all(blocks.amin(dim=(-2, -1)) == blocks.amax(dim=(-2, -1)))


def test_masked_loss_counts_hidden_pixels_only():
    task = pretext.get("masked_patches", patch_size=4)
    images = torch.rand(3, 3, 12, 12)
    _, targets = task.alter(images, generator())
    original, mask = task.split_targets(targets)
    perfect_where_hidden = torch.where(mask.bool(), original, 1 - original)
    assert task.loss(perfect_where_hidden, targets) == 0
    wrong_where_hidden = torch.where(mask.bool(), original + 0.1, original)
    assert task.loss(wrong_where_hidden, targets).item() == pytest.approx(0.01, rel=1e-4)
    assert task.metrics(wrong_where_hidden, targets)["psnr"] == pytest.approx(20.0, rel=1e-4)


def test_mask_grid_covers_sizes_that_are_not_multiples_of_the_patch():
    mask = random_patch_mask(2, (10, 13), 4, 0.25, generator(), "cpu")
    assert mask.shape == (2, 1, 10, 13)  # a 3 x 4 grid, edge patches cut
    assert torch.all(mask[:, :, :8, :12].reshape(2, -1).sum(1) % 16 == 0)


@pytest.mark.parametrize("feature_size, image_size", [((1, 1), (32, 32)), ((4, 5), (30, 40)), ((7, 7), (224, 224))])
def test_decoder_reaches_the_image_size_from_any_feature_map(feature_size, image_size):
    decoder = Decoder(8, 3, stages=stages_for(SimpleEncoder(nn.Identity(), 8, 8), image_size), width=16)
    output = decoder(torch.rand(2, 8, *feature_size), image_size)
    assert output.shape == (2, 3, *image_size)
    assert not torch.allclose(output[0], output[1])  # two feature maps, two images: the decoder reads its input


def test_decoder_stages_follow_the_encoder_stride():
    assert stages_for(SimpleEncoder(nn.Identity(), 1, 1, reduction=4), (64, 64)) == 2
    assert stages_for(SimpleEncoder(nn.Identity(), 1, 1, reduction=32), (224, 224)) == 5
    assert stages_for(SimpleEncoder(nn.Identity(), 1, 1), (224, 224)) == 5  # unknown: assume 32
    assert stages_for(SimpleEncoder(nn.Identity(), 1, 1, reduction=32), (8, 8)) == 3


def test_masked_patches_on_grey_images_reconstruct_one_channel():
    task = pretext.get("masked_patches", patch_size=4)
    encoder = SimpleEncoder(nn.Conv2d(1, 4, 3, stride=2, padding=1), 4, 4, reduction=2)
    inputs, targets = task.alter(torch.rand(2, 1, 8, 8), generator())
    outputs = task.forward(encoder, task.build_head(encoder, (8, 8)), inputs)
    assert outputs.shape == (2, 1, 8, 8) and targets.shape == (2, 2, 8, 8)
