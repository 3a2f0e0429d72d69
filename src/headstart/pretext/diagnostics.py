"""Is the pretext task teaching anything? Checks for tasks that are too easy or too hard.

Doersch et al. (context prediction, ICCV 2015) found their network solving the task through
chromatic aberration and the continuity of lines across patch borders — shortcuts that teach
nothing useful. A pretext task solved almost perfectly at once is the typical sign; one that stays
at chance teaches nothing either. :func:`diagnose` reads a training history for both signs, and
:func:`context_shortcut_check` tests a trained context network for the colour shortcut directly.

Joint-embedding tasks (SimCLR, BYOL, DINO) fail differently: they *collapse*, every image mapped
to the same output, and the loss can still look reasonable. :func:`collapse` judges one epoch's
metrics, so :class:`CollapseWatch` can say so at the end of the epoch where it happens rather than
after the stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
from torch import Tensor, nn

from headstart.errors import HeadstartError
from headstart.modes import evaluating
from headstart.pretext.base import Encoder, PretextTask
from headstart.pretext.context import ContextTask

EASY_ACCURACY = 0.98
"""Accuracy after the first epoch at or above which a classification task is "too easy"."""
EASY_ERROR_FRACTION = 0.02
"""Mean absolute error, as a fraction of the target range, at or below which regression is "too easy"."""
COLLAPSED_SPREAD = 0.1
"""``embedding_spread`` (:func:`embedding_spread`) at or below which the embeddings have collapsed."""
COLLAPSED_ENTROPY = 0.1
"""DINO teacher entropy (nats) at or below which every image lands on one prototype."""
UNIFORM_ENTROPY_SHARE = 0.98
"""Share of ``log K`` at or above which DINO's teacher output is uniform over its K prototypes."""


def embedding_spread(embeddings: Tensor) -> float:
    """How far a batch's embeddings spread over the sphere: the standard deviation over the batch of
    the ℓ2-normalised outputs, per dimension, averaged over dimensions, times ``√d``.

    Chen & He (SimSiam, CVPR 2021, §4 and fig. 2) watch this standard deviation: outputs that
    collapse to one vector have 0, outputs spread like an isotropic Gaussian have ``1/√d`` per
    dimension, so the scaled value is about 1 when healthy (SimSiam with stop-gradient: ≈ 1/√d;
    without it, 0 within a few epochs)."""
    with torch.no_grad():
        flat = embeddings.detach().float().flatten(1)
        if len(flat) < 2:
            return float("nan")
        normalised = torch.nn.functional.normalize(flat, dim=1)
        return float(normalised.std(dim=0).mean() * math.sqrt(flat.shape[1]))


def _series(history: list[dict], metric: str) -> tuple[str, list[float]]:
    for key in (f"val_{metric}", f"val/{metric}", metric, f"train_{metric}", f"train/{metric}"):
        if all(key in entry for entry in history):
            return key, [float(entry[key]) for entry in history]
    raise HeadstartError(
        f"diagnose: the history has no {metric!r} (nor val_/train_ variants) in every epoch; "
        f"keys of the first epoch: {sorted(history[0])}"
    )


UNDERFIT_RISE = 0.02
"""Rise of training accuracy over the last quarter of the epochs above which a stage is still learning."""
UNDERFIT_CEILING = 0.95
"""Training accuracy above which a still-rising classification task is not called underfit."""


def _still_learning(history: list[dict], task: PretextTask) -> list[str]:
    """**underfit**: the training accuracy still rose by more than 0.02 over the last quarter of the
    epochs and ended below 0.95 — the pretext task was stopped while it was still being learned, and
    an underfit pretext hands over features that have learned less of it."""
    series = [float(entry["train_accuracy"]) for entry in history if "train_accuracy" in entry]
    if len(series) < 4:
        return []
    earlier = series[-1 - max(1, len(series) // 4)]
    last = series[-1]
    if last - earlier > UNDERFIT_RISE and last < UNDERFIT_CEILING:
        return [
            f"underfit: still learning — {task.name} train_accuracy rose from {earlier:.3f} to {last:.3f} over "
            f"the last {max(1, len(series) // 4)} of {len(series)} epochs; train longer, or lighten the "
            "augmentation of this stage"
        ]
    return []


LOSS_KEYS = ("train_loss", "val_loss")


def _constant_loss(history: list[dict], task: PretextTask) -> list[str]:
    """**not learning**: a loss exactly the same in every epoch (two or more) — no gradient moved the
    network, as with SimCLR on batches of one image, where NT-Xent is exactly 0."""
    for key in LOSS_KEYS:
        values = [float(entry[key]) for entry in history if key in entry]
        if len(values) == len(history) > 1 and len(set(values)) == 1:
            return [
                f"not learning — {task.name} {key} stayed exactly {values[0]:.4f} for all {len(values)} epochs: "
                "no gradient moved the network; check batch_size (contrastive and self-distillation tasks learn from "
                "the images of a batch together) and the learning rate"
            ]
    return []


def diagnose(history: list[dict], task: PretextTask, *, margin: float = 0.1) -> list[str]:
    """Warnings about ``task`` from ``history`` (one dict of metrics per epoch, first epoch first).

    * **too easy** — accuracy ≥ 0.98, or mean absolute error ≤ 2% of the target range, after the
      first epoch: the network has probably found a shortcut (borders, interpolation artefacts,
      colour fringes) rather than learning about the content.
    * **too hard** — at the end, still within ``margin`` of chance: accuracy below
      ``chance + margin · (1 − chance)``, or error above ``(1 − margin) · chance error``; for
      reconstruction (no data-free chance level), an error that fell by less than ``margin``.

    * **underfit** (classification) — the training accuracy still rose by more than 0.02 over the
      last quarter of the epochs and ended below 0.95: train longer.
    * **not learning** (contrastive tasks) — the loss did not fall; **collapsed** (DINO) — the
      teacher's entropy ended near 0 (one prototype) or near its maximum (uniform).
    * **not learning** (any task) — the training or validation loss was exactly the same in every
      epoch (at least two): nothing moved the network.

    Returns an empty list when none applies.
    """
    if not history:
        raise HeadstartError("diagnose: the history is empty; record at least one epoch of metrics")
    metric = task.metric
    key, values = _series(history, metric)
    first, last = values[0], values[-1]
    chance = task.chance_level().get(metric)
    warnings = _constant_loss(history, task)
    if task.kind == "classification":
        if first >= EASY_ACCURACY:
            warnings.append(
                f"too easy: likely a shortcut — {task.name} reached {key} {first:.3f} in the first epoch; "
                "look for a trivial cue (borders, interpolation artefacts, colour) and make the alteration harder"
            )
        warnings.extend(_still_learning(history, task))
        if chance is not None and last <= chance + margin * (1.0 - chance):
            warnings.append(
                f"too hard: stuck at chance — {task.name} ended at {key} {last:.3f}, chance is {chance:.3f}; "
                "ease the task (fewer classes, stronger alteration), raise the learning rate or train longer"
            )
    elif task.kind == "regression":
        target_range = getattr(task, "target_range", None)
        if target_range and first <= EASY_ERROR_FRACTION * target_range:
            warnings.append(
                f"too easy: likely a shortcut — {task.name} reached {key} {first:.4f} in the first epoch, "
                f"under 2% of the target range {target_range:g}"
            )
        if chance is not None and last >= (1.0 - margin) * chance:
            warnings.append(
                f"too hard: stuck at chance — {task.name} ended at {key} {last:.4f}; predicting the mean "
                f"scores {chance:.4f}"
            )
    elif task.kind == "embedding":
        # a contrastive loss falls as the task is learned; a loss against a moving teacher need not,
        # so distillation tasks are watched for collapse instead
        if (
            not warnings
            and getattr(task, "loss_should_fall", False)
            and len(values) > 1
            and last >= first - 1e-3 * abs(first)
        ):
            warnings.append(
                f"not learning — {task.name} {key} went from {first:.4f} to {last:.4f}; raise the learning rate, "
                "train longer or check the views differ (crop_scale, colour_jitter)"
            )
        collapsed = collapse(history[-1], task)
        if collapsed is not None:
            warnings.append(collapsed)
    elif len(values) > 1 and last >= (1.0 - margin) * first:
        warnings.append(
            f"too hard: stuck — {task.name} {key} went from {first:.4f} to {last:.4f}, "
            f"less than {margin:.0%} lower; the decoder may be too weak or the learning rate too low"
        )
    return warnings


def collapse(metrics: dict, task: PretextTask) -> str | None:
    """Whether one epoch's metrics show a joint-embedding task collapsed, as a warning line; ``None``
    when they do not (or carry no sign of it).

    * ``embedding_spread`` (SimCLR, BYOL; :func:`embedding_spread`) at or below
      :data:`COLLAPSED_SPREAD`: every image gets nearly the same embedding;
    * DINO's ``teacher_entropy`` near 0 (one prototype for every image) or near ``log K`` (uniform:
      the teacher says nothing), Caron et al. 2021 §5.3 and fig. 7.
    """
    spread = metrics.get("val_embedding_spread", metrics.get("train_embedding_spread"))
    if spread is not None and float(spread) <= COLLAPSED_SPREAD:
        return (
            f"collapsed — {task.name}'s embeddings all point the same way (spread {float(spread):.3f}, about 1 "
            "when healthy); lower the learning rate, raise the batch size, or check the views differ"
        )
    entropy = metrics.get("val_teacher_entropy")
    prototypes = getattr(task, "output_dim", None)
    if entropy is None or not prototypes:
        return None
    entropy = float(entropy)
    if entropy <= COLLAPSED_ENTROPY:
        return (
            f"collapsed — {task.name}'s teacher puts every image on one prototype (entropy {entropy:.3f} nats); "
            "lower teacher_temperature less, or raise center_momentum"
        )
    if entropy >= UNIFORM_ENTROPY_SHARE * math.log(prototypes):
        return (
            f"collapsed — {task.name}'s teacher output is uniform (entropy {entropy:.3f} of at most "
            f"{math.log(prototypes):.3f} nats); lower teacher_temperature or train longer"
        )
    return None


def context_shortcut_check(
    encoder: Encoder,
    head: nn.Module,
    images: Tensor,
    task: ContextTask,
    generator: torch.Generator,
    *,
    threshold: float = 0.1,
) -> dict[str, float | bool]:
    """Context accuracy on the same patch pairs with and without colour dropping.

    Both passes cut the same patches (the generator is rewound between them); only the colours
    differ. A network that reads chromatic aberration (Doersch et al.) loses much of its accuracy
    when two channels are replaced by noise: a gap above ``threshold`` is reported as a suspected
    shortcut. ``images`` must be RGB. Modules are evaluated in eval mode and restored afterwards.
    """
    if not isinstance(task, ContextTask):
        raise HeadstartError(f"context_shortcut_check needs the context task, got {task.name!r}")
    if images.shape[1] != 3:
        raise HeadstartError(
            "context_shortcut_check needs RGB images: colour dropping has nothing to drop in grey ones"
        )
    state = generator.get_state()
    dropped, labels = dataclasses.replace(task, color_dropping=True).alter(images, generator)
    generator.set_state(state)
    kept, same_labels = dataclasses.replace(task, color_dropping=False).alter(images, generator)
    assert torch.equal(labels, same_labels)
    with contextlib.ExitStack() as stack:
        for module in (encoder, head):
            if isinstance(module, nn.Module):
                stack.enter_context(evaluating(module))
        accuracy_dropped = task.metrics(task.forward(encoder, head, dropped), labels)["accuracy"]
        accuracy_kept = task.metrics(task.forward(encoder, head, kept), labels)["accuracy"]
    gap = accuracy_kept - accuracy_dropped
    return {
        "accuracy_color_dropped": accuracy_dropped,
        "accuracy_color_kept": accuracy_kept,
        "gap": gap,
        "shortcut_suspected": gap > threshold,
    }
