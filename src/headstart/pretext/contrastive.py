"""SimCLR: contrastive learning of visual representations (Chen, Kornblith, Norouzi & Hinton, ICML 2020).

Two random views of every image go through the backbone and a small projection head; the NT-Xent
loss (normalised temperature-scaled cross-entropy) makes each view pick its partner out of the
2N − 1 other views of the batch::

    ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ),   sim = cosine

averaged over all 2N views. The paper's findings that shape the defaults: the composition of
random crop and colour distortion is what makes the task hard enough (fig. 5); a non-linear
projection head helps the features underneath by more than 10 points of linear evaluation, and
the head is thrown away afterwards (fig. 8); ResNet-50 reaches 69.3% ImageNet top-1 under linear
evaluation (batch 4096, τ = 0.1, 1000 epochs), and fine-tuned on 1% of the labels 48.3% top-1
(table 7), where a supervised baseline gets 25.4%.

headstart uses lightly's ``SimCLRProjectionHead`` (two layers with BatchNorm, output 128) and
``NTXentLoss`` (τ = 0.5 by default, lightly's example setting for small batches) and draws the
views per batch on the device (:mod:`headstart.pretext.views`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headstart.heads import accuracy, predicted_classes
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require
from headstart.pretext.views import ViewOptions

SIMCLR_USEFUL_BATCH = 32
"""Images per batch below which a SimCLR stage logs a warning.

Chen et al. 2020 (§5.2, fig. 9) trained with 256 to 8192 images per batch: linear evaluation fell
as the batch shrank, most with short training (100 epochs), as each view is told from fewer
negatives (2N − 2 of them); they trained no smaller batch than 256. headstart draws its own line
lower, at 32 (62 negatives per view): a convention, not a value from the paper, set below the 64 to
256 images per batch its small-image CPU stages train with (at 128, a SimCLR stage on the 16-pixel
digits lifts the k-NN probe of the backbone above random weights). Batches of one are refused:
with no other image NT-Xent is exactly 0."""


def similarity_to_others(embeddings: Tensor) -> Tensor:
    """Cosine similarity of every row to every *other* row, ``[N, N]``, the diagonal ``−∞``: a
    score per candidate partner, read like logits (:func:`headstart.heads.predicted_classes`)."""
    normed = F.normalize(embeddings.float(), dim=1)
    similarity = normed @ normed.T
    return similarity.fill_diagonal_(-float("inf"))


def nearest_other(embeddings: Tensor) -> Tensor:
    """For each row, the index of the most similar *other* row (cosine)."""
    return predicted_classes(similarity_to_others(embeddings))


@dataclass(kw_only=True)
class SimCLRTask(ViewOptions, PretextTask):
    """Contrastive pretraining: each of two views of an image finds the other among the batch."""

    name: ClassVar[str] = "simclr"
    kind: ClassVar[TaskKind] = "embedding"
    loss_should_fall: ClassVar[bool] = True
    min_batch_size: ClassVar[int] = 2
    min_batch_reason: ClassVar[str] = (
        "NT-Xent tells each view's partner from the other images of the batch, and with one image there "
        "is none: the loss is exactly 0 and nothing is learned"
    )
    useful_batch_size: ClassVar[int] = SIMCLR_USEFUL_BATCH
    useful_batch_reason: ClassVar[str] = (
        "Chen et al. 2020, fig. 9: trained with 256 to 8192 images per batch, linear evaluation fell as the "
        "batch shrank; below 32 each view has fewer than 62 negatives"
    )

    temperature: float = 0.5
    """NT-Xent τ (the paper: 0.1 at batch 4096, 0.5 at small batches; lightly's default 0.5)."""
    projection_dim: int = 128
    hidden_dim: int | None = None
    """Width of the projection's hidden layer; default: the backbone's feature width (as the paper)."""

    def __post_init__(self) -> None:
        self.check(self.name)
        require(self.temperature > 0, f"simclr: temperature {self.temperature!r}: expected a positive number")
        require(self.projection_dim > 0, f"simclr: projection_dim {self.projection_dim!r}: expected a positive width")
        from lightly.loss import NTXentLoss

        self._criterion = NTXentLoss(temperature=self.temperature)

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Both views stacked, ``[2B, C, H, W]``; targets: the index of each view's partner."""
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        first, second = self.two_views(images, generator)
        batch = images.shape[0]
        partners = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(images.device)
        return torch.cat([first, second]), partners

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        from lightly.models.modules import SimCLRProjectionHead

        width = encoder.num_features
        return SimCLRProjectionHead(width, self.hidden_dim or width, self.projection_dim)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        first, second = outputs.chunk(2)
        return self._criterion(first, second)

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """``contrastive_accuracy``: share of views whose most similar other view is their partner;
        ``embedding_spread``: how far the projections spread over the sphere, about 1 when healthy
        and 0 when collapsed (:func:`headstart.pretext.diagnostics.embedding_spread`)."""
        from headstart.pretext.diagnostics import embedding_spread

        with torch.no_grad():
            return {
                "contrastive_accuracy": accuracy(similarity_to_others(outputs), targets).item(),
                "embedding_spread": embedding_spread(outputs),
            }

    def decode(self, outputs: Tensor) -> list[str]:
        """For each view, the view it finds most similar (``pair`` when that is its partner)."""
        partner = torch.cat([torch.arange(len(outputs) // 2, len(outputs)), torch.arange(len(outputs) // 2)])
        nearest = nearest_other(outputs).cpu()
        return [
            "nearest=pair" if int(n) == int(p) else f"nearest={int(n)}" for n, p in zip(nearest, partner, strict=True)
        ]


__all__ = ["SimCLRTask", "nearest_other", "similarity_to_others"]
