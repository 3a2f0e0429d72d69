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
where an uninterrupted run ends. :func:`prepare_run` is the one way a run's network, data and
options are built — for :func:`run`, for :func:`find_learning_rate` (``headstart lr-find``) and
for the comparisons' probes.

The test split is evaluated once, after the last stage, and never seen by any earlier stage.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from headstart.checkpoint import RunRecord, StageRecord, stage_folder
from headstart.config import RunSpec, parse_run
from headstart.data.task import TaskData
from headstart.engine.tracking import require_mlflow
from headstart.engine.trainer import TrainerOptions, check_launch, quiet_lightning
from headstart.errors import HeadstartError
from headstart.files import RUN_FILE, hardware, is_finished_stage, is_run, versions
from headstart.lrfind import DIVERGENCE, MAX_LR, MIN_LR, STEPS, LRSweep
from headstart.network import Network
from headstart.ranks import is_rank_zero
from headstart.stage import Interrupted, check_class_weights, evaluate_split, fit_stage, lr_find
from headstart.zoo import load

__all__ = [
    "PreparedRun",
    "RunRecord",
    "RunResult",
    "find_learning_rate",
    "initial_network",
    "launch_checks",
    "prepare_run",
    "run",
    "same_configuration",
    "stage_folder",
]


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


@dataclass
class PreparedRun:
    """What every stage of a run shares: its starting network, input size, data and trainer options."""

    spec: RunSpec
    network: Network
    image_size: int
    data: TaskData
    options: TrainerOptions


def initial_network(spec: RunSpec) -> Network:
    """The network a run starts from: its model with the run's seed (random layers are the same at
    every call with the same seed, so probes of the start see what the first stage saw)."""
    pl.seed_everything(spec.seed, verbose=False)
    return load(
        spec.model.name,
        weights=spec.model.weights,
        include_top=spec.model.include_top,
        num_classes=spec.model.classes,
        pooling=spec.model.pooling,
        in_chans=spec.model.in_chans,
    )


def prepare_run(spec: RunSpec, *, progress: bool | None = None, data: TaskData | None = None) -> PreparedRun:
    """The starting network (:func:`initial_network`), the input size every stage trains at (the
    model's ``image_size``, else the pretrained one), the task data (loaded and checked with the
    run's seed for a per-seed labelled draw, unless given) and the trainer options of ``spec``."""
    network = initial_network(spec)
    image_size = spec.model.image_size or int(network.preprocessing.input_size[-1])
    if data is None:
        data = TaskData.from_spec(spec.data, model_name=spec.model.name, run_seed=spec.seed)
    return PreparedRun(spec, network, image_size, data, TrainerOptions.from_run(spec, progress))


def run(
    spec: RunSpec,
    *,
    resume: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
    on_stage_end: Callable[[StageRecord], None] | None = None,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Run every stage of ``spec`` in order (see the module docstring); returns a :class:`RunResult`.

    ``callbacks``: extra Lightning callbacks given to every stage (see :func:`~headstart.stage.fit_stage`).
    """
    launch_checks(spec, progress)  # before anything is written or loaded
    quiet_lightning()
    started = time.perf_counter()
    root = spec.output_dir()
    existed = root.exists()
    _prepare_folder(spec, root, resume, overwrite)
    status = RunRecord(
        name=spec.name,
        config_hash=spec.config_hash(),
        config=spec.model_dump(mode="json"),
        versions=versions(),
        hardware=hardware(),
        threads=torch.get_num_threads(),
    )
    try:
        return _run_stages(spec, status, root, started, resume, progress, on_stage_end, callbacks)
    except Interrupted:
        raise  # recorded as interrupted where the stage stopped
    except BaseException as error:
        # a true record: a parallel comparison reads it to know what to resume; nothing half-made stays
        record = status if status.splits is not None else _earlier_record(root)  # None: nothing written yet
        if record is None:
            if is_rank_zero() and not existed and root.is_dir() and not any(root.iterdir()):
                root.rmdir()
            raise
        record.status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        record.error = None if isinstance(error, KeyboardInterrupt) else _one_line(error)
        _write(record, root)
        _remove_empty_stage_folders(spec, root)
        raise


def _run_stages(
    spec: RunSpec,
    status: RunRecord,
    root: Path,
    started: float,
    resume: bool,
    progress: bool | None,
    on_stage_end: Callable[[StageRecord], None] | None,
    callbacks: Sequence[Any],
) -> RunResult:
    """The body of :func:`run` once its folder is ready: data, stages in order, the test split."""
    prepared = prepare_run(spec, progress=progress)
    network, data = prepared.network, prepared.data
    check_class_weights(spec.stages, data)  # a wrong count of weights fails before any stage trains
    status.splits = data.splits.draw_record()
    status.train_class_counts = data.split("train").class_counts()
    _write(status, root)
    records: list[StageRecord] = []
    resumed: list[str] = []
    for index, stage in enumerate(spec.stages):
        folder = stage_folder(root, index, stage.name)
        finished_before = resume and is_finished_stage(folder)
        try:
            record = fit_stage(
                network,
                stage,
                data,
                folder=folder,
                index=index,
                seed=spec.seed,
                image_size=prepared.image_size,
                options=prepared.options,
                resume=resume,
                run_name=spec.name,
                config_hash=status.config_hash,
                model=spec.model,
                callbacks=callbacks,
            )
        except Interrupted as interruption:
            status.status = "interrupted"
            _write(status, root)
            raise Interrupted(root, stage.name, "headstart run FILE --resume") from interruption
        if finished_before:
            resumed.append(stage.name)
            status.earlier_seconds += record.seconds
        records.append(record)
        status.finished_stages.append(folder.name)
        _write(status, root)
        if on_stage_end is not None and not finished_before:
            on_stage_end(record)

    last = spec.stages[-1]
    test = None
    # only the first process evaluates: it alone writes run.json, and the others would read every test image
    if is_rank_zero() and records[-1].head.kind == "task" and last.data != "general" and len(data.split("test")):
        test = evaluate_split(
            network,
            data,
            "test",
            image_size=prepared.image_size,
            loss=last.loss,
            options=prepared.options,
            confusion=True,
            predictions=True,
        )
        status.test_confusion, status.labels = test.pop("confusion"), list(data.class_names)
        status.test_predictions, status.test_targets = test.pop("predictions"), test.pop("targets")
        status.test_recall = test.pop("recall", None)
    status.status, status.error = "finished", None
    status.test, status.seconds = test, time.perf_counter() - started
    _write(status, root)
    return RunResult(spec, root, records, test, status.seconds, network, tuple(resumed))


def launch_checks(spec: RunSpec, progress: bool | None = None) -> None:
    """Refuse, before anything is written or loaded, a run this machine cannot start: a logger whose
    package is missing, ``accelerator: gpu`` without a GPU, ``devices`` × ``num_nodes`` that the
    launcher did not start. A comparison calls it for every planned run before any trains."""
    _check_loggers(spec)
    TrainerOptions.from_run(spec, progress).device  # noqa: B018 - raises for accelerator: gpu without one
    check_launch(spec.devices, spec.num_nodes)


def _earlier_record(root: Path) -> RunRecord | None:
    """The record an earlier session left (a resumed run that failed before writing its own)."""
    try:
        return RunRecord.read(root) if (root / RUN_FILE).is_file() else None
    except HeadstartError:
        return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _remove_empty_stage_folders(spec: RunSpec, root: Path) -> None:
    """Stage folders a failed run created but wrote nothing into (a stage that failed as it started)."""
    if not is_rank_zero():
        return
    for index, stage in enumerate(spec.stages):
        folder = stage_folder(root, index, stage.name)
        if folder.is_dir() and not any(path.is_file() for path in folder.rglob("*")):
            shutil.rmtree(folder)


def find_learning_rate(
    spec: RunSpec,
    stage_name: str,
    *,
    run_earlier: bool = False,
    progress: bool = False,
    min_lr: float = MIN_LR,
    max_lr: float = MAX_LR,
    steps: int = STEPS,
    divergence: float | None = DIVERGENCE,
    source: str = "run file",
) -> LRSweep:
    """Sweep the learning rate of stage ``stage_name`` of the run ``spec`` (``headstart lr-find``).

    The stage starts from what the earlier stages hand over. Finished earlier stages in the run's
    folder (same configuration up to this stage) are read back as ``--resume`` reads them; any
    that are not finished are trained first in a temporary folder when ``run_earlier``, otherwise
    the error names them. Nothing in the run's folder is written or changed.
    """
    names = [stage.name for stage in spec.stages]
    if stage_name not in names:
        raise HeadstartError(f"{source}: no stage named {stage_name!r}; its stages are {', '.join(names)}")
    index = names.index(stage_name)
    root = spec.output_dir()
    finished = 0
    if index and is_run(root):
        recorded = parse_run(RunRecord.read(root).config, str(root))
        if recorded.prefix_key(index) != spec.prefix_key(index):
            raise HeadstartError(
                f"{root}: its stages were trained with a different configuration than {source} "
                f"up to stage '{stage_name}'; their weights are not this run's"
            )
        while finished < index and is_finished_stage(stage_folder(root, finished, names[finished])):
            finished += 1
    missing = names[finished:index]
    if missing and not run_earlier:
        raise HeadstartError(
            f"stage '{stage_name}' starts from the weights of the earlier stage(s) "
            f"{', '.join(missing)}, not finished in {root}; run them first (headstart run) or pass "
            "--run-earlier (run_earlier=True) to train them in a temporary folder"
        )
    quiet_lightning()
    prepared = prepare_run(spec, progress=progress)
    # one process: batch_size is the global batch, so one device sees the batches the run's processes share
    options = prepared.options.model_copy(
        update={"loggers": ["csv"], "mlflow": None, "devices": 1, "num_nodes": 1, "strategy": "auto"}
    )
    for position, stage in enumerate(spec.stages[:index]):
        # finished stages are read back, as --resume does; the others train in a temporary folder
        folder = stage_folder(root, position, stage.name) if position < finished else None
        fit_stage(
            prepared.network,
            stage,
            prepared.data,
            folder=folder,
            index=position,
            resume=folder is not None,
            run_name=spec.name,
            model=spec.model,
            seed=spec.seed,
            image_size=prepared.image_size,
            options=options,
        )
    return lr_find(
        prepared.network,
        spec.stages[index],
        prepared.data,
        index=index,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        divergence=divergence,
        seed=spec.seed,
        image_size=prepared.image_size,
        options=options,
    )


def _write(record: RunRecord, root: Path) -> None:
    if is_rank_zero():
        record.write(root)


def same_configuration(record: RunRecord, spec: RunSpec) -> bool:
    """Whether the run ``record`` describes was written by ``spec``'s configuration: the same hash,
    or — for a run written by an earlier version, whose hash covered settings that no longer
    count (the accelerator) — its recorded configuration hashed by this version."""
    if record.config_hash == spec.config_hash():
        return True
    try:
        return parse_run(record.config, "run.json").config_hash() == spec.config_hash()
    except HeadstartError:
        return False


def _check_loggers(spec: RunSpec) -> None:
    """Fail before anything is written when a chosen logger's package is missing."""
    if "tensorboard" in spec.loggers and find_spec("tensorboard") is None and find_spec("tensorboardX") is None:
        raise HeadstartError(
            "loggers: tensorboard needs the tensorboardX package; "
            "pip install 'headstart[tensorboard]' or remove it from loggers"
        )
    if "mlflow" in spec.loggers:
        require_mlflow()


def _prepare_folder(spec: RunSpec, root: Path, resume: bool, overwrite: bool) -> None:
    if is_rank_zero() and is_run(root) and not resume:
        if not overwrite:
            raise HeadstartError(
                f"{root}: a run is already there; pass --resume to continue it or choose another output"
            )
        shutil.rmtree(root)
    if resume and is_run(root):
        previous = RunRecord.read(root)
        if not same_configuration(previous, spec):
            raise HeadstartError(
                f"{root / RUN_FILE}: written by a different configuration (hash "
                f"{previous.config_hash}, this one {spec.config_hash()}); resume needs the same run file"
            )
    if is_rank_zero():
        root.mkdir(parents=True, exist_ok=True)
