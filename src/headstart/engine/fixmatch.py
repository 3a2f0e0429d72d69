"""FixMatch's unlabelled loss (Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with
Consistency and Confidence", NeurIPS 2020, eq. 4).

For each unlabelled image the network's class probabilities on a *weakly* augmented copy give a
hard pseudo-label ``argmax q``; images whose confidence ``max q`` reaches the threshold τ train the
network's prediction on a *strongly* augmented copy towards that label::

    ℓu = 1/(μB) Σ 1[max q_b ≥ τ] · H(argmax q_b, p(y | strong(u_b)))

averaged over all μB unlabelled images (those under the threshold count as zero), so the loss
grows as the network becomes confident. The paper's ablation (§5.2, CIFAR-10, 250 labels):
τ = 0.95 with hard labels gives the lowest error; lower thresholds admit more wrong labels,
higher ones too few. The share above the threshold is what a user watches: near 0 the stage is
supervised training, near 1 every unlabelled image teaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class PseudoLabels:
    """Hard pseudo-labels of a weakly augmented unlabelled batch and which ones pass the threshold."""

    labels: Tensor
    confidence: Tensor
    mask: Tensor

    @property
    def used(self) -> Tensor:
        """Share of the batch above the threshold (a 0-d float tensor)."""
        return self.mask.float().mean()


def pseudo_labels(weak_logits: Tensor, threshold: float) -> PseudoLabels:
    """``argmax`` of the softmax of ``weak_logits`` (no gradient) and the mask ``max ≥ threshold``."""
    with torch.no_grad():
        probabilities = weak_logits.detach().float().softmax(dim=1)
        confidence, labels = probabilities.max(dim=1)
    return PseudoLabels(labels, confidence, confidence >= threshold)


def unlabelled_loss(strong_logits: Tensor, pseudo: PseudoLabels) -> Tensor:
    """``ℓu``: cross-entropy of the strong copy against the pseudo-label, masked, averaged over the
    whole unlabelled batch (module docstring)."""
    per_image = F.cross_entropy(strong_logits, pseudo.labels, reduction="none")
    return (per_image * pseudo.mask.to(per_image.dtype)).mean()


__all__ = ["PseudoLabels", "pseudo_labels", "unlabelled_loss"]
