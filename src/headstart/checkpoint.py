"""The records of stages and runs — ``stage.json`` and ``run.json`` — and the networks they rebuild.

A finished stage leaves, in its own folder ``<run>/<index>-<name>/``:

* ``weights.safetensors`` — the whole network (backbone and the stage's head); no pickle.
* ``stage.json`` — its :class:`StageRecord`, one schema for the writer and every reader: stage
  index and name, frozen parameter names, BatchNorm policy, head (kind, spec, labels),
  preprocessing, model, config hash, library versions, metrics, learning rates, how its data was
  read, what was handed over from the previous stage and the device it trained on.

While a stage trains, ``last.ckpt`` (Lightning's format: weights, optimizer, scheduler, loop and
callback state) is rewritten at the end of every epoch; ``--resume`` continues from it. A run
folder holds its stages and ``run.json`` (:class:`RunRecord`).

Every file is written atomically (:mod:`headstart.files`): a failed write (disk full) or a
``kill -9`` mid-save leaves the previous file intact and loadable. This module reads what stages
wrote and rebuilds their networks (:func:`load_network`, :func:`load_backbone`); it never trains.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from headstart.config import ModelSpec, StageSpec
from headstart.errors import HeadstartError
from headstart.files import (
    RESUME_FILE,
    RUN_FILE,
    STAGE_FILE,
    WEIGHTS_FILE,
    atomic_write_json,
    is_finished_stage,
    is_run,
    read_json,
)
from headstart.heads import HeadSpec, build_head
from headstart.lrfind import LRSweep
from headstart.validation import validate
from headstart.weights import load_weights, save_weights

__all__ = [
    "DataRecord",
    "DeviceRecord",
    "Handover",
    "HeadRecord",
    "ModelRecord",
    "RunRecord",
    "StageRecord",
    "find_stage_folder",
    "load_backbone",
    "load_checked",
    "load_network",
    "stage_folder",
    "RESUME_FILE",
    "RUN_FILE",
    "STAGE_FILE",
    "WEIGHTS_FILE",
]

Record = TypeVar("Record", bound=BaseModel)


def _read_record(kind: type[Record], path: Path, what: str) -> Record:
    return validate(kind, read_json(path), f"{path}: not a {what} of this headstart version")


# ------------------------------------------------------------------------------------- stage.json


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


class DeviceRecord(BaseModel):
    """What a stage trained on, as Lightning set it up (``accelerator: auto`` resolved)."""

    type: str
    """``cpu``, ``cuda`` or ``mps``."""
    name: str
    """The GPU's name (``NVIDIA H200``), or the CPU's model."""
    processes: int = 1
    """Training processes in all machines (DDP world size)."""
    num_nodes: int = 1
    precision: str = "32-true"
    compiled: bool = False
    channels_last: bool = False
    one_pixel_matmul: bool = False
    """Convolutions with a one-pixel output computed as matrix products (on the CPU,
    :class:`~headstart.engine.accelerate.OnePixelConv2d`)."""
    decode: Literal["cpu", "device"] = "cpu"
    prefetch: bool = False

    def describe(self) -> str:
        """One line: ``cuda (NVIDIA H200), 16 processes on 2 machines, bf16-mixed, compiled``."""
        parts = [f"{self.type} ({self.name})"]
        if self.processes > 1:
            machines = f" on {self.num_nodes} machines" if self.num_nodes > 1 else ""
            parts.append(f"{self.processes} processes{machines}")
        parts.append(self.precision)
        flags = (
            (self.compiled, "compiled"),
            (self.channels_last, "channels-last"),
            (self.one_pixel_matmul, "one-pixel convolutions as matmuls"),
        )
        parts += [label for on, label in flags if on]
        if self.decode == "device":
            parts.append("JPEGs decoded on the device")
        if self.prefetch:
            parts.append("batches copied ahead")
        return ", ".join(parts)


class StageRecord(BaseModel):
    """The typed content of ``stage.json``: written by :func:`~headstart.stage.fit_stage`, read by
    everything else."""

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
    device: DeviceRecord | None = None
    """Where the stage trained (``None`` in records written before this was recorded)."""
    class_weights: list[float] | None = None
    """The task loss's weight of each class, in ``head.labels`` order, as the stage trained with them
    (``stage.class_weights`` resolved: ``balanced`` over the labelled training split); ``None``: unweighted."""
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
        save_weights(folder / WEIGHTS_FILE, state_dict)
        atomic_write_json(folder / STAGE_FILE, self.model_dump(mode="json"))
        self._folder = folder

    @classmethod
    def read(cls, folder: str | os.PathLike) -> StageRecord:
        """Read a finished stage's ``stage.json`` through this schema; errors name the file and key."""
        record = _read_record(cls, Path(folder) / STAGE_FILE, "stage record")
        record._folder = Path(folder)
        return record


# --------------------------------------------------------------------------------------- run.json


class RunRecord(BaseModel):
    """The typed content of ``run.json``: the configuration, which stages finished, the test metrics."""

    name: str
    config_hash: str
    config: dict[str, Any]
    finished_stages: list[str] = Field(default_factory=list)
    status: Literal["running", "interrupted", "failed", "finished"] = "running"
    """``failed``: an error stopped the run (``error`` says which); like ``interrupted``, a rerun resumes it."""
    error: str | None = None
    """The error that stopped a ``failed`` run, one line."""
    threads: int | None = None
    """CPU threads the run's process computed with (``torch.get_num_threads()``): a parallel comparison
    gives each worker its share of the cores. ``None`` in runs written before it was recorded."""
    test: dict[str, float] | None = None
    test_confusion: list[list[int]] | None = None
    """Test split confusion matrix, ``[true class][predicted class]`` counts, classes in ``labels`` order."""
    labels: list[str] | None = None
    test_predictions: list[int] | None = None
    """The predicted class of every test image, in the test split's order (dataset order), classes in
    ``labels`` order; with ``test_targets``, what a paired test between two runs on the same test
    images reads (McNemar's)."""
    test_targets: list[int] | None = None
    """The true class of every test image, in the order of ``test_predictions``."""
    test_recall: list[float | None] | None = None
    """Recall of each class on the test split (the share of its test images predicted as it), classes in
    ``labels`` order; ``None`` for a class without test images. ``test`` holds their mean
    (``balanced_accuracy``) and ``macro_f1`` beside ``accuracy``. ``None`` in runs written before it was
    recorded: :func:`headstart.metrics.class_metrics` computes all three from ``test_confusion``."""
    train_class_counts: dict[str, int] | None = None
    """Labelled training images per class (the task's ``train`` split, in class order): what
    ``metric: auto`` of a comparison reads (:func:`headstart.metrics.choose_metric`). ``None`` in runs
    written before it was recorded."""
    splits: dict[str, Any] | None = None
    """The run's labelled draw and held-out images (:meth:`headstart.data.splits.Splits.draw_record`):
    ``labelled_draw``, ``draw_seed``, ``split_seed``, ``labelled_ids`` (positions of the labelled
    images in the source as loaded, sorted), ``labelled_digest``, and counts and digests of ``val``
    and ``test``. ``None`` in runs written before it was recorded."""
    seconds: float | None = None
    """Wall time of the session that finished the run."""
    earlier_seconds: float = 0.0
    """Wall time of the stages read back instead of trained in that session (resumed, or shared with
    another run of a comparison), as their ``stage.json`` records it."""
    versions: dict[str, str] = Field(default_factory=dict)
    hardware: dict[str, str | int] = Field(default_factory=dict)

    def write(self, root: Path) -> None:
        """Write ``run.json`` into the run folder ``root`` (atomic)."""
        atomic_write_json(Path(root) / RUN_FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, root: str | Path) -> RunRecord:
        """Read a run folder's ``run.json``; errors name the file and key."""
        return _read_record(cls, Path(root) / RUN_FILE, "run record")

    def stage_records(self, root: str | Path) -> list[StageRecord]:
        """The records of the finished stages, in order, read from their folders."""
        return [StageRecord.read(Path(root) / name) for name in self.finished_stages]


def stage_folder(root: Path, index: int, name: str) -> Path:
    """The folder of stage ``index`` named ``name`` inside the run folder ``root``."""
    return Path(root) / f"{index}-{name}"


# ---------------------------------------------------------------------------------- rebuilding


def find_stage_folder(path: str | os.PathLike) -> Path:
    """Accept a stage folder, its weights file, its stage.json, or a run folder (its last finished stage)."""
    path = Path(path)
    if not path.exists():
        raise HeadstartError(f"{path}: no such checkpoint (expected a run folder or a stage folder)")
    if path.is_file():
        path = path.parent
    if is_finished_stage(path):
        return path
    if is_run(path):
        finished = RunRecord.read(path).finished_stages
        if finished:
            return path / finished[-1]
        raise HeadstartError(f"{path}: the run has no finished stage yet")
    raise HeadstartError(f"{path}: no {STAGE_FILE} here (expected a headstart stage folder or run folder)")


def _bare_network(model: ModelRecord):
    """The network a stage's record describes, random weights, no head yet (nothing is downloaded)."""
    from headstart.zoo import load

    return load(
        model.name,
        weights=None,
        include_top=model.include_top,
        num_classes=model.classes,
        pooling=model.pooling,
        in_chans=model.in_chans,
    )


def load_checked(
    network, state: dict[str, torch.Tensor], path: Path, what: str, *, backbone_only: bool = False
) -> None:
    """Load ``state`` into ``network``; any key missing (of the backbone only, with ``backbone_only``)
    or unexpected is a :class:`HeadstartError` naming ``path`` and ``what`` it should have matched."""
    result = network.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if key.startswith("backbone.") or not backbone_only]
    if missing or result.unexpected_keys:
        raise HeadstartError(
            f"{path}: does not match {what} (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def load_backbone(path: str | os.PathLike):
    """The backbone a stage trained (any stage, pretext stages included), with no head: for probes
    and attention maps. Weights of the stage's head are left out; every backbone weight must load."""
    folder = find_stage_folder(path)
    model = StageRecord.read(folder).model
    network = _bare_network(model)
    state = {key: value for key, value in load_weights(folder / WEIGHTS_FILE).items() if key.startswith("backbone.")}
    load_checked(network, state, folder / WEIGHTS_FILE, f"the backbone of {model.name}", backbone_only=True)
    network.set_training_size(model.image_size)
    network.eval()
    return network


def load_network(path: str | os.PathLike):
    """Rebuild the trained network of a stage (or of a run's last stage) for prediction.

    Everything comes from the stage's record (:class:`StageRecord`, read from ``stage.json``): the
    model name, input channels, pooling, head spec, labels and the input size the stage trained
    at; the weights from ``weights.safetensors``. Nothing is downloaded.
    """
    folder = find_stage_folder(path)
    record = StageRecord.read(folder)
    if record.head.kind != "task" or record.head.spec is None:
        raise HeadstartError(
            f"{folder}: stage '{record.stage_name}' ends with a {record.head.pretext or 'pretext'} pretext head; "
            "predict from a stage that trains the task head"
        )
    model = record.model
    network = _bare_network(model)
    network.replace_head(build_head(record.head.spec, network.head_in_features), labels=record.head.labels)
    load_checked(
        network,
        load_weights(folder / WEIGHTS_FILE),
        folder / WEIGHTS_FILE,
        f"{model.name} with this head",
        backbone_only=False,
    )
    network.set_training_size(model.image_size)
    network.eval()
    return network
