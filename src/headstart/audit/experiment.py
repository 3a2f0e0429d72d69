"""The chapter's tables 2-1 and 2-2 on an offline task: EfficientNet-Lite0 (ImageNet) → MNIST-5k.

Victims are built the way the paper's are: the public backbone, frozen, with 1, 2 or 3 new dense
layers trained on its features for K of the digit classes (K = 5, 10). Two defences are measured
on the one-layer victims, each with its clean test accuracy:

* **full fine-tuning** — the whole backbone trained with the head (the paper's ``RetrainAllLayers``),
  so its features drift away from the public ones the attacker crafts on;
* **feature range restriction** — the head reads the features clipped to the range seen on the
  training images (per neuron), the test-time bound of Ranger (Chen et al., DSN 2021) applied to
  the layer this attack drives to extreme values. It changes no weight and costs one ``clamp``.

All victims are attacked with the same crafted inputs: crafting depends only on the public
backbone, so it runs once and every victim is then only queried.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from headstart.audit import AuditResult, QueryOnly, attack_metrics, craft, query
from headstart.audit.craft import AttackConfig, PublicFeatures
from headstart.heads import HeadSpec, build_head
from headstart.imageops import normalize


class ClipFeatures(nn.Module):
    """Clamp pooled features to ``[low, high]`` per neuron before the head (range restriction)."""

    def __init__(self, low: torch.Tensor, high: torch.Tensor, head: nn.Module) -> None:
        super().__init__()
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())
        self.head = head
        self.spec = getattr(head, "spec", None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.maximum(torch.minimum(features, self.high), self.low))


@dataclass
class Victim:
    name: str
    classes: int
    layers: int
    defence: str
    clean_accuracy: float
    network: nn.Module


def mnist_images(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-5k as 0..1 RGB images at ``image_size`` (grey replicated) and labels."""
    from headstart.data.builtin import load_mnist5k

    images = load_mnist5k(image_size=image_size, channels=3)
    pixels, labels = images.as_tensors()
    return pixels.float(), labels.long()


def _split(labels: torch.Tensor, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    chosen = (labels < classes).nonzero().flatten()
    chosen = chosen[torch.randperm(len(chosen), generator=generator)]
    cut = int(0.8 * len(chosen))
    return chosen[:cut], chosen[cut:]


def _accuracy(network, images: torch.Tensor, labels: torch.Tensor, mean, std) -> float:
    correct = 0
    network.eval()
    with torch.no_grad():
        for start in range(0, len(images), 256):
            batch = normalize(images[start:start + 256], mean, std)
            correct += int((network(batch).argmax(1) == labels[start:start + 256]).sum())
    return correct / len(images)


def train_head(features: torch.Tensor, labels: torch.Tensor, classes: int, layers: int, hidden: int, seed: int,
               epochs: int = 40) -> nn.Module:
    """A dense head of ``layers`` layers (``layers - 1`` hidden of ``hidden`` units) on fixed features."""
    torch.manual_seed(seed)
    head = build_head(HeadSpec(hidden=[hidden] * (layers - 1), outputs=classes), features.shape[1])
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(epochs):
        for indices in torch.randperm(len(features), generator=generator).split(128):
            loss = nn.functional.cross_entropy(head(features[indices]), labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head.eval()


def fine_tune_all(network, images: torch.Tensor, labels: torch.Tensor, mean, std, seed: int, epochs: int = 1,
                  lr: float = 1e-4) -> None:
    """Train every parameter (backbone included, BatchNorm statistics updating) on the images."""
    torch.manual_seed(seed)
    network.unfreeze("all")
    network.set_bn_policy("train")
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    for _ in range(epochs):
        for indices in torch.randperm(len(images), generator=generator).split(32):
            loss = nn.functional.cross_entropy(network(normalize(images[indices], mean, std)), labels[indices])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    network.eval()


def build_victims(public, images: torch.Tensor, labels: torch.Tensor, *, class_counts=(5, 10), layer_counts=(1, 2, 3),
                  hidden: int = 512, seed: int = 0, fine_tune_epochs: int = 1, echo=print) -> list[Victim]:
    """Victims of every (classes, layers) pair, plus the two defences for one layer."""
    mean, std = public.preprocessing.mean, public.preprocessing.std
    public.eval()
    with torch.no_grad():
        features = torch.cat([public.pooled(normalize(images[start:start + 256], mean, std))
                              for start in range(0, len(images), 256)])
    victims: list[Victim] = []
    for classes in class_counts:
        train, test = _split(labels, classes, seed)
        names = [str(label) for label in range(classes)]
        for layers in layer_counts:
            network = copy.deepcopy(public)
            network.replace_head(train_head(features[train], labels[train], classes, layers, hidden, seed), labels=names)
            network.freeze("backbone")
            accuracy = _accuracy(network, images[test], labels[test], mean, std)
            victims.append(Victim(f"{classes} classes, {layers} new layer(s), backbone frozen", classes, layers,
                                  "none", accuracy, network))
            echo(f"victim: {victims[-1].name}: clean test accuracy {accuracy:.4f}")
            if layers != 1:
                continue
            low, high = features[train].amin(0), features[train].amax(0)
            clipped = copy.deepcopy(network)
            clipped.replace_head(ClipFeatures(low, high, copy.deepcopy(network.head)), labels=names)
            accuracy = _accuracy(clipped, images[test], labels[test], mean, std)
            victims.append(Victim(f"{classes} classes, 1 new layer, features clipped to training range", classes, 1,
                                  "feature range restriction", accuracy, clipped))
            echo(f"victim: {victims[-1].name}: clean test accuracy {accuracy:.4f}")
            if fine_tune_epochs:
                tuned = copy.deepcopy(network)
                started = time.perf_counter()
                fine_tune_all(tuned, images[train], labels[train], mean, std, seed, epochs=fine_tune_epochs)
                accuracy = _accuracy(tuned, images[test], labels[test], mean, std)
                victims.append(Victim(f"{classes} classes, 1 new layer, whole backbone fine-tuned "
                                      f"({fine_tune_epochs} epoch)", classes, 1, "full fine-tuning", accuracy, tuned))
                echo(f"victim: {victims[-1].name}: clean test accuracy {accuracy:.4f} "
                     f"({time.perf_counter() - started:.0f} s)")
    return victims


def run_experiment(*, neurons: int | None = 256, image_size: int = 32, class_counts=(5, 10), layer_counts=(1, 2, 3),
                   config: AttackConfig = AttackConfig(clip=False), batch_size: int = 64, orders: int = 100,
                   seed: int = 0, fine_tune_epochs: int = 1, echo=print) -> dict:
    """Craft once on the public EfficientNet-Lite0, build the victims, query each; return every result."""
    from headstart.audit import _choose_neurons, public_backbone

    started = time.perf_counter()
    public = public_backbone("EfficientNetLite0")
    images, labels = mnist_images(image_size)
    victims = build_victims(public, images, labels, class_counts=class_counts, layer_counts=layer_counts,
                            seed=seed, fine_tune_epochs=fine_tune_epochs, echo=echo)
    attacker = public_backbone("EfficientNetLite0")  # a fresh copy: the victims' backbones are never touched
    features = PublicFeatures(attacker)
    chosen = _choose_neurons(neurons, features.num_features, seed)
    echo(f"crafting {len(chosen)} inputs ({config.steps} steps, {image_size} px, batches of {batch_size}) ...")
    crafted = craft(features, chosen, image_size, config, batch_size=batch_size,
                    progress=lambda done, total: echo(f"  crafted {done}/{total}") if done % (4 * batch_size) == 0 else None)
    echo(f"crafted {len(chosen)} inputs in {crafted.seconds:.0f} s ({crafted.per_second:.2f} per second)")
    results = []
    for victim in victims:
        target = QueryOnly(victim.network)
        probabilities = query(target, crafted, attacker.preprocessing.mean, attacker.preprocessing.std)
        metrics = attack_metrics(probabilities.numpy(), orders=orders, seed=seed,
                                 break_confidence=config.break_confidence)
        result = AuditResult(target=victim.name, backbone="EfficientNetLite0 (public ImageNet weights)",
                             feature_layer=features.layer, image_size=image_size, metrics=metrics,
                             probabilities=probabilities, crafted=crafted, labels=target.labels)
        results.append({"victim": victim, "result": result})
        echo(f"{victim.name}: {metrics.row()}")
    return {"results": results, "seconds": time.perf_counter() - started, "crafted": crafted,
            "config": config, "neurons": len(chosen), "image_size": image_size}
