"""The chapter's tables 2-1 and 2-2 on an offline task: EfficientNet-Lite0 (ImageNet) → MNIST-5k.

Victims are built the way Rezaei & Liu's ``re-train.py`` builds them: K classes drawn at random
(here K of the 10 digits; their K of 19 LFW identities), the public backbone frozen, and 1, 2 or 3
new dense layers (hidden layers as wide as the feature layer: their 4096 = VGG-Face's fc7, our
1280) trained with RMSprop at 1e-4, batch 32, 20 epochs. Their ± is over such victims (one random
draw of classes per run); here each (K, layers) cell has ``seeds`` victims and every victim is
measured over random neuron orders, and the cell pools both (mean ± std over victims × orders).

Two defences are measured on the same victims, each with its clean test accuracy:

* **full fine-tuning** — the whole network, backbone and BatchNorm statistics included, trained
  further on the images (their ``RetrainAllLayers = True``), so its features drift away from the
  public ones the attacker crafts on;
* **feature range restriction** — the head reads the features clipped to the range seen on the
  training images (per neuron), the test-time bound of Ranger (Chen et al., DSN 2021) applied to
  the layer this attack drives to extreme values. It changes no weight and costs one ``clamp``.

Cost: frozen-backbone victims train on features computed once (one pass over the 5,000 images),
so a victim is a few seconds of head training; only the fine-tuned victims pass images through
the backbone. Crafting depends only on the public backbone, so it runs once and every victim is
then only queried, as a black box, right after it is built (one victim in memory at a time).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from headstart.audit import AuditResult, QueryOnly, attack_metrics, craft, query
from headstart.audit.craft import AttackConfig, PublicFeatures
from headstart.audit.metrics import AttackMetrics, pool_metrics
from headstart.heads import HeadSpec, accuracy, build_head
from headstart.imageops import normalize
from headstart.modes import evaluating

DIGITS = 10


@dataclass(frozen=True)
class VictimConfig:
    """How the victims are built (defaults: Rezaei & Liu's ``re-train.py`` where it applies)."""

    image_size: int = 64
    """Side of the MNIST images (28 px, grey, resized and replicated to RGB); 64 px → a 2×2 feature map."""
    class_counts: tuple[int, ...] = (5, 10)
    layer_counts: tuple[int, ...] = (1, 2, 3)
    seeds: int = 5
    """Victims per (classes, layers) cell, each with its own random classes, split and initialisation."""
    hidden: int | None = None
    """Units of each added hidden layer; ``None``: the feature width (the paper: 4096, fc7's width)."""
    head_epochs: int = 20
    head_lr: float = 1e-4
    head_batch: int = 32
    """The paper's head training: RMSprop(lr=1e-4), 20 epochs, batch 32."""
    fine_tune_seeds: int = 1
    """Victims per cell that are also fully fine-tuned (the expensive defence)."""
    fine_tune_epochs: int = 2
    fine_tune_batch: int = 64
    fine_tune_lr: float = 1e-4
    """Whole-network fine-tuning from the trained head: Adam at 1e-4, batch 64 (the paper's alternative
    optimiser; RMSprop's first steps, unscaled by a warm second moment, are large for a whole network)."""
    clip_features: bool = True
    """Also measure the feature-range-restriction defence on every frozen victim."""


class ClipFeatures(nn.Module):
    """Clamp pooled features to ``[low, high]`` per neuron before the head (range restriction)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, head: nn.Module) -> None:
        super().__init__()
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())
        self.head = head
        self.spec = getattr(head, "spec", None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        high, low = cast(torch.Tensor, self.high), cast(torch.Tensor, self.low)  # buffers
        return self.head(torch.maximum(torch.minimum(features, high), low))


@dataclass
class Victim:
    name: str
    classes: int
    layers: int
    defence: str
    seed: int
    digits: list[int]
    """The digits this victim classifies, in output order."""
    clean_accuracy: float
    seconds: float
    """Time to build the victim (training and its clean evaluation)."""
    network: nn.Module | None = field(default=None, repr=False)
    """Dropped once the victim has been queried (one victim in memory at a time)."""


@dataclass
class Cell:
    """One row of the table: every victim of a (classes, layers, defence), pooled."""

    classes: int
    layers: int
    defence: str
    victims: int
    clean_accuracy: tuple[float, float]
    metrics: AttackMetrics

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "layers": self.layers,
            "defence": self.defence,
            "victims": self.victims,
            "clean_accuracy": self.clean_accuracy,
            "metrics": self.metrics.to_dict(),
        }


def mnist_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-5k as 0..1 RGB images at ``image_size`` (grey replicated) and labels."""
    from headstart.data.builtin import load_mnist5k

    images = load_mnist5k(image_size=image_size, channels=3)
    pixels, labels = images.as_tensors()
    return pixels.float(), labels.long()


def choose_task(
    labels: torch.Tensor, classes: int, seed: int
) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``classes`` digits drawn at random (all ten for 10), an 80/20 split of their images, labels 0..K-1."""
    generator = torch.Generator().manual_seed(seed)
    digits = sorted(torch.randperm(DIGITS, generator=generator)[:classes].tolist())
    relabel = torch.full((DIGITS,), -1, dtype=torch.long)
    relabel[digits] = torch.arange(classes)
    chosen = (relabel[labels] >= 0).nonzero().flatten()
    chosen = chosen[torch.randperm(len(chosen), generator=generator)]
    cut = int(0.8 * len(chosen))
    return digits, chosen[:cut], chosen[cut:], relabel[labels]


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    layers: int,
    hidden: int,
    seed: int,
    epochs: int = 20,
    lr: float = 1e-4,
    batch_size: int = 32,
) -> nn.Module:
    """A dense head of ``layers`` layers (``layers - 1`` hidden of ``hidden`` units, ReLU) on fixed features."""
    torch.manual_seed(seed)
    head = build_head(HeadSpec(hidden=[hidden] * (layers - 1), outputs=classes), features.shape[1])
    optimizer = torch.optim.RMSprop(head.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        for indices in torch.randperm(len(features), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(head(features[indices]), labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def _head_accuracy(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Clean accuracy of a head on cached features (evaluation mode)."""
    with evaluating(head):
        return float(accuracy(head(features), labels))


def _accuracy(network, images: torch.Tensor, labels: torch.Tensor, mean, std, batch_size: int = 256) -> float:
    """Clean accuracy of a whole network on 0..1 images (evaluation mode, in batches)."""
    correct = 0
    with evaluating(network):
        for start in range(0, len(images), batch_size):
            batch = normalize(images[start : start + batch_size], mean, std)
            correct += int(accuracy(network(batch), labels[start : start + batch_size], reduction="sum"))
    return correct / len(images)


def fine_tune_all(
    network,
    images: torch.Tensor,
    labels: torch.Tensor,
    mean,
    std,
    seed: int,
    epochs: int = 2,
    lr: float = 1e-4,
    batch_size: int = 64,
) -> None:
    """Train every parameter (backbone included, BatchNorm statistics updating) on the images."""
    torch.manual_seed(seed)
    network.unfreeze("all")
    network.set_bn_policy("train")
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    for _ in range(epochs):
        for indices in torch.randperm(len(images), generator=generator).split(batch_size):
            if len(indices) < 2:  # BatchNorm in training mode needs two examples
                continue
            loss = nn.functional.cross_entropy(network(normalize(images[indices], mean, std)), labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    network.eval()


def cached_features(network, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The frozen backbone's pooled features of every image, in evaluation mode: what a frozen victim's head reads."""
    mean, std = network.preprocessing.mean, network.preprocessing.std
    with evaluating(network):
        return torch.cat(
            [
                network.pooled(
                    normalize(images[start : start + batch_size], mean, std).contiguous(
                        memory_format=torch.channels_last
                    )
                )
                for start in range(0, len(images), batch_size)
            ]
        )


def iter_victims(
    public,
    images: torch.Tensor,
    labels: torch.Tensor,
    features: torch.Tensor,
    config: VictimConfig = VictimConfig(),
    echo=print,
):
    """Yield every victim, built one at a time: frozen, clipped and (for the first seeds) fine-tuned."""
    mean, std = public.preprocessing.mean, public.preprocessing.std
    hidden = config.hidden or features.shape[1]
    frozen = copy.deepcopy(public).eval()  # the victims' backbone: the public weights, frozen
    frozen.freeze("backbone")
    for classes in config.class_counts:
        for seed in range(config.seeds):
            digits, train, test, task_labels = choose_task(labels, classes, seed)
            names = [str(digit) for digit in digits]
            for layers in config.layer_counts:
                started = time.perf_counter()
                head = train_head(
                    features[train],
                    task_labels[train],
                    classes,
                    layers,
                    hidden,
                    seed,
                    epochs=config.head_epochs,
                    lr=config.head_lr,
                    batch_size=config.head_batch,
                )
                accuracy = _head_accuracy(head, features[test], task_labels[test])
                frozen.replace_head(head, labels=names)
                frozen.eval()
                yield Victim(
                    f"{classes} classes (digits {''.join(names)}), {layers} new layer(s), backbone frozen",
                    classes,
                    layers,
                    "none",
                    seed,
                    digits,
                    accuracy,
                    time.perf_counter() - started,
                    frozen,
                )
                if config.clip_features:
                    started = time.perf_counter()
                    low, high = features[train].amin(0), features[train].amax(0)
                    clipped = ClipFeatures(low, high, head)
                    accuracy = _head_accuracy(clipped, features[test], task_labels[test])
                    frozen.replace_head(clipped, labels=names)
                    frozen.eval()
                    yield Victim(
                        f"{classes} classes (digits {''.join(names)}), {layers} new layer(s), features "
                        "clipped to the training range",
                        classes,
                        layers,
                        "feature clipping",
                        seed,
                        digits,
                        accuracy,
                        time.perf_counter() - started,
                        frozen,
                    )
                if seed < config.fine_tune_seeds and config.fine_tune_epochs:
                    started = time.perf_counter()
                    tuned = copy.deepcopy(public)
                    tuned.replace_head(copy.deepcopy(head), labels=names)
                    fine_tune_all(
                        tuned,
                        images[train],
                        task_labels[train],
                        mean,
                        std,
                        seed,
                        epochs=config.fine_tune_epochs,
                        lr=config.fine_tune_lr,
                        batch_size=config.fine_tune_batch,
                    )
                    accuracy = _accuracy(tuned, images[test], task_labels[test], mean, std)
                    seconds = time.perf_counter() - started
                    echo(
                        f"  fine-tuned {classes} classes, {layers} layer(s): {len(train)} images × "
                        f"{config.fine_tune_epochs} epochs in {seconds:.0f} s"
                    )
                    yield Victim(
                        f"{classes} classes (digits {''.join(names)}), {layers} new layer(s), whole network "
                        f"fine-tuned ({config.fine_tune_epochs} epochs)",
                        classes,
                        layers,
                        "full fine-tuning",
                        seed,
                        digits,
                        accuracy,
                        seconds,
                        tuned,
                    )


def pool_cells(results: list[dict]) -> list[Cell]:
    """Group per-victim results into table rows, keyed by (classes, layers, defence) in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for entry in results:
        victim = entry["victim"]
        groups.setdefault((victim.classes, victim.layers, victim.defence), []).append(entry)
    cells = []
    for (classes, layers, defence), entries in groups.items():
        accuracies = torch.tensor([entry["victim"].clean_accuracy for entry in entries], dtype=torch.float64)
        spread = float(accuracies.std(unbiased=False)) if len(accuracies) > 1 else 0.0
        cells.append(
            Cell(
                classes,
                layers,
                defence,
                len(entries),
                (float(accuracies.mean()), spread),
                pool_metrics([entry["result"].metrics for entry in entries]),
            )
        )
    order = {"none": 0, "feature clipping": 1, "full fine-tuning": 2}
    return sorted(cells, key=lambda cell: (cell.classes, order.get(cell.defence, 3), cell.layers))


def run_experiment(
    *,
    neurons: int | None = 256,
    victims: VictimConfig = VictimConfig(),
    config: AttackConfig = AttackConfig(clip=False),
    batch_size: int = 64,
    orders: int = 100,
    seed: int = 0,
    echo=print,
) -> dict:
    """Craft once on the public EfficientNet-Lite0, then build and query every victim; return every result."""
    from headstart.audit import _choose_neurons, public_backbone

    started = time.perf_counter()
    image_size = victims.image_size
    public = public_backbone("EfficientNetLite0")
    images, labels = mnist_images(image_size)
    clock = time.perf_counter()
    features = cached_features(public, images)
    feature_seconds = time.perf_counter() - clock
    echo(f"features of {len(images)} images at {image_size} px in {feature_seconds:.0f} s")
    attacker = PublicFeatures(public_backbone("EfficientNetLite0"))  # its own copy: never a victim's
    chosen = _choose_neurons(neurons, attacker.num_features, seed)
    echo(f"crafting {len(chosen)} inputs ({config.steps} steps, {image_size} px, batches of {batch_size}) ...")
    crafted = craft(
        attacker,
        chosen,
        image_size,
        config,
        batch_size=batch_size,
        progress=lambda done, total: echo(f"  crafted {done}/{total}") if done % (4 * batch_size) == 0 else None,
    )
    # craft() always reads the pooled features a head sees
    assert crafted.output_target is not None and crafted.output_largest_other is not None
    echo(
        f"crafted {len(chosen)} inputs in {crafted.seconds:.0f} s ({crafted.per_second:.2f} per second); the "
        f"victims' features see the chosen neuron at {float(crafted.output_target.median()):.2f} (median), the "
        f"largest other at {float(crafted.output_largest_other.median()):.2f}"
    )
    mean, std = attacker.network.preprocessing.mean, attacker.network.preprocessing.std
    results = []
    for victim in iter_victims(public, images, labels, features, victims, echo=echo):
        target = QueryOnly(victim.network)
        clock = time.perf_counter()
        probabilities = query(target, crafted, mean, std)
        metrics = attack_metrics(
            probabilities.numpy(), orders=orders, seed=seed, break_confidence=config.break_confidence
        )
        result = AuditResult(
            target=victim.name,
            backbone="EfficientNetLite0 (public ImageNet weights)",
            feature_layer=attacker.layer,
            image_size=image_size,
            metrics=metrics,
            probabilities=probabilities,
            crafted=crafted,
            labels=target.labels,
        )
        victim.network = None
        results.append({"victim": victim, "result": result, "query_seconds": time.perf_counter() - clock})
        echo(f"{victim.name}: clean accuracy {victim.clean_accuracy:.4f}; {metrics.row()}")
    cells = pool_cells(results)
    return {
        "results": results,
        "cells": cells,
        "seconds": time.perf_counter() - started,
        "crafted": crafted,
        "config": config,
        "victim_config": victims,
        "neurons": len(chosen),
        "image_size": image_size,
        "feature_seconds": feature_seconds,
    }


def victim_costs(results: list[dict]) -> dict[str, float]:
    """Mean seconds to build one victim of each defence (training and clean evaluation) and to query it."""
    costs: dict[str, list[float]] = {}
    for entry in results:
        costs.setdefault(entry["victim"].defence, []).append(entry["victim"].seconds)
        costs.setdefault("query", []).append(entry["query_seconds"])
    return {name: sum(values) / len(values) for name, values in costs.items()}


__all__ = [
    "Cell",
    "ClipFeatures",
    "Victim",
    "VictimConfig",
    "cached_features",
    "choose_task",
    "fine_tune_all",
    "iter_victims",
    "mnist_images",
    "pool_cells",
    "run_experiment",
    "train_head",
    "victim_costs",
]
