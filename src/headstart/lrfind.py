"""The learning-rate finder of a stage: the LR range test, run as the stage would train.

Smith (2017), "Cyclical Learning Rates for Training Neural Networks" (WACV), section 3.3: train
for a short while with the learning rate rising from a tiny value to a large one and watch the
loss — it stays flat while the rate is too small to matter, falls fastest at useful rates and
blows up past the largest usable one. fastai's ``lr_find`` and Lightning's ``LearningRateFinder``
made it routine; this module runs it *per stage*, because the right rate for a new head on a
frozen backbone (features cached, BatchNorm statistics fixed) is far from the right one for
fine-tuning everything::

    sweep = lr_find(network, {"name": "head", "freeze": ["backbone"]}, data, image_size=32)
    print(sweep.suggestion); sweep.plot("head-lr.png")

or ``headstart lr-find run.yaml --stage fine-tune``, or ``optimizer: {lr: find}`` in a run file.

How it runs:

* **The stage as trained.** The same steps as :func:`headstart.stage.fit_stage` (one shared code
  path, :func:`~headstart.stage.prepare_stage` and :func:`~headstart.stage.prepare_data`): the
  stage's head is installed, its selectors frozen, its BatchNorm policy set, its data split read
  the same way, features cached when the stage would cache them, pretext batches altered on the
  device, the stage's optimizer (Adam, AdamW or SGD with its weight decay) and batch size.
* **On a copy.** The sweep trains a deep copy of the network, in a temporary folder, with no
  logger: the caller's network and every file of a run stay as they were.
* **Lightning's tuner** (``Tuner.lr_find``) sweeps: ``steps`` optimizer steps (default 100, as
  fastai and Lightning) with the rate growing exponentially from ``min_lr`` to ``max_lr``
  (fastai's 1e-7 to 10), stopped once its smoothed loss exceeds ``divergence`` × its best (4,
  both libraries' default). The curve is smoothed here from the raw step losses (:func:`smooth`,
  an exponential moving average, β = 0.98, with fastai's bias correction ``1 − β^k``): the
  tuner's own curve divides by ``1 − β^(k+1)``, which halves its first point and draws a false
  rise at the start. Every parameter group sweeps at the same rate, as in fastai and
  Lightning; ``group_lr`` applies to the training that follows.
* **The suggestion** is fastai's ``valley`` rule, its default since fastai 2.5 (Mueller 2021):
  drop the first tenth of the planned steps and the last five points, find the longest run over
  which the smoothed loss keeps falling (the longest decreasing subsequence), and take the point
  a half of the way down it (index ``start + ⌊n/3⌋ + ⌊n/6⌋`` of a valley of length ``n``).
  It lands in the steep, still-safe part of the curve; Lightning's own rule, the steepest
  gradient against the linear rate, is noisier on short sweeps.

``optimizer: {lr: find}`` sweeps when the run reaches the stage, writes ``lr_find.json`` and
``lr_find.png`` into the stage folder, records the sweep in ``stage.json`` (``lr_find``) and
trains with the suggestion; a resumed stage reuses the sweep it recorded.
"""

from __future__ import annotations

import copy
import io
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from headstart import checkpoint as ckpt
from headstart.engine.callbacks import InterruptOnSignal, RunInterrupted
from headstart.engine.module import StageData, StageModule
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError

if TYPE_CHECKING:
    from headstart.stage import PreparedData, TrainerOptions

MIN_LR = 1e-7
"""Where the sweep starts (fastai's ``start_lr``)."""
MAX_LR = 10.0
"""Where the sweep would end (fastai's ``end_lr``); a diverging loss stops it earlier."""
STEPS = 100
"""Optimizer steps of the sweep (fastai's ``num_it``, Lightning's ``num_training``)."""
DIVERGENCE = 4.0
"""Stop once the smoothed loss exceeds this multiple of its best (fastai and Lightning)."""
SWEEP_FILE = "lr_find.json"
PLOT_FILE = "lr_find.png"


class LRSweep(BaseModel):
    """One learning-rate sweep: the curve, the window the rule read and the suggestion."""

    stage: str
    suggestion: float
    """The suggested learning rate (``optimizer.lr``)."""
    rule: str = "valley"
    learning_rates: list[float]
    """The rate of each sweep step."""
    losses: list[float]
    """Smoothed training loss after each step (:func:`smooth`: β = 0.98, bias corrected)."""
    raw_losses: list[float] = Field(default_factory=list)
    """The training loss of each step as computed."""
    window: tuple[int, int]
    """``[start, stop)`` of the steps the rule read (the first tenth and last five left out)."""
    min_lr: float
    max_lr: float
    steps: int = Field(gt=0)
    """Steps planned; ``len(losses)`` is fewer when the loss diverged first."""
    divergence: float | None
    batch_size: int
    frozen_parameters: int
    bn_policy: str
    cached_features: bool
    seconds: float

    @property
    def stopped_early(self) -> bool:
        """Whether the loss diverged before the planned steps were done."""
        return len(self.losses) < self.steps

    def describe(self) -> str:
        """One line: the suggestion and how it was found."""
        stop = f"; stopped after {len(self.losses)} steps, the loss diverging" if self.stopped_early else ""
        return (f"stage '{self.stage}': suggested learning rate {self.suggestion:.3g} (fastai's {self.rule} rule) from "
                f"{len(self.losses)} steps between {self.min_lr:.0e} and {self.max_lr:g}{stop}; "
                f"{self.frozen_parameters} frozen parameter tensors, BatchNorm {self.bn_policy}"
                f"{', cached features' if self.cached_features else ''}, batch {self.batch_size}; {self.seconds:.1f} s")

    def plot_png(self) -> bytes:
        """Loss against learning rate (log axis), the rule's window shaded, the suggestion marked."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        if self.raw_losses:
            axes.plot(self.learning_rates[: len(self.raw_losses)], self.raw_losses, color="#1f77b4", alpha=0.25,
                      linewidth=0.8, label="training loss per step")
        axes.plot(self.learning_rates, self.losses, color="#1f77b4", label="smoothed training loss")
        start, stop = self.window
        if stop > start:
            axes.axvspan(self.learning_rates[start], self.learning_rates[stop - 1], color="#dddddd", alpha=0.6,
                         label="read by the rule")
        nearest = min(range(len(self.learning_rates)),
                      key=lambda index: abs(math.log(self.learning_rates[index]) - math.log(self.suggestion)))
        axes.plot([self.suggestion], [self.losses[nearest]], "o", color="#d62728", markersize=8,
                  label=f"suggestion {self.suggestion:.3g} ({self.rule})")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss")
        axes.set_title(f"learning-rate sweep of stage '{self.stage}'")
        shown = [loss for loss in self.losses[start:stop] if math.isfinite(loss)]
        if shown:  # the diverging tail would flatten the part of the curve that matters
            low, high = min(shown), max(shown)
            margin = 0.1 * (high - low) + 1e-6
            axes.set_ylim(low - margin, high + 3 * margin)
        axes.legend(loc="best")
        axes.grid(True, which="major", alpha=0.3)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()

    def plot(self, path: str | Path) -> Path:
        """Write :meth:`plot_png` to ``path`` (atomic); return the path."""
        path = Path(path)
        ckpt.atomic_write_bytes(path, self.plot_png())
        return path


class SweepInterrupted(HeadstartError):
    """Ctrl+C or SIGTERM during a sweep; nothing was written."""

    exit_code = INTERRUPTED_EXIT_CODE


# ------------------------------------------------------------------------------------ the rule


def smooth(losses: list[float], beta: float = 0.98) -> list[float]:
    """Exponential moving average with bias correction, as fastai and Smith smooth the sweep:
    ``a_k = β a_(k-1) + (1 − β) loss_k``, reported as ``a_k / (1 − β^k)``. A non-finite loss makes
    the rest non-finite (the sweep has diverged)."""
    average, smoothed = 0.0, []
    for step, loss in enumerate(losses, start=1):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta**step))
    return smoothed


def valley(losses: list[float]) -> tuple[int, int]:
    """fastai's valley rule on ``losses``: ``(index of the suggestion, length of the valley)``.

    The valley is the longest strictly decreasing subsequence of the losses (O(n²) over ≤ a few
    hundred points); the suggestion sits ``⌊n/3⌋ + ⌊n/6⌋`` steps after its start.
    """
    count = len(losses)
    lengths = [1] * count
    best_end = 0
    for i in range(1, count):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
        if lengths[i] > lengths[best_end]:
            best_end = i
    start = best_end - lengths[best_end]
    section = (best_end - start) / 3
    return max(0, start + int(section) + int(section / 2)), lengths[best_end]


def suggest(learning_rates: list[float], losses: list[float], steps: int) -> tuple[float, tuple[int, int]]:
    """The suggested rate and the ``[start, stop)`` window of the sweep that the rule read.

    As fastai's ``lr_find``: the first ``steps // 10`` points and the last five are left out, and
    so is everything from the first non-finite loss on.
    """
    start, stop = steps // 10, len(losses) - 5
    for index in range(start, max(start, stop)):
        if not math.isfinite(losses[index]):
            stop = index
            break
    if stop - start < 3:
        raise HeadstartError(f"the learning-rate sweep stopped after {len(losses)} of {steps} steps, too early to "
                             f"suggest a rate (the loss diverged at {learning_rates[-1]:.2g}); lower max_lr or give "
                             "the stage more training images")
    offset, _ = valley(losses[start:stop])
    return float(learning_rates[start + offset]), (start, stop)


# ------------------------------------------------------------------------------------ the sweep


class SweepModule(StageModule):
    """The stage's module; Ctrl+C or SIGTERM stops the sweep after the current step.

    Lightning's tuner replaces the trainer's callbacks with its own during the sweep, so the check
    runs from this module's hook, with the stage's own :class:`InterruptOnSignal`.
    """

    interrupt: InterruptOnSignal | None = None
    raw_losses: list[float]

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.raw_losses.append(float(loss) if loss is not None else float("nan"))
        if self.interrupt is not None:
            self.interrupt.on_train_batch_end(self.trainer, self, outputs, batch, batch_idx)


def sweep(network, stage, prepared: "PreparedData", *, index: int, seed: int, image_size: int,
          options: "TrainerOptions", pretext=None, min_lr: float = MIN_LR, max_lr: float = MAX_LR,
          steps: int = STEPS, divergence: float | None = DIVERGENCE) -> LRSweep:
    """Run the LR range test on ``network`` as prepared for ``stage`` (module docstring).

    ``network`` is trained in place during the sweep (Lightning's tuner puts its weights back at
    the end); pass a copy when the weights matter.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from headstart.stage import default_bn_policy

    if not 0 < min_lr < max_lr:
        raise HeadstartError(f"lr_find: min_lr={min_lr} and max_lr={max_lr}; expected 0 < min_lr < max_lr")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 20:
        raise HeadstartError(f"lr_find: steps={steps!r}; expected at least 20 (the rule leaves out the first tenth "
                             "and the last five)")
    if options.devices > 1:
        raise HeadstartError(f"stage '{stage.name}': the learning-rate sweep runs on one device (devices is "
                             f"{options.devices}); run `headstart lr-find` first and write the rate into the run file")
    started = time.perf_counter()
    at_start = stage.model_copy(update={"optimizer": stage.optimizer.model_copy(update={"lr": min_lr})})
    module = SweepModule(network, at_start, index, StageData(prepared.data.train, None), seed=seed,
                         image_size=image_size, pretext=pretext, cached=prepared.cached,
                         pin_memory=options.device == "cuda")
    module.interrupt, module.raw_losses = InterruptOnSignal(), []
    pl.seed_everything(seed + index, verbose=False)
    with tempfile.TemporaryDirectory(prefix="headstart-lr-find-") as scratch:
        trainer = pl.Trainer(default_root_dir=scratch, max_epochs=-1, max_steps=steps, accelerator=options.accelerator,
                             devices=1, precision=options.precision, logger=False, enable_checkpointing=False,
                             plugins=[ckpt.AtomicCheckpointIO()], enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                             use_distributed_sampler=False, deterministic=False, benchmark=False)
        network.train()  # as fit_stage: the frozen BatchNorm policy keeps its layers in eval mode
        module.interrupt.on_fit_start(trainer, module)
        try:
            finder = Tuner(trainer).lr_find(module, min_lr=min_lr, max_lr=max_lr, num_training=steps,
                                            mode="exponential", early_stop_threshold=divergence, update_attr=False)
        except (RunInterrupted, SIGTERMException, KeyboardInterrupt) as interruption:
            raise SweepInterrupted(f"interrupted during the learning-rate sweep of stage '{stage.name}'; nothing was "
                                   "written") from interruption
        finally:
            module.interrupt._restore()
    if finder is None or not finder.results.get("lr"):
        raise HeadstartError(f"stage '{stage.name}': the learning-rate sweep took no step (no training batches?)")
    rates = [float(rate) for rate in finder.results["lr"]]
    raw = module.raw_losses[: len(rates)]
    losses = smooth(raw)
    suggestion, window = suggest(rates, losses, steps)
    return LRSweep(stage=stage.name, suggestion=suggestion, learning_rates=rates, losses=losses, raw_losses=raw,
                   window=window,
                   min_lr=min_lr, max_lr=max_lr, steps=steps, divergence=divergence, batch_size=stage.batch_size,
                   frozen_parameters=len(network.frozen_parameter_names()), bn_policy=default_bn_policy(stage),
                   cached_features=prepared.cached, seconds=time.perf_counter() - started)


def lr_find(network, stage, data, *, index: int = 0, seed: int = 0, image_size: int | None = None,
            options: "TrainerOptions | dict | None" = None, min_lr: float = MIN_LR, max_lr: float = MAX_LR,
            steps: int = STEPS, divergence: float | None = DIVERGENCE) -> LRSweep:
    """Sweep the learning rate for ``stage`` as :func:`~headstart.stage.fit_stage` would train it
    on ``network`` (same arguments); ``network`` itself is left unchanged, nothing is written.

    Returns an :class:`LRSweep`: ``suggestion``, the curve, ``plot(path)``.
    """
    from headstart.stage import _check_arguments, prepare_data, prepare_stage, quiet_lightning, unlabelled_split

    stage, data, options = _check_arguments(network, stage, data, image_size, options)
    quiet_lightning()
    image_size = int(image_size or network.preprocessing.input_size[-1])
    work = copy.deepcopy(network)
    pretext, train_set, _, _ = prepare_stage(work, stage, data, index, seed, image_size)
    prepared = prepare_data(work, stage, index, pretext, train_set, None, options, image_size,
                            unlabelled_split(stage, data))
    return sweep(work, stage, prepared, index=index, seed=seed, image_size=image_size, options=options,
                 pretext=pretext, min_lr=min_lr, max_lr=max_lr, steps=steps, divergence=divergence)


def sweep_for_fit(network, stage, index: int, seed: int, image_size: int, options: "TrainerOptions",
                  prepared: "PreparedData", pretext, folder: Path | None, *, resume: bool) -> LRSweep:
    """The sweep of a stage that says ``lr: find``, run by ``fit_stage`` before it trains.

    Recorded in ``folder`` (``lr_find.json``, ``lr_find.png``) when there is one; a resumed stage
    reads the sweep it recorded instead of sweeping again, so it trains on with the same rate.
    """
    if folder is not None and resume and (folder / SWEEP_FILE).is_file():
        return LRSweep.model_validate(ckpt.read_json(folder / SWEEP_FILE))
    from headstart.stage import Interrupted

    try:
        result = sweep(copy.deepcopy(network), stage, prepared, index=index, seed=seed, image_size=image_size,
                       options=options, pretext=pretext)
    except SweepInterrupted as interruption:
        raise Interrupted(folder or Path("."), stage.name) from interruption
    if folder is not None:
        ckpt.atomic_write_json(folder / SWEEP_FILE, result.model_dump(mode="json"))
        result.plot(folder / PLOT_FILE)
    return result


# ------------------------------------------------------------------------------ a stage of a run


def find_for_run(spec, stage_name: str, *, run_earlier: bool = False, progress: bool = False,
                 min_lr: float = MIN_LR, max_lr: float = MAX_LR, steps: int = STEPS,
                 divergence: float | None = DIVERGENCE, source: str = "run file") -> LRSweep:
    """Sweep stage ``stage_name`` of the run ``spec`` (a :class:`~headstart.config.RunSpec`).

    The stage starts from what the earlier stages hand over. Finished earlier stages in the run's
    folder (same configuration up to this stage) are read back as ``--resume`` reads them; any
    that are not finished are trained first in a temporary folder when ``run_earlier``, otherwise
    the error names them. Nothing in the run's folder is written or changed.
    """
    from headstart.config import RunSpec
    from headstart.data.task import TaskData
    from headstart.stage import TrainerOptions, fit_stage, quiet_lightning
    from headstart.structure import RUN_FILE, RunRecord, initial_network, stage_folder

    names = [stage.name for stage in spec.stages]
    if stage_name not in names:
        raise HeadstartError(f"{source}: no stage named {stage_name!r}; its stages are {', '.join(names)}")
    index = names.index(stage_name)
    root = spec.output_dir()
    finished = 0
    if index and (root / RUN_FILE).is_file():
        record = RunRecord.read(root)

        def earlier(config: dict) -> str:
            return RunSpec.model_validate({**config, "stages": config["stages"][:index]}).config_hash()

        if earlier(record.config) != earlier(spec.model_dump(mode="json")):
            raise HeadstartError(f"{root}: its stages were trained with a different configuration than {source} "
                                 f"up to stage '{stage_name}'; their weights are not this run's")
        while finished < index and (stage_folder(root, finished, names[finished]) / ckpt.METADATA_FILE).is_file():
            finished += 1
    missing = names[finished:index]
    if missing and not run_earlier:
        raise HeadstartError(f"stage '{stage_name}' starts from the weights of the earlier stage(s) "
                             f"{', '.join(missing)}, not finished in {root}; run them first (headstart run) or pass "
                             "--run-earlier (run_earlier=True) to train them in a temporary folder")
    quiet_lightning()
    # one process: batch_size is the global batch, so one device sees the batches the run's processes share
    options = TrainerOptions.from_run(spec, progress).model_copy(
        update={"loggers": ["csv"], "mlflow": None, "devices": 1, "strategy": "auto"})
    network = initial_network(spec)
    image_size = spec.model.image_size or int(network.preprocessing.input_size[-1])
    data = TaskData.from_spec(spec.data, model_name=spec.model.name)
    common = dict(seed=spec.seed, image_size=image_size, options=options)
    for position, stage in enumerate(spec.stages[:index]):
        if position < finished:  # read back, as --resume does: nothing is written
            fit_stage(network, stage, data, folder=stage_folder(root, position, stage.name), index=position,
                      resume=True, run_name=spec.name, model=spec.model, **common)
        else:  # trained in a temporary folder that is removed afterwards
            fit_stage(network, stage, data, folder=None, index=position, run_name=spec.name, model=spec.model,
                      **common)
    return lr_find(network, spec.stages[index], data, index=index, min_lr=min_lr, max_lr=max_lr, steps=steps,
                   divergence=divergence, **common)
