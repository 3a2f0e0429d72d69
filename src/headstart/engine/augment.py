"""Batched image augmentation on the training device: the stage's weak ``augment`` and a strong
RandAugment + Cutout for semi-supervised stages.

Every function takes a ``[B, C, H, W]`` batch of 0..1 floats and draws each random number from the
``torch.Generator`` it is given (on the images' device), with no Python loop over images: each
operation runs once on the sub-batch of images that drew it.

``strong_augment`` is FixMatch's strong branch (Sohn et al., NeurIPS 2020, §2.3 and appendix D):
RandAugment (Cubuk et al., 2020) with ``ops`` operations per image, each drawn uniformly from the
pool below with its own random magnitude (FixMatch's variant: a magnitude per image, no global
``M`` to tune), followed by Cutout (DeVries & Taylor 2017) of a square half the image's side. The
pool is FixMatch's (table 12) — identity, autocontrast, brightness, colour (saturation), contrast,
equalize, posterize, rotate (±30°), sharpness, shear x/y (±0.3), solarize, translate x/y (±30% of
the side). Autocontrast and equalize are torchvision's batched kernels
(``torchvision.transforms.v2.functional``: equalize bins 0..1 floats into 256 levels and builds
every image's histogram at once); the others are written here because each image has its own
magnitude, and each gives what the torchvision function of the same name gives that image with
its magnitude. Geometric operations fill the uncovered corners with the mean of the image's
border (black for digits on black, a neutral tone for photographs) instead of FixMatch's fixed
grey, so the fill itself is no cue; they interpolate bilinearly with that fill as the padding
(torchvision blends the fill in once more at the edge pixels). Flips are not in the pool: digits
and text must not be mirrored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from headstart.errors import HeadstartError
from headstart.imageops import convert_channels


def augment(images: Tensor, mode: str, generator: torch.Generator) -> Tensor:
    """Batched random augmentation on the device (a stage's ``augment`` option).

    ``crop``: a random crop after reflect-padding by 1/8 of the side (a shift of up to ±1/8);
    ``flip``: random horizontal flip; ``crop_flip``: both. Digits and text should not be flipped.
    """
    if mode == "none":
        return images
    batch, _, height, width = images.shape
    if mode in ("crop", "crop_flip"):
        pad = max(1, height // 8)
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=images.device)
        rows = offsets[:, 0, None] + torch.arange(height, device=images.device)
        cols = offsets[:, 1, None] + torch.arange(width, device=images.device)
        index = torch.arange(batch, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if mode == "crop":
        return images
    flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


# ------------------------------------------------------------------------------------------ helpers


def _per_image(values: Tensor) -> Tensor:
    return values.view(-1, 1, 1, 1)


def _signed(magnitude: Tensor, generator: torch.Generator) -> Tensor:
    """``magnitude`` with a random sign per image."""
    sign = torch.randint(0, 2, magnitude.shape, generator=generator, device=magnitude.device) * 2 - 1
    return magnitude * sign.to(magnitude.dtype)


def border_mean(images: Tensor) -> Tensor:
    """Mean of each image's outermost rows and columns, per channel: ``[B, C, 1, 1]``."""
    border = torch.cat([images[..., 0, :], images[..., -1, :], images[..., :, 0], images[..., :, -1]], dim=-1)
    return border.mean(dim=-1)[..., None, None]


def _grey(images: Tensor) -> Tensor:
    """BT.601 luminance ``[B, 1, H, W]`` (:func:`headstart.imageops.convert_channels`); grey images as they are."""
    return convert_channels(images, 1)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``ImageEnhance``: ``other + factor·(images − other)``, clipped to 0..1."""
    return (other + _per_image(factor) * (images - other)).clamp(0, 1)


def _affine(images: Tensor, linear: Tensor, shift: Tensor | None = None) -> Tensor:
    """Resample each image about its centre through its own map from output to input pixels,
    ``input = linear · output + shift`` (``linear`` ``[B, 2, 2]`` on (x, y) pixel offsets from the
    centre, ``shift`` ``[B, 2]`` in pixels); bilinear, corners filled with the image's border mean."""
    batch, _, height, width = images.shape
    half = images.new_tensor([width / 2.0, height / 2.0])
    # pixels → affine_grid's normalised coordinates (-1..1 across each side): scale the map by the side lengths
    matrix = images.new_zeros(batch, 2, 3)
    matrix[:, :, :2] = linear.to(images.dtype) * half[None, None, :] / half[None, :, None]
    if shift is not None:
        matrix[:, :, 2] = shift.to(images.dtype) / half
    fill = border_mean(images)
    grid = F.affine_grid(matrix, list(images.shape), align_corners=False)
    # zero padding of (images − fill) is a padding with fill
    warped = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + fill).clamp(0, 1)


def _identity_maps(values: Tensor) -> Tensor:
    return torch.eye(2, device=values.device, dtype=values.dtype).repeat(len(values), 1, 1)


# --------------------------------------------------------------------------------- the operations


class Operation:
    """One RandAugment operation: :attr:`value` turns a magnitude in 0..1 per image into the
    operation's own parameter per image (a factor, an angle, a number of bits; with a random sign
    where the operation has two directions), :attr:`apply` alters each image by its parameter.
    ``operation(images, magnitude, generator)`` does both."""

    def __init__(
        self,
        apply: Callable[[Tensor, Tensor], Tensor],
        value: Callable[[Tensor, torch.Generator], Tensor] | None = None,
        doc: str = "",
    ) -> None:
        self.apply = apply
        self.value = value or (lambda magnitude, generator: magnitude)
        self.__doc__ = doc

    def __call__(self, images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
        return self.apply(images, self.value(magnitude, generator))


def _enhance_factor(magnitude: Tensor, generator: torch.Generator) -> Tensor:
    """FixMatch's enhancement factors: ``1 ± 0.9·magnitude`` (0.1..1.9; 1 leaves the image as it is)."""
    return 1 + _signed(0.9 * magnitude, generator)


def _autocontrast(images: Tensor, _values: Tensor) -> Tensor:
    return TF.autocontrast(images)


def _equalize(images: Tensor, _values: Tensor) -> Tensor:
    return TF.equalize(images)


def _brightness(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, torch.zeros_like(images), factor)


def _colour(images: Tensor, factor: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    return _blend(images, _grey(images).expand_as(images), factor)


def _contrast(images: Tensor, factor: Tensor) -> Tensor:
    mean = _grey(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean.expand_as(images), factor)


def _sharpness(images: Tensor, factor: Tensor) -> Tensor:
    # PIL's SMOOTH kernel 1 1 1 / 1 5 1 / 1 1 1 over 13 on the inner pixels; the outermost ones are kept (as PIL)
    if min(images.shape[-2:]) <= 2:
        return images
    kernel = images.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = images.shape[1]
    smooth = images.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(images, kernel.expand(channels, 1, 3, 3), groups=channels)
    return _blend(images, smooth, factor)


def _posterize(images: Tensor, bits: Tensor) -> Tensor:
    levels = _per_image(2.0 ** bits.to(images.dtype))
    return torch.minimum(torch.floor(images * levels), levels - 1) / levels


def _solarize(images: Tensor, threshold: Tensor) -> Tensor:
    return torch.where(images >= _per_image(threshold), 1.0 - images, images)


def _rotate(images: Tensor, degrees: Tensor) -> Tensor:
    radians = torch.deg2rad(degrees.to(images.dtype))
    cos, sin = torch.cos(radians), torch.sin(radians)
    # counter-clockwise on screen (y pointing down): the output pixel reads the input rotated back
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return _affine(images, linear)


def _shear(axis: int) -> Callable[[Tensor, Tensor], Tensor]:
    def shear(images: Tensor, amount: Tensor) -> Tensor:
        linear = _identity_maps(amount.to(images.dtype))
        linear[:, axis, 1 - axis] = amount  # x_in = x + amount·y (shear_x), y_in = y + amount·x (shear_y)
        return _affine(images, linear)

    return shear


def _translate(axis: int) -> Callable[[Tensor, Tensor], Tensor]:
    def translate(images: Tensor, fraction: Tensor) -> Tensor:
        side = images.shape[-1] if axis == 0 else images.shape[-2]
        shift = images.new_zeros(len(fraction), 2)
        shift[:, axis] = -fraction.to(images.dtype) * side  # the content moves by +fraction of the side
        return _affine(images, _identity_maps(shift[:, 0]), shift)

    return translate


STRONG_OPERATIONS: dict[str, Operation] = {
    "identity": Operation(lambda images, _values: images, doc="The image unchanged."),
    "autocontrast": Operation(
        _autocontrast, doc=("Each channel stretched to 0..1 (PIL's ImageOps.autocontrast; torchvision's autocontrast).")
    ),
    "brightness": Operation(
        _brightness,
        _enhance_factor,
        doc=("Brightness factor 1 ± 0.9·m: blend with black (PIL's ImageEnhance.Brightness)."),
    ),
    "colour": Operation(
        _colour,
        _enhance_factor,
        doc=("Saturation factor 1 ± 0.9·m: blend with the BT.601 grey image (PIL's ImageEnhance.Color)."),
    ),
    "contrast": Operation(
        _contrast,
        _enhance_factor,
        doc=("Contrast factor 1 ± 0.9·m: blend with the mean grey level (PIL's ImageEnhance.Contrast)."),
    ),
    "equalize": Operation(
        _equalize,
        doc=(
            "Each channel's histogram equalised over 256 levels (PIL's ImageOps.equalize; torchvision's "
            "equalize, batched)."
        ),
    ),
    "posterize": Operation(
        _posterize,
        lambda magnitude, generator: 8 - torch.round(magnitude * 4),
        doc=("Keep 8 − round(4·m) bits: 8..4 bits (PIL's ImageOps.posterize; torchvision's posterize on 0..1 floats)."),
    ),
    "rotate": Operation(
        _rotate,
        lambda magnitude, generator: _signed(30.0 * magnitude, generator),
        doc=("Rotate by ±30·m degrees about the centre, counter-clockwise for a positive angle."),
    ),
    "sharpness": Operation(
        _sharpness,
        _enhance_factor,
        doc=("Sharpness factor 1 ± 0.9·m: blend with PIL's SMOOTH filter (ImageEnhance.Sharpness)."),
    ),
    "shear_x": Operation(
        _shear(0),
        lambda magnitude, generator: _signed(0.3 * magnitude, generator),
        doc=("Shear along x by ±0.3·m (pixels move by that share of their height from the centre)."),
    ),
    "shear_y": Operation(
        _shear(1), lambda magnitude, generator: _signed(0.3 * magnitude, generator), doc=("Shear along y by ±0.3·m.")
    ),
    "solarize": Operation(
        _solarize,
        lambda magnitude, generator: 1.0 - magnitude,
        doc=("Invert every value at or above the threshold 1 − m (PIL's ImageOps.solarize)."),
    ),
    "translate_x": Operation(
        _translate(0),
        lambda magnitude, generator: _signed(0.3 * magnitude, generator),
        doc=("Move the content along x by ±30%·m of the width."),
    ),
    "translate_y": Operation(
        _translate(1),
        lambda magnitude, generator: _signed(0.3 * magnitude, generator),
        doc=("Move the content along y by ±30%·m of the height."),
    ),
}
"""FixMatch's RandAugment pool (Sohn et al. 2020, table 12; module docstring): name → :class:`Operation`."""


def cutout(images: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Cover a square of ``fraction`` × the shorter side, centred uniformly at random (it may hang
    over the edge, as in DeVries & Taylor), with the image's border mean."""
    if fraction <= 0:
        return images
    batch, _, height, width = images.shape
    side = max(1, round(fraction * min(height, width)))
    centre_y = torch.randint(0, height, (batch,), generator=generator, device=images.device)
    centre_x = torch.randint(0, width, (batch,), generator=generator, device=images.device)
    rows = torch.arange(height, device=images.device)
    cols = torch.arange(width, device=images.device)
    top, left = (centre_y - side // 2)[:, None], (centre_x - side // 2)[:, None]
    inside_rows = (rows[None] >= top) & (rows[None] < top + side)
    inside_cols = (cols[None] >= left) & (cols[None] < left + side)
    mask = (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]
    return torch.where(mask, border_mean(images).expand_as(images), images)


def strong_augment(
    images: Tensor,
    generator: torch.Generator,
    *,
    ops: int = 2,
    cutout_fraction: float = 0.5,
    operations: tuple[str, ...] | None = None,
) -> Tensor:
    """RandAugment with ``ops`` random operations per image, random magnitudes, then Cutout
    (FixMatch's strong augmentation; module docstring). ``operations`` restricts the pool."""
    pool = list(operations or STRONG_OPERATIONS)
    unknown = [name for name in pool if name not in STRONG_OPERATIONS]
    if unknown:
        raise HeadstartError(f"strong_augment: operations has {unknown[0]!r}; known: {', '.join(STRONG_OPERATIONS)}")
    if ops < 0 or not 0 <= cutout_fraction < 1:
        raise HeadstartError(
            f"strong_augment: ops={ops}, cutout_fraction={cutout_fraction}; expected ops >= 0 and "
            "0 <= cutout_fraction < 1"
        )
    if images.dim() != 4 or not images.is_floating_point():
        raise HeadstartError(
            f"strong_augment: images {tuple(images.shape)} {images.dtype}; expected float [B, C, H, W] in 0..1"
        )
    out = images
    batch = images.shape[0]
    for _ in range(ops):
        chosen = torch.randint(0, len(pool), (batch,), generator=generator, device=images.device)
        magnitude = torch.rand(batch, generator=generator, device=images.device)
        result = out.clone()
        for index, name in enumerate(pool):
            select = chosen == index
            if bool(select.any()):
                result[select] = STRONG_OPERATIONS[name](out[select], magnitude[select], generator)
        out = result
    return cutout(out, cutout_fraction, generator)


__all__ = ["STRONG_OPERATIONS", "Operation", "augment", "border_mean", "cutout", "strong_augment"]
