"""Steps 4 and 5 of a stage: fit on Lightning (with ``lr: find`` first), then write the record."""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from headstart.checkpoint import DataRecord, DeviceRecord, HeadRecord, ModelRecord, StageRecord
from headstart.config import ModelSpec, StageSpec
from headstart.engine.accelerate import accelerated
from headstart.engine.batches import ImagePlan
from headstart.engine.callbacks import EpochHistory, InterruptOnSignal, RunInterrupted
from headstart.engine.module import StageModule
from headstart.engine.sweep import sweep
from headstart.engine.tracking import StageTracking
from headstart.engine.trainer import TrainerOptions, build_trainer, device_description, restore_best
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError
from headstart.files import RESUME_FILE, atomic_write_json, read_json, versions
from headstart.lrfind import PLOT_FILE, SWEEP_FILE, LRSweep, SweepInterrupted
from headstart.network import Network
from headstart.ranks import is_rank_zero
from headstart.stage.prepare import LOG, PreparedData, PreparedStage, default_bn_policy, prepare_data
from headstart.validation import validate

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


# ------------------------------------------------------------------------------ 4-5: fit, record


@dataclass
class StagePlan:
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


def train(
    network: Network, plan: StagePlan, prepared: PreparedStage, folder: Path, *, resume: bool, keep: bool
) -> StageRecord:
    """Steps 3 to 5: prepare the data, fit on Lightning, write the record (when ``keep``)."""
    stage = plan.stage
    plan = dataclasses.replace(plan, options=plan.options.checked())  # before any data is read
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
    if prepared.pretext is not None and prepared.pretext.kind == "embedding":
        callbacks.append(CollapseWatch(stage.name, prepared.pretext, history))
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
    compiled = (stage.compile if stage.compile is not None else plan.options.compile) and not data.cached
    device = DeviceRecord(**device_description(trainer, plan.options, compiled=compiled))
    if is_rank_zero():
        print(f"stage '{stage.name}' trains on {device.describe()}", file=sys.stderr, flush=True)
    # Lightning keeps the mode a module arrives in, and a loaded network arrives in eval mode: without
    # this, BatchNorm would normalise with its running statistics and never update them, and dropout
    # would be off. Network.train() keeps the layers of the `frozen` BatchNorm policy in eval mode.
    network.train()
    resume_from = folder / RESUME_FILE
    interrupter = next(callback for callback in callbacks if isinstance(callback, InterruptOnSignal))
    try:
        interrupter.listen()
        try:
            with accelerated(
                network, compile=compiled, channels_last=device.channels_last, one_pixel_matmul=device.one_pixel_matmul
            ):
                trainer.fit(module, ckpt_path=str(resume_from) if resume and resume_from.is_file() else None)
        finally:
            interrupter.restore()
        interrupter.raise_if_signalled()  # Ctrl+C after the last step: the stage stops here all the same
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
        device=device,
        class_weights=module.class_weights,
    )
    if keep and trainer.is_global_zero:
        record.write(folder, network.state_dict())
        tracking.finish(folder)
    return record


def _learning_rate(
    network: Network, plan: StagePlan, prepared: PreparedStage, data: PreparedData, folder: Path | None, resume: bool
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


class CollapseWatch(Callback):
    """Says at the end of an epoch, rather than after the stage, that a joint-embedding pretext
    (SimCLR, BYOL, DINO) has collapsed (:func:`headstart.pretext.diagnostics.collapse`): once, when
    two epochs in a row show it, so one noisy epoch or DINO's first near-uniform epoch is no alarm.
    Runs after :class:`EpochHistory` has recorded the epoch; the warning goes to the log (the
    terminal) and stays in :attr:`warnings`."""

    def __init__(self, stage_name: str, task, history: EpochHistory) -> None:
        self.stage_name = stage_name
        self.task = task
        self.history = history
        self.warnings: list[str] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from headstart.pretext.diagnostics import collapse

        if self.warnings or len(self.history.epochs) < 2:
            return
        now, before = (collapse(entry, self.task) for entry in self.history.epochs[-1:-3:-1])
        if now is not None and before is not None and is_rank_zero():
            line = f"stage '{self.stage_name}', epoch {trainer.current_epoch + 1} of {trainer.max_epochs}: {now}"
            self.warnings.append(line)
            LOG.warning(line)


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
