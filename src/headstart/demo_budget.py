"""How long the folder demo's comparison takes on this machine, and the epochs that fit a time budget.

``--budget 15m`` is parsed by :func:`parse_budget`; each model is timed briefly at its image size
(:func:`measure_speed`, the timings kept in ``budget.json`` by :func:`speeds_for`); every stage is
costed from the image counts (:func:`stage_seconds`, :func:`estimate_seconds`, stages shared
between arms paid once) and :func:`fit_budget` finds the largest scale of the recipe's epochs that
fits. Used by :mod:`headstart.demo_folder`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.compare import CompareSpec
from headstart.config import StageSpec
from headstart.data.splits import Splits
from headstart.engine.accelerate import accelerated
from headstart.engine.passes import INFERENCE_BATCH
from headstart.engine.trainer import TrainerOptions, memory_and_kernels
from headstart.errors import HeadstartError
from headstart.files import hardware, read_json

STAGE_OVERHEAD_S = 2.0
"""Seconds a stage costs beyond its images (trainer, checkpoint and record writes), measured on a
2-core CPU."""
EPOCH_OVERHEAD_S = 0.1
"""Seconds an epoch costs beyond its images (the epoch loop, validation set-up, logging): a head on
cached features trained 55 epochs in 6.8 s on a 2-core CPU, 1.0 s of it computing the features."""
RUN_OVERHEAD_S = 2.0
"""Seconds a run costs beyond its stages and images (folders, run record, test pass set-up)."""
BUDGET_FILE = "budget.json"
EPOCH_IMAGES = 4_000
"""The most images one epoch of a stage reads in the folder demo. The recipe's epochs were tuned on
MNIST-5k, whose training pool is 3,750 images; on a larger folder an epoch is a random draw of
4,000 (``steps_per_epoch``), so an epoch costs what it cost there and the budget buys epochs
rather than one pass over 50,000 images. A folder of up to 4,000 training images is unaffected."""
PROBE_BATCHES = ((25, 100), (8,))
"""Images per timed step of the speed probe: up to 96 px, the task stages' batch (25) and 100, which
give each step's fixed cost and each image's (:class:`Speed`); above, 8 alone. A small network's cost
per image falls with the batch (resnet10t at 32 px on 2 cores, a training step: 66 ms at 25 images,
116 at 100, 193 at 200, which the line through the first two puts at 182), and the stages train at
25 (task), 128 (rotation) and 25 + 175 (FixMatch): timed at 25 alone, the rotation and FreeMatch
stages of the 50,000-image demo were costed 1.7× their measured seconds. A large input's cost per
image does not fall (EfficientNet-Lite0 at 224 px: 74 ms at a batch of 8, 76 at 25), and one batch
of 8 keeps the probe of the large one to a few seconds."""
PROBE_SMALL_SIDE = 96
"""Largest side probed with the first batch of :data:`PROBE_BATCHES` (the line the folder demo draws
between small images and photographs)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0}

# ------------------------------------------------------------------------------------ the budget


def parse_budget(text: str) -> float:
    """``"15m"`` → 900 seconds. Hours, minutes and seconds (``h``, ``m``, ``s``), alone or together
    (``1h30m``); decimals allowed (``2.5m``). Raises HeadstartError naming the value otherwise."""
    compact = str(text).strip().replace(" ", "")
    parts = list(_DURATION.finditer(compact))
    if not compact or not parts or "".join(part.group(0) for part in parts) != compact:
        raise HeadstartError(
            f"--budget {text!r}: expected a duration such as 90s, 15m, 1h or 1h30m (hours h, minutes m, seconds s)"
        )
    seconds = sum(float(part.group(1)) * _UNIT_SECONDS[part.group(2).lower()] for part in parts)
    if seconds <= 0:
        raise HeadstartError(f"--budget {text!r}: expected a duration above zero, such as 90s or 15m")
    return seconds


def duration_text(seconds: float) -> str:
    """Seconds as a person reads them: ``48 s``, ``3.2 min``, ``1.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class Counts:
    """Images of each split; ``files`` is every image file a run decodes when it loads the data."""

    train: int
    unlabelled: int
    val: int
    test: int
    files: int

    @property
    def pool(self) -> int:
        """Training images without labels for pretext and FixMatch stages (``data: all``)."""
        return self.train + self.unlabelled

    @classmethod
    def of(cls, splits: Splits) -> Counts:
        return cls(
            len(splits.train),
            len(splits.unlabelled),
            len(splits.val),
            len(splits.test),
            len(splits.train) + len(splits.unlabelled) + len(splits.val) + len(splits.test),
        )


# --------------------------------------------------------------------------------- time budget


@dataclass(frozen=True)
class Speed:
    """Seconds of one model at one side on this machine, from a short timed probe: a step of ``b``
    images costs ``train_step + b × train`` to train and ``infer_step + b × infer`` to infer."""

    train: float
    """A training step (forward, backward, Adam update) per image, training mode."""
    infer: float
    """A forward pass per image, evaluation mode, no gradients."""
    build: float
    """Building the model once (seconds, not per image)."""
    train_step: float = 0.0
    """A training step's cost beyond its images (seconds; 0 when probed at one batch size)."""
    infer_step: float = 0.0
    """A forward pass's cost beyond its images (seconds; 0 when probed at one batch size)."""

    def training(self, images: float, steps: float) -> float:
        """Seconds to train ``images`` in ``steps`` steps."""
        return steps * self.train_step + images * self.train

    def inference(self, images: float, batch: int = INFERENCE_BATCH) -> float:
        """Seconds of a whole-set pass over ``images`` in batches of ``batch``."""
        return math.ceil(images / batch) * self.infer_step + images * self.infer


def _fastest(step: Callable[[], None], repeats: int, synchronise: Callable[[], None]) -> float:
    step()  # warm-up: allocations, kernel selection
    synchronise()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        synchronise()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_speed(model: str, side: int, *, batch: int | None = None, repeats: int = 3) -> Speed:
    """Time ``model`` at ``side`` px: the fastest of ``repeats`` steps after a warm-up one, on the
    device a run would use (the GPU when there is one), at each batch size of :data:`PROBE_BATCHES`
    (``batch``: that one alone); two sizes give the line through them, a step's fixed cost and each
    image's, one the cost per image alone."""
    if (batch is not None and batch < 1) or repeats < 1:
        raise HeadstartError(f"measure_speed: batch={batch}, repeats={repeats}; expected whole numbers of at least 1")
    import torch

    batches = (batch,) if batch is not None else PROBE_BATCHES[0] if side <= PROBE_SMALL_SIDE else PROBE_BATCHES[1]

    from headstart.zoo import load

    device = "cuda" if torch.cuda.is_available() else "cpu"
    synchronise = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    started = time.perf_counter()
    network = load(model, weights=None, include_top=False, num_classes=2).to(device)
    build = time.perf_counter() - started
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    trains, infers = [], []
    # the memory order and convolutions the stages will train with (channels_last: auto)
    with accelerated(network, **memory_and_kernels(TrainerOptions(), device)):
        for size in batches:
            images = torch.rand(size, 3, side, side, device=device)

            def train_step(images: Any = images) -> None:
                optimizer.zero_grad()
                network(images).logsumexp(dim=1).mean().backward()
                optimizer.step()

            def infer_step(images: Any = images) -> None:  # whole-set passes feed channels-last batches
                with torch.no_grad():
                    network(images.contiguous(memory_format=torch.channels_last))

            network.train()
            trains.append(_fastest(train_step, repeats, synchronise))
            network.eval()
            infers.append(_fastest(infer_step, repeats, synchronise))
    train, train_step_seconds = _line(batches, trains)
    infer, infer_step_seconds = _line(batches, infers)
    return Speed(train=train, infer=infer, build=build, train_step=train_step_seconds, infer_step=infer_step_seconds)


def _line(batches: tuple[int, ...], seconds: list[float]) -> tuple[float, float]:
    """Seconds per image and per step from steps timed at the first and last batch size. One size,
    or timings the noise has bent (a step of more images no slower, or a line below zero at no
    images): all of it per image, at the dearer of the two."""
    per_image = (seconds[-1] - seconds[0]) / (batches[-1] - batches[0]) if batches[-1] != batches[0] else 0.0
    per_step = seconds[0] - batches[0] * per_image
    if per_image <= 0.0 or per_step < 0.0:
        return max(time / size for time, size in zip(seconds, batches, strict=True)), 0.0
    return per_image, per_step


def _speed_key(model: str, side: int) -> str:
    return f"{model}@{side}"


def kept_plan(output: Path) -> dict[str, Any]:
    """What an earlier run left in ``output/budget.json`` (:attr:`FolderPlan.record`), else ``{}``."""
    path = output / BUDGET_FILE
    if not path.is_file():
        return {}
    try:
        kept = read_json(path)
    except (HeadstartError, OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) else {}


def speeds_for(
    models: dict[str, int], kept: dict[str, Any], decode_seconds: float, decode_key: str
) -> tuple[dict[str, Speed], float, bool]:
    """Speeds of each ``model → side`` and seconds per decoded image: those ``kept`` holds when it
    was timed on this machine (:func:`headstart.files.hardware`), else measured now (decoding: the
    survey's). Returns them and whether every one was kept."""
    same_machine = kept.get("machine") == hardware()
    stored = kept.get("speeds", {}) if same_machine else {}
    speeds: dict[str, Speed] = {}
    reused = True
    for model, side in models.items():
        key = _speed_key(model, side)
        if "train_step" in stored.get(key, {}):  # timings kept before step costs were probed are taken again
            speeds[key] = Speed(**stored[key])
        else:
            speeds[key] = measure_speed(model, side)
            reused = False
    decode = kept.get("decode", {}) if same_machine else {}
    if decode_key in decode:
        decode_seconds = float(decode[decode_key])
    else:
        reused = False
    return speeds, decode_seconds, reused


def _cached_head(stage: StageSpec) -> bool:
    """The stage trains a head on features computed once (the rule of ``stage.prepare_data``: the
    backbone frozen, BatchNorm frozen, no augmentation, pretext or semi-supervision)."""
    return (
        stage.pretext is None
        and stage.semi_supervised is None
        and stage.augment == "none"
        and "backbone" in stage.freeze
        and stage.bn_policy != "train"
        and stage.cache_features is not False
    )


def stage_seconds(stage: StageSpec, speed: Speed, counts: Counts) -> float:
    """Estimated seconds of one stage: its epochs of training and validation passes.

    * pretext stage on ``data: all``: its steps over the pool (a step of ``b`` images costs
      :meth:`Speed.training`) and the validation pass (:meth:`Speed.inference`) per epoch;
    * task stage: the same over the labelled training images;
    * FixMatch: per step a training step of ``b + μb`` images (labelled and strong copies) and a
      forward pass of ``μb`` (the weak copies' pseudo-labels), ``ceil(unlabelled / μb)`` steps per
      epoch with ``epoch: unlabelled`` (``ceil(train / b)`` with ``epoch: labelled``), plus the
      validation pass;
    * a head on cached features: one pass over train and validation; its epochs cost next to nothing;
    * every epoch: :data:`EPOCH_OVERHEAD_S`.
    """
    if _cached_head(stage):
        return speed.inference(counts.train) + speed.inference(counts.val) + stage.epochs * EPOCH_OVERHEAD_S
    every_epoch = speed.inference(counts.val) + EPOCH_OVERHEAD_S
    semi = stage.semi_supervised
    steps = epoch_steps(stage, counts)
    if semi is None:
        return stage.epochs * (speed.training(epoch_images(stage, counts), steps) + every_epoch)
    batch = stage.batch_size
    per_step = speed.training(batch + semi.ratio * batch, 1) + speed.inference(semi.ratio * batch, semi.ratio * batch)
    return stage.epochs * (steps * per_step + every_epoch)


def stage_images(stage: StageSpec, counts: Counts) -> int:
    """Images a stage draws its batches from: the pool, the unlabelled or the labelled images."""
    if stage.semi_supervised is not None:
        return counts.pool if stage.semi_supervised.unlabelled == "all" else counts.unlabelled
    if stage.pretext is not None:
        return counts.pool if stage.data == "all" else counts.unlabelled if stage.data == "unlabelled" else counts.train
    return counts.train


def epoch_steps(stage: StageSpec, counts: Counts) -> int:
    """Optimizer steps of one epoch: a pass over the stage's images (for FixMatch with ``epoch:
    unlabelled``, ``ceil(unlabelled / (ratio × batch))``), capped by ``steps_per_epoch``."""
    semi = stage.semi_supervised
    if semi is not None and semi.epoch == "unlabelled":
        steps = max(1, math.ceil(stage_images(stage, counts) / (semi.ratio * stage.batch_size)))
    elif semi is not None:
        steps = max(1, math.ceil(counts.train / stage.batch_size))
    else:
        steps = max(1, math.ceil(stage_images(stage, counts) / stage.batch_size))
    return min(steps, stage.steps_per_epoch) if stage.steps_per_epoch else steps


def epoch_images(stage: StageSpec, counts: Counts) -> int:
    """Images one epoch of a stage without FixMatch trains on (its steps' batches, the last one partial)."""
    return min(stage_images(stage, counts), epoch_steps(stage, counts) * stage.batch_size)


def estimate_seconds(spec: CompareSpec, counts: Counts, speeds: dict[str, Speed], decode: float) -> float:
    """Estimated wall seconds of the whole comparison (every seed), from the rule of :func:`stage_seconds`
    and per run: loading the data twice (training, then probes), building the model twice, the test
    pass, probes of the starting backbone and of each stage trained (bank = train, probed = test),
    :data:`STAGE_OVERHEAD_S` per stage and :data:`RUN_OVERHEAD_S`. Stages an arm shares with an
    earlier arm (same model and settings) are trained once, as the comparison does."""
    per_seed = 0.0
    trained: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for arm in spec.arms.values():
        assert arm.model is not None and arm.stages is not None, "the folder job writes its arms inline"
        speed = speeds[_speed_key(arm.model.name, arm.model.image_size or 0)]
        model = arm.model.model_dump(mode="json")
        stages = [stage.model_dump(mode="json") for stage in arm.stages]
        shared = max(
            (_common_prefix(stages, earlier) for earlier_model, earlier in trained if earlier_model == model),
            default=0,
        )
        trained.append((model, stages))
        fresh = arm.stages[shared:]
        # images are decoded as a run first reads them (sources the data check vouches for are not
        # decoded at load): the held-out and labelled images, for training and again for the probes,
        # and the pool images the stages draw, at most every file
        read = sum(_images_read(stage, counts) for stage in fresh)
        touched = min(counts.files, counts.val + counts.test + counts.train + read)
        per_seed += RUN_OVERHEAD_S + 2 * speed.build + (touched + counts.train + counts.test) * decode
        per_seed += speed.inference(counts.test)
        per_seed += (1 + len(fresh)) * (speed.inference(counts.train) + speed.inference(counts.test))
        per_seed += sum(STAGE_OVERHEAD_S + stage_seconds(stage, speed, counts) for stage in fresh)
    return per_seed * len(spec.seed_list)


def _images_read(stage: StageSpec, counts: Counts) -> int:
    """Distinct images a stage may read beyond the labelled ones: its epochs' draws from its images."""
    if _cached_head(stage):
        return 0
    semi = stage.semi_supervised
    per_epoch = (
        epoch_steps(stage, counts) * semi.ratio * stage.batch_size if semi is not None else epoch_images(stage, counts)
    )
    return min(stage_images(stage, counts), stage.epochs * per_epoch)


def _common_prefix(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> int:
    count = 0
    for one, other in zip(first, second, strict=False):
        if one != other:
            break
        count += 1
    return count


def fit_budget(
    build: Callable[[float], CompareSpec], cost: Callable[[CompareSpec], float], budget: float, cap: float
) -> tuple[float, CompareSpec, float]:
    """The largest epoch scale in ``(0, cap]`` whose comparison ``cost`` fits ``budget`` seconds (by
    bisection: the cost grows with the scale), its comparison and cost. When even the fewest epochs
    (scale 0: one per stage) do not fit, that smallest plan with its cost."""
    spec = build(cap)
    seconds = cost(spec)
    if seconds <= budget:
        return cap, spec, seconds
    low, high = 0.0, cap
    for _ in range(40):
        middle = (low + high) / 2
        if cost(build(middle)) <= budget:
            low = middle
        else:
            high = middle
    spec = build(low)
    return low, spec, cost(spec)


def capped_epochs(arms: dict[str, dict[str, Any]], counts: Counts) -> dict[str, dict[str, Any]]:
    """``arms`` with every stage whose epoch would read more than :data:`EPOCH_IMAGES` images capped
    there (``steps_per_epoch``: each epoch a fresh random draw of that many)."""
    for arm in arms.values():
        for stage in arm["stages"]:
            spec = StageSpec.model_validate(stage)
            semi = spec.semi_supervised
            per_step = spec.batch_size * (semi.ratio if semi is not None and semi.epoch == "unlabelled" else 1)
            cap = max(1, math.ceil(EPOCH_IMAGES / per_step))
            if epoch_steps(spec, counts) > cap:
                stage["steps_per_epoch"] = cap
    return arms


def budget_line(
    budget: float,
    seeds: int,
    quick: bool,
    cap: float,
    scale: float,
    recipe: float,
    estimate: float,
    spent: float = 0.0,
) -> str:
    """The line the demo prints about its budget: what the recipe's epochs would take (``recipe``
    seconds), and whether they fit, were scaled by ``scale / cap`` to an ``estimate`` that fits, or
    cannot fit even at one epoch per stage. ``spent`` seconds (the data check, the timing probes)
    are named and taken out of ``budget`` first."""
    recipe_text = f"the recipe's epochs{' ×' + format(cap, 'g') + ' (--quick)' if quick else ''}"
    head = f"budget {duration_text(budget)} for {seeds} seed(s)"
    if spent >= 1:
        head += f", {duration_text(spent)} of it spent on the data check and the timings"
        budget -= spent
    head += ": "
    if scale >= cap:
        return head + f"{recipe_text} need an estimated {duration_text(recipe)}, which fits"
    if estimate > budget:
        return head + (
            f"{recipe_text} need an estimated {duration_text(recipe)}; even the fewest epochs (one per stage) "
            f"need {duration_text(estimate)}, over the budget (fewer images, fewer seeds or a larger --budget fit)"
        )
    return head + (
        f"{recipe_text} need an estimated {duration_text(recipe)}; every stage's epochs scaled by "
        f"{scale / cap:.2f} to fit: an estimated {duration_text(estimate)}"
    )


__all__ = [
    "BUDGET_FILE",
    "EPOCH_IMAGES",
    "budget_line",
    "capped_epochs",
    "epoch_images",
    "epoch_steps",
    "stage_images",
    "Counts",
    "Speed",
    "duration_text",
    "estimate_seconds",
    "fit_budget",
    "kept_plan",
    "measure_speed",
    "parse_budget",
    "speeds_for",
    "stage_seconds",
]
