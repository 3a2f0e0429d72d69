"""Noise level: how strong is the Gaussian noise in this image? (the chapter's listing 2-18).

Every image gets zero-mean Gaussian noise whose standard deviation σ is drawn uniformly from
``[0, maximum_std]`` = ``[0, 0.5]`` (the chapter's ``tf.random.uniform(minval=0, maxval=0.5)``),
and the network regresses σ. The chapter's figure 2-24 shows σ = 0.003, 0.186 and 0.304. To
predict σ the network must tell which variation belongs to faces (or whatever the data holds) and
which is noise, so it learns the data's structure; it is harder than noise presence and asks for
graded, not binary, judgement.

Loss: mean squared error on σ (the chapter notes binary cross-entropy also works for targets in
0..1). The result is clipped to 0..1 by default, as any image is; with ``clip=False`` the
empirical standard deviation of (altered − original) equals σ in expectation, which is how the
labels are checked. Clipping shrinks strong noise on very dark or bright pixels, so by default σ
stays the label of the noise drawn, not of the noise left. Two options differ from that default:

* ``clip=False`` — the chapter's listing 2-18 exactly: ``tf.add(image, noise)`` with no clipping,
  pixel values outside 0..1 reach the network and the label σ is the noise in the image.
* ``target="remaining"`` — keep the clipped image but label it with the noise actually left in it:
  the root mean square of (altered − original) per image, ≈ σ where nothing was clipped and less
  on images with many near-black or near-white pixels.

At chance (always predicting the mean σ) the mean absolute error is ``maximum_std / 4`` = 0.125.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require


@dataclass(kw_only=True)
class NoiseLevelTask(PretextTask):
    """Regression of the noise standard deviation σ ~ U[minimum_std, maximum_std]."""

    name: ClassVar[str] = "noise_level"
    kind: ClassVar[TaskKind] = "regression"

    minimum_std: float = 0.0
    """Smallest σ drawn, in 0..1 pixel units (chapter: 0)."""
    maximum_std: float = 0.5
    """Largest σ drawn (chapter: 0.5)."""
    clip: bool = True
    """Clip the noisy image to 0..1 (the chapter's listing 2-18 does not: ``clip=False``)."""
    target: Literal["drawn", "remaining"] = "drawn"
    """Label of each image: ``drawn``, the σ drawn; ``remaining``, the root mean square of the noise
    left after clipping (equal to the drawn σ's estimate when ``clip=False``)."""

    def __post_init__(self) -> None:
        require(
            0 <= self.minimum_std < self.maximum_std,
            f"noise_level: need 0 <= minimum_std < maximum_std, got {self.minimum_std}, {self.maximum_std}",
        )
        require(
            self.target in ("drawn", "remaining"),
            f"noise_level: target={self.target!r}; expected 'drawn' (σ drawn) or 'remaining' (noise left)",
        )

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def target_range(self) -> float:
        return self.maximum_std - self.minimum_std

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        batch = images.shape[0]
        draws = torch.rand(batch, 1, generator=generator, device=images.device, dtype=images.dtype)
        sigma = self.minimum_std + self.target_range * draws
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        altered = images + sigma.view(-1, 1, 1, 1) * noise
        if self.clip:
            altered = altered.clamp(0.0, 1.0)
        if self.target == "remaining":
            return altered, (altered - images).square().flatten(1).mean(dim=1, keepdim=True).sqrt()
        return altered, sigma

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        """A linear layer to one value, σ."""
        return nn.Linear(encoder.num_features, 1)

    def chance_level(self) -> dict[str, float]:
        return {"mae": self.target_range / 4.0}

    def decode(self, outputs: Tensor) -> list[str]:
        return [f"σ≈{value:.2f}" for value in outputs.reshape(outputs.shape[0], -1)[:, 0].tolist()]
