"""Losses of task heads, the optimizer of a stage, and its learning-rate schedule.

Task losses take logits and integer class labels; a head with one output is the binary case
(:mod:`headstart.heads` decides when a head gets one output and what its logit means).

Schedules are data (STYLE rule 4, as DINO's ``cosine_scheduler``): the multiplier of every
optimizer step is computed up front as an array whose length is asserted against the steps the
trainer will take, and stored in the stage record so the report can plot it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from headstart.config import OptimizerSpec
from headstart.errors import HeadstartError
from headstart.heads import class_probabilities, class_targets

if TYPE_CHECKING:
    from headstart.network import Network


def task_loss(kind: str, logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Loss of a task head's logits against integer class labels.

    ``cross_entropy``: softmax over classes. ``binary_cross_entropy``: one logit per class
    (sigmoid), targets one-hot — with a single output the label itself (two classes).
    ``mse`` / ``huber``: on probabilities against one-hot targets. The layout of targets and
    probabilities for a one-output head is :mod:`headstart.heads`' (``class_targets``,
    ``class_probabilities``).

    ``weight``: one weight per class (:func:`class_weights`). Each image's loss is multiplied by its
    class's weight and the batch's loss is the weighted mean, divided by the sum of the weights of the
    batch's images — what ``F.cross_entropy(weight=...)`` computes, applied alike to the other losses
    (an image's loss there is the mean over its outputs).
    """
    if kind == "cross_entropy":
        return F.cross_entropy(logits, labels, weight=weight)
    if kind not in ("binary_cross_entropy", "mse", "huber"):
        raise HeadstartError(f"unknown loss '{kind}'; expected cross_entropy, binary_cross_entropy, mse or huber")
    targets = class_targets(labels, logits)
    reduction = "mean" if weight is None else "none"
    if kind == "binary_cross_entropy":
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction=reduction)
    else:
        loss = F.mse_loss if kind == "mse" else F.huber_loss
        losses = loss(class_probabilities(logits), targets, reduction=reduction)
    if weight is None:
        return losses
    per_image = losses.reshape(len(labels), -1).mean(dim=1)
    weights = weight.to(per_image.dtype)[labels.long()]
    return (per_image * weights).sum() / weights.sum()


def class_weights(
    option: str | Sequence[float] | None, counts: Sequence[int], class_names: Sequence[str], where: str
) -> list[float] | None:
    """The task loss's weight of each class (in ``class_names`` order) for a stage's ``class_weights``
    option (:class:`~headstart.config.StageSpec`), given the labelled training images per class
    (``counts``): ``None`` for none; ``balanced``: n / (K × nₖ), n images in K classes, nₖ of class k
    (scikit-learn's ``compute_class_weight("balanced")``: every class then carries the same total
    weight, n / K); a list: itself, one weight per class. ``where`` names the option in errors
    (``stages[1].class_weights``)."""
    if option is None or option == "none":
        return None
    names = ", ".join(class_names)
    if option == "balanced":
        empty = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
        if empty:
            raise HeadstartError(
                f"{where}: balanced weighs a class by 1 / its labelled training images, and {', '.join(empty)} "
                "has none in this stage's labelled split; give the weights as a list or drop the option"
            )
        total, classes = sum(counts), len(counts)
        return [total / (classes * count) for count in counts]
    if isinstance(option, str):
        raise HeadstartError(f"{where}: {option!r} is not known; expected none, balanced or one weight per class")
    if len(option) != len(class_names):
        raise HeadstartError(
            f"{where}: {len(option)} weight{'s' if len(option) != 1 else ''} for {len(class_names)} classes "
            f"({names}); give one per class, in this order"
        )
    return [float(value) for value in option]


def learning_rate_factors(spec: OptimizerSpec, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """Learning-rate multiplier before each optimizer step and after the last one.

    Linear warm-up over ``warmup_epochs``, then constant or half-cosine decay to zero. The array
    has ``epochs × steps_per_epoch + 1`` entries: PyTorch's ``LambdaLR`` reads one at
    construction and one after every step.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise HeadstartError(f"a stage needs at least one epoch of one step (got {epochs} × {steps_per_epoch})")
    total = epochs * steps_per_epoch
    warmup = min(total, spec.warmup_epochs * steps_per_epoch)
    factors = np.ones(total + 1)
    if warmup:
        factors[:warmup] = np.arange(1, warmup + 1) / warmup
    if spec.schedule == "cosine":
        remaining = total + 1 - warmup
        factors[warmup:] = 0.5 * (1 + np.cos(np.pi * np.arange(remaining) / max(1, remaining - 1)))
    assert len(factors) == total + 1, (len(factors), total)
    return factors


class ScheduleFromArray(torch.optim.lr_scheduler.LambdaLR):
    """``LambdaLR`` over a precomputed array; stepping past its end is an error, not a silent clamp."""

    def __init__(self, optimizer: torch.optim.Optimizer, factors: np.ndarray) -> None:
        self.factors = [float(value) for value in factors]
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step >= len(self.factors):
            raise RuntimeError(
                f"learning-rate schedule of {len(self.factors) - 1} steps stepped to {step}: "
                "the trainer ran more steps than the stage planned"
            )
        return self.factors[step]


def resolved_lr(spec: OptimizerSpec) -> float:
    """The stage's learning rate: ``lr: find`` is replaced by the sweep's suggestion before training."""
    assert not isinstance(spec.lr, str), "lr: find must be resolved (headstart.lrfind) before the optimizer is built"
    return spec.lr


def parameter_groups(network: Network, spec: OptimizerSpec) -> list[dict[str, Any]]:
    """Optimizer groups holding exactly the trainable parameters, with per-group learning rates.

    ``spec.group_lr`` selectors are resolved by the network (group names or ``re:`` patterns);
    the first selector that matches a parameter gives its rate.
    """
    trainable = dict(network.trainable_parameters())
    assigned: dict[str, float] = {}
    for selector, rate in spec.group_lr.items():
        for name in network.select(selector):
            if name in trainable and name not in assigned:
                assigned[name] = rate
    by_rate: dict[float, list[Tensor]] = {}
    for name, parameter in trainable.items():
        rate = assigned[name] if name in assigned else resolved_lr(spec)
        by_rate.setdefault(rate, []).append(parameter)
    return [{"params": params, "lr": rate} for rate, params in by_rate.items()]


def build_optimizer(network: Network, spec: OptimizerSpec, stage_name: str) -> torch.optim.Optimizer:
    """The stage's optimizer over exactly the trainable parameters (refused when there are none)."""
    groups = parameter_groups(network, spec)
    if not groups:
        raise HeadstartError(f"stage '{stage_name}': every parameter is frozen; nothing to train")
    lr = resolved_lr(spec)
    if spec.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    adam = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return adam(groups, lr=lr, weight_decay=spec.weight_decay, fused=fusable(groups) or None)


FUSED_DEVICES = ("cpu", "cuda")


def fusable(groups: list[dict[str, Any]]) -> bool:
    """Whether Adam's fused kernel can update every parameter of ``groups``: floating point, on the
    CPU or a CUDA device. The fused kernel updates all of a step's tensors in one pass instead of a
    dozen small operations per tensor: on a 2-core CPU resnet10t's Adam step took about 17 ms of a
    120 ms step at batch 25, and the demo's rotation stage trains 1.11x faster fused
    (``bench/bench_fused_adam.py``). The optimizer's state is the same (``exp_avg``,
    ``exp_avg_sq``, ``step``), so checkpoints resume either way."""
    parameters = [parameter for group in groups for parameter in group["params"]]
    return all(parameter.is_floating_point() and parameter.device.type in FUSED_DEVICES for parameter in parameters)
