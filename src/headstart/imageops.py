"""Channels, luminance, resizing and normalisation: the one place for each.

Every part of headstart that changes an image's channels, size or value range calls these
functions, so a grey image becomes the same colour image in the data layer, in a stage, in a
pretext task and at prediction time.

Channels
    Grey → N channels replicates the grey plane. Colour → grey takes the luminance
    ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, the weights Pillow uses for mode ``L``), so
    converting a grey image to colour and back gives it back exactly.
Resizing
    ``"crop"``: scale so the *shorter* side equals the target, then cut the centre square
    (proportions kept, the border of the longer side lost — the usual ImageNet evaluation
    transform). ``"stretch"``: scale both sides to the target independently (Keras'
    ``Resizing(h, w)``; nothing lost, proportions change). Interpolation is bilinear, antialiased
    when shrinking, on tensors (any device) and on Pillow images alike.
Normalisation
    ``(x − mean) / std`` per channel on 0..1 values, the statistics following the tensor's device
    and dtype so a training step can augment on the GPU and normalise last.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from PIL import Image

from headstart.errors import HeadstartError

ResizeMode = Literal["crop", "stretch"]
RESIZE_MODES: tuple[str, ...] = ("crop", "stretch")

LUMINANCE_WEIGHTS = (0.299, 0.587, 0.114)
"""Weights of R, G and B in the colour → grey conversion (ITU-R BT.601, as Pillow's mode L)."""


def luminance(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` BT.601 luminance of RGB ``images`` ``[B, 3, H, W]``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise HeadstartError(f"luminance: images of shape {tuple(images.shape)}; expected [B, 3, H, W]")
    weights = torch.tensor(LUMINANCE_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """``images`` ``[B, C, H, W]`` with ``channels`` channels.

    1 → N replicates the grey plane (a view: no copy); 3 → 1 takes the BT.601 luminance. Any
    other change is refused with a message saying what is possible.
    """
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if have == 3 and channels == 1:
        return luminance(images)
    raise HeadstartError(
        f"cannot convert images with {have} channels to {channels}; "
        "expected grey (1 channel, replicated to any count) or RGB (3 channels, to 1 by luminance)"
    )


def _check_mode(resize: str) -> None:
    if resize not in RESIZE_MODES:
        raise HeadstartError(f"resize {resize!r} is not known; expected 'crop' or 'stretch'")


def resize(images: torch.Tensor, size: int | None, mode: ResizeMode = "crop") -> torch.Tensor:
    """Float ``images`` ``[B, C, H, W]`` resized to ``[B, C, size, size]`` (policy in the module docstring).

    ``size=None`` or an image already of that size returns ``images`` unchanged. Bilinear weights
    are non-negative, so values stay within the input's range.
    """
    _check_mode(mode)
    if size is None:
        return images
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    if images.shape[0] == 0:
        return images.new_zeros((0, images.shape[1], size, size))
    if mode == "stretch":
        target = (size, size)
    else:
        scale = size / min(height, width)
        target = (max(size, round(height * scale)), max(size, round(width * scale)))
    shrinking = target[0] < height or target[1] < width
    out = F.interpolate(images, size=target, mode="bilinear", align_corners=False, antialias=shrinking)
    top = (target[0] - size) // 2
    left = (target[1] - size) // 2
    return out[..., top : top + size, left : left + size].contiguous()


def resize_pil(image: Image.Image, size: int, mode: ResizeMode = "crop") -> Image.Image:
    """A Pillow image resized to ``size × size`` pixels (policy in the module docstring)."""
    _check_mode(mode)
    width, height = image.size
    if (width, height) == (size, size):
        return image
    if mode == "stretch":
        return image.resize((size, size), Image.Resampling.BILINEAR)
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    scaled = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return scaled.crop((left, top, left + size, top + size))


def normalize(images01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(images01 − mean) / std`` per channel of a batch ``[B, C, H, W]`` of 0..1 values."""
    channels = images01.shape[-3] if images01.ndim >= 3 else -1
    if channels != len(mean) or len(mean) != len(std):
        raise HeadstartError(
            f"normalize: tensor of shape {tuple(images01.shape)} has {channels} channels, "
            f"the preprocessing expects {len(mean)}"
        )
    mean_t = torch.tensor(tuple(mean), device=images01.device, dtype=images01.dtype).view(-1, 1, 1)
    std_t = torch.tensor(tuple(std), device=images01.device, dtype=images01.dtype).view(-1, 1, 1)
    return (images01 - mean_t) / std_t


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 0..255 pixels → float32 0..1 (float input is returned as float32 unchanged)."""
    if pixels.dtype == torch.uint8:
        return pixels.float().div_(255.0)
    return pixels.float()
