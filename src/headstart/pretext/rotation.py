"""Rotation prediction (Gidaris, Singh & Komodakis, ICLR 2018).

"Unsupervised Representation Learning by Predicting Image Rotations" rotates each image by one of
a few angles and trains the network to say which. Recognising that a picture is upside down needs
the network to find the salient object, its kind and its usual orientation, so the features it
learns transfer.

The paper compares angle sets (the chapter's Table 2-3, CIFAR-10 classification accuracy on top of
the self-supervised features):

========== ================================== =========
rotations  angles                             accuracy
========== ================================== =========
8          0, 45, 90, 135, 180, 225, 270, 315 88.51
**4**      **0, 90, 180, 270**                **89.06**
2          0, 180                             87.46
2          90, 270                            85.52
========== ================================== =========

so four right angles is the default. Multiples of 90° are exact pixel permutations
(``torch.rot90``), leaving no interpolation or border artefact to give the angle away; any other
angle is a bilinear resample (``affine_grid``/``grid_sample``, batched) with black corners, which a
network can use to tell 45° from 0° though not 45° from 135°.

Angles are counter-clockwise as the image is displayed, the convention of
``scipy.ndimage.rotate`` used in the chapter's listing 2-20. A quarter turn of a non-square image
changes its shape, so such images are centre-cropped to a square first.

``all_rotations=True`` feeds every rotation of every image in the same batch (batch × K), as the
paper trains: all four rotated copies of an image in the same mini-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headstart.heads import predicted_classes
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require

FOUR_RIGHT_ANGLES = (0, 90, 180, 270)


def rotate(images: Tensor, angles: Tensor) -> Tensor:
    """Rotate each image counter-clockwise by its own angle in degrees (``angles``: ``[B]``).

    Multiples of 90° go through ``torch.rot90`` (exact); other angles through one batched bilinear
    ``grid_sample`` with zero fill. Any angle but 0° and 180° needs square images (a quarter turn
    changes the shape; resampling in normalised coordinates would stretch a non-square image).
    """
    angles = angles.to(images.device)
    turns = torch.remainder(angles, 360.0)
    quarter = torch.remainder(turns, 90.0) == 0
    out = torch.empty_like(images)
    if bool(quarter.any()):
        k_all = torch.div(turns, 90.0, rounding_mode="floor").long()
        for k in range(4):  # four groups of images, each rotated in one call
            select = quarter & (k_all == k)
            if bool(select.any()):
                out[select] = torch.rot90(images[select], k, dims=(-2, -1))
    if not bool(quarter.all()):
        select = ~quarter
        radians = torch.deg2rad(turns[select].to(torch.float32))
        cos, sin = torch.cos(radians), torch.sin(radians)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
        chosen = images[select]
        grid = F.affine_grid(theta.to(chosen.dtype), list(chosen.shape), align_corners=False)
        out[select] = F.grid_sample(chosen, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out


def center_square(images: Tensor) -> Tensor:
    """Centre crop to the largest square (unchanged when already square)."""
    height, width = images.shape[-2:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return images[..., top : top + side, left : left + side]


@dataclass(kw_only=True)
class RotationTask(PretextTask):
    """Predict which of ``angles`` an image was rotated by (K-way classification).

    Label ``i`` means a counter-clockwise rotation by ``angles[i]`` degrees.
    """

    name: ClassVar[str] = "rotation"
    kind: ClassVar[TaskKind] = "classification"

    angles: tuple[float, ...] = FOUR_RIGHT_ANGLES
    """Rotations in degrees, counter-clockwise. Paper's best: 0, 90, 180, 270 (89.06 on CIFAR-10)."""
    all_rotations: bool = False
    """Feed all K rotations of each image (batch grows K-fold), as the paper's code does."""

    def __post_init__(self) -> None:
        self.angles = tuple(float(a) % 360.0 for a in self.angles)
        require(len(self.angles) >= 2, f"rotation: need at least two angles, got {self.angles}")
        require(len(set(self.angles)) == len(self.angles), f"rotation: angles repeat (modulo 360): {self.angles}")

    @property
    def num_outputs(self) -> int:
        return len(self.angles)

    @property
    def _needs_square(self) -> bool:
        return any(a % 180.0 != 0 for a in self.angles)

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        if self._needs_square:
            side = min(int(image_size[0]), int(image_size[1]))
            return (side, side)
        return (int(image_size[0]), int(image_size[1]))

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        if self._needs_square:
            images = center_square(images)
        batch = images.shape[0]
        table = torch.tensor(self.angles, device=images.device)
        count = len(self.angles)
        if self.all_rotations:
            labels = torch.arange(count, device=images.device).repeat_interleave(batch)
            images = images.repeat(count, 1, 1, 1)
        else:
            labels = torch.randint(0, count, (batch,), generator=generator, device=images.device)
        return rotate(images, table[labels]), labels

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        """A linear layer on the pooled features (the chapter's listing 2-21: Dense(4) on top)."""
        return nn.Linear(encoder.num_features, self.num_outputs)

    def decode(self, outputs: Tensor) -> list[str]:
        return [f"rot={_degrees(self.angles[i])}" for i in predicted_classes(outputs).tolist()]


def _degrees(angle: float) -> str:
    return str(int(angle)) if float(angle).is_integer() else f"{angle:g}"


__all__ = ["FOUR_RIGHT_ANGLES", "RotationTask", "center_square", "rotate"]
