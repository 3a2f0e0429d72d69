"""Masked patches: hide random square patches and rebuild them (the chapter's "masked tokens").

Two papers set the pattern. Pathak et al. ("Context Encoders: Feature Learning by Inpainting",
CVPR 2016) remove image regions — a central square or random blocks covering about a quarter of
the image — and train a convolutional encoder–decoder to paint them back (L2 plus an adversarial
loss). He et al. ("Masked Autoencoders Are Scalable Vision Learners", CVPR 2022) split the image
into 16×16 patches, hide a random 75% of them, and compute the loss on the hidden patches only;
the high ratio makes the task hard enough that the encoder cannot just interpolate neighbours.

This task hides ``mask_ratio`` of a grid of ``patch_size`` patches (an exact count per image,
chosen at random), fills them with ``fill`` (mid-grey by default; a convolutional encoder, unlike
a ViT, must still be given some pixel value) and trains the encoder plus a small decoder
(:class:`~headstart.pretext.decoder.Decoder`) to rebuild the image, scoring the mean squared error
on hidden pixels only, as MAE does. The default ratio 0.5 sits between the context encoder's
quarter and MAE's three quarters: a convolutional encoder sees the fill value as content, and
with 75% hidden its receptive field mostly covers grey. Raise it towards 0.75 for larger images.

Targets carry the original image and the mask: ``[B, C + 1, H, W]``, the last channel 1 where
hidden. :meth:`MaskedPatchesTask.split_targets` separates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, psnr, require
from headstart.pretext.decoder import Decoder, stages_for


def random_patch_mask(
    batch: int, image_size: tuple[int, int], patch_size: int, ratio: float, generator: torch.Generator, device
) -> Tensor:
    """``[B, 1, H, W]`` mask (1 = hidden) hiding ``round(ratio · patches)`` grid patches per image.

    The grid covers the image with ``ceil(H / patch_size) × ceil(W / patch_size)`` patches; edge
    patches are cut to the image.
    """
    height, width = int(image_size[0]), int(image_size[1])
    rows, columns = -(-height // patch_size), -(-width // patch_size)
    count = rows * columns
    hidden = min(count, max(1, round(ratio * count)))
    ranks = torch.rand(batch, count, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    grid = (ranks < hidden).float().view(batch, 1, rows, columns)
    full = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return full[..., :height, :width]


@dataclass(kw_only=True)
class MaskedPatchesTask(PretextTask):
    """Rebuild hidden square patches; mean squared error on the hidden pixels only."""

    name: ClassVar[str] = "masked_patches"
    kind: ClassVar[TaskKind] = "reconstruction"

    mask_ratio: float = 0.5
    """Share of patches hidden (MAE: 0.75 with ViTs; context encoders: about 0.25 of the area)."""
    patch_size: int = 16
    """Side of the square patches in pixels (MAE: 16). Use 4–8 for 32-pixel images."""
    fill: float = 0.5
    """Pixel value of hidden patches, in 0..1."""
    decoder_width: int = 64
    """Channels after the decoder's first projection (halved at each upsampling block)."""

    def __post_init__(self) -> None:
        require(0 < self.mask_ratio < 1, f"masked_patches: mask_ratio must be in (0, 1), got {self.mask_ratio}")
        require(self.patch_size >= 1, f"masked_patches: patch_size must be >= 1, got {self.patch_size}")
        require(0 <= self.fill <= 1, f"masked_patches: fill must be in 0..1, got {self.fill}")
        require(self.decoder_width >= 8, f"masked_patches: decoder_width must be >= 8, got {self.decoder_width}")

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        mask = random_patch_mask(
            images.shape[0],
            (images.shape[-2], images.shape[-1]),
            self.patch_size,
            self.mask_ratio,
            generator,
            images.device,
        ).to(images.dtype)
        hidden = images * (1 - mask) + self.fill * mask
        return hidden, torch.cat([images, mask], dim=1)

    @staticmethod
    def split_targets(targets: Tensor) -> tuple[Tensor, Tensor]:
        """(original images ``[B, C, H, W]``, mask ``[B, 1, H, W]``)."""
        return targets[:, :-1], targets[:, -1:]

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        return Decoder(encoder.feature_channels, 3, stages=stages_for(encoder, image_size), width=self.decoder_width)

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        return head(encoder.feature_map(inputs), inputs.shape[-2:])[:, : inputs.shape[1]]

    def _masked_mse(self, outputs: Tensor, targets: Tensor) -> Tensor:
        original, mask = self.split_targets(targets.to(outputs.dtype))
        squared = (outputs - original).pow(2) * mask
        return squared.sum() / (mask.sum() * original.shape[1]).clamp_min(1.0)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self._masked_mse(outputs, targets)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        with torch.no_grad():
            mse = self._masked_mse(outputs, targets).item()
        return {"mse": mse, "psnr": psnr(mse)}

    def decode(self, outputs: Tensor) -> list[str]:
        return [f"mean={value:.2f}" for value in outputs.mean(dim=(1, 2, 3)).tolist()]
