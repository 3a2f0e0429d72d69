"""Jigsaw puzzles: which shuffle of the 3×3 tiles is this? (Noroozi & Favaro, ECCV 2016).

"Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles" cuts a 225×225 crop
into a 3×3 grid of 75×75 cells, takes a random 64×64 tile inside each cell (so neighbouring tiles
are separated by gaps of random width and edges do not line up), shuffles the tiles by one
permutation from a fixed set, and trains the network to name the permutation. Transferred to
PASCAL VOC 2007 the features reached 67.6% mAP in classification, 53.2% mAP in detection and
37.6% mean IU in segmentation, the best unsupervised results at the time.

**The permutation set.** The paper picks 1000 of the 9! = 362,880 permutations greedily so that
they are far apart in Hamming distance (its Algorithm 1: start from a random permutation, then
repeatedly add the permutation with the largest average Hamming distance to those chosen), and
reports that transfer improves with the size of the set and with its average Hamming distance.
The same greedy selection runs here, seeded by ``permutation_seed`` so every run uses the same
set, with 100 permutations by default: on small images and small networks a 1000-way problem
stays near chance for long. Raise ``permutations`` towards 1000 for ImageNet-sized data.

**Shared-weight branches, not a shuffled image.** Each tile goes through the encoder on its own
(the paper's "context-free network"); the nine pooled feature vectors are concatenated in the
shuffled order and classified by fully connected layers. Feeding the whole reassembled image
instead would let early convolutions compare pixels across tile borders — exactly the low-level
edge-continuity shortcut the gaps are there to remove — and would let the receptive field see
several tiles before the network has described any one of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from headstart.heads import predicted_classes
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require
from headstart.pretext.context import PairHead, branch_features

TILES = 9
TILE_FRACTION = 64 / 75
"""Tile side over cell side in the paper (64-pixel tiles in 75-pixel cells)."""


@lru_cache(maxsize=1)
def _every_permutation() -> Tensor:
    """All 9! = 362,880 orders of the nine tiles, lexicographic, ``[362880, 9]`` int8."""
    flat = itertools.chain.from_iterable(itertools.permutations(range(TILES)))
    return torch.from_numpy(np.fromiter(flat, dtype=np.int8, count=362_880 * TILES).reshape(-1, TILES))


@lru_cache(maxsize=8)
def maximal_hamming_permutations(count: int, seed: int = 0) -> Tensor:
    """``count`` permutations of 9 tiles, greedily chosen for maximal average Hamming distance.

    Noroozi & Favaro's Algorithm 1: the first permutation is drawn at random (seeded), then each
    step adds the permutation whose summed Hamming distance to those already chosen is largest
    (ties go to the first in lexicographic order). Returns a ``[count, 9]`` long tensor on the CPU.
    """
    require(2 <= count <= 362_880, f"jigsaw: number of permutations must be in 2..362880, got {count}")
    every = _every_permutation()
    generator = torch.Generator().manual_seed(seed)
    chosen = [int(torch.randint(0, every.shape[0], (1,), generator=generator))]
    total = torch.zeros(every.shape[0], dtype=torch.int64)
    taken = torch.zeros(every.shape[0], dtype=torch.bool)
    taken[chosen[0]] = True
    for _ in range(count - 1):
        total += (every != every[chosen[-1]]).sum(dim=1)
        following = int(total.masked_fill(taken, -1).argmax())
        chosen.append(following)
        taken[following] = True
    return every[chosen].long()


@dataclass(kw_only=True)
class JigsawTask(PretextTask):
    """Classify which of ``permutations`` shuffles the nine tiles; inputs are ``[B, 9, C, t, t]``.

    Slot ``i`` of the input holds the tile from grid cell ``permutation[i]`` (cells in reading
    order), so ``restored[:, permutation] = inputs`` puts the tiles back.
    """

    name: ClassVar[str] = "jigsaw"
    kind: ClassVar[TaskKind] = "classification"

    permutations: int = 100
    """Size of the permutation set (paper: 1000)."""
    permutation_seed: int = 0
    """Seed of the greedy selection; the same seed gives the same set everywhere."""
    tile_fraction: float = TILE_FRACTION
    """Tile side over grid-cell side (paper: 64/75); 1 leaves no gap between tiles."""
    hidden_features: int = 256
    """Width of the fully connected layer after concatenation (paper: 4096)."""

    def __post_init__(self) -> None:
        require(0 < self.tile_fraction <= 1, f"jigsaw: tile_fraction must be in (0, 1], got {self.tile_fraction}")
        require(
            2 <= self.permutations <= 362_880, f"jigsaw: permutations must be in 2..362880, got {self.permutations}"
        )
        require(self.hidden_features >= 1, f"jigsaw: hidden_features must be >= 1, got {self.hidden_features}")

    @property
    def num_outputs(self) -> int:
        return self.permutations

    @property
    def permutation_table(self) -> Tensor:
        """``[permutations, 9]``: row ``k`` is the shuffle of label ``k``."""
        return maximal_hamming_permutations(self.permutations, self.permutation_seed).clone()

    def cell_and_tile(self, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(cell height, cell width, tile side) in pixels."""
        cell_height, cell_width = int(image_size[0]) // 3, int(image_size[1]) // 3
        tile = max(1, int(self.tile_fraction * min(cell_height, cell_width)))
        require(tile >= 2, f"jigsaw: images of {image_size[0]}x{image_size[1]} give tiles under 2 px")
        return cell_height, cell_width, tile

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        tile = self.cell_and_tile(image_size)[2]
        return (tile, tile)

    def tiles(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """The nine tiles in grid order ``[B, 9, C, t, t]``, each at a random place in its cell."""
        batch = images.shape[0]
        cell_height, cell_width, tile = self.cell_and_tile((images.shape[-2], images.shape[-1]))
        device = images.device
        cells = torch.arange(TILES, device=device)
        shift_top = torch.randint(0, cell_height - tile + 1, (batch, TILES), generator=generator, device=device)
        shift_left = torch.randint(0, cell_width - tile + 1, (batch, TILES), generator=generator, device=device)
        top = (cells // 3) * cell_height + shift_top
        left = (cells % 3) * cell_width + shift_left
        span = torch.arange(tile, device=device)
        rows = (top[..., None] + span)[:, :, :, None]
        columns = (left[..., None] + span)[:, :, None, :]
        index = torch.arange(batch, device=device)[:, None, None, None]
        return images[index, :, rows, columns].permute(0, 1, 4, 2, 3)

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        labels = torch.randint(0, self.permutations, (images.shape[0],), generator=generator, device=images.device)
        tiles = self.tiles(images, generator)
        order = self.permutation_table.to(images.device)[labels]
        shuffled = tiles[torch.arange(images.shape[0], device=images.device)[:, None], order]
        return shuffled, labels

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        return PairHead(TILES, encoder.num_features, self.hidden_features, self.num_outputs)

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        """Nine shared-weight branches: the encoder on each tile, features concatenated in slot order."""
        return head(branch_features(encoder, inputs))

    def decode(self, outputs: Tensor) -> list[str]:
        return [f"perm={i}" for i in predicted_classes(outputs).tolist()]
