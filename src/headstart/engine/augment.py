"""Batched image augmentation on the training device: the stage's weak ``augment`` and a strong
RandAugment + Cutout for semi-supervised stages.

Every function takes a ``[B, C, H, W]`` batch of 0..1 floats and draws each random number from the
``torch.Generator`` it is given (on the images' device), with no Python loop over images: each
operation runs once on the sub-batch of images that drew it.

``strong_augment`` is FixMatch's strong branch (Sohn et al., NeurIPS 2020, §2.3 and appendix D):
RandAugment (Cubuk et al., 2020) with ``ops`` operations per image, each drawn uniformly from the
pool below with its own random magnitude (FixMatch's variant: a magnitude per image, no global
``M`` to tune), followed by Cutout (DeVries & Taylor 2017) of a square half the image's side. The
pool is FixMatch's minus ``Equalize`` (a per-image histogram needs a loop or a sort per channel;
left out) — identity, autocontrast, brightness, colour (saturation), contrast, posterize, rotate
(±30°), sharpness, shear x/y (±0.3), solarize, translate x/y (±30% of the side). Geometric
operations fill the uncovered corners with the mean of the image's border (black for digits on
black, a neutral tone for photographs) instead of FixMatch's fixed grey, so the fill itself is no
cue. Flips are not in the pool: digits and text must not be mirrored.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from headstart.errors import HeadstartError


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


def _luminance(images: Tensor) -> Tensor:
    if images.shape[1] == 1:
        return images
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(1, keepdim=True)


def _blend(images: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``ImageEnhance``: ``other + factor·(images − other)``, clipped to 0..1."""
    return (other + _per_image(factor) * (images - other)).clamp(0, 1)


def _affine(images: Tensor, matrix: Tensor) -> Tensor:
    """Resample each image through its own 2×3 ``matrix`` (normalised coordinates), corners filled
    with the image's border mean."""
    fill = border_mean(images)
    grid = F.affine_grid(matrix.to(images.dtype), list(images.shape), align_corners=False)
    # zero padding of (images − fill) is a padding with fill
    warped = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (warped + fill).clamp(0, 1)


def _matrix(count: int, device, dtype=torch.float32) -> Tensor:
    return torch.eye(2, 3, device=device, dtype=dtype).repeat(count, 1, 1)


# --------------------------------------------------------------------------------- the operations
# Each takes (images, magnitude in 0..1 per image, generator) and returns the altered images.


def _identity(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    return images


def _autocontrast(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    low = images.amin(dim=(-2, -1), keepdim=True)
    high = images.amax(dim=(-2, -1), keepdim=True)
    span = high - low
    return torch.where(span > 1e-6, (images - low) / span.clamp_min(1e-6), images)


def _brightness(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    return _blend(images, torch.zeros_like(images), 1 + _signed(0.9 * magnitude, generator))


def _colour(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    if images.shape[1] == 1:
        return images
    return _blend(images, _luminance(images).expand_as(images), 1 + _signed(0.9 * magnitude, generator))


def _contrast(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    mean = _luminance(images).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(images, mean.expand_as(images), 1 + _signed(0.9 * magnitude, generator))


def _sharpness(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    # PIL's SMOOTH kernel: 1 1 1 / 1 5 1 / 1 1 1, over 13
    kernel = images.new_tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    channels = images.shape[1]
    smooth = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel.expand(channels, 1, 3, 3),
                      groups=channels)
    return _blend(images, smooth, 1 + _signed(0.9 * magnitude, generator))


def _posterize(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    bits = 8 - torch.round(magnitude * 4)  # keep 8..4 bits
    step = _per_image(2.0 ** (8 - bits))
    return torch.floor(images * 255.0 / step) * step / 255.0


def _solarize(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    threshold = _per_image(1.0 - magnitude)
    return torch.where(images >= threshold, 1.0 - images, images)


def _rotate(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
    radians = _signed(magnitude * math.radians(30.0), generator)
    matrix = _matrix(len(images), images.device)
    matrix[:, 0, 0], matrix[:, 0, 1] = torch.cos(radians), -torch.sin(radians)
    matrix[:, 1, 0], matrix[:, 1, 1] = torch.sin(radians), torch.cos(radians)
    return _affine(images, matrix)


def _shear(axis: int) -> Callable[[Tensor, Tensor, torch.Generator], Tensor]:
    def shear(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
        matrix = _matrix(len(images), images.device)
        matrix[:, axis, 1 - axis] = _signed(0.3 * magnitude, generator)
        return _affine(images, matrix)

    return shear


def _translate(axis: int) -> Callable[[Tensor, Tensor, torch.Generator], Tensor]:
    def translate(images: Tensor, magnitude: Tensor, generator: torch.Generator) -> Tensor:
        matrix = _matrix(len(images), images.device)
        matrix[:, axis, 2] = _signed(0.6 * magnitude, generator)  # normalised coordinates span 2: ±30% of the side
        return _affine(images, matrix)

    return translate


STRONG_OPERATIONS: dict[str, Callable[[Tensor, Tensor, torch.Generator], Tensor]] = {
    "identity": _identity, "autocontrast": _autocontrast, "brightness": _brightness, "colour": _colour,
    "contrast": _contrast, "posterize": _posterize, "rotate": _rotate, "sharpness": _sharpness,
    "shear_x": _shear(0), "shear_y": _shear(1), "solarize": _solarize, "translate_x": _translate(0),
    "translate_y": _translate(1),
}
"""FixMatch's RandAugment pool without Equalize (module docstring)."""


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


def strong_augment(images: Tensor, generator: torch.Generator, *, ops: int = 2, cutout_fraction: float = 0.5,
                   operations: tuple[str, ...] | None = None) -> Tensor:
    """RandAugment with ``ops`` random operations per image, random magnitudes, then Cutout
    (FixMatch's strong augmentation; module docstring). ``operations`` restricts the pool."""
    pool = list(operations or STRONG_OPERATIONS)
    unknown = [name for name in pool if name not in STRONG_OPERATIONS]
    if unknown:
        raise HeadstartError(f"strong_augment: operations has {unknown[0]!r}; known: {', '.join(STRONG_OPERATIONS)}")
    if ops < 0 or not 0 <= cutout_fraction < 1:
        raise HeadstartError(f"strong_augment: ops={ops}, cutout_fraction={cutout_fraction}; expected ops >= 0 and "
                             "0 <= cutout_fraction < 1")
    if images.dim() != 4 or not images.is_floating_point():
        raise HeadstartError(f"strong_augment: images {tuple(images.shape)} {images.dtype}; expected float [B, C, H, W] "
                             "in 0..1")
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


__all__ = ["STRONG_OPERATIONS", "augment", "border_mean", "cutout", "strong_augment"]
