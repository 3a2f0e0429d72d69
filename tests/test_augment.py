"""FixMatch's RandAugment pool against torchvision: every operation, applied to a whole batch with a
parameter per image, gives each image what ``torchvision.transforms.v2.functional`` gives it alone."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from headstart.engine.augment import STRONG_OPERATIONS, border_mean, strong_augment

BILINEAR = InterpolationMode.BILINEAR


def _affine(image, value, *, shear=(0.0, 0.0), translate=(0.0, 0.0)):
    return TF.affine(image, angle=0.0, translate=list(translate), scale=1.0, shear=list(shear), interpolation=BILINEAR)


def _reference(name: str, image: torch.Tensor, value: float) -> torch.Tensor:
    """torchvision's answer for one image ``[C, H, W]`` and the operation's parameter ``value``."""
    height, width = image.shape[-2:]
    degrees = math.degrees(math.atan(value))
    return {
        "identity": lambda: image,
        "autocontrast": lambda: TF.autocontrast(image),
        "equalize": lambda: TF.equalize(image),
        "brightness": lambda: TF.adjust_brightness(image, value),
        "colour": lambda: TF.adjust_saturation(image, value),
        "contrast": lambda: TF.adjust_contrast(image, value),
        "sharpness": lambda: TF.adjust_sharpness(image, value),
        "posterize": lambda: TF.posterize(image, int(value)),
        "solarize": lambda: TF.solarize(image, value),
        "rotate": lambda: TF.rotate(image, value, interpolation=BILINEAR),
        "shear_x": lambda: _affine(image, value, shear=(degrees, 0.0)),
        "shear_y": lambda: _affine(image, value, shear=(0.0, degrees)),
        "translate_x": lambda: _affine(image, value, translate=(value * width, 0.0)),
        "translate_y": lambda: _affine(image, value, translate=(0.0, value * height)),
    }[name]()


GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
GREY_WEIGHTS = ("colour", "contrast")  # torchvision's grey is 0.2989 R + 0.587 G + 0.114 B, BT.601's 0.299 R


def _batch(channels: int, height: int = 20, width: int = 28, count: int = 6, frame: bool = False) -> torch.Tensor:
    generator = torch.Generator().manual_seed(channels)
    images = torch.rand(count, channels, height, width, generator=generator)
    images[..., : height // 2, :] *= 0.6  # not uniform noise: equalize and autocontrast have work to do
    if frame:  # a black frame: the geometric operations fill with the border's mean, here torchvision's fill of 0
        images[..., :2, :] = images[..., -2:, :] = images[..., :, :2] = images[..., :, -2:] = 0.0
    return images


def test_the_pool_is_fixmatchs_table_12():
    assert sorted(STRONG_OPERATIONS) == sorted(
        [
            "identity",
            "autocontrast",
            "brightness",
            "colour",
            "contrast",
            "equalize",
            "posterize",
            "rotate",
            "sharpness",
            "shear_x",
            "shear_y",
            "solarize",
            "translate_x",
            "translate_y",
        ]
    )
    assert all(operation.__doc__ for operation in STRONG_OPERATIONS.values())


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(STRONG_OPERATIONS))
def test_each_operation_on_a_batch_equals_torchvision_image_by_image(name, channels):
    images = _batch(channels, frame=name in GEOMETRIC)
    operation = STRONG_OPERATIONS[name]
    magnitude = torch.linspace(0.05, 1.0, len(images))
    values = operation.value(magnitude, torch.Generator().manual_seed(1))
    out = operation.apply(images, values)
    tolerance = 2e-3 if name in GREY_WEIGHTS else 1e-5
    for index, image in enumerate(images):
        expected = _reference(name, image, float(values[index]))
        assert torch.allclose(out[index], expected, atol=tolerance), (
            name,
            index,
            float(values[index]),
            float((out[index] - expected).abs().max()),
        )
    if name not in ("identity",) and not (name == "colour" and channels == 1):
        assert not torch.equal(out, images), name


@pytest.mark.parametrize("name", sorted(STRONG_OPERATIONS))
def test_strong_augment_applies_each_operation_with_the_drawn_magnitudes(name):
    images = _batch(3, 24, 24, count=5, frame=name in GEOMETRIC)
    out = strong_augment(images, torch.Generator().manual_seed(7), ops=1, operations=(name,), cutout_fraction=0.0)
    generator = torch.Generator().manual_seed(7)  # the draws strong_augment makes, in its order
    torch.randint(0, 1, (5,), generator=generator)
    magnitude = torch.rand(5, generator=generator)
    values = STRONG_OPERATIONS[name].value(magnitude, generator)
    tolerance = 2e-3 if name in GREY_WEIGHTS else 1e-5
    for index, image in enumerate(images):
        assert torch.allclose(out[index], _reference(name, image, float(values[index])), atol=tolerance), name


def test_magnitudes_map_onto_fixmatchs_ranges():
    zero, one = torch.zeros(400), torch.ones(400)

    def values(name, magnitude):
        return STRONG_OPERATIONS[name].value(magnitude, torch.Generator().manual_seed(0))

    def levels(tensor):
        return sorted(set(tensor.tolist()))

    assert levels(values("rotate", one)) == pytest.approx([-30.0, 30.0])
    assert levels(values("shear_x", one)) == levels(values("translate_y", one)) == pytest.approx([-0.3, 0.3])
    assert levels(values("brightness", one)) == pytest.approx([0.1, 1.9])
    assert torch.equal(values("posterize", zero), torch.full((400,), 8.0))
    assert torch.equal(values("posterize", one), torch.full((400,), 4.0))
    assert torch.equal(values("solarize", torch.tensor([0.0, 0.25, 1.0])), torch.tensor([1.0, 0.75, 0.0]))
    assert torch.equal(values("contrast", zero), torch.ones(400))  # magnitude 0 leaves an image as it is


def test_geometric_operations_fill_the_corners_with_the_border_mean():
    # a flat grey image stays flat grey whatever the warp: the uncovered corners get the border's mean
    flat = torch.full((3, 3, 16, 16), 0.4)
    for name in GEOMETRIC:
        out = STRONG_OPERATIONS[name](flat, torch.ones(3), torch.Generator().manual_seed(0))
        assert torch.allclose(out, flat, atol=1e-6), name
    framed = torch.full((1, 1, 16, 16), 0.8)
    framed[..., 4:12, 4:12] = 0.2
    rotated = STRONG_OPERATIONS["rotate"].apply(framed, torch.tensor([30.0]))
    assert rotated[0, 0, 0, 0].item() == pytest.approx(float(border_mean(framed)))


def test_grey_images_stay_grey_under_every_operation():
    grey = _batch(1, 16, 16).repeat(1, 3, 1, 1)
    assert torch.allclose(STRONG_OPERATIONS["colour"](grey, torch.ones(6), torch.Generator()), grey, atol=1e-6)
    for name, operation in STRONG_OPERATIONS.items():
        out = operation(grey, torch.full((6,), 0.8), torch.Generator().manual_seed(0))
        assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6), name
