"""The stage: one unit of training, from Python or from a run file — prepare → fit → record.

A stage says which data (the task's labelled split, its unlabelled images, a general dataset),
which head and loss (or a pretext task, whose head and loss come with it), what is frozen, the
BatchNorm policy, the optimizer and for how long. :func:`fit_stage` does all of it to a network
and returns a :class:`~headstart.checkpoint.StageRecord`, the typed content of the stage's
``stage.json``::

    network = load("EfficientNetLite0", weights="imagenet", include_top=False)
    data = TaskData.load({"kind": "folder", "path": "photos", "image_size": 224}, {"labels_per_class": 50})
    fit_stage(network, {"name": "head", "freeze": ["backbone"], "epochs": 5}, data, folder="runs/x/0-head")
    fit_stage(network, {"name": "fine-tune", "epochs": 5, "optimizer": {"lr": 1e-4}}, data, folder="runs/x/1-fine-tune")

— the chapter's freeze → fit → unfreeze → fit (fastai's ``fine_tune``) in a few lines.

What a stage does, in order:

1. **Head** (:func:`install_head`). A pretext stage puts its task's head on top. A task stage
   keeps the head when it already predicts these labels (or ``head: keep``), else builds a new
   one (``head: new`` or a head spec; two classes with binary cross-entropy get one sigmoid
   output). Only the head is re-initialised; the hand-over report lists what was kept and what
   is new.
2. **Freezing and BatchNorm** (:func:`apply_freezing`). Everything is unfrozen, then ``freeze``
   selectors (by name) are frozen; the BatchNorm policy defaults to ``frozen`` when anything is
   frozen.
3. **Data** (:func:`prepare_data`). Each split is held in memory or streamed from disk, decided
   once by :func:`~headstart.engine.batches.plan_images` and recorded. A stage that freezes the
   whole backbone, keeps BatchNorm statistics fixed and augments nothing computes the backbone
   features once, in one streaming pass, and trains only the head on them (``cached_features``).
4. **Training** on Lightning (:mod:`headstart.engine.trainer`): ``last.ckpt`` every epoch
   (resumable), early stopping and best weights when asked, Ctrl+C/SIGTERM stop cleanly after the
   current step. ``optimizer: {lr: find}`` first sweeps the rate on a copy of the network
   (:mod:`headstart.lrfind`) and trains with its suggestion; ``loggers: [mlflow]`` makes the
   stage one MLflow run (:mod:`headstart.engine.tracking`).
5. **Record.** ``weights.safetensors`` then ``stage.json``, both written atomically; the presence
   of ``stage.json`` marks the stage finished.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from headstart import seeds
from headstart.checkpoint import DataRecord, Handover, HeadRecord, ModelRecord, StageRecord
from headstart.config import ModelSpec, StageSpec
from headstart.data.dataset import ImageSet
from headstart.data.splits import Splits
from headstart.data.task import TaskData
from headstart.engine.batches import ImagePlan
from headstart.engine.callbacks import EpochHistory, InterruptOnSignal, RunInterrupted
from headstart.engine.module import StageData, StageModule
from headstart.engine.passes import compute_features, evaluate
from headstart.engine.sweep import check_sweep, sweep
from headstart.engine.tracking import StageTracking
from headstart.engine.trainer import TrainerOptions, build_trainer, is_rank_zero, quiet_lightning, restore_best
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError
from headstart.files import RESUME_FILE, WEIGHTS_FILE, atomic_write_json, is_finished_stage, read_json, versions
from headstart.heads import HeadSpec, build_head
from headstart.lrfind import DIVERGENCE, MAX_LR, MIN_LR, PLOT_FILE, STEPS, SWEEP_FILE, LRSweep, SweepInterrupted
from headstart.network import BatchNormPolicy, Network
from headstart.validation import validate
from headstart.weights import load_weights

__all__ = [
    "Interrupted",
    "PreparedData",
    "PreparedStage",
    "StageRecord",
    "TrainerOptions",
    "apply_freezing",
    "default_bn_policy",
    "evaluate_split",
    "fit_stage",
    "install_head",
    "lr_find",
    "prepare_data",
    "prepare_stage",
]

LOG = logging.getLogger("headstart")
BEST_FILE = "best.ckpt"


class Interrupted(HeadstartError):
    """Training stopped on Ctrl+C or SIGTERM; finished epochs are saved and resuming continues."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, folder: Path, stage: str, how_to_continue: str = "fit_stage(..., resume=True)") -> None:
        super().__init__(
            f"interrupted during stage '{stage}'; the last finished epoch is saved in {folder}. "
            f"Continue with: {how_to_continue}"
        )
        self.folder = folder
        self.stage = stage


# --------------------------------------------------------------------------------- the stage


def fit_stage(
    network: Network,
    stage: StageSpec | dict,
    data: TaskData | Splits,
    *,
    folder: str | os.PathLike | None = None,
    index: int = 0,
    seed: int = 0,
    image_size: int | None = None,
    options: TrainerOptions | dict | None = None,
    resume: bool = False,
    run_name: str = "",
    config_hash: str | None = None,
    model: ModelSpec | None = None,
    callbacks: Sequence[Any] = (),
) -> StageRecord:
    """Train ``network`` for one stage in place and return its record (see the module docstring).

    ``data``: a :class:`~headstart.data.TaskData` (or :class:`~headstart.data.Splits`).
    ``folder``: where the stage writes ``weights.safetensors``, ``stage.json``, ``last.ckpt`` and
    metrics; ``None`` trains in a temporary folder and keeps nothing. ``resume``: a finished
    folder is read back instead of trained (its weights loaded into ``network``); an interrupted
    one continues from its last epoch. ``index`` and ``seed`` fix the stage's random streams.
    ``callbacks``: extra Lightning callbacks, called after headstart's own (progress, checkpoints).
    """
    stage, data, options = check_arguments(network, stage, data, image_size, options)
    quiet_lightning()
    image_size = int(image_size or network.preprocessing.input_size[-1])
    model = model or ModelSpec(name=network.model_name, in_chans=network.in_chans, pooling=network.pooling)
    prepared = prepare_stage(network, stage, data, index, seed, image_size)
    plan = _Plan(stage, index, seed, image_size, options, model, run_name, config_hash, list(callbacks))
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="headstart-stage-") as scratch:
            return _train(network, plan, prepared, Path(scratch), resume=False, keep=False)
    folder = Path(folder)
    if resume and is_finished_stage(folder):
        record = StageRecord.read(folder)
        network.load_state_dict(load_weights(folder / WEIGHTS_FILE), strict=True)
        network.set_training_size(record.model.image_size)
        return record
    if is_rank_zero():
        if folder.exists() and not (resume and (folder / RESUME_FILE).is_file()):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
    return _train(network, plan, prepared, folder, resume=resume, keep=True)


def lr_find(
    network: Network,
    stage: StageSpec | dict,
    data: TaskData | Splits,
    *,
    index: int = 0,
    seed: int = 0,
    image_size: int | None = None,
    options: TrainerOptions | dict | None = None,
    min_lr: float = MIN_LR,
    max_lr: float = MAX_LR,
    steps: int = STEPS,
    divergence: float | None = DIVERGENCE,
) -> LRSweep:
    """Sweep the learning rate for ``stage`` as :func:`fit_stage` would train it on ``network``
    (same arguments; :mod:`headstart.lrfind`); ``network`` itself is left unchanged, nothing is
    written. Returns an :class:`~headstart.lrfind.LRSweep`: ``suggestion``, the curve, ``plot(path)``.
    """
    stage, data, options = check_arguments(network, stage, data, image_size, options, caller="lr_find")
    check_sweep(min_lr, max_lr, steps)
    quiet_lightning()
    image_size = int(image_size or network.preprocessing.input_size[-1])
    work = copy.deepcopy(network)
    prepared = prepare_stage(work, stage, data, index, seed, image_size)
    training = prepare_data(work, stage, index, prepared, options, image_size, validation=False)
    return sweep(
        work,
        stage,
        training.data.train,
        cached=training.cached,
        bn_policy=default_bn_policy(stage),
        index=index,
        seed=seed,
        image_size=image_size,
        options=options,
        pretext=prepared.pretext,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        divergence=divergence,
    )


def evaluate_split(
    network: Network,
    data: TaskData,
    split: str,
    *,
    image_size: int,
    loss: str = "cross_entropy",
    options: TrainerOptions | None = None,
    confusion: bool = False,
) -> dict:
    """Loss and accuracy of the network's task head on one split, streamed in evaluation mode
    (with ``confusion``, also the confusion matrix over the task's classes)."""
    options = options or TrainerOptions()
    return evaluate(
        network,
        options.plan(data.split(split)),
        image_size=image_size,
        loss=loss,
        device=options.device,
        num_classes=len(data.class_names) if confusion else None,
    )


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


# ------------------------------------------------------------------------------ 4-5: fit, record


@dataclass
class _Plan:
    """The settings of one call of :func:`fit_stage`, checked."""

    stage: StageSpec
    index: int
    seed: int
    image_size: int
    options: TrainerOptions
    model: ModelSpec
    run_name: str
    config_hash: str | None
    callbacks: list


def _train(
    network: Network, plan: _Plan, prepared: PreparedStage, folder: Path, *, resume: bool, keep: bool
) -> StageRecord:
    """Steps 3 to 5: prepare the data, fit on Lightning, write the record (when ``keep``)."""
    stage = plan.stage
    StageTracking.check(plan.options)  # before any data is read or feature computed
    data = prepare_data(network, stage, plan.index, prepared, plan.options, plan.image_size)
    trained, sweep_record = _learning_rate(network, plan, prepared, data, folder if keep else None, resume)
    module = StageModule(
        network,
        trained,
        plan.index,
        data.data,
        seed=plan.seed,
        image_size=plan.image_size,
        pretext=prepared.pretext,
        cached=data.cached,
        pin_memory=plan.options.device == "cuda",
    )
    history = EpochHistory()
    callbacks, best = _callbacks(stage, folder, history, has_validation=data.data.val is not None)
    tracking = StageTracking.start(
        plan.options,
        folder if keep else None,
        run_name=plan.run_name,
        index=plan.index,
        resume=resume,
        stage=stage,
        model=plan.model,
        seed=plan.seed,
        image_size=plan.image_size,
        config_hash=plan.config_hash,
        learning_rate=sweep_record.suggestion if sweep_record is not None else None,
    )
    trainer = build_trainer(plan.options, stage, folder, callbacks + plan.callbacks, tracking.loggers)
    # Lightning keeps the mode a module arrives in, and a loaded network arrives in eval mode: without
    # this, BatchNorm would normalise with its running statistics and never update them, and dropout
    # would be off. Network.train() keeps the layers of the `frozen` BatchNorm policy in eval mode.
    network.train()
    resume_from = folder / RESUME_FILE
    try:
        trainer.fit(module, ckpt_path=str(resume_from) if resume and resume_from.is_file() else None)
    except (RunInterrupted, SIGTERMException, KeyboardInterrupt) as interruption:
        raise Interrupted(folder, stage.name) from interruption
    best_epoch = None
    if best is not None and best.best_model_path and Path(best.best_model_path).is_file():
        best_epoch = restore_best(network, Path(best.best_model_path))
        if trainer.is_global_zero:
            Path(best.best_model_path).unlink(missing_ok=True)
    network.set_training_size(plan.image_size)
    record = StageRecord(
        run_name=plan.run_name,
        stage_index=plan.index,
        stage_name=stage.name,
        stage=stage,
        model=ModelRecord(**plan.model.model_dump(exclude={"image_size"}), image_size=plan.image_size),
        frozen=network.frozen_parameter_names(),
        bn_policy=default_bn_policy(stage),
        head=HeadRecord.model_validate(network.head_description()),
        preprocessing=network.preprocessing.to_dict(),
        config_hash=plan.config_hash,
        seconds=history.seconds + data.seconds,
        steps=int(trainer.global_step),
        history=history.epochs,
        step_losses=history.step_losses,
        learning_rates=module.schedule,
        handover=prepared.handover,
        cached_features=data.cached,
        diagnostics=_diagnostics(stage, history, prepared.pretext),
        best_epoch=best_epoch,
        data=_data_record(stage, prepared, data.train_plan),
        versions=versions(),
        lr_find=sweep_record,
    )
    if keep and trainer.is_global_zero:
        record.write(folder, network.state_dict())
        tracking.finish(folder)
    return record


def _learning_rate(
    network: Network, plan: _Plan, prepared: PreparedStage, data: PreparedData, folder: Path | None, resume: bool
) -> tuple[StageSpec, LRSweep | None]:
    """The stage as it trains: with ``lr: find``, the sweep's suggestion as its rate (the sweep runs
    on a copy of the network, is written into ``folder``, and is read back when resuming)."""
    stage = plan.stage
    if stage.optimizer.lr != "find":
        return stage, None
    if folder is not None and resume and (folder / SWEEP_FILE).is_file():
        result = validate(LRSweep, read_json(folder / SWEEP_FILE), str(folder / SWEEP_FILE))
    else:
        try:
            result = sweep(
                copy.deepcopy(network),
                stage,
                data.data.train,
                cached=data.cached,
                bn_policy=default_bn_policy(stage),
                index=plan.index,
                seed=plan.seed,
                image_size=plan.image_size,
                options=plan.options,
                pretext=prepared.pretext,
            )
        except SweepInterrupted as interruption:
            raise Interrupted(folder or Path("."), stage.name) from interruption
        if folder is not None:
            atomic_write_json(folder / SWEEP_FILE, result.model_dump(mode="json"))
            result.plot(folder / PLOT_FILE)
    rate = stage.optimizer.model_copy(update={"lr": result.suggestion})
    return stage.model_copy(update={"optimizer": rate}), result


def _callbacks(
    stage: StageSpec, folder: Path, history: EpochHistory, *, has_validation: bool
) -> tuple[list, ModelCheckpoint | None]:
    """headstart's callbacks: Ctrl+C handling, the epoch history, ``last.ckpt`` every epoch, and early
    stopping with the best weights kept when the stage asks; returns them and the best-weights one."""
    callbacks: list = [
        InterruptOnSignal(),
        history,
        ModelCheckpoint(
            dirpath=folder,
            filename="last",
            save_last=False,
            save_top_k=-1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
    ]
    best: ModelCheckpoint | None = None
    if stage.early_stopping is not None and has_validation:
        mode = "min" if stage.early_stopping.monitor == "val_loss" else "max"
        callbacks.append(
            EarlyStopping(
                monitor=stage.early_stopping.monitor,
                patience=stage.early_stopping.patience,
                min_delta=stage.early_stopping.min_delta,
                mode=mode,
            )
        )
        if stage.early_stopping.restore_best_weights:
            best = ModelCheckpoint(
                dirpath=folder,
                filename=BEST_FILE.removesuffix(".ckpt"),
                monitor=stage.early_stopping.monitor,
                mode=mode,
                save_top_k=1,
                save_weights_only=True,
                enable_version_counter=False,
            )
            callbacks.append(best)
    return callbacks, best


def _diagnostics(stage: StageSpec, history: EpochHistory, pretext) -> list[str]:
    """What the pretext task's diagnostics say about this stage's curves (logged as warnings)."""
    if pretext is None:
        return []
    from headstart.pretext.diagnostics import diagnose

    lines = diagnose(history.epochs, pretext)
    for line in lines:
        LOG.warning("stage '%s': %s", stage.name, line)
    return lines


def _data_record(stage: StageSpec, prepared: PreparedStage, train_plan: ImagePlan) -> DataRecord:
    unlabelled = prepared.unlabelled_set
    return DataRecord(
        split=stage.data,
        train_images=len(prepared.train_set),
        val_images=len(prepared.val_set),
        unlabelled_images=len(unlabelled) if unlabelled is not None else 0,
        residency=train_plan.residency,
        workers=train_plan.workers,
        description=train_plan.describe(),
    )


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
