"""Whole-set passes in evaluation mode: backbone features for cached head stages, and test metrics.

A pass borrows the caller's network: it moves it to the pass's device and puts it in evaluation
mode (:func:`headstart.modes.evaluating`), and gives it back on the device and in the mode it
found it, also when the pass fails.

Both stream: batches come from :func:`~headstart.engine.batches.make_loader` (files decoded by
workers), so memory holds one batch of images at a time — for feature caching, plus the feature
matrix itself (``images × num_features`` float32: 20,000 images × 1,280 features ≈ 98 MiB).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassRecall

from headstart.engine.batches import Batchable, ImagePlan, make_loader
from headstart.engine.losses import task_loss
from headstart.heads import accuracy, predicted_classes
from headstart.imageops import resize, to_unit_range
from headstart.modes import evaluating

if TYPE_CHECKING:
    from headstart.network import Network

INFERENCE_BATCH = 64
"""Batch of the whole-set passes: larger batches are slower per image on CPU for mobile networks
(EfficientNet-Lite0 at 96 px: 4.9 ms/image at 32, 6.1 ms at 256)."""


def network_input(network: Network, pixels: Tensor, image_size: int | None, device: torch.device | str) -> Tensor:
    """Stored pixels of a batch → the network's input on ``device``: 0..1 floats resized to
    ``image_size``, channels adapted, normalised, channels-last (about 1.5× faster convolutions on
    CPU, EfficientNet-Lite0 at 96 px: 3.1 against 4.9 ms/image; the same values)."""
    images = resize(to_unit_range(pixels.to(device, non_blocking=True)), image_size, "stretch")
    return network.encoder(image_size).prepare(images).contiguous(memory_format=torch.channels_last)


def _loader(data: Batchable | ImagePlan, batch_size: int, pin_memory: bool):
    return make_loader(data, batch_size, seed=0, shuffle=False, pin_memory=pin_memory)


@contextmanager
def _borrowed(network: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """``network`` in evaluation mode on ``device`` for one pass, without gradients; afterwards (also
    after an exception) back on the device and in the mode it was found in."""
    found = next(iter(network.parameters()), None)
    home = found.device if found is not None else None
    with evaluating(network):
        try:
            yield network.to(device)
        finally:
            if home is not None:
                network.to(home)


def compute_features(
    network: Network,
    images: Batchable | ImagePlan,
    *,
    image_size: int | None,
    batch_size: int = INFERENCE_BATCH,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """What the head reads and the labels of every image, computed once in eval mode (streamed): pooled
    backbone features, or the full classifier's outputs for a network built with ``include_top``.
    The network is left on the device and in the mode it was found in."""
    features, labels = [], []
    with _borrowed(network, device):
        for pixels, batch_labels in _loader(images, batch_size, torch.device(device).type == "cuda"):
            features.append(network.head_input(network_input(network, pixels, image_size, device)).float().cpu())
            labels.append(batch_labels)
    if not features:
        return torch.zeros(0, network.head_in_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(features), torch.cat(labels)


def _class_metrics(num_classes: int) -> MetricCollection:
    """Balanced accuracy (``MulticlassAccuracy(average="macro")``: the mean of the per-class recalls),
    macro F1 and each class's recall, over predicted classes of ``max(2, num_classes)`` classes."""
    classes = max(2, num_classes)
    # a pass runs in one process (the test split is evaluated by the first process of a DDP run alone):
    # no gathering from the others, which would wait for processes that never call it
    return MetricCollection(
        {
            "balanced_accuracy": MulticlassAccuracy(classes, average="macro", sync_on_compute=False),
            "macro_f1": MulticlassF1Score(classes, average="macro", sync_on_compute=False),
            "recall": MulticlassRecall(classes, average=None, sync_on_compute=False),
        },
        compute_groups=False,
    )


def evaluate(
    network: Network,
    images: Batchable | ImagePlan,
    *,
    image_size: int | None,
    loss: str = "cross_entropy",
    batch_size: int = INFERENCE_BATCH,
    device: torch.device | str = "cpu",
    num_classes: int | None = None,
    predictions: bool = False,
) -> dict:
    """Loss and accuracy (:func:`headstart.heads.accuracy`) of the network's task head on a labelled
    set (streamed); with ``num_classes``, also its confusion matrix (``confusion[true][predicted]``
    counts), balanced accuracy (the mean of the per-class recalls), macro F1 and each class's recall
    (``recall``, a list in class order; ``None`` for a class with no image), computed by torchmetrics
    on the predicted classes (:func:`headstart.heads.predicted_classes`, so a one-sigmoid binary head
    counts as two classes); with ``predictions``, also the predicted class (:func:`headstart.heads.predicted_classes`)
    and the true class of every image, in the set's order (``predictions`` and ``targets``, lists of
    ints). The network is left on the device and in the mode it was found in."""
    total_loss, correct, count = 0.0, 0, 0
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.long)
    per_class = _class_metrics(num_classes) if num_classes else None
    predicted: list[Tensor] = []
    targets: list[Tensor] = []
    with _borrowed(network, device):
        for pixels, labels in _loader(images, batch_size, torch.device(device).type == "cuda"):
            target = labels.to(device)
            logits = network(network_input(network, pixels, image_size, device))
            total_loss += float(task_loss(loss, logits, target)) * len(target)
            correct += int(accuracy(logits, target, reduction="sum"))
            count += len(target)
            if num_classes or predictions:
                classes = predicted_classes(logits).cpu()
            if num_classes:
                pairs = target.long().cpu() * num_classes + classes
                confusion += torch.bincount(pairs, minlength=num_classes**2).view(num_classes, num_classes)
                assert per_class is not None
                per_class.update(classes, target.long().cpu())
            if predictions:
                predicted.append(classes)
                targets.append(target.long().cpu())
    metrics: dict = {"loss": total_loss / max(1, count), "accuracy": correct / max(1, count), "count": count}
    if num_classes:
        assert per_class is not None
        metrics["confusion"] = confusion.tolist()
        if count:
            scores = per_class.compute()
            metrics["balanced_accuracy"] = float(scores["balanced_accuracy"])
            metrics["macro_f1"] = float(scores["macro_f1"])
            support = confusion.sum(dim=1)
            metrics["recall"] = [
                float(value) if support[c] else None for c, value in enumerate(scores["recall"].tolist()[:num_classes])
            ]
    if predictions:
        metrics["predictions"] = torch.cat(predicted).tolist() if predicted else []
        metrics["targets"] = torch.cat(targets).tolist() if targets else []
    return metrics
