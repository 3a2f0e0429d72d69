"""The image-to-image head of reconstruction tasks (colourisation, masked patches).

It upsamples the backbone's last feature map back to the image: a 1×1 projection, then
``stages`` blocks of (×2 upsampling, 3×3 convolution, BatchNorm, ReLU) with the width halving at
each block down to ``minimum_width``, then a 1×1 convolution and a sigmoid to pixel values in
0..1. :func:`stages_for` picks as many blocks as the encoder's stride needs (five for the stride
of 32 of ResNets and EfficientNets); upsampling never overshoots the requested size, and a final
bilinear resize absorbs odd sizes. The head is deliberately small: it is dropped after pretraining, and a weak decoder
leaves the work of understanding the image to the encoder (as in MAE, whose decoder has under a
tenth of the encoder's compute per token).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_REDUCTION = 32
"""Stride assumed for encoders that do not say theirs (ResNets, EfficientNets, ConvNeXts: 32)."""


def stages_for(encoder, image_size: tuple[int, int]) -> int:
    """Upsampling blocks that undo the encoder's stride, never more than the image allows.

    Encoders exposing ``reduction`` (the backbone's total stride, as timm's
    ``feature_info[-1]["reduction"]``) get exactly ``ceil(log2(reduction))`` blocks; others get
    five, for a stride of 32.
    """
    reduction = int(getattr(encoder, "reduction", None) or DEFAULT_REDUCTION)
    needed = math.ceil(math.log2(max(2, reduction)))
    return max(1, min(needed, int(math.log2(max(2, min(image_size))))))


class Decoder(nn.Module):
    """Feature map ``[B, in_channels, h, w]`` → image ``[B, out_channels, H, W]`` in 0..1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stages: int = 5,
        width: int = 64,
        minimum_width: int = 16,
    ) -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, width, kernel_size=1)
        blocks = []
        channels = width
        for _ in range(stages):
            following = max(minimum_width, channels // 2)
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels, following, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(following),
                    nn.ReLU(inplace=True),
                )
            )
            channels = following
        self.blocks = nn.ModuleList(blocks)
        self.output = nn.Conv2d(channels, out_channels, kernel_size=1)

    def forward(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        height, width = int(size[0]), int(size[1])
        x = self.project(features)
        for block in self.blocks:
            current_height, current_width = x.shape[-2:]
            if current_height < height or current_width < width:
                following = (min(2 * current_height, height), min(2 * current_width, width))
                x = F.interpolate(x, size=following, mode="nearest")
            x = block(x)
        if tuple(x.shape[-2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return self.output(x).sigmoid()
