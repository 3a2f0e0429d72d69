"""Context prediction: patches come from where the layout and the label say; colour dropping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext import SimpleEncoder
from headstart.pretext.context import GRID_CELLS, NEIGHBOURS, ContextTask


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("jitter_fraction", [0.0, 7 / 96])
def test_patches_are_the_crops_at_the_layout_positions_and_the_label_gives_the_offset(jitter_fraction):
    task = pretext.get("context", color_dropping=False, jitter_fraction=jitter_fraction)
    images = torch.rand(40, 3, 120, 128)
    patch, gap, jitter = task.geometry((120, 128))
    pairs, labels = task.alter(images, generator(5))
    where = task.layout(40, (120, 128), generator(5), images.device)
    assert torch.equal(where.labels, labels)
    assert pairs.shape == (40, 2, 3, patch, patch)
    step = patch + gap
    for b in range(40):
        for slot, (top, left) in enumerate(
            [(where.base_top[b], where.base_left[b]), (where.neighbour_top[b], where.neighbour_left[b])]
        ):
            assert 0 <= top and top + patch <= 120 and 0 <= left and left + patch <= 128
            assert torch.equal(pairs[b, slot], images[b, :, top : top + patch, left : left + patch])
        row, column = GRID_CELLS[labels[b]]
        offset_down = int(where.neighbour_top[b] - where.base_top[b]) - (row - 1) * step
        offset_right = int(where.neighbour_left[b] - where.base_left[b]) - (column - 1) * step
        assert abs(offset_down) <= 2 * jitter and abs(offset_right) <= 2 * jitter
    assert set(labels.tolist()) == set(range(8))


def test_positions_follow_the_labels_on_an_image_that_encodes_position():
    """Without jitter, the neighbour's first pixel says where it is relative to the base patch."""
    task = pretext.get("context", color_dropping=False, jitter_fraction=0.0)
    height = width = 64
    rows = torch.arange(height, dtype=torch.float32).view(-1, 1).expand(height, width)
    columns = torch.arange(width, dtype=torch.float32).view(1, -1).expand(height, width)
    images = torch.stack([rows, columns, torch.zeros(height, width)])[None].repeat(16, 1, 1, 1)
    pairs, labels = task.alter(images, generator())
    patch, gap, _ = task.geometry((height, width))
    moved_down = pairs[:, 1, 0, 0, 0] - pairs[:, 0, 0, 0, 0]
    moved_right = pairs[:, 1, 1, 0, 0] - pairs[:, 0, 1, 0, 0]
    for b, label in enumerate(labels.tolist()):
        name = NEIGHBOURS[label]
        expected_down = -(patch + gap) if "top" in name else (patch + gap) if "bottom" in name else 0
        expected_right = -(patch + gap) if "left" in name else (patch + gap) if "right" in name else 0
        assert (moved_down[b], moved_right[b]) == (expected_down, expected_right)


def test_geometry_scales_the_paper_sizes():
    task = ContextTask()
    assert task.geometry((224, 224)) == (54, 27, 3)  # 96/48/7 in the paper, scaled to 224 px
    assert task.input_size((224, 300)) == (54, 54)
    with pytest.raises(HeadstartError, match="does not fit"):
        ContextTask(patch_size=40).geometry((100, 100))


def test_colour_dropping_keeps_one_channel_and_fills_the_others_with_faint_noise():
    task = pretext.get("context")
    images = torch.rand(30, 3, 64, 64)
    dropped, labels = task.alter(images, generator(2))
    kept, same_labels = pretext.get("context", color_dropping=False).alter(images, generator(2))
    assert torch.equal(labels, same_labels)
    equal = (dropped == kept).flatten(-2).all(-1)  # [B, 2, 3]: which channels survived
    assert torch.all(equal.sum(-1) == 1)
    assert len(set(equal.float().argmax(-1).flatten().tolist())) == 3
    noise = dropped.masked_select(~equal[..., None, None].expand_as(dropped)).view(30, 2, 2, -1)
    kept_channel = kept.masked_select(equal[..., None, None].expand_as(kept)).view(30, 2, 1, -1)
    ratio = noise.std(-1) / kept_channel.std(-1)
    assert torch.allclose(ratio, torch.full_like(ratio, 0.01), rtol=0.3)


def test_grey_images_skip_colour_dropping():
    inputs, _ = pretext.get("context").alter(torch.rand(3, 1, 40, 40), generator())
    assert inputs.shape[:3] == (3, 2, 1)


def test_branches_share_the_encoder_and_the_head_sees_both_feature_vectors():
    task = pretext.get("context", hidden_features=8)
    encoder = SimpleEncoder(nn.Conv2d(3, 4, 3), 4, 4)
    head = task.build_head(encoder, (40, 40))
    pairs, _ = task.alter(torch.rand(5, 3, 40, 40), generator())
    expected = head.layers(torch.cat([encoder.pooled(pairs[:, 0]), encoder.pooled(pairs[:, 1])], dim=1))
    assert torch.allclose(task.forward(encoder, head, pairs), expected, atol=1e-6)
    assert task.decode(torch.eye(8)) == [f"patch={name}" for name in NEIGHBOURS]
    assert NEIGHBOURS[0] == "top-left" and NEIGHBOURS[-1] == "bottom-right"
