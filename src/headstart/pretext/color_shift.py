"""Brightness and hue shift: by how much were this image's brightness and hue changed?

The chapter suggests, with a multi-dimensional output, letting the model "predict changes of
brightness, hue and so on" (after listing 2-18). Each image gets an additive brightness change
``b ~ U[-maximum_brightness, maximum_brightness]`` and a hue rotation ``h ~ U[-maximum_hue,
maximum_hue]`` (in turns of the colour wheel, torchvision's unit: 0.1 = 36°); the network regresses
both. To know how far a colour was moved the network must know what colour things usually are —
grass, sky, skin — much as colourisation does.

The hue rotation is the YIQ one: convert to YIQ, rotate the chroma plane (I, Q) by 2πh, convert
back; positive ``h`` turns red towards yellow and green, the direction of HSV hue and of
torchvision's ``adjust_hue``. It keeps luminance Y, so hue and brightness are separate questions. One 3×3 matrix per
image, applied with a single batched product. Grey (1-channel) images have no hue: only brightness
is drawn and predicted. Results are clipped to 0..1.

Defaults (±0.2 brightness, ±0.1 turn) stay inside what the colour-jitter augmentations of
contrastive learning use (SimCLR: brightness 0.8, hue 0.2 at strength 1), so shifted images still
look like photographs. Predicting zero scores a mean absolute error of half the maximum
(0.1 for brightness, 0.05 for hue). Near-grey pixels do not change under hue rotation, so images
without colour cannot reveal their hue shift; expect hue error to stay above brightness error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from headstart.imageops import LUMINANCE_WEIGHTS
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require

RGB_TO_YIQ = torch.tensor(
    [list(LUMINANCE_WEIGHTS), [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=torch.float64,
)
"""RGB → YIQ (NTSC); its Y row is the BT.601 luminance of :mod:`headstart.imageops`."""


def hue_rotation(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate the hue of RGB ``images`` ``[B, 3, H, W]`` by ``turns`` ``[B]`` (1 = full circle) in YIQ."""
    to_yiq = RGB_TO_YIQ.to(device=images.device)
    to_rgb = torch.linalg.inv(to_yiq)
    angle = -2.0 * math.pi * turns.to(torch.float64)  # YIQ angles run red → blue → green
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(turns.shape[0], 3, 3, dtype=torch.float64, device=images.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    matrices = (to_rgb @ rotation @ to_yiq).to(images.dtype)
    return torch.einsum("bij,bjhw->bihw", matrices, images)


@dataclass(kw_only=True)
class ColorShiftTask(PretextTask):
    """Two-output regression: (brightness change, hue change); brightness only for grey images."""

    name: ClassVar[str] = "color_shift"
    kind: ClassVar[TaskKind] = "regression"

    maximum_brightness: float = 0.2
    """Largest additive brightness change, in 0..1 pixel units."""
    maximum_hue: float = 0.1
    """Largest hue rotation, in turns (0.5 = half the colour wheel)."""

    def __post_init__(self) -> None:
        require(
            self.maximum_brightness > 0, f"color_shift: maximum_brightness must be > 0, got {self.maximum_brightness}"
        )
        require(
            0 < self.maximum_hue <= 0.5, f"color_shift: maximum_hue must be in (0, 0.5] turns, got {self.maximum_hue}"
        )

    @property
    def num_outputs(self) -> int:
        return 2

    @property
    def target_range(self) -> float:
        """Mean width of the two target ranges (for "solved too well" checks on the mean error)."""
        return self.maximum_brightness + self.maximum_hue

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        batch, channels = images.shape[:2]
        draws = 2.0 * torch.rand(batch, 2, generator=generator, device=images.device, dtype=images.dtype) - 1.0
        brightness = draws[:, 0] * self.maximum_brightness
        hue = draws[:, 1] * self.maximum_hue
        altered = images
        if channels == 3:
            altered = hue_rotation(images, hue)
            targets = torch.stack([brightness, hue], dim=1)
        else:
            targets = brightness[:, None]
        altered = (altered + brightness.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
        return altered, targets

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        """A linear layer to (brightness, hue); grey inputs use the first output only."""
        return nn.Linear(encoder.num_features, 2)

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        outputs = head(encoder.pooled(inputs))
        return outputs[:, :1] if inputs.shape[1] == 1 else outputs

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        with torch.no_grad():
            errors = (outputs - targets).abs()
            result = {"mae": errors.mean().item(), "mae_brightness": errors[:, 0].mean().item()}
            if errors.shape[1] > 1:
                result["mae_hue"] = errors[:, 1].mean().item()
            return result

    def chance_level(self) -> dict[str, float]:
        """For colour images; for grey ones the chance ``mae`` is ``mae_brightness``."""
        brightness, hue = self.maximum_brightness / 2.0, self.maximum_hue / 2.0
        return {"mae": (brightness + hue) / 2.0, "mae_brightness": brightness, "mae_hue": hue}

    def decode(self, outputs: Tensor) -> list[str]:
        labels = []
        for row in outputs.tolist():
            text = f"brightness={row[0]:+.2f}"
            if len(row) > 1:
                text += f" hue={row[1]:+.2f}"
            labels.append(text)
        return labels
