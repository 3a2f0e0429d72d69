"""The paper's measures, computed from the black box's answers to the crafted inputs.

Rezaei & Liu (ICLR 2020) report, for a fine-tuned model with K target classes:

* **NABAC** — number of attempts (crafted inputs, in a random neuron order) needed to break all
  classes, a class being broken by the first crafted input the model assigns to it with confidence
  above 0.99 (their ``confidenceLevel``); mean ± std over orders. Their face model (VGG-Face, LFW):
  48.25 ± 42.5 for 5 classes, 149.97 ± 132.15 for 10, 323.36 ± 253.56 for 15.
* **Effectiveness (x%)** — the share of those attempts whose top confidence reaches x% (their code:
  ``1 − failedImage95 / totalAttempt``): 91.68% ± 5.69 at 95% and 87.82% ± 6.98 at 99% for 5
  classes; 88.87% / 83.07% for 10.

Every crafted input is queried once; a random neuron order is a permutation of those answers,
so the mean ± std over many orders costs no further queries. When an order never breaks every
class, NABAC is the number of attempts made (the paper's ``maxAttempt``) and ``reached`` says how
many orders did break them all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class AttackMetrics:
    """The paper's measures of one attacked model (module docstring): NABAC as mean ± std over random
    neuron orders, the share of orders that broke every class, effectiveness at 95% and 99%, and the
    hits per class."""

    classes: int
    attempts: int
    """Crafted inputs queried (neurons attacked)."""
    orders: int
    nabac_mean: float
    nabac_std: float
    reached: float
    """Share of random orders that broke every class within ``attempts``."""
    effectiveness: dict[str, tuple[float, float]]
    """``"95"``/``"99"`` → (mean, std) share of attempts up to NABAC with top confidence ≥ 95%/99%."""
    classes_hit: dict[str, float]
    """``"95"``/``"99"`` → share of classes forced at that confidence by some crafted input."""
    hits_per_class: list[int]
    """Crafted inputs assigned to each class with confidence ≥ the break confidence."""
    predicted_per_class: list[int] = field(default_factory=list)
    """Crafted inputs whose top class is each class (any confidence)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self) -> str:
        e95, e99 = self.effectiveness["95"], self.effectiveness["99"]
        return (
            f"NABAC {self.nabac_mean:.2f} ± {self.nabac_std:.2f} (all classes broken in {self.reached:.0%} of "
            f"orders), effectiveness 95% {100 * e95[0]:.2f}% ± {100 * e95[1]:.2f}, 99% {100 * e99[0]:.2f}% ± "
            f"{100 * e99[1]:.2f}; classes hit at 99%: {self.classes_hit['99']:.0%}"
        )


def attack_metrics(
    probabilities,
    orders: int = 100,
    seed: int = 0,
    break_confidence: float = 0.99,
    levels: tuple[float, ...] = (0.95, 0.99),
) -> AttackMetrics:
    """NABAC and effectiveness from the black box's probabilities ``[attempts, classes]``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    attempts, classes = probabilities.shape
    confidence = probabilities.max(axis=1)
    predicted = probabilities.argmax(axis=1)
    rng = np.random.default_rng(seed)
    nabacs: list[int] = []
    effective: dict[float, list[float]] = {level: [] for level in levels}
    reached = 0
    for _ in range(orders):
        order = rng.permutation(attempts)
        broken: set[int] = set()
        stop = attempts
        for position, index in enumerate(order, start=1):
            if confidence[index] > break_confidence:
                broken.add(int(predicted[index]))
                if len(broken) == classes:
                    stop = position
                    reached += 1
                    break
        nabacs.append(stop)
        for level in levels:
            effective[level].append(float((confidence[order[:stop]] >= level).mean()))
    key = lambda level: f"{round(level * 100):d}"  # noqa: E731
    breaks = confidence > break_confidence
    return AttackMetrics(
        classes=classes,
        attempts=attempts,
        orders=orders,
        nabac_mean=float(np.mean(nabacs)),
        nabac_std=float(np.std(nabacs)),
        reached=reached / orders,
        effectiveness={
            key(level): (float(np.mean(values)), float(np.std(values))) for level, values in effective.items()
        },
        classes_hit={key(level): len(set(predicted[confidence >= level].tolist())) / classes for level in levels},
        hits_per_class=np.bincount(predicted[breaks], minlength=classes).tolist(),
        predicted_per_class=np.bincount(predicted, minlength=classes).tolist(),
    )


def pool_metrics(parts: list[AttackMetrics]) -> AttackMetrics:
    """Several victims' measures as one: mean ± std over every (victim, order) pair.

    Rezaei & Liu's ± is over victims (one run per random draw of classes, neurons in a fixed
    order); each part here is one victim over random orders, and pooling adds both sources of
    spread (law of total variance, exact when every part has the same number of orders).
    """
    if not parts:
        raise ValueError("pool_metrics: no measures to pool")
    weights = np.array([part.orders for part in parts], dtype=np.float64)
    weights /= weights.sum()

    def pooled(pairs: list[tuple[float, float]]) -> tuple[float, float]:
        means = np.array([mean for mean, _ in pairs])
        second = np.array([std**2 + mean**2 for mean, std in pairs])
        mean = float(weights @ means)
        return mean, float(np.sqrt(max(float(weights @ second) - mean**2, 0.0)))

    nabac = pooled([(part.nabac_mean, part.nabac_std) for part in parts])
    width = max(len(part.hits_per_class) for part in parts)
    summed = lambda lists: np.sum([np.pad(np.asarray(values), (0, width - len(values))) for values in lists], axis=0)  # noqa: E731
    return AttackMetrics(
        classes=parts[0].classes if len({part.classes for part in parts}) == 1 else -1,
        attempts=parts[0].attempts,
        orders=sum(part.orders for part in parts),
        nabac_mean=nabac[0],
        nabac_std=nabac[1],
        reached=float(weights @ [part.reached for part in parts]),
        effectiveness={key: pooled([part.effectiveness[key] for part in parts]) for key in parts[0].effectiveness},
        classes_hit={key: float(np.mean([part.classes_hit[key] for part in parts])) for key in parts[0].classes_hit},
        hits_per_class=summed([part.hits_per_class for part in parts]).astype(int).tolist(),
        predicted_per_class=summed([part.predicted_per_class for part in parts]).astype(int).tolist(),
    )
