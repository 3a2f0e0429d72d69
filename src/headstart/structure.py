"""Training structures: run the stages of a :class:`~headstart.config.RunSpec` in order.

The chapter's structures are all lists of stages over one network:

* init → train: one task stage on a randomly initialised model;
* pretrain → train / altered task → task: a pretext stage (e.g. rotation on the unlabelled
  images), then a task stage whose new head replaces the pretext head;
* general → task transfer: a stage on ``data: general`` (or ImageNet weights), then the task;
* multi-step freeze → unfreeze → fine-tune: a stage with ``freeze: [backbone]`` (only the new head
  trains, features cached), then a stage with a low learning rate and nothing frozen;
* stacked ("double") transfer: ImageNet weights → a general-data stage → the task.

Weights flow from stage to stage in memory; a stage's head is kept when the next stage predicts
the same labels and is replaced (and only it re-initialised) otherwise. Each finished stage is
written to disk (see :mod:`headstart.checkpoint`); ``resume=True`` skips finished stages, continues
an interrupted one from its last epoch, and ends where an uninterrupted run ends.

The test split is evaluated once, after the last stage, and never seen by any earlier stage.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from headstart import checkpoint as ckpt
from headstart.config import RunSpec, StageSpec
from headstart.engine import (
    BestWeights,
    EpochHistory,
    InterruptOnSignal,
    RunInterrupted,
    StageData,
    StageModule,
    compute_features,
    evaluate,
)
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError


@dataclass
class StageResult:
    """What one stage did: its folder, history (one dict per epoch), time and hand-over report."""

    index: int
    name: str
    folder: Path
    seconds: float
    history: list[dict[str, float]]
    handover: dict[str, Any]
    cached_features: bool
    diagnostics: list[str] = field(default_factory=list)
    skipped: bool = False


@dataclass
class RunResult:
    """The outcome of a run: per-stage results and the final test metrics."""

    spec: RunSpec
    folder: Path
    stages: list[StageResult]
    test: dict[str, float] | None
    seconds: float
    network: Any = None


@dataclass
class _TaskData:
    """Tensors of every split a stage may draw on."""

    class_names: list[str]
    channels: int
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    general_names: list[str] | None = None


def _load_data(spec: RunSpec, min_image_size: int | None, model_name: str) -> _TaskData:
    from headstart.data import check_dataset, load_source, make_splits

    images = load_source(spec.data.source)
    split = spec.data.splits
    splits = make_splits(images, test_fraction=split.test_fraction, val_fraction=split.val_fraction, seed=split.seed,
                         labels_per_class=split.labels_per_class, labelled_fraction=split.labelled_fraction)
    for warning in check_dataset(splits, min_image_size=min_image_size, model_name=model_name):
        logging.getLogger("headstart").warning(warning)
    sets = {name: getattr(splits, name).as_tensors() for name in ("train", "unlabelled", "val", "test")}
    sets["all"] = splits.pool().as_tensors()
    data = _TaskData(list(images.class_names), images.channels, sets)
    if spec.data.general is not None:
        general = load_source(spec.data.general)
        general_splits = make_splits(general, test_fraction=0.1, val_fraction=0.1, seed=split.seed)
        data.sets["general"] = general_splits.train.as_tensors()
        data.sets["general_val"] = general_splits.val.as_tensors()
        data.general_names = list(general.class_names)
    return data


def _stage_folder(root: Path, index: int, stage: StageSpec) -> Path:
    return root / f"{index}-{stage.name}"


def _default_bn_policy(stage: StageSpec) -> str:
    return stage.bn_policy or ("frozen" if stage.freeze else "train")


class _HeadState:
    """Which head the network carries now: ("task", labels, spec) or ("pretext", name)."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.labels: list[str] | None = None
        self.spec: dict[str, Any] | None = None
        self.pretext: str | None = None


def _set_head(network, stage: StageSpec, head_state: _HeadState, labels: list[str], pretext, image_size) -> dict[str, Any]:
    """Keep or replace the head for ``stage``; return the hand-over report."""
    from headstart.heads import HeadSpec, build_head

    backbone_tensors = len(network.backbone.state_dict())
    if pretext is not None:
        from headstart.engine import NetworkEncoder

        head = pretext.build_head(NetworkEncoder(network, image_size), (image_size, image_size) if image_size else None)
        network.replace_head(head, labels=None)
        head_state.kind, head_state.labels, head_state.spec, head_state.pretext = "pretext", None, None, pretext.name
        return {"kept_backbone_tensors": backbone_tensors, "head": f"new {pretext.name} pretext head",
                "reinitialised": sorted(f"head.{key}" for key in head.state_dict())}
    outputs = 1 if stage.loss == "binary_cross_entropy" and len(labels) == 2 else len(labels)
    same_task = head_state.kind == "task" and head_state.labels == labels
    if stage.head == "keep" or (stage.head is None and same_task):
        if not same_task:
            raise HeadstartError(f"stage '{stage.name}': head: keep, but the previous head predicts "
                                 f"{head_state.pretext or head_state.labels}, not these {len(labels)} classes")
        return {"kept_backbone_tensors": backbone_tensors, "head": "kept", "reinitialised": []}
    if isinstance(stage.head, HeadSpec):
        spec = stage.head
        if spec.outputs != outputs:
            raise HeadstartError(f"stage '{stage.name}': head.outputs is {spec.outputs} but the data has "
                                 f"{len(labels)} classes (expected {outputs})")
    else:
        spec = HeadSpec(outputs=outputs, output="sigmoid" if outputs == 1 else "softmax")
    head = build_head(spec, network.num_features)
    network.replace_head(head, labels=labels)
    head_state.kind, head_state.labels, head_state.spec, head_state.pretext = "task", labels, spec.model_dump(), None
    return {"kept_backbone_tensors": backbone_tensors, "head": "new task head",
            "reinitialised": sorted(f"head.{key}" for key in head.state_dict())}


def _apply_freezing(network, stage: StageSpec) -> None:
    network.unfreeze("all")
    if stage.freeze:
        network.freeze(*stage.freeze)
    network.set_bn_policy(_default_bn_policy(stage))


def _whole_backbone_frozen(network) -> bool:
    return all(not name.startswith("backbone.") for name, _ in network.trainable_parameters())


def _trainer(spec: RunSpec, stage: StageSpec, folder: Path, callbacks: list, progress: bool) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=folder,
        max_epochs=stage.epochs,
        accelerator=spec.accelerator,
        devices=spec.devices,
        strategy=spec.strategy,
        precision=spec.precision,
        logger=_loggers(spec, folder),
        callbacks=callbacks,
        plugins=[ckpt.AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        use_distributed_sampler=False,
        deterministic=False,
        benchmark=False,
    )


def _loggers(spec: RunSpec, folder: Path) -> list:
    """The stage's metric loggers: ``metrics.csv`` and/or TensorBoard event files in ``folder``."""
    loggers = []
    if "csv" in spec.loggers:
        loggers.append(CSVLogger(save_dir=folder, name="", version=""))
    if "tensorboard" in spec.loggers:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=folder, name="tensorboard", version="", default_hp_metric=False))
    return loggers


def _check_loggers(spec: RunSpec) -> None:
    """Fail before anything is written when a chosen logger's package is missing."""
    if "tensorboard" in spec.loggers and find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        raise HeadstartError("loggers: tensorboard needs the tensorboardX package; "
                             "pip install 'headstart[tensorboard]' or remove it from loggers")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    # BatchNorm layers held in eval mode are the `frozen` policy at work, not a mistake.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")


def run(spec: RunSpec, *, resume: bool = False, progress: bool | None = None, overwrite: bool = False,
        on_stage_end: Callable[[StageResult], None] | None = None) -> RunResult:
    """Run every stage of ``spec``; see the module docstring. Returns a :class:`RunResult`."""
    from headstart.zoo import load

    _check_loggers(spec)
    _quiet_lightning()
    started = time.perf_counter()
    progress = spec.progress if progress is None else progress
    root = spec.output_dir()
    run_file = root / "run.json"
    config_hash = spec.config_hash()
    # Under DDP every process runs this function; only the first one touches the output folder.
    rank_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    if rank_zero and run_file.exists() and not resume:
        if not overwrite:
            raise HeadstartError(f"{root}: a run is already there; pass --resume to continue it or choose another output")
        shutil.rmtree(root)
    if resume and run_file.exists():
        previous = ckpt.read_json(run_file)
        if previous.get("config_hash") != config_hash:
            raise HeadstartError(f"{run_file}: written by a different configuration (hash {previous.get('config_hash')}, "
                                 f"this one {config_hash}); resume needs the same run file")
    if rank_zero:
        root.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(spec.seed, verbose=False)
    network = load(spec.model.name, weights=spec.model.weights, include_top=False, pooling=spec.model.pooling,
                   in_chans=spec.model.in_chans)
    image_size = spec.model.image_size or int(network.preprocessing.input_size[-1])
    data = _load_data(spec, min_image_size=None, model_name=spec.model.name)

    status = {"name": spec.name, "config_hash": config_hash, "config": spec.model_dump(mode="json"),
              "finished_stages": [], "status": "running", "versions": ckpt.versions()}
    if rank_zero:
        ckpt.atomic_write_json(run_file, status)
    head_state = _HeadState()
    results: list[StageResult] = []

    for index, stage in enumerate(spec.stages):
        folder = _stage_folder(root, index, stage)
        pl.seed_everything(spec.seed + index, verbose=False)
        pretext = None
        if stage.pretext is not None:
            from headstart import pretext as pretext_registry

            pretext = pretext_registry.get(stage.pretext.name, **stage.pretext.options())
        if stage.data == "general":
            labels, train_set, val_set = data.general_names, data.sets["general"], data.sets["general_val"]
        elif pretext is not None:
            labels, train_set, val_set = data.class_names, data.sets[stage.data], data.sets["val"]
        else:
            if stage.data in ("unlabelled", "all"):
                raise HeadstartError(f"stages[{index}] ({stage.name}): data '{stage.data}' has no labels; "
                                     "use it with a pretext task, or data: train")
            labels, train_set, val_set = data.class_names, data.sets["train"], data.sets["val"]
        handover = _set_head(network, stage, head_state, labels, pretext, image_size)
        _apply_freezing(network, stage)
        finished = folder / ckpt.METADATA_FILE
        if resume and finished.is_file():
            network.load_state_dict(ckpt.load_weights(folder / ckpt.WEIGHTS_FILE), strict=True)
            metadata = ckpt.read_json(finished)
            results.append(StageResult(index, stage.name, folder, metadata.get("seconds", 0.0),
                                       metadata.get("history", []), metadata.get("handover", {}),
                                       metadata.get("cached_features", False), metadata.get("diagnostics", []),
                                       skipped=True))
            status["finished_stages"].append(folder.name)
            continue
        if rank_zero:
            if folder.exists() and not (resume and (folder / ckpt.RESUME_FILE).is_file()):
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)

        can_cache = (pretext is None and stage.augment == "none" and _whole_backbone_frozen(network)
                     and _default_bn_policy(stage) == "frozen")
        if stage.cache_features and not can_cache:
            raise HeadstartError(f"stages[{index}] ({stage.name}): cache_features needs the whole backbone frozen, "
                                 "bn_policy frozen, no pretext and augment: none")
        cached = can_cache if stage.cache_features is None else stage.cache_features
        stage_started = time.perf_counter()
        if cached:
            device = "cuda" if spec.accelerator == "gpu" and torch.cuda.is_available() else "cpu"
            network.to(device)
            train_features = compute_features(network, train_set[0], image_size=image_size, device=device)
            stage_data = StageData((train_features, train_set[1]), None)
            if val_set is not None and len(val_set[0]):
                stage_data.val = (compute_features(network, val_set[0], image_size=image_size, device=device), val_set[1])
            network.cpu()
        else:
            stage_data = StageData(train_set, val_set if val_set is not None and len(val_set[0]) else None)
        module = StageModule(network, stage, index, stage_data, seed=spec.seed, image_size=image_size,
                             pretext=pretext, cached=cached, num_workers=spec.num_workers)
        history = EpochHistory()
        callbacks: list = [InterruptOnSignal(), history,
                           ModelCheckpoint(dirpath=folder, filename="last", save_last=False, save_top_k=-1,
                                           every_n_epochs=1, save_on_train_epoch_end=True,
                                           enable_version_counter=False)]
        best = None
        has_val = stage_data.val is not None
        if stage.early_stopping is not None and has_val:
            mode = "min" if stage.early_stopping.monitor == "val_loss" else "max"
            callbacks.append(EarlyStopping(monitor=stage.early_stopping.monitor, patience=stage.early_stopping.patience,
                                           min_delta=stage.early_stopping.min_delta, mode=mode))
            if stage.early_stopping.restore_best_weights:
                best = BestWeights(stage.early_stopping.monitor, mode, folder / "best.safetensors")
                callbacks.append(best)
        trainer = _trainer(spec, stage, folder, callbacks, progress)
        resume_from = folder / ckpt.RESUME_FILE
        try:
            trainer.fit(module, ckpt_path=str(resume_from) if resume and resume_from.is_file() else None)
        except (RunInterrupted, SIGTERMException, KeyboardInterrupt) as interruption:
            status["status"] = "interrupted"
            if rank_zero:
                ckpt.atomic_write_json(run_file, status)
            raise Interrupted(root, stage.name) from interruption
        if best is not None and best.best is not None and (folder / "best.safetensors").is_file():
            network.load_state_dict(ckpt.load_weights(folder / "best.safetensors"), strict=True)
        seconds = time.perf_counter() - stage_started + history.seconds_before
        diagnostics = []
        if pretext is not None:
            from headstart.pretext.diagnostics import diagnose

            diagnostics = diagnose(history.epochs, pretext)
            for line in diagnostics:
                logging.getLogger("headstart").warning("stage '%s': %s", stage.name, line)
        result = StageResult(index, stage.name, folder, seconds, history.epochs, handover, cached, diagnostics)
        metadata = {
            "run_name": spec.name, "stage_index": index, "stage_name": stage.name, "status": "finished",
            "stage": stage.model_dump(mode="json"), "model": {**spec.model.model_dump(mode="json"), "image_size": image_size},
            "frozen": network.frozen_parameter_names(), "bn_policy": _default_bn_policy(stage),
            "head": {"kind": head_state.kind, "labels": head_state.labels, "spec": head_state.spec,
                     "pretext": head_state.pretext},
            "preprocessing": _trained_preprocessing(network, image_size), "config_hash": config_hash, "seconds": seconds,
            "history": history.epochs, "step_losses": history.step_losses, "handover": handover, "cached_features": cached, "diagnostics": diagnostics,
            "best_epoch": best.best_epoch if best is not None else None,
        }
        if rank_zero:
            ckpt.save_stage(folder, network.state_dict(), metadata)
            status["finished_stages"].append(folder.name)
            ckpt.atomic_write_json(run_file, status)
        results.append(result)
        if on_stage_end is not None:
            on_stage_end(result)

    test = None
    if head_state.kind == "task" and spec.stages[-1].data != "general" and len(data.sets["test"][0]):
        images, labels = data.sets["test"]
        test = evaluate(network, images, labels, image_size=image_size, loss=spec.stages[-1].loss)
    seconds = time.perf_counter() - started
    status.update(status="finished", test=test, seconds=seconds)
    if rank_zero:
        ckpt.atomic_write_json(run_file, status)
    return RunResult(spec, root, results, test, seconds, network)


def _trained_preprocessing(network, image_size: int) -> dict[str, Any]:
    """The input pipeline the stage trained with: whole image resized (bilinear) to ``image_size``,
    normalised with the pretrained mean and standard deviation."""
    from dataclasses import replace

    trained = replace(network.preprocessing, input_size=(network.in_chans, image_size, image_size),
                      interpolation="bilinear", crop_pct=1.0, crop_mode="squash")
    return trained.to_dict()


class Interrupted(HeadstartError):
    """The run stopped on Ctrl+C or SIGTERM; finished epochs are saved and ``--resume`` continues."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, root: Path, stage: str) -> None:
        super().__init__(f"interrupted during stage '{stage}'; the last finished epoch is saved in {root}. "
                         f"Continue with: headstart run FILE --resume")
        self.root = root
