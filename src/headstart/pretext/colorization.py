"""Colourisation: rebuild the colour image from its grey version (the chapter's third idea).

The chapter: convert colour images to greyscale and train the model to build the colour image
from the grey one, an image-to-image task through which the model learns what colour things
should be. Zhang, Isola & Efros ("Colorful Image Colorization", ECCV 2016) made this a
representation learner at scale; they predict the two chroma channels of Lab as a classification
over 313 quantised colour bins with class rebalancing, because plain regression averages the
plausible colours into greyish ones.

Here the input is the luminance ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601) replicated to
three channels, so any RGB backbone accepts it unchanged, and the target is the RGB image. The
loss is the mean squared error over all pixels and channels: simple, exact to check, and enough
to pretrain features; expect desaturated reconstructions for the reason above. The decoder
(:class:`~headstart.pretext.decoder.Decoder`) reads the encoder's last feature map and is dropped
after pretraining.

Grey (1-channel) data has no colour to rebuild: the task refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from headstart.errors import HeadstartError
from headstart.imageops import LUMINANCE_WEIGHTS, luminance  # noqa: F401 - part of this task's API
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require
from headstart.pretext.decoder import Decoder, stages_for


@dataclass(kw_only=True)
class ColorizationTask(PretextTask):
    """Grey image in, RGB image out; mean squared error on pixels."""

    name: ClassVar[str] = "colorization"
    kind: ClassVar[TaskKind] = "reconstruction"

    decoder_width: int = 64
    """Channels after the decoder's first projection (halved at each upsampling block)."""

    def __post_init__(self) -> None:
        require(self.decoder_width >= 8, f"colorization: decoder_width must be >= 8, got {self.decoder_width}")

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        if images.shape[1] != 3:
            raise HeadstartError(
                "pretext task 'colorization' needs colour (3-channel) images; these have 1 channel, "
                "so there is no colour to rebuild. Choose another task (e.g. rotation, noise_level)."
            )
        grey = luminance(images).expand(-1, 3, -1, -1).contiguous()
        return grey, images

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        return Decoder(encoder.feature_channels, 3, stages=stages_for(encoder, image_size), width=self.decoder_width)

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        return head(encoder.feature_map(inputs), inputs.shape[-2:])

    def decode(self, outputs: Tensor) -> list[str]:
        means = outputs.mean(dim=(-2, -1)).tolist()
        return ["rgb≈(" + ",".join(f"{value:.2f}" for value in row) + ")" for row in means]
