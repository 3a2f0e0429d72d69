"""Steps 1 to 3 of a stage: its head, its freezing and BatchNorm policy, its data — and the checked
arguments of :func:`~headstart.stage.fit_stage`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl

from headstart import seeds
from headstart.checkpoint import Handover
from headstart.config import StageSpec
from headstart.data.dataset import ImageSet
from headstart.data.splits import Splits
from headstart.data.task import TaskData
from headstart.engine.batches import ImagePlan
from headstart.engine.losses import class_weights
from headstart.engine.module import StageData
from headstart.engine.passes import compute_features
from headstart.engine.trainer import TrainerOptions
from headstart.errors import HeadstartError
from headstart.heads import HeadSpec, build_head
from headstart.network import BatchNormPolicy, Network
from headstart.validation import validate

LOG = logging.getLogger("headstart")


# ------------------------------------------------------------------------- 1-2: head and freezing


@dataclass
class PreparedStage:
    """A stage's network side, ready to train (steps 1 and 2): its pretext task (or ``None``), its
    training, validation and unlabelled images, and what the new head replaced."""

    pretext: Any
    train_set: ImageSet
    val_set: ImageSet
    unlabelled_set: ImageSet | None
    handover: Handover


def prepare_stage(
    network: Network, stage: StageSpec, data: TaskData, index: int, seed: int, image_size: int
) -> PreparedStage:
    """Steps 1 and 2 of the module docstring on ``network``: the stage's pretext task, its splits,
    the head installed and the freezing and BatchNorm policy applied. ``fit_stage`` and the
    learning-rate finder both start a stage here."""
    pretext = None
    if stage.pretext is not None:
        from headstart import pretext as pretext_registry

        pretext = pretext_registry.get(stage.pretext.name, **stage.pretext.options())
        warning = pretext.check_batch_size(stage.batch_size, f"stage {stage.name!r}")
        if warning:
            LOG.warning("%s", warning)
    labels, train_set, val_set = _stage_splits(stage, data, index, pretext)
    pl.seed_everything(seeds.stage(seed, index), verbose=False)  # a new head's initial weights
    handover = install_head(network, stage, labels, pretext, image_size)
    apply_freezing(network, stage)
    return PreparedStage(pretext, train_set, val_set, _unlabelled_split(stage, data), handover)


def default_bn_policy(stage: StageSpec) -> BatchNormPolicy:
    """``frozen`` when anything is frozen (Keras' ``trainable=False`` behaviour), else ``train``."""
    return stage.bn_policy or ("frozen" if stage.freeze else "train")


def install_head(network: Network, stage: StageSpec, labels: list[str] | None, pretext, image_size: int) -> Handover:
    """Keep or replace the head for ``stage`` (step 1 of the module docstring)."""
    kept_backbone = len(network.backbone.state_dict())
    if pretext is not None:
        head = pretext.build_head(network.encoder(image_size), (image_size, image_size))
        network.use_pretext_head(head, pretext.name)
        return Handover(
            kept_backbone_tensors=kept_backbone,
            head=f"new {pretext.name} pretext head",
            reinitialised=sorted(f"head.{key}" for key in head.state_dict()),
        )
    assert labels is not None  # a task stage reads labelled splits (_stage_splits)
    current = network.head_description()
    same_task = current["kind"] == "task" and current["labels"] == labels
    if stage.head == "keep" or (stage.head is None and same_task):
        if not same_task:
            raise HeadstartError(
                f"stage '{stage.name}': head: keep, but the previous head predicts "
                f"{current['pretext'] or current['labels']}, not these {len(labels)} classes"
            )
        return Handover(kept_backbone_tensors=kept_backbone, head="kept")
    default = HeadSpec.for_classes(len(labels), stage.loss)
    if isinstance(stage.head, HeadSpec):
        spec = stage.head
        if not spec.fits_labels(labels):
            raise HeadstartError(
                f"stage '{stage.name}': head.outputs is {spec.outputs} but the data has "
                f"{len(labels)} classes (expected {default.outputs})"
            )
    else:
        spec = default
    head = build_head(spec, network.head_in_features)
    network.replace_head(head, labels=labels)
    return Handover(
        kept_backbone_tensors=kept_backbone,
        head="new task head",
        reinitialised=sorted(f"head.{key}" for key in head.state_dict()),
    )


def apply_freezing(network: Network, stage: StageSpec) -> None:
    """Unfreeze all, freeze the stage's selectors, set its BatchNorm policy (step 2)."""
    network.unfreeze("all")
    if stage.freeze:
        network.freeze(*stage.freeze)
    network.set_bn_policy(default_bn_policy(stage))


def _stage_splits(stage: StageSpec, data: TaskData, index: int, pretext) -> tuple[list[str] | None, ImageSet, ImageSet]:
    if stage.data == "general":
        return data.general_names, data.split("general"), data.split("general_val")
    if pretext is None and stage.data in ("unlabelled", "all"):
        raise HeadstartError(
            f"stages[{index}] ({stage.name}): data '{stage.data}' has no labels; "
            "use it with a pretext task, or data: train"
        )
    return data.class_names, data.split(stage.data), data.split("val")


def check_class_weights(stages: list[StageSpec], data: TaskData) -> None:
    """Every task stage's ``class_weights`` against the classes of its labelled training split (one
    weight per class; ``balanced`` needs an image of each), before any stage trains: the error names
    the key (``stages[1].class_weights``)."""
    for index, stage in enumerate(stages):
        if stage.class_weights is None or stage.pretext is not None or stage.data in ("unlabelled", "all"):
            continue  # a task stage on images without labels is refused by _stage_splits, with its own error
        labels, train_set, _ = _stage_splits(stage, data, index, None)
        assert labels is not None
        counts = train_set.class_counts()
        class_weights(
            stage.class_weights,
            [counts.get(name, 0) for name in labels],
            labels,
            f"stages[{index}].class_weights (stage '{stage.name}')",
        )


def _unlabelled_split(stage: StageSpec, data: TaskData) -> ImageSet | None:
    """The images a semi-supervised stage reads without labels (``None`` for other stages)."""
    if stage.semi_supervised is None:
        return None
    images = data.split(stage.semi_supervised.unlabelled)
    if not len(images):
        raise HeadstartError(
            f"stage '{stage.name}': semi_supervised.unlabelled is {stage.semi_supervised.unlabelled!r} "
            "but that split has no images; keep fewer labels (splits.labels_per_class) or use 'all'"
        )
    return images


# ---------------------------------------------------------------------------------- 3: data


@dataclass
class PreparedData:
    """What a stage's training reads (step 3 of the module docstring) and how it got there."""

    data: StageData
    cached: bool
    train_plan: ImagePlan
    seconds: float
    """Wall time of planning and feature caching."""


def prepare_data(
    network: Network,
    stage: StageSpec,
    index: int,
    prepared: PreparedStage,
    options: TrainerOptions,
    image_size: int,
    *,
    validation: bool = True,
) -> PreparedData:
    """Plan the splits and, for a frozen backbone with frozen BatchNorm and no augmentation, compute
    the features once (step 3). ``validation=False``: training images only (the learning-rate sweep)."""
    trainable_backbone = any(name.startswith("backbone.") for name, _ in network.trainable_parameters())
    can_cache = (
        prepared.pretext is None
        and stage.augment == "none"
        and not trainable_backbone
        and default_bn_policy(stage) == "frozen"
        and stage.semi_supervised is None
    )
    if stage.cache_features and not can_cache:
        raise HeadstartError(
            f"stages[{index}] ({stage.name}): cache_features needs the whole backbone frozen, "
            "bn_policy frozen, no pretext and augment: none"
        )
    cached = can_cache if stage.cache_features is None else stage.cache_features
    started = time.perf_counter()
    train_plan = options.plan(prepared.train_set)
    val_set = prepared.val_set if validation else None
    val_plan = options.plan(val_set) if val_set is not None and len(val_set) else None
    LOG.info("stage '%s': %s", stage.name, train_plan.describe())
    if cached:
        train_features = compute_features(network, train_plan, image_size=image_size, device=options.device)
        val_features = (
            compute_features(network, val_plan, image_size=image_size, device=options.device)
            if val_plan is not None
            else None
        )
        stage_data = StageData(train_features, val_features)
    else:
        unlabelled = options.plan(prepared.unlabelled_set) if prepared.unlabelled_set is not None else None
        stage_data = StageData(train_plan, val_plan, unlabelled)
    return PreparedData(stage_data, cached, train_plan, time.perf_counter() - started)


# ----------------------------------------------------------------------------- the arguments


def check_arguments(
    network, stage, data, image_size, options, *, caller: str = "fit_stage"
) -> tuple[StageSpec, TaskData, TrainerOptions]:
    """The arguments of :func:`fit_stage` (and :func:`lr_find`) as the types they work with, or a
    :class:`HeadstartError` naming the argument."""
    if not isinstance(network, Network):
        raise HeadstartError(
            f"{caller}: network is a {type(network).__name__}; expected a headstart Network (headstart.zoo.load(...))"
        )
    if not isinstance(stage, (StageSpec, dict)):
        raise HeadstartError(
            f"{caller}: stage is a {type(stage).__name__}; expected a StageSpec or a mapping "
            "such as {'name': 'head', 'freeze': ['backbone'], 'epochs': 5}"
        )
    stage = validate(StageSpec, stage, "stage")
    if isinstance(data, Splits):
        data = TaskData(data)
    if not isinstance(data, TaskData):
        raise HeadstartError(
            f"{caller}: data is a {type(data).__name__}; expected a TaskData "
            "(headstart.data.TaskData.load(source, splits)) or Splits"
        )
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise HeadstartError(f"{caller}: image_size={image_size!r}; expected a positive number of pixels or None")
    return stage, data, TrainerOptions.coerce(options, caller)
