"""Training structures: run the stages of a :class:`~headstart.config.RunSpec` in order.

The chapter's structures are all lists of stages over one network:

* init → train: one task stage on a randomly initialised model;
* pretrain → train / altered task → task: a pretext stage (e.g. rotation on the unlabelled
  images), then a task stage whose new head replaces the pretext head;
* general → task transfer: a stage on ``data: general`` (or ImageNet weights), then the task;
* multi-step freeze → unfreeze → fine-tune: a stage with ``freeze: [backbone]`` (only the new head
  trains, features cached), then a stage with a low learning rate and nothing frozen;
* stacked ("double") transfer: ImageNet weights → a general-data stage → the task.

Each stage is one call of :func:`headstart.stage.fit_stage`; this module is the loop over them plus
the run's own folder and ``run.json``. Weights flow from stage to stage in memory. ``resume=True``
reads finished stages back from disk, continues an interrupted one from its last epoch, and ends
where an uninterrupted run ends.

The test split is evaluated once, after the last stage, and never seen by any earlier stage.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import lightning.pytorch as pl
from pydantic import BaseModel, Field

from headstart import checkpoint as ckpt
from headstart.config import RunSpec
from headstart.errors import HeadstartError
from headstart.stage import Interrupted, StageRecord, TrainerOptions, _is_rank_zero, evaluate_split, fit_stage, quiet_lightning

RUN_FILE = "run.json"


class RunRecord(BaseModel):
    """The typed content of ``run.json``: the configuration, which stages finished, the test metrics."""

    name: str
    config_hash: str
    config: dict[str, Any]
    finished_stages: list[str] = Field(default_factory=list)
    status: Literal["running", "interrupted", "finished"] = "running"
    test: dict[str, float] | None = None
    test_confusion: list[list[int]] | None = None
    """Test split confusion matrix, ``[true class][predicted class]`` counts, classes in ``labels`` order."""
    labels: list[str] | None = None
    seconds: float | None = None
    """Wall time of the session that finished the run."""
    earlier_seconds: float = 0.0
    """Wall time of the stages read back instead of trained in that session (resumed, or shared with
    another run of a comparison), as their ``stage.json`` records it."""
    versions: dict[str, str] = Field(default_factory=dict)
    hardware: dict[str, str | int] = Field(default_factory=dict)

    def write(self, root: Path) -> None:
        if _is_rank_zero():
            ckpt.atomic_write_json(root / RUN_FILE, self.model_dump(mode="json"))

    @classmethod
    def read(cls, root: str | Path) -> "RunRecord":
        path = Path(root) / RUN_FILE
        try:
            return cls.model_validate(ckpt.read_json(path))
        except ValueError as error:
            raise HeadstartError(f"{path}: not a run record of this headstart version ({error})") from None

    def stage_records(self, root: str | Path) -> list[StageRecord]:
        """The records of the finished stages, in order, read from their folders."""
        return [StageRecord.read(Path(root) / name) for name in self.finished_stages]


@dataclass
class RunResult:
    """The outcome of a run: the record of every stage, the final test metrics and the network."""

    spec: RunSpec
    folder: Path
    stages: list[StageRecord]
    test: dict[str, float] | None
    seconds: float
    network: Any = None
    resumed: tuple[str, ...] = ()
    """Names of the stages read back from disk instead of trained (``resume=True``)."""


def stage_folder(root: Path, index: int, name: str) -> Path:
    return root / f"{index}-{name}"


def _check_loggers(spec: RunSpec) -> None:
    """Fail before anything is written when a chosen logger's package is missing."""
    if "tensorboard" in spec.loggers and find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        raise HeadstartError("loggers: tensorboard needs the tensorboardX package; "
                             "pip install 'headstart[tensorboard]' or remove it from loggers")
    if "mlflow" in spec.loggers:
        from headstart.engine.tracking import require_mlflow

        require_mlflow()


def _prepare_folder(spec: RunSpec, root: Path, resume: bool, overwrite: bool) -> None:
    run_file = root / RUN_FILE
    if _is_rank_zero() and run_file.exists() and not resume:
        if not overwrite:
            raise HeadstartError(f"{root}: a run is already there; pass --resume to continue it or choose another output")
        shutil.rmtree(root)
    if resume and run_file.exists():
        previous = RunRecord.read(root)
        if previous.config_hash != spec.config_hash():
            raise HeadstartError(f"{run_file}: written by a different configuration (hash {previous.config_hash}, "
                                 f"this one {spec.config_hash()}); resume needs the same run file")
    if _is_rank_zero():
        root.mkdir(parents=True, exist_ok=True)


def initial_network(spec: RunSpec):
    """The network a run starts from: its model with the run's seed (random layers are the same at
    every call with the same seed, so probes of the start see what the first stage saw)."""
    from headstart.zoo import load

    pl.seed_everything(spec.seed, verbose=False)
    return load(spec.model.name, weights=spec.model.weights, include_top=spec.model.include_top,
                num_classes=spec.model.classes, pooling=spec.model.pooling, in_chans=spec.model.in_chans)


def run(spec: RunSpec, *, resume: bool = False, progress: bool | None = None, overwrite: bool = False,
        on_stage_end: Callable[[StageRecord], None] | None = None, callbacks: Sequence[Any] = ()) -> RunResult:
    """Run every stage of ``spec`` in order (see the module docstring); returns a :class:`RunResult`.

    ``callbacks``: extra Lightning callbacks given to every stage (see :func:`~headstart.stage.fit_stage`).
    """
    from headstart.data.task import TaskData

    _check_loggers(spec)
    quiet_lightning()
    started = time.perf_counter()
    root = spec.output_dir()
    _prepare_folder(spec, root, resume, overwrite)
    options = TrainerOptions.from_run(spec, progress)
    network = initial_network(spec)
    image_size = spec.model.image_size or int(network.preprocessing.input_size[-1])
    data = TaskData.from_spec(spec.data, model_name=spec.model.name)
    status = RunRecord(name=spec.name, config_hash=spec.config_hash(), config=spec.model_dump(mode="json"),
                       versions=ckpt.versions(), hardware=ckpt.hardware())
    status.write(root)
    records: list[StageRecord] = []
    resumed: list[str] = []
    for index, stage in enumerate(spec.stages):
        folder = stage_folder(root, index, stage.name)
        finished_before = resume and (folder / ckpt.METADATA_FILE).is_file()
        try:
            record = fit_stage(network, stage, data, folder=folder, index=index, seed=spec.seed, image_size=image_size,
                               options=options, resume=resume, run_name=spec.name, config_hash=status.config_hash,
                               model=spec.model, callbacks=callbacks)
        except Interrupted as interruption:
            status.status = "interrupted"
            status.write(root)
            raise Interrupted(root, stage.name, "headstart run FILE --resume") from interruption
        if finished_before:
            resumed.append(stage.name)
            status.earlier_seconds += record.seconds
        records.append(record)
        status.finished_stages.append(folder.name)
        status.write(root)
        if on_stage_end is not None and not finished_before:
            on_stage_end(record)

    last = spec.stages[-1]
    test = None
    if records[-1].head.kind == "task" and last.data != "general" and len(data.split("test")):
        test = evaluate_split(network, data, "test", image_size=image_size, loss=last.loss, options=options,
                              confusion=True)
        status.test_confusion, status.labels = test.pop("confusion"), list(data.class_names)
    status.status, status.test, status.seconds = "finished", test, time.perf_counter() - started
    status.write(root)
    return RunResult(spec, root, records, test, status.seconds, network, tuple(resumed))
