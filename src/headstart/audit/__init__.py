"""Security audit of a transfer-learned model: the target-agnostic attack of Rezaei & Liu.

Rezaei & Liu, "A target-agnostic attack on deep models: exploiting security vulnerabilities of
transfer learning", ICLR 2020: knowing only the public pretrained backbone a model was fine-tuned
from, an attacker crafts, for each feature neuron, an input whose feature vector is that neuron
alone at a huge value (:mod:`headstart.audit.craft`), queries the deployed model as a black box
and records which class each input forces, with what confidence (:mod:`headstart.audit.metrics`).
On VGG-Face fine-tuned to 5 LFW identities they needed 48.25 ± 42.5 attempts to break all classes,
with 91.68% (95% confidence) and 87.82% (99%) of crafted inputs effective.

:func:`audit` runs it against any headstart model or stage folder::

    from headstart.audit import audit
    result = audit("runs/digits/1-fine-tune", neurons=256)
    print(result.metrics.row())

The target is reached only through :class:`QueryOnly` (its predictions, in evaluation mode, without
gradients); the crafting backbone is a fresh copy of the public weights (``weights="imagenet"`` of
the target's model name), never the fine-tuned one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from headstart.audit.craft import AttackConfig, CraftedInputs, PublicFeatures, craft_batch, read_out
from headstart.audit.metrics import AttackMetrics, attack_metrics, pool_metrics
from headstart.errors import HeadstartError
from headstart.heads import PoolingMode
from headstart.imageops import normalize

__all__ = [
    "AttackConfig",
    "AttackMetrics",
    "AuditResult",
    "CraftedInputs",
    "PublicFeatures",
    "QueryOnly",
    "audit",
    "attack_metrics",
    "craft",
    "pool_metrics",
    "public_backbone",
    "query",
]


class QueryOnly:
    """A deployed model as the attacker sees it: normalised images in, probabilities out.

    Holds the network privately and exposes only :meth:`__call__`, which runs
    ``network.predict`` (evaluation mode, ``torch.no_grad``) on a detached copy of the input.
    """

    __slots__ = ("_predict", "classes", "labels")

    def __init__(self, network) -> None:
        self._predict = network.predict
        self.labels = list(network.labels) if network.labels is not None else None
        self.classes = len(self.labels) if self.labels is not None else None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._predict(images.detach().clone())


def public_backbone(
    model_name: str,
    *,
    in_chans: int = 3,
    pooling: PoolingMode = "avg",
    weights: str = "imagenet",
    device: str = "cpu",
):
    """The public pretrained feature extractor an attacker downloads: ``load(name, weights, include_top=False)``."""
    from headstart.zoo import load

    return load(model_name, weights=weights, include_top=False, pooling=pooling, in_chans=in_chans).to(device).eval()


def craft(
    features: PublicFeatures,
    neurons: torch.Tensor,
    image_size: int,
    config: AttackConfig = AttackConfig(),
    batch_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> CraftedInputs:
    """Craft one input per neuron in ``neurons``, ``batch_size`` neurons at a time, on the backbone's device."""
    network = features.network
    preprocessing = network.preprocessing
    device = next(network.parameters()).device
    shape = (preprocessing.in_chans, image_size, image_size)
    pixels: list[torch.Tensor] = []
    seen: dict[str, list[torch.Tensor]] = {}
    started = time.perf_counter()
    for start in range(0, len(neurons), batch_size):
        batch = neurons[start : start + batch_size].to(device)
        crafted, _ = craft_batch(features, batch, shape, preprocessing.mean, preprocessing.std, config)
        for name, values in read_out(features, crafted, batch, preprocessing.mean, preprocessing.std).items():
            seen.setdefault(name, []).append(values)
        pixels.append(crafted.cpu())
        if progress is not None:
            progress(min(start + batch_size, len(neurons)), len(neurons))
    joined = {name: torch.cat(values) for name, values in seen.items()}
    return CraftedInputs(
        neurons=neurons.cpu(),
        pixels=torch.cat(pixels),
        target_activation=joined["target"],
        largest_other=joined["other"],
        output_target=joined["output_target"],
        output_largest_other=joined["output_other"],
        seconds=time.perf_counter() - started,
        batch_size=batch_size,
        config=config,
    )


def query(
    target: Callable[[torch.Tensor], torch.Tensor], crafted: CraftedInputs, mean, std, batch_size: int = 256
) -> torch.Tensor:
    """The black box's probabilities for every crafted image, ``[N, classes]``."""
    answers = []
    for start in range(0, len(crafted.pixels), batch_size):
        images = normalize(crafted.pixels[start : start + batch_size] / 255.0, mean, std)
        answers.append(torch.as_tensor(target(images)).detach().float().cpu())
    return torch.cat(answers)


@dataclass
class AuditResult:
    """One audit: the measures, the black box's answers and the crafted inputs behind them."""

    target: str
    backbone: str
    feature_layer: str
    image_size: int
    metrics: AttackMetrics
    probabilities: torch.Tensor
    crafted: CraftedInputs
    labels: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def examples(self, per_class: int = 1) -> list[dict]:
        """The most confident crafted input forcing each class: neuron, class, confidence, pixels."""
        confidence, predicted = self.probabilities.max(dim=1)
        chosen = []
        for label in range(self.probabilities.shape[1]):
            indices = (predicted == label).nonzero().flatten()
            if len(indices):
                best = indices[confidence[indices].argsort(descending=True)[:per_class]]
                for index in best.tolist():
                    chosen.append(
                        {
                            "neuron": int(self.crafted.neurons[index]),
                            "class": label,
                            "label": self.labels[label] if self.labels else str(label),
                            "confidence": float(confidence[index]),
                            "pixels": self.crafted.pixels[index],
                        }
                    )
        return chosen

    def to_dict(self) -> dict:
        return {
            "target": self.target,
            "backbone": self.backbone,
            "feature_layer": self.feature_layer,
            "image_size": self.image_size,
            "neurons": len(self.crafted.neurons),
            "crafted_per_second": self.crafted.per_second,
            "crafting_seconds": self.crafted.seconds,
            "config": self.crafted.config.__dict__,
            "labels": self.labels,
            "notes": self.notes,
            **{f"metrics.{key}": value for key, value in self.metrics.to_dict().items()},
        }


def _choose_neurons(neurons: int | torch.Tensor | None, available: int, seed: int) -> torch.Tensor:
    if neurons is None:
        return torch.arange(available)
    if isinstance(neurons, int):
        if not 0 < neurons <= available:
            raise HeadstartError(
                f"neurons={neurons}: the backbone has {available} feature neurons; expected 1..{available}"
            )
        generator = torch.Generator().manual_seed(seed)
        return torch.randperm(available, generator=generator)[:neurons].sort().values
    neurons = torch.as_tensor(neurons, dtype=torch.long)
    if neurons.numel() == 0 or neurons.min() < 0 or neurons.max() >= available:
        raise HeadstartError(f"neurons: indices must lie in 0..{available - 1}")
    return neurons


def audit(
    target,
    *,
    backbone=None,
    neurons: int | torch.Tensor | None = None,
    image_size: int | None = None,
    config: AttackConfig = AttackConfig(),
    batch_size: int = 64,
    orders: int = 100,
    seed: int = 0,
    feature_layer: str = "pre-activation",
    device: str = "cpu",
    progress: Callable[[int, int], None] | None = None,
) -> AuditResult:
    """Run the target-agnostic attack against ``target`` and measure it (Rezaei & Liu 2020).

    Args:
        target: a headstart :class:`~headstart.network.Network`, a stage or run folder, or any
            callable ``normalised images -> probabilities`` (then give ``backbone``). A network is
            wrapped in :class:`QueryOnly`: the attack only ever sees its predictions.
        backbone: the public pretrained extractor (a ``Network`` without top); default: the
            target's model name loaded with ``weights="imagenet"`` (EfficientNet-Lite0 offline).
        neurons: all feature neurons (default, 1280 for EfficientNet-Lite0), a number drawn at
            random with ``seed``, or explicit indices.
        image_size: side of the crafted images; default the target's input size.
        config: the attack's settings (:class:`AttackConfig`: the paper's 1e5 target, 49 steps,
            step 0.1 in pixel units, blank start; ``clip`` keeps pixels in 0..255).
        batch_size: neurons crafted together (one backward pass per step for the whole batch).
        orders: random neuron orders the mean ± std of NABAC and effectiveness are taken over.
        feature_layer: ``pre-activation`` or ``output`` (see :class:`PublicFeatures`).
        device: where crafting runs (``cuda`` on a GPU machine).
    """
    name = str(target)
    if isinstance(target, (str, os.PathLike)):
        from headstart.checkpoint import load_network

        target = load_network(target)
    from headstart.network import Network

    if isinstance(target, Network):
        model_name, in_chans, pooling = target.model_name, target.in_chans, target.pooling
        size = target.preprocessing.input_size[-1]
        name = f"{model_name} ({name})" if not name.startswith("Network(") else model_name
        target = QueryOnly(target)
        if backbone is None:
            backbone = public_backbone(model_name, in_chans=in_chans, pooling=pooling, device=device)
        image_size = image_size or size
    elif not callable(target):
        raise HeadstartError(
            f"target of type {type(target).__name__}: expected a Network, a stage folder or a "
            "callable returning probabilities"
        )
    if backbone is None:
        raise HeadstartError("a target given as a callable needs backbone= (the public pretrained extractor)")
    backbone = backbone.to(device)
    features = PublicFeatures(backbone, layer=feature_layer)
    image_size = int(image_size or backbone.preprocessing.input_size[-1])
    chosen = _choose_neurons(neurons, features.num_features, seed)
    crafted = craft(features, chosen, image_size, config, batch_size=batch_size, progress=progress)
    probabilities = query(target, crafted, backbone.preprocessing.mean, backbone.preprocessing.std)
    if probabilities.ndim != 2 or probabilities.shape[0] != len(chosen):
        raise HeadstartError(
            f"the target answered shape {tuple(probabilities.shape)}, expected [{len(chosen)}, classes]"
        )
    metrics = attack_metrics(probabilities.numpy(), orders=orders, seed=seed, break_confidence=config.break_confidence)
    labels = getattr(target, "labels", None)
    return AuditResult(
        target=name,
        backbone=f"{backbone.model_name} (public pretrained weights)",
        feature_layer=features.layer,
        image_size=image_size,
        metrics=metrics,
        probabilities=probabilities,
        crafted=crafted,
        labels=labels,
    )
