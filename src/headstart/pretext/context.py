"""Context prediction: where does this patch sit relative to that one? (Doersch, Gupta & Efros, ICCV 2015).

"Unsupervised Visual Representation Learning by Context Prediction" lays a 3×3 grid of patches on
an image, gives the network the centre patch and one of its 8 neighbours, and asks which of the 8
positions the neighbour came from (labels in reading order: top-left, top, top-right, left,
right, bottom-left, bottom, bottom-right). Answering needs object parts and their layout: an ear
sits above an eye.

The paper found three shortcuts and closed them, and so does this task:

* **continuity of texture and lines across the border** — a gap between patches of about half the
  patch width (96-pixel patches, 48-pixel gap: ``gap_fraction`` = 0.5);
* **exact alignment** — each patch is jittered independently by up to 7 pixels
  (``jitter_fraction`` = 7/96 of the patch side);
* **chromatic aberration** — lenses shift green against magenta towards the image centre, which
  tells the network a patch's absolute position. *Colour dropping*: two of the three colour
  channels of each patch are replaced by Gaussian noise with about 1/100 of the remaining
  channel's standard deviation (here centred on that channel's mean).
  :func:`headstart.pretext.diagnostics.context_shortcut_check` measures whether a trained network
  still leans on colour.

Sizes scale with the image: by default the patch side is the largest that fits three patches, two
gaps and the jitter margins, ``floor(side / (3 + 2·gap_fraction + 2·jitter_fraction))`` — 54 px
with a 27 px gap and 3 px jitter on 224 px images, 7 px on 32 px ones. The grid itself is placed at
a random position that keeps it inside the image.

The network has two branches with shared weights — the encoder applied to each patch — whose
pooled features are concatenated and classified by fully connected layers, as in the paper
(which fused AlexNet branches with 4096-wide fully connected layers; ``hidden_features`` scales
that down). Only the encoder is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from headstart.heads import predicted_classes
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require

NEIGHBOURS = ("top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right")
"""Label ``i`` → position of the neighbour relative to the base (centre) patch."""
GRID_CELLS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))
"""Label ``i`` → (row, column) of the neighbour in the 3×3 grid; the base patch is (1, 1)."""


class ContextLayout(NamedTuple):
    """Where the two patches of each sample were cut (top-left corners, in pixels) and the label."""

    base_top: Tensor
    base_left: Tensor
    neighbour_top: Tensor
    neighbour_left: Tensor
    labels: Tensor


class Geometry(NamedTuple):
    patch: int
    gap: int
    jitter: int


def crop(images: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """Square crops ``[B, C, size, size]`` with a per-sample corner, by one advanced-indexing gather."""
    span = torch.arange(size, device=images.device)
    rows = (top[:, None] + span)[:, :, None]
    columns = (left[:, None] + span)[:, None, :]
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    return images[batch, :, rows, columns].permute(0, 3, 1, 2)


def drop_colors(patches: Tensor, generator: torch.Generator, noise_fraction: float = 0.01) -> Tensor:
    """Keep one random channel of each RGB patch; replace the other two with faint Gaussian noise.

    ``patches``: ``[..., 3, h, w]``. The noise has ``noise_fraction`` of the kept channel's standard
    deviation and its mean, as in Doersch et al.'s colour dropping.
    """
    leading = patches.shape[:-3]
    kept = torch.randint(0, 3, leading, generator=generator, device=patches.device)
    noise = torch.randn(patches.shape, generator=generator, device=patches.device, dtype=patches.dtype)
    index = kept[..., None, None, None].expand(*leading, 1, *patches.shape[-2:])
    channel = patches.gather(-3, index)
    mean = channel.mean(dim=(-2, -1), keepdim=True)
    spread = channel.std(dim=(-2, -1), keepdim=True) * noise_fraction
    keep = nn.functional.one_hot(kept, 3).bool()[..., None, None]
    return torch.where(keep, patches, mean + spread * noise)


class PairHead(nn.Module):
    """Fully connected layers on the concatenated features of several shared-weight branches."""

    def __init__(self, branches: int, features: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(branches * features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, outputs),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features.flatten(1))


def branch_features(encoder: Encoder, inputs: Tensor) -> Tensor:
    """Apply the encoder to every branch of ``[B, K, C, h, w]``: ``[B, K, num_features]`` (shared weights)."""
    batch, branches = inputs.shape[:2]
    return encoder.pooled(inputs.flatten(0, 1)).view(batch, branches, -1)


@dataclass(kw_only=True)
class ContextTask(PretextTask):
    """8-way classification of the neighbour's position; inputs are pairs ``[B, 2, C, p, p]``."""

    name: ClassVar[str] = "context"
    kind: ClassVar[TaskKind] = "classification"

    patch_size: int | None = None
    """Patch side in pixels (paper: 96 on images of 150k–450k pixels); None = largest that fits."""
    gap_fraction: float = 0.5
    """Gap between neighbouring patches as a fraction of the patch side (paper: 48/96)."""
    jitter_fraction: float = 7 / 96
    """Largest per-patch shift as a fraction of the patch side (paper: 7 px of 96)."""
    color_dropping: bool = True
    """Drop two of three colour channels per patch (against chromatic aberration); RGB only."""
    hidden_features: int = 256
    """Width of the fully connected layer after concatenation (paper: 4096)."""

    def __post_init__(self) -> None:
        require(self.gap_fraction >= 0, f"context: gap_fraction must be >= 0, got {self.gap_fraction}")
        require(self.jitter_fraction >= 0, f"context: jitter_fraction must be >= 0, got {self.jitter_fraction}")
        require(
            self.patch_size is None or self.patch_size >= 2, f"context: patch_size must be >= 2, got {self.patch_size}"
        )
        require(self.hidden_features >= 1, f"context: hidden_features must be >= 1, got {self.hidden_features}")

    @property
    def num_outputs(self) -> int:
        return len(NEIGHBOURS)

    def geometry(self, image_size: tuple[int, int]) -> Geometry:
        """Patch side, gap and jitter in pixels for images of ``image_size``."""
        side = min(int(image_size[0]), int(image_size[1]))
        patch = self.patch_size or int(side // (3 + 2 * self.gap_fraction + 2 * self.jitter_fraction))
        gap, jitter = round(self.gap_fraction * patch), int(self.jitter_fraction * patch)
        require(
            patch >= 2 and 3 * patch + 2 * gap + 2 * jitter <= side,
            f"context: a 3x3 grid of {patch}px patches with {gap}px gaps and {jitter}px jitter does not fit "
            f"in {image_size[0]}x{image_size[1]} images; lower patch_size or use larger images",
        )
        return Geometry(patch, gap, jitter)

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        patch = self.geometry(image_size).patch
        return (patch, patch)

    def layout(self, batch: int, image_size: tuple[int, int], generator: torch.Generator, device) -> ContextLayout:
        """Draw labels, grid positions and jitters for ``batch`` images (the first draws of :meth:`alter`)."""
        patch, gap, jitter = self.geometry(image_size)
        step = patch + gap
        extent = 3 * patch + 2 * gap
        labels = torch.randint(0, len(NEIGHBOURS), (batch,), generator=generator, device=device)
        origin = []
        for side in image_size:
            room = int(side) - extent - 2 * jitter
            origin.append(jitter + torch.randint(0, room + 1, (batch,), generator=generator, device=device))
        shifts = torch.randint(-jitter, jitter + 1, (4, batch), generator=generator, device=device)
        cells = torch.tensor(GRID_CELLS, device=device)[labels]
        return ContextLayout(
            base_top=origin[0] + step + shifts[0],
            base_left=origin[1] + step + shifts[1],
            neighbour_top=origin[0] + cells[:, 0] * step + shifts[2],
            neighbour_left=origin[1] + cells[:, 1] * step + shifts[3],
            labels=labels,
        )

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        size = (images.shape[-2], images.shape[-1])
        patch = self.geometry(size).patch
        where = self.layout(images.shape[0], size, generator, images.device)
        pairs = torch.stack(
            [
                crop(images, where.base_top, where.base_left, patch),
                crop(images, where.neighbour_top, where.neighbour_left, patch),
            ],
            dim=1,
        )
        if self.color_dropping and images.shape[1] == 3:
            pairs = drop_colors(pairs, generator)
        return pairs, where.labels

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        return PairHead(2, encoder.num_features, self.hidden_features, self.num_outputs)

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        """Shared-weight branches: the encoder on base and neighbour, features concatenated, then ``head``."""
        return head(branch_features(encoder, inputs))

    def decode(self, outputs: Tensor) -> list[str]:
        return [f"patch={NEIGHBOURS[i]}" for i in predicted_classes(outputs).tolist()]
