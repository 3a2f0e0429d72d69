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
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headstart.checkpoint import StageRecord
from headstart.config import ModelSpec, StageSpec
from headstart.data.splits import Splits
from headstart.data.task import TaskData
from headstart.engine.passes import evaluate
from headstart.engine.sweep import check_sweep, sweep
from headstart.engine.trainer import TrainerOptions, quiet_lightning
from headstart.files import RESUME_FILE, WEIGHTS_FILE, is_finished_stage
from headstart.lrfind import DIVERGENCE, MAX_LR, MIN_LR, STEPS, LRSweep
from headstart.network import Network
from headstart.ranks import is_rank_zero
from headstart.stage.fit import Interrupted, StagePlan, train
from headstart.stage.prepare import (
    PreparedData,
    PreparedStage,
    apply_freezing,
    check_arguments,
    check_class_weights,
    default_bn_policy,
    install_head,
    prepare_data,
    prepare_stage,
)
from headstart.weights import load_weights

__all__ = [
    "Interrupted",
    "PreparedData",
    "PreparedStage",
    "StageRecord",
    "TrainerOptions",
    "apply_freezing",
    "check_class_weights",
    "default_bn_policy",
    "evaluate_split",
    "fit_stage",
    "install_head",
    "lr_find",
    "prepare_data",
    "prepare_stage",
]

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
    plan = StagePlan(stage, index, seed, image_size, options, model, run_name, config_hash, list(callbacks))
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="headstart-stage-") as scratch:
            return train(network, plan, prepared, Path(scratch), resume=False, keep=False)
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
    return train(network, plan, prepared, folder, resume=resume, keep=True)


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
    predictions: bool = False,
) -> dict:
    """Loss and accuracy of the network's task head on one split, streamed in evaluation mode
    (with ``confusion``, also the confusion matrix over the task's classes; with ``predictions``,
    the predicted and true class of every image of the split, in its order: ``predictions`` and
    ``targets``)."""
    options = options or TrainerOptions()
    return evaluate(
        network,
        options.plan(data.split(split)),
        image_size=image_size,
        loss=loss,
        device=options.device,
        num_classes=len(data.class_names) if confusion else None,
        predictions=predictions,
    )
