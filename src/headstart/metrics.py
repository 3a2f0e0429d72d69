"""What a comparison is judged on: accuracy, balanced accuracy and macro F1 from confusion matrices.

On a folder of 900 cats and 40 foxes a network that never says "fox" has accuracy 0.96 and
balanced accuracy 0.50 (the mean of the per-class recalls). Every run records its test confusion
matrix; :func:`class_metrics` computes the three metrics and each class's recall from it with
torchmetrics' conventions, and :func:`choose_metric` picks the one a comparison is judged on
(``metric: auto``: balanced accuracy when the labelled training classes are imbalanced beyond
:data:`IMBALANCE_RATIO`, else accuracy). The verdicts themselves are :mod:`headstart.verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np

IMBALANCE_RATIO = 1.5
"""``metric: auto`` judges on balanced accuracy when the largest labelled training class has more than
this many images per image of the smallest (:func:`choose_metric`). Two classes at r : 1 let a network
that never predicts the small one score r / (1 + r) in accuracy against 0.5 in balanced accuracy:
0.60 at 1.5, near chance and read as such, but 0.75 at 3 and 0.96 at 22.5 (900 cats against 40
foxes), numbers that pass for a working model. Stratified splits of balanced sources stay well
below 1.5 (``digits``: 1.05; MNIST 5k and any label budget: 1.0), so their comparisons keep
accuracy, the plainer number."""

Metric = Literal["accuracy", "balanced_accuracy", "macro_f1"]
"""A metric a comparison is judged on (:data:`METRICS`)."""
METRICS: dict[str, str] = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro F1"}
"""The metrics a comparison can be judged on, and how a sentence names them."""


def confusion_matrix(
    predicted: Sequence[int] | np.ndarray, targets: Sequence[int] | np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """``confusion[true][predicted]`` counts of one network's predictions (classes 0 .. K − 1; K is
    ``num_classes``, else one more than the largest class seen)."""
    target = np.asarray(targets, dtype=np.int64)
    guess = np.asarray(predicted, dtype=np.int64)
    if target.shape != guess.shape:
        raise ValueError(f"predictions of {guess.size} images for {target.size} targets")
    k = num_classes or int(max(target.max(initial=-1), guess.max(initial=-1)) + 1)
    return np.bincount(target * k + guess, minlength=k * k).reshape(k, k)


def metric_scores(metric: str, confusions: np.ndarray) -> np.ndarray:
    """``metric`` of each confusion matrix of a stack (``[..., true, predicted]``), as torchmetrics
    computes it: a class's recall or F1 is 0 where its denominator is, and the macro mean leaves out
    classes that are neither in the targets nor in the predictions."""
    counts = np.asarray(confusions, dtype=float)
    hits = np.diagonal(counts, axis1=-2, axis2=-1)
    if metric == "accuracy":
        return hits.sum(-1) / np.maximum(counts.sum(axis=(-2, -1)), 1.0)
    support, predicted = counts.sum(-1), counts.sum(-2)
    if metric == "balanced_accuracy":
        per_class = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    elif metric == "macro_f1":
        per_class = np.divide(2 * hits, support + predicted, out=np.zeros_like(hits), where=support + predicted > 0)
    else:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    present = (support + predicted) > 0
    return (per_class * present).sum(-1) / np.maximum(present.sum(-1), 1)


def class_metrics(confusion: Sequence[Sequence[int]] | np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy (the mean of the per-class recalls), macro F1 and each class's
    recall from one confusion matrix (``[true][predicted]`` counts), as torchmetrics'
    ``MulticlassAccuracy(average="micro" | "macro")``, ``MulticlassF1Score(average="macro")`` and
    ``MulticlassRecall(average=None)`` compute them; ``recall`` is ``None`` for a class with no image
    (torchmetrics says 0). How run.json files written before these were recorded get them."""
    counts = np.asarray(confusion, dtype=np.int64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"a confusion matrix is square, got shape {counts.shape}")
    support = counts.sum(1)
    return {
        **{metric: float(metric_scores(metric, counts)) for metric in METRICS},
        "recall": [float(counts[c, c] / support[c]) if support[c] else None for c in range(len(support))],
    }


def choose_metric(
    choice: str, class_counts: dict[str, int] | None, *, ratio: float = IMBALANCE_RATIO
) -> tuple[Metric, str]:
    """The metric a comparison is judged on and the sentence that says why: ``choice`` itself unless it
    is ``auto``; then balanced accuracy when the largest of the labelled training ``class_counts`` is
    more than ``ratio`` (:data:`IMBALANCE_RATIO`) times the smallest, else accuracy (also when the
    counts were not recorded: runs of an earlier version were judged on accuracy)."""
    if choice != "auto":
        if choice not in METRICS:
            raise ValueError(f"unknown metric {choice!r}; expected auto or one of {', '.join(METRICS)}")
        return cast(Metric, choice), f"judged on {METRICS[choice]}: the comparison file asks for it (metric: {choice})"
    if not class_counts:
        return "accuracy", "judged on accuracy: the runs did not record their labelled class counts"
    largest = max(class_counts, key=lambda name: class_counts[name])
    smallest = min(class_counts, key=lambda name: class_counts[name])
    big, small = class_counts[largest], class_counts[smallest]
    counts = f"{big:,} ({largest}) against {small:,} ({smallest})"
    if small == 0 or big > ratio * small:
        return "balanced_accuracy", f"judged on balanced accuracy: the labelled classes are imbalanced, {counts}"
    if big == small:
        return "accuracy", f"judged on accuracy: the labelled classes are balanced, {big:,} image(s) in each"
    return "accuracy", (f"judged on accuracy: the labelled classes are balanced within {ratio:g} : 1, {counts}")


def imbalance(class_counts: dict[str, int] | None) -> float:
    """Largest over smallest of ``class_counts`` (``inf`` when a class has none; 1 for none given)."""
    if not class_counts:
        return 1.0
    small = min(class_counts.values())
    return math.inf if small == 0 else max(class_counts.values()) / small


__all__ = [
    "IMBALANCE_RATIO",
    "METRICS",
    "Metric",
    "choose_metric",
    "class_metrics",
    "confusion_matrix",
    "imbalance",
    "metric_scores",
]
