"""ImageSet behaviour and from_arrays: layouts, value types, labels, channels and resizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.data import ImageSet, from_arrays
from headstart.data.dataset import convert_channels, resize_tensor
from headstart.errors import HeadstartError


def grey_ramp(count=6, height=4, width=5):
    """uint8 NHW images whose pixel value encodes (image, row, column)."""
    values = np.arange(count * height * width).reshape(count, height, width) % 256
    return values.astype(np.uint8)


def test_nhw_uint8_scaled_to_unit_range():
    images = grey_ramp()
    data = from_arrays(images, np.arange(6) % 3)
    image, label = data[4]
    assert image.shape == (1, 4, 5) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.from_numpy(images[4] / 255.0).float())
    assert label == 1 and isinstance(label, int)
    assert data.class_names == ["0", "1", "2"] and data.channels == 1 and data.name == "arrays"


def test_nhwc_and_nchw_give_the_same_images():
    rng = np.random.default_rng(0)
    nhwc = rng.random((3, 6, 5, 3)).astype(np.float32)
    from_last = from_arrays(nhwc, None)
    from_first = from_arrays(nhwc.transpose(0, 3, 1, 2), None)
    first, _ = from_last.as_tensors()
    second, _ = from_first.as_tensors()
    assert first.shape == (3, 3, 6, 5)
    assert torch.equal(first, second)
    assert torch.equal(first[1, :, 2, 4], torch.from_numpy(nhwc[1, 2, 4]))


def test_ambiguous_layout_needs_a_choice():
    images = np.zeros((2, 3, 8, 3), dtype=np.uint8)
    with pytest.raises(HeadstartError, match=r"\(2, 3, 8, 3\).*layout='NHWC'"):
        from_arrays(images, None)
    assert from_arrays(images, None, layout="NHWC").image_size() == (3, 8)
    assert from_arrays(images, None, layout="NCHW").image_size() == (8, 3)


@pytest.mark.parametrize(
    ("images", "pattern"),
    [
        (np.linspace(0.0, 2.0, 32).reshape(2, 4, 4), r"span 0\.\.2; expected 0\.\.1"),
        (np.full((2, 4, 4), 200.0), r"divide 0\.\.255 pixels by 255"),
        (np.full((2, 4, 4), np.nan), "NaN"),
        (np.full((2, 4, 4), 300, dtype=np.int32), r"300\.\.300; expected 0\.\.255"),
        (np.zeros((2, 4, 4, 4), dtype=np.uint8), "no channel axis of size 1 or 3"),
        (np.zeros((2, 4), dtype=np.uint8), "3 or 4 dimensions"),
    ],
)
def test_bad_pixels_are_refused(images, pattern):
    with pytest.raises(HeadstartError, match=pattern):
        from_arrays(images, None)


def test_string_labels_become_sorted_classes():
    data = from_arrays(grey_ramp(4), np.array(["dog", "cat", "dog", "emu"]))
    assert data.class_names == ["cat", "dog", "emu"]
    assert data.labels.tolist() == [1, 0, 1, 2]


def test_labels_must_match_image_count():
    with pytest.raises(HeadstartError, match=r"labels of shape \(5,\) for 6 images"):
        from_arrays(grey_ramp(6), np.zeros(5, dtype=int))


def test_labels_below_minus_one_refused():
    with pytest.raises(HeadstartError, match="label -2 is negative"):
        from_arrays(grey_ramp(3), np.array([0, -2, 1]))


def test_unlabelled_arrays():
    data = from_arrays(grey_ramp(3), None)
    assert data.labels.tolist() == [-1, -1, -1] and data.class_names == []


def test_subset_shares_store_and_keeps_positions():
    data = from_arrays(grey_ramp(6), np.arange(6) % 2, class_names=["even", "odd"])
    part = data.subset([5, 1, 2], name="part")
    assert part.store is data.store and part.name == "part"
    assert part.positions.tolist() == [5, 1, 2] and part.labels.tolist() == [1, 1, 0]
    assert torch.equal(part[0][0], data[5][0])
    nested = part.subset(np.array([False, True, True]))
    assert nested.positions.tolist() == [1, 2]
    with pytest.raises(HeadstartError, match="outside 0..2"):
        part.subset([3])


def test_without_labels_hides_every_label():
    data = from_arrays(grey_ramp(4), np.array([0, 1, 0, 1]))
    hidden = data.without_labels()
    assert hidden.labels.tolist() == [-1] * 4
    assert hidden.class_names == data.class_names and hidden.positions.tolist() == [0, 1, 2, 3]
    assert data.labels.tolist() == [0, 1, 0, 1]  # the original keeps its labels


def test_index_out_of_range_raises_index_error():
    data = from_arrays(grey_ramp(2), None)
    with pytest.raises(IndexError):
        data[2]
    assert torch.equal(data[-1][0], data[1][0])


def test_empty_set_stacks_to_zero_images():
    empty = from_arrays(grey_ramp(3), None).subset([])
    images, labels = empty.as_tensors()
    assert images.shape == (0, 1, 4, 5) and labels.shape == (0,)


def test_channel_conversion_replicates_and_uses_luminance():
    red = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    red[..., 0] = 255
    grey = from_arrays(red, None, channels=1)
    assert grey.channels == 1
    assert torch.allclose(grey[0][0], torch.full((1, 2, 2), 0.299))
    colour = from_arrays(grey_ramp(1), None, channels=3)
    image = colour[0][0]
    assert image.shape[0] == 3 and torch.equal(image[0], image[2])


def test_crop_resize_keeps_the_centre():
    """An 8×16 image, white but for black 2-pixel side bands: the centre crop sees only white."""
    images = np.zeros((1, 8, 16), dtype=np.uint8)
    images[:, :, 2:14] = 255
    cropped = from_arrays(images, None, image_size=4, resize="crop")[0][0]
    stretched = from_arrays(images, None, image_size=4, resize="stretch")[0][0]
    assert cropped.shape == stretched.shape == (1, 4, 4)
    assert torch.allclose(cropped, torch.ones(1, 4, 4))
    assert float(stretched.min()) < 0.7  # stretching keeps the black sides in view


def test_resize_tensor_refuses_unknown_policy():
    with pytest.raises(HeadstartError, match="'squash'"):
        resize_tensor(torch.zeros(1, 1, 4, 4), 2, "squash")


def test_convert_channels_refuses_four():
    with pytest.raises(HeadstartError, match="4 channels"):
        convert_channels(torch.zeros(1, 4, 2, 2), 3)


def test_image_set_works_with_a_data_loader():
    data = from_arrays(grey_ramp(6), np.arange(6) % 2)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    batch, labels = next(iter(loader))
    assert batch.shape == (4, 1, 4, 5) and labels.tolist() == [0, 1, 0, 1]


def test_class_counts_include_empty_classes():
    data = from_arrays(grey_ramp(3), np.array([0, 0, 2]), class_names=["a", "b", "c"])
    assert data.class_counts() == {"a": 2, "b": 0, "c": 1}
    assert isinstance(data, ImageSet) and "images=3" in repr(data)
