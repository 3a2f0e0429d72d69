"""The stage: one unit of training, from Python or from a run file, and its record on disk.

A stage says which data (the task's labelled split, its unlabelled images, a general dataset),
which head and loss (or a pretext task, whose head and loss come with it), what is frozen, the
BatchNorm policy, the optimizer and for how long. :func:`fit_stage` does all of it to a network
and returns a :class:`StageRecord`, the typed content of the stage's ``stage.json``::

    network = load("EfficientNetLite0", weights="imagenet", include_top=False)
    data = TaskData.load({"kind": "folder", "path": "photos", "image_size": 224}, {"labels_per_class": 50})
    fit_stage(network, {"name": "head", "freeze": ["backbone"], "epochs": 5}, data, folder="runs/x/0-head")
    fit_stage(network, {"name": "fine-tune", "epochs": 5, "optimizer": {"lr": 1e-4}}, data, folder="runs/x/1-fine-tune")

— the chapter's freeze → fit → unfreeze → fit (fastai's ``fine_tune``) in a few lines.

What a stage does, in order:

1. **Head.** A pretext stage puts its task's head on top. A task stage keeps the head when it
   already predicts these labels (or ``head: keep``), else builds a new one (``head: new`` or a
   head spec; two classes with binary cross-entropy get one sigmoid output). Only the head is
   re-initialised; the hand-over report lists what was kept and what is new.
2. **Freezing and BatchNorm.** Everything is unfrozen, then ``freeze`` selectors (by name) are
   frozen; the BatchNorm policy defaults to ``frozen`` when anything is frozen.
3. **Data.** Each split is held in memory or streamed from disk, decided once by
   :func:`~headstart.engine.batches.plan_images` and recorded. A stage that freezes the whole
   backbone, keeps BatchNorm statistics fixed and augments nothing computes the backbone features
   once, in one streaming pass, and trains only the head on them (``cached_features``).
4. **Training** on Lightning: ``last.ckpt`` every epoch (resumable), early stopping and best
   weights when asked, Ctrl+C/SIGTERM stop cleanly after the current step. ``optimizer: {lr:
   find}`` first sweeps the rate on a copy of the network (:mod:`headstart.lrfind`) and trains
   with its suggestion; ``loggers: [mlflow]`` makes the stage one MLflow run
   (:mod:`headstart.engine.tracking`).
5. **Record.** ``weights.safetensors`` then ``stage.json``, both written atomically; the presence
   of ``stage.json`` marks the stage finished.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from headstart import checkpoint as ckpt
from headstart.config import MLflowSpec, ModelSpec, StageSpec
from headstart.data.dataset import ImageSet
from headstart.data.splits import Splits
from headstart.data.task import TaskData
from headstart.engine.batches import ImagePlan, ResidencyChoice, plan_images
from headstart.engine.callbacks import EpochHistory, InterruptOnSignal, RunInterrupted
from headstart.engine.module import StageData, StageModule
from headstart.engine.passes import compute_features, evaluate
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError
from headstart.heads import HeadSpec, build_head
from headstart.lrfind import LRSweep

LOG = logging.getLogger("headstart")
BEST_FILE = "best.ckpt"


# ------------------------------------------------------------------------------- options and records


class TrainerOptions(BaseModel):
    """How stages run (not what they learn): device, processes, precision, data loading, output.

    None of these change the result beyond floating-point round-off, so none enters the config hash.
    """

    model_config = ConfigDict(extra="forbid")
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int = Field(1, gt=0)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """Processes decoding streamed images; auto: one per CPU core, at most 8, none on 2 cores or fewer."""
    residency: ResidencyChoice = "auto"
    """auto: stream files, gather in-memory sets; memory: decode once and hold; stream: always stream."""
    progress: bool | None = None
    """Progress bars; default: when standard error is a terminal."""
    loggers: list[Literal["csv", "tensorboard", "mlflow"]] = Field(default_factory=lambda: ["csv"])
    mlflow: MLflowSpec | None = None
    """Store and experiment of the ``mlflow`` logger; default: ``mlruns/`` beside the stage folder
    (a run's stages: beside the run folder), experiment named after the run
    (:mod:`headstart.engine.tracking`)."""

    @classmethod
    def from_run(cls, spec: Any, progress: bool | None = None) -> "TrainerOptions":
        """The options a :class:`~headstart.config.RunSpec` sets."""
        mlflow = None
        if "mlflow" in spec.loggers:
            chosen = spec.mlflow or MLflowSpec()
            mlflow = MLflowSpec(tracking_uri=chosen.tracking_uri or str(spec.output_dir().parent / "mlruns"),
                                experiment=chosen.experiment or spec.name)
        return cls(accelerator=spec.accelerator, devices=spec.devices, strategy=spec.strategy,
                   precision=spec.precision, num_workers=spec.num_workers, residency=spec.data.residency,
                   progress=spec.progress if progress is None else progress, loggers=list(spec.loggers),
                   mlflow=mlflow)

    @property
    def device(self) -> str:
        """Where whole-set passes (feature caching, evaluation) run."""
        return "cuda" if self.accelerator in ("gpu", "auto") and torch.cuda.is_available() else "cpu"

    @property
    def workers(self) -> int | None:
        return None if self.num_workers == "auto" else int(self.num_workers)


class ModelRecord(ModelSpec):
    """The model a stage trained, with the input size it trained at."""

    image_size: int = Field(gt=0)


class HeadRecord(BaseModel):
    """What the network's head predicts after the stage."""

    kind: Literal["task", "pretext", "none"]
    labels: list[str] | None = None
    spec: HeadSpec | None = None
    pretext: str | None = None


class Handover(BaseModel):
    """What came from the previous stage and what is new."""

    kept_backbone_tensors: int
    head: str
    """``kept``, ``new task head`` or ``new <task> pretext head``."""
    reinitialised: list[str] = Field(default_factory=list)


class DataRecord(BaseModel):
    """Which images the stage read and how they reached the training step."""

    split: str
    train_images: int
    val_images: int
    unlabelled_images: int = 0
    """Images a semi-supervised stage read without labels."""
    residency: Literal["memory", "stream"]
    workers: int
    description: str


class StageRecord(BaseModel):
    """The typed content of ``stage.json``: written by :func:`fit_stage`, read by everything else."""

    model_config = ConfigDict(extra="forbid")
    run_name: str = ""
    stage_index: int
    stage_name: str
    status: Literal["finished"] = "finished"
    stage: StageSpec
    model: ModelRecord
    frozen: list[str]
    bn_policy: Literal["frozen", "train"]
    head: HeadRecord
    preprocessing: dict[str, Any]
    config_hash: str | None = None
    seconds: float
    """Wall time of the stage (feature caching included), summed over resumed sessions."""
    steps: int
    """Optimizer steps taken."""
    history: list[dict[str, float]]
    step_losses: list[float]
    learning_rates: list[float]
    """Base learning rate (``optimizer.lr``) times the schedule, per planned step."""
    handover: Handover
    cached_features: bool
    diagnostics: list[str] = Field(default_factory=list)
    best_epoch: int | None = None
    data: DataRecord
    versions: dict[str, str] = Field(default_factory=dict)
    lr_find: LRSweep | None = None
    """The learning-rate sweep run first when the stage says ``optimizer: {lr: find}``."""
    _folder: Path | None = PrivateAttr(default=None)

    @property
    def folder(self) -> Path | None:
        """The stage folder this record was written to or read from (``None`` when kept in memory)."""
        return self._folder

    @property
    def last_metrics(self) -> dict[str, float]:
        """The metrics of the last trained epoch (empty when none was recorded)."""
        return dict(self.history[-1]) if self.history else {}

    def write(self, folder: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
        """Write the weights, then ``stage.json`` (its presence marks the stage finished); atomic."""
        folder = Path(folder)
        ckpt.save_weights(folder / ckpt.WEIGHTS_FILE, state_dict)
        ckpt.atomic_write_json(folder / ckpt.METADATA_FILE, self.model_dump(mode="json"))
        self._folder = folder

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "StageRecord":
        """Read a finished stage's ``stage.json`` through this schema; errors name the file and key."""
        path = Path(folder) / ckpt.METADATA_FILE
        try:
            record = cls.model_validate(ckpt.read_json(path))
            record._folder = Path(folder)
            return record
        except ValidationError as error:
            problem = error.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
            raise HeadstartError(f"{path}: not a stage record of this headstart version: {where}: {problem['msg']} "
                                 f"({error.error_count()} problem(s))") from None


class Interrupted(HeadstartError):
    """Training stopped on Ctrl+C or SIGTERM; finished epochs are saved and resuming continues."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, folder: Path, stage: str, how_to_continue: str = "fit_stage(..., resume=True)") -> None:
        super().__init__(f"interrupted during stage '{stage}'; the last finished epoch is saved in {folder}. "
                         f"Continue with: {how_to_continue}")
        self.folder = folder
        self.stage = stage


# ---------------------------------------------------------------------------------------- pieces


def default_bn_policy(stage: StageSpec) -> str:
    """``frozen`` when anything is frozen (Keras' ``trainable=False`` behaviour), else ``train``."""
    return stage.bn_policy or ("frozen" if stage.freeze else "train")


def install_head(network, stage: StageSpec, labels: list[str] | None, pretext, image_size: int) -> Handover:
    """Keep or replace the head for ``stage`` (step 1 of the module docstring)."""
    kept_backbone = len(network.backbone.state_dict())
    if pretext is not None:
        head = pretext.build_head(network.encoder(image_size), (image_size, image_size))
        network.use_pretext_head(head, pretext.name)
        return Handover(kept_backbone_tensors=kept_backbone, head=f"new {pretext.name} pretext head",
                        reinitialised=sorted(f"head.{key}" for key in head.state_dict()))
    current = network.head_description()
    same_task = current["kind"] == "task" and current["labels"] == labels
    if stage.head == "keep" or (stage.head is None and same_task):
        if not same_task:
            raise HeadstartError(f"stage '{stage.name}': head: keep, but the previous head predicts "
                                 f"{current['pretext'] or current['labels']}, not these {len(labels)} classes")
        return Handover(kept_backbone_tensors=kept_backbone, head="kept")
    default = HeadSpec.for_classes(len(labels), stage.loss)
    if isinstance(stage.head, HeadSpec):
        spec = stage.head
        if not spec.fits_labels(labels):
            raise HeadstartError(f"stage '{stage.name}': head.outputs is {spec.outputs} but the data has "
                                 f"{len(labels)} classes (expected {default.outputs})")
    else:
        spec = default
    head = build_head(spec, network.head_in_features)
    network.replace_head(head, labels=labels)
    return Handover(kept_backbone_tensors=kept_backbone, head="new task head",
                    reinitialised=sorted(f"head.{key}" for key in head.state_dict()))


def apply_freezing(network, stage: StageSpec) -> None:
    """Unfreeze all, freeze the stage's selectors, set its BatchNorm policy (step 2)."""
    network.unfreeze("all")
    if stage.freeze:
        network.freeze(*stage.freeze)
    network.set_bn_policy(default_bn_policy(stage))


def _whole_backbone_frozen(network) -> bool:
    return all(not name.startswith("backbone.") for name, _ in network.trainable_parameters())


def _stage_splits(stage: StageSpec, data: TaskData, index: int, pretext) -> tuple[list[str] | None, ImageSet, ImageSet]:
    if stage.data == "general":
        return data.general_names, data.split("general"), data.split("general_val")
    if pretext is None and stage.data in ("unlabelled", "all"):
        raise HeadstartError(f"stages[{index}] ({stage.name}): data '{stage.data}' has no labels; "
                             "use it with a pretext task, or data: train")
    return data.class_names, data.split(stage.data), data.split("val")


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def _loggers(options: TrainerOptions, folder: Path) -> list:
    loggers = []
    if "csv" in options.loggers:
        loggers.append(CSVLogger(save_dir=folder, name="", version=""))
    if "tensorboard" in options.loggers:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=folder, name="tensorboard", version="", default_hp_metric=False))
    return loggers


def _progress(options: TrainerOptions) -> bool:
    if options.progress is not None:
        return options.progress
    import sys

    return sys.stderr.isatty()


def _trainer(options: TrainerOptions, stage: StageSpec, folder: Path, callbacks: list,
             extra_loggers: list | None = None) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=folder, max_epochs=stage.epochs, limit_train_batches=stage.steps_per_epoch,
        accelerator=options.accelerator, devices=options.devices, strategy=options.strategy,
        precision=options.precision, logger=_loggers(options, folder) + list(extra_loggers or []), callbacks=callbacks,
        plugins=[ckpt.AtomicCheckpointIO()], enable_progress_bar=_progress(options), enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, use_distributed_sampler=False, deterministic=False,
        benchmark=False,
    )


def quiet_lightning() -> None:
    """Keep Lightning's informational chatter and warnings about intended behaviour off the terminal."""
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    # BatchNorm layers held in eval mode are the `frozen` policy at work, not a mistake.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")


def _plan(images: ImageSet, options: TrainerOptions) -> ImagePlan:
    return plan_images(images, prefer=options.residency, workers=options.workers)


def _restore_best(network, path: Path) -> int | None:
    """Load the network weights of Lightning's best-validation checkpoint; return its epoch."""
    state = ckpt.AtomicCheckpointIO().load_checkpoint(path)
    weights = {key.removeprefix("network."): value for key, value in state["state_dict"].items()
               if key.startswith("network.")}
    network.load_state_dict(weights, strict=True)
    return int(state.get("epoch", 0))


# -------------------------------------------------------------------------------------- the stage


def fit_stage(network, stage: StageSpec | dict, data: TaskData | Splits, *, folder: str | os.PathLike | None = None,
              index: int = 0, seed: int = 0, image_size: int | None = None,
              options: TrainerOptions | dict | None = None,
              resume: bool = False, run_name: str = "", config_hash: str | None = None,
              model: ModelSpec | None = None, callbacks: Sequence[Any] = ()) -> StageRecord:
    """Train ``network`` for one stage in place and return its record (see the module docstring).

    ``data``: a :class:`~headstart.data.TaskData` (or :class:`~headstart.data.Splits`).
    ``folder``: where the stage writes ``weights.safetensors``, ``stage.json``, ``last.ckpt`` and
    metrics; ``None`` trains in a temporary folder and keeps nothing. ``resume``: a finished
    folder is read back instead of trained (its weights loaded into ``network``); an interrupted
    one continues from its last epoch. ``index`` and ``seed`` fix the stage's random streams.
    ``callbacks``: extra Lightning callbacks, called after headstart's own (progress, checkpoints).
    """
    stage, data, options = _check_arguments(network, stage, data, image_size, options)
    quiet_lightning()
    image_size = int(image_size or network.preprocessing.input_size[-1])
    model = model or ModelSpec(name=network.model_name, in_chans=network.in_chans, pooling=network.pooling)
    pretext, train_set, val_set, handover = prepare_stage(network, stage, data, index, seed, image_size)
    unlabelled_set = unlabelled_split(stage, data)

    def train(into: Path, resume: bool, keep: bool) -> StageRecord:
        return _fit(network, stage, index, seed, image_size, options, into, resume, pretext, train_set, val_set,
                    handover, run_name, config_hash, model, keep=keep, unlabelled_set=unlabelled_set,
                    extra_callbacks=list(callbacks))

    if folder is None:
        with tempfile.TemporaryDirectory(prefix="headstart-stage-") as scratch:
            return train(Path(scratch), resume=False, keep=False)
    folder = Path(folder)
    if resume and (folder / ckpt.METADATA_FILE).is_file():
        record = StageRecord.read(folder)
        network.load_state_dict(ckpt.load_weights(folder / ckpt.WEIGHTS_FILE), strict=True)
        network.set_training_size(record.model.image_size)
        return record
    if _is_rank_zero():
        if folder.exists() and not (resume and (folder / ckpt.RESUME_FILE).is_file()):
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
    return train(folder, resume=resume, keep=True)


def prepare_stage(network, stage: StageSpec, data: TaskData, index: int, seed: int,
                  image_size: int) -> tuple[Any, ImageSet, ImageSet, Handover]:
    """Steps 1 and 2 of the module docstring on ``network``: the stage's pretext task (or ``None``),
    its training and validation images, the head installed and the freezing and BatchNorm policy
    applied. ``fit_stage`` and the learning-rate finder both start a stage here."""
    pretext = None
    if stage.pretext is not None:
        from headstart import pretext as pretext_registry

        pretext = pretext_registry.get(stage.pretext.name, **stage.pretext.options())
    labels, train_set, val_set = _stage_splits(stage, data, index, pretext)
    pl.seed_everything(seed + index, verbose=False)  # a new head's initial weights depend on (seed, index)
    handover = install_head(network, stage, labels, pretext, image_size)
    apply_freezing(network, stage)
    return pretext, train_set, val_set, handover


def unlabelled_split(stage: StageSpec, data: TaskData) -> ImageSet | None:
    """The images a semi-supervised stage reads without labels (``None`` for other stages)."""
    if stage.semi_supervised is None:
        return None
    images = data.split(stage.semi_supervised.unlabelled)
    if not len(images):
        raise HeadstartError(f"stage '{stage.name}': semi_supervised.unlabelled is {stage.semi_supervised.unlabelled!r} "
                             "but that split has no images; keep fewer labels (splits.labels_per_class) or use 'all'")
    return images


@dataclass
class PreparedData:
    """What a stage's training reads (step 3 of the module docstring) and how it got there."""

    data: StageData
    cached: bool
    train_plan: ImagePlan
    seconds: float
    """Wall time of planning and feature caching."""


def prepare_data(network, stage: StageSpec, index: int, pretext, train_set: ImageSet, val_set: ImageSet | None,
                 options: TrainerOptions, image_size: int, unlabelled_set: ImageSet | None = None) -> PreparedData:
    """Plan the splits and, for a frozen backbone with frozen BatchNorm and no augmentation, compute
    the features once (step 3). ``val_set=None``: training images only (the learning-rate sweep).
    ``unlabelled_set``: the images a semi-supervised stage reads without labels."""
    can_cache = (pretext is None and stage.augment == "none" and _whole_backbone_frozen(network)
                 and default_bn_policy(stage) == "frozen" and stage.semi_supervised is None)
    if stage.cache_features and not can_cache:
        raise HeadstartError(f"stages[{index}] ({stage.name}): cache_features needs the whole backbone frozen, "
                             "bn_policy frozen, no pretext and augment: none")
    cached = can_cache if stage.cache_features is None else stage.cache_features
    started = time.perf_counter()
    train_plan = _plan(train_set, options)
    val_plan = _plan(val_set, options) if val_set is not None and len(val_set) else None
    LOG.info("stage '%s': %s", stage.name, train_plan.describe())
    if cached:
        train_data: Any = compute_features(network, train_plan, image_size=image_size, device=options.device)
        val_data: Any = (compute_features(network, val_plan, image_size=image_size, device=options.device)
                         if val_plan is not None else None)
        network.cpu()
        stage_data = StageData(train_data, val_data)
    else:
        unlabelled_plan = _plan(unlabelled_set, options) if unlabelled_set is not None else None
        stage_data = StageData(train_plan, val_plan, unlabelled_plan)
    return PreparedData(stage_data, cached, train_plan, time.perf_counter() - started)


def _check_arguments(network, stage, data, image_size, options) -> tuple[StageSpec, TaskData, TrainerOptions]:
    """fit_stage's arguments as the types it works with, or a HeadstartError naming the argument."""
    from headstart.network import Network

    if not isinstance(network, Network):
        raise HeadstartError(f"fit_stage: network is a {type(network).__name__}; expected a headstart Network "
                             "(headstart.zoo.load(...))")
    def validated(model: type[BaseModel], value: dict, name: str):
        from headstart.config import describe_validation_error

        try:
            return model.model_validate(value)
        except ValidationError as error:
            raise HeadstartError(describe_validation_error(error, name, model)) from None

    if isinstance(stage, dict):
        stage = validated(StageSpec, stage, "stage")
    if not isinstance(stage, StageSpec):
        raise HeadstartError(f"fit_stage: stage is a {type(stage).__name__}; expected a StageSpec or a mapping "
                             "such as {'name': 'head', 'freeze': ['backbone'], 'epochs': 5}")
    if isinstance(data, Splits):
        data = TaskData(data)
    if not isinstance(data, TaskData):
        raise HeadstartError(f"fit_stage: data is a {type(data).__name__}; expected a TaskData "
                             "(headstart.data.TaskData.load(source, splits)) or Splits")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise HeadstartError(f"fit_stage: image_size={image_size!r}; expected a positive number of pixels or None")
    if options is None:
        options = TrainerOptions()
    elif isinstance(options, dict):
        options = validated(TrainerOptions, options, "options")
    elif not isinstance(options, TrainerOptions):
        raise HeadstartError(f"fit_stage: options is a {type(options).__name__}; expected TrainerOptions or a mapping")
    return stage, data, options


def _fit(network, stage: StageSpec, index: int, seed: int, image_size: int, options: TrainerOptions, folder: Path,
         resume: bool, pretext, train_set: ImageSet, val_set: ImageSet, handover: Handover, run_name: str,
         config_hash: str | None, model: ModelSpec, *, keep: bool, unlabelled_set: ImageSet | None = None,
         extra_callbacks: list | None = None) -> StageRecord:
    if "mlflow" in options.loggers:
        from headstart.engine.tracking import require_mlflow

        require_mlflow()  # before any data is read or feature computed
    prepared = prepare_data(network, stage, index, pretext, train_set, val_set, options, image_size, unlabelled_set)
    stage_data, cached, train_plan, caching_seconds = (prepared.data, prepared.cached, prepared.train_plan,
                                                       prepared.seconds)
    val_plan = stage_data.val
    sweep: LRSweep | None = None
    trained = stage
    if stage.optimizer.lr == "find":
        from headstart.lrfind import sweep_for_fit

        sweep = sweep_for_fit(network, stage, index, seed, image_size, options, prepared, pretext,
                              folder if keep else None, resume=resume)
        trained = stage.model_copy(update={"optimizer": stage.optimizer.model_copy(update={"lr": sweep.suggestion})})
    module = StageModule(network, trained, index, stage_data, seed=seed, image_size=image_size, pretext=pretext,
                         cached=cached, pin_memory=options.device == "cuda")
    history = EpochHistory()
    callbacks: list = [InterruptOnSignal(), history,
                       ModelCheckpoint(dirpath=folder, filename="last", save_last=False, save_top_k=-1,
                                       every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)]
    best: ModelCheckpoint | None = None
    if stage.early_stopping is not None and val_plan is not None:
        mode = "min" if stage.early_stopping.monitor == "val_loss" else "max"
        callbacks.append(EarlyStopping(monitor=stage.early_stopping.monitor, patience=stage.early_stopping.patience,
                                       min_delta=stage.early_stopping.min_delta, mode=mode))
        if stage.early_stopping.restore_best_weights:
            best = ModelCheckpoint(dirpath=folder, filename=BEST_FILE.removesuffix(".ckpt"),
                                   monitor=stage.early_stopping.monitor, mode=mode, save_top_k=1,
                                   save_weights_only=True, enable_version_counter=False)
            callbacks.append(best)
    callbacks.extend(extra_callbacks or [])
    tracking = None
    if keep and "mlflow" in options.loggers:
        from headstart.engine.tracking import stage_logger, stage_params

        tracking = stage_logger(options.mlflow, folder, default_store=folder.parent / "mlruns", run_name=run_name,
                                index=index, resume=resume,
                                params=stage_params(stage, model, seed=seed, image_size=image_size,
                                                    config_hash=config_hash,
                                                    learning_rate=sweep.suggestion if sweep is not None else None))
    trainer = (_trainer(options, stage, folder, callbacks) if tracking is None
               else _trainer(options, stage, folder, callbacks, [tracking]))
    # Lightning keeps the mode a module arrives in, and a loaded network arrives in eval mode: without
    # this, BatchNorm would normalise with its running statistics and never update them, and dropout
    # would be off. Network.train() keeps the layers of the `frozen` BatchNorm policy in eval mode.
    network.train()
    resume_from = folder / ckpt.RESUME_FILE
    try:
        trainer.fit(module, ckpt_path=str(resume_from) if resume and resume_from.is_file() else None)
    except (RunInterrupted, SIGTERMException, KeyboardInterrupt) as interruption:
        raise Interrupted(folder, stage.name) from interruption
    best_epoch = None
    if best is not None and best.best_model_path and Path(best.best_model_path).is_file():
        best_epoch = _restore_best(network, Path(best.best_model_path))
        if trainer.is_global_zero:
            Path(best.best_model_path).unlink(missing_ok=True)
    network.set_training_size(image_size)
    seconds = history.seconds + caching_seconds
    diagnostics: list[str] = []
    if pretext is not None:
        from headstart.pretext.diagnostics import diagnose

        diagnostics = diagnose(history.epochs, pretext)
        for line in diagnostics:
            LOG.warning("stage '%s': %s", stage.name, line)
    record = StageRecord(
        run_name=run_name, stage_index=index, stage_name=stage.name, stage=stage,
        model=ModelRecord(**model.model_dump(exclude={"image_size"}), image_size=image_size),
        frozen=network.frozen_parameter_names(), bn_policy=default_bn_policy(stage),
        head=HeadRecord.model_validate(network.head_description()), preprocessing=network.preprocessing.to_dict(),
        config_hash=config_hash, seconds=seconds, steps=int(trainer.global_step), history=history.epochs,
        step_losses=history.step_losses, learning_rates=module.schedule, handover=handover, cached_features=cached,
        diagnostics=diagnostics, best_epoch=best_epoch,
        data=DataRecord(split=stage.data, train_images=len(train_set), val_images=len(val_set),
                        unlabelled_images=len(unlabelled_set) if unlabelled_set is not None else 0,
                        residency=train_plan.residency, workers=train_plan.workers, description=train_plan.describe()),
        versions=ckpt.versions(), lr_find=sweep,
    )
    if keep and trainer.is_global_zero:
        record.write(folder, network.state_dict())
        if tracking is not None:
            from headstart.engine.tracking import log_stage_folder

            log_stage_folder(tracking, folder)
    return record


def evaluate_split(network, data: TaskData, split: str, *, image_size: int, loss: str = "cross_entropy",
                   options: TrainerOptions | None = None, confusion: bool = False) -> dict:
    """Loss and accuracy of the network's task head on one split, streamed in evaluation mode
    (with ``confusion``, also the confusion matrix over the task's classes)."""
    options = options or TrainerOptions()
    return evaluate(network, _plan(data.split(split), options), image_size=image_size, loss=loss,
                    device=options.device, num_classes=len(data.class_names) if confusion else None)
