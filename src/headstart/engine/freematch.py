"""FreeMatch's self-adaptive thresholds and fairness term (Wang et al., "FreeMatch: Self-adaptive
Thresholding for Semi-supervised Learning", ICLR 2023).

FixMatch's fixed threshold τ = 0.95 (:mod:`headstart.engine.fixmatch`) admits few pseudo-labels
while the network is unsure: with one or a few labels per class most unlabelled images teach nothing
for a long time, and those that do crowd into the classes the network already favours. FreeMatch
lets the threshold follow the network's own learning status (self-adaptive thresholding, SAT, §3.2):

* a **global** threshold ``τ_t``, the running mean of the network's confidence ``max q`` on weakly
  augmented unlabelled images (eq. 5; starts at ``1/C``: early on, most pseudo-labels are used);
* a **local** (per class) scaling: ``p̃_t(c)``, the running mean of the predicted probability of
  class ``c``; class ``c``'s threshold is ``τ_t · p̃_t(c) / max_c' p̃_t(c')`` (eq. 6–7), lower for
  the classes the network predicts less, so they get pseudo-labels too.

Its self-adaptive fairness term (SAF, §3.3) discourages collapsing onto a few classes: with
``p̄`` the mean prediction and ``h̄`` the histogram of the predicted classes over the strong copies
that passed their threshold, and ``h̃_t`` the running histogram of the weak copies' predictions, it
is the negative cross-entropy ``−H(norm(p̃_t / h̃_t), norm(p̄ / h̄))`` (eq. 9–10), added with weight
``w_f``. The running averages use momentum λ (0.999 in the paper) and are buffers, so a stage's
checkpoint carries them and a resumed stage continues with them.

The paper reports that FreeMatch cuts the error of FlexMatch (the best before it) by 5.78 points on
CIFAR-10 with 1 label per class, 13.59 on STL-10 with 4 labels per class, and 1.28 on ImageNet with
100 labels per class.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from headstart.engine.fixmatch import PseudoLabels


class SelfAdaptiveThreshold(nn.Module):
    """FreeMatch's global and per-class thresholds from running averages (module docstring).

    ``classes``: number of classes; ``momentum``: λ of the running averages; ``reduce`` averages a
    batch's statistics over processes (the identity on one process), so every process keeps the
    same thresholds.
    """

    confidence: Tensor
    class_probability: Tensor
    histogram: Tensor

    def __init__(self, classes: int, momentum: float = 0.999, reduce: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        if classes < 2 or not 0 <= momentum < 1:
            raise ValueError(
                f"self-adaptive thresholds need 2 or more classes and 0 <= momentum < 1, got {classes}, {momentum}"
            )
        self.momentum = momentum
        self.reduce = reduce
        self.register_buffer("confidence", torch.tensor(1.0 / classes))
        self.register_buffer("class_probability", torch.full((classes,), 1.0 / classes))
        self.register_buffer("histogram", torch.full((classes,), 1.0 / classes))

    def class_thresholds(self) -> Tensor:
        """``τ_t · p̃_t(c) / max p̃_t``: the confidence each class's pseudo-label needs now."""
        return self.confidence * self.class_probability / self.class_probability.max()

    def forward(self, weak_logits: Tensor) -> PseudoLabels:
        """Update the running averages with this batch's weak predictions, then return the hard
        pseudo-labels and which pass their class's threshold (no gradient)."""
        with torch.no_grad():
            probabilities = weak_logits.detach().float().softmax(dim=1)
            confidence, labels = probabilities.max(dim=1)
            classes = probabilities.shape[1]
            counts = torch.bincount(labels, minlength=classes).float()
            statistics = torch.cat([confidence.mean().reshape(1), probabilities.mean(dim=0), counts / counts.sum()])
            if self.reduce is not None:
                statistics = self.reduce(statistics)
            keep = self.momentum
            self.confidence.mul_(keep).add_(statistics[0], alpha=1 - keep)
            self.class_probability.mul_(keep).add_(statistics[1 : 1 + classes], alpha=1 - keep)
            self.histogram.mul_(keep).add_(statistics[1 + classes :], alpha=1 - keep)
            mask = confidence >= self.class_thresholds()[labels]
        return PseudoLabels(labels, confidence, mask)


def _sum_normalised(values: Tensor) -> Tensor:
    return values / values.sum()


def _inverse(histogram: Tensor) -> Tensor:
    """``1 / h`` per class, 0 for a class the histogram never saw."""
    return torch.where(histogram > 0, 1.0 / histogram.clamp_min(1e-12), torch.zeros_like(histogram))


def fairness_loss(strong_logits: Tensor, pseudo: PseudoLabels, threshold: SelfAdaptiveThreshold) -> Tensor:
    """FreeMatch's self-adaptive fairness term ``−H(norm(p̃/h̃), norm(p̄/h̄))`` over the strong copies
    whose pseudo-labels passed (module docstring); zero when none did. Classes absent from the
    histogram weigh nothing (their ``1/h`` is taken as 0)."""
    if not bool(pseudo.mask.any()):
        return strong_logits.sum() * 0.0
    probabilities = strong_logits[pseudo.mask].float().softmax(dim=1)
    classes = probabilities.shape[1]
    histogram = _sum_normalised(torch.bincount(probabilities.argmax(dim=1), minlength=classes).float())
    batch = _sum_normalised(probabilities.mean(dim=0) * _inverse(histogram))
    target = _sum_normalised(threshold.class_probability * _inverse(threshold.histogram)).detach()
    return (target * torch.log(batch + 1e-12)).sum()


__all__ = ["SelfAdaptiveThreshold", "fairness_loss"]
