"""Noise presence: was Gaussian noise added to this image? (the chapter's first alteration idea).

The chapter proposes adding noise to some images and not others and training a binary classifier
"noise / no noise", so that the network learns to tell noise from the data and to represent the
data's key features. Exactly half of each batch (a random half) gets noise, so the classes stay
balanced whatever the batch size.

``noise_std`` = 0.1 (in 0..1 pixel units, about 26 of 255 grey levels) is the default because it
sits well above the noise already in 8-bit photographs (quantisation ≈ 0.001, typical sensor noise
≈ 0.005–0.02), so a "clean" label is never a noisier image than a "noisy" one, yet low enough that
the signal stays visible and the network has to compare texture against structure rather than
spot a snowstorm. Lower it (0.02–0.05) for a harder task, raise it if training stalls at chance.
Results are clipped to 0..1 like a real image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from headstart.heads import predicted_classes
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require

LABELS = ("clean", "noisy")


@dataclass(kw_only=True)
class NoisePresenceTask(PretextTask):
    """Binary classification: label 1 ("noisy") when Gaussian noise of ``noise_std`` was added."""

    name: ClassVar[str] = "noise_presence"
    kind: ClassVar[TaskKind] = "classification"

    noise_std: float = 0.1
    """Standard deviation of the added noise, in 0..1 pixel units."""
    noisy_fraction: float = 0.5
    """Share of each batch that receives noise (rounded down to whole images)."""

    def __post_init__(self) -> None:
        require(self.noise_std > 0, f"noise_presence: noise_std must be > 0, got {self.noise_std}")
        require(
            0 < self.noisy_fraction < 1, f"noise_presence: noisy_fraction must be in (0, 1), got {self.noisy_fraction}"
        )

    @property
    def num_outputs(self) -> int:
        return 2

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        batch = images.shape[0]
        order = torch.rand(batch, generator=generator, device=images.device).argsort()
        labels = torch.zeros(batch, dtype=torch.long, device=images.device)
        labels[order[: int(batch * self.noisy_fraction)]] = 1
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        scale = (labels.to(images.dtype) * self.noise_std).view(-1, 1, 1, 1)
        return (images + scale * noise).clamp(0.0, 1.0), labels

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        """A linear layer to two logits (cross-entropy, decoded as "clean"/"noisy")."""
        return nn.Linear(encoder.num_features, 2)

    def decode(self, outputs: Tensor) -> list[str]:
        return [LABELS[i] for i in predicted_classes(outputs).tolist()]
