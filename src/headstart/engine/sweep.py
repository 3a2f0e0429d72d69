"""The learning-rate range test run on Lightning's tuner, on a network already prepared for a stage.

The rule and the record live in :mod:`headstart.lrfind`; the stage prepares the network and its
data and calls :func:`sweep` (:func:`headstart.stage.lr_find`, and ``optimizer: {lr: find}``).
"""

from __future__ import annotations

import tempfile
import time

import lightning.pytorch as pl
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.exceptions import SIGTERMException

from headstart import seeds
from headstart.config import StageSpec
from headstart.engine.accelerate import accelerated
from headstart.engine.callbacks import InterruptOnSignal, RunInterrupted
from headstart.engine.module import StageData, StageModule
from headstart.engine.trainer import TrainerOptions, lightning_trainer, memory_and_kernels
from headstart.errors import HeadstartError
from headstart.lrfind import DIVERGENCE, MAX_LR, MIN_LR, STEPS, LRSweep, SweepInterrupted, smooth, suggest


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


def check_sweep(min_lr: float, max_lr: float, steps: int) -> None:
    """Refuse sweep settings the rule cannot read, before any data is prepared."""
    if not 0 < min_lr < max_lr:
        raise HeadstartError(f"lr_find: min_lr={min_lr} and max_lr={max_lr}; expected 0 < min_lr < max_lr")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 20:
        raise HeadstartError(
            f"lr_find: steps={steps!r}; expected at least 20 (the rule leaves out the first tenth and the last five)"
        )


def sweep(
    network,
    stage: StageSpec,
    train,
    *,
    cached: bool,
    bn_policy: str,
    index: int,
    seed: int,
    image_size: int,
    options: TrainerOptions,
    pretext=None,
    min_lr: float = MIN_LR,
    max_lr: float = MAX_LR,
    steps: int = STEPS,
    divergence: float | None = DIVERGENCE,
) -> LRSweep:
    """Run the LR range test (:mod:`headstart.lrfind`) on ``network`` as prepared for ``stage``,
    reading the training data ``train`` (planned images, or cached features when ``cached``).

    ``network`` is trained in place during the sweep (Lightning's tuner puts its weights back at
    the end); pass a copy when the weights matter.
    """
    check_sweep(min_lr, max_lr, steps)
    if options.devices > 1:
        raise HeadstartError(
            f"stage '{stage.name}': the learning-rate sweep runs on one device (devices is "
            f"{options.devices}); run `headstart lr-find` first and write the rate into the run file"
        )
    started = time.perf_counter()
    at_start = stage.model_copy(update={"optimizer": stage.optimizer.model_copy(update={"lr": min_lr})})
    module = SweepModule(
        network,
        at_start,
        index,
        StageData(train, None),
        seed=seed,
        image_size=image_size,
        pretext=pretext,
        cached=cached,
        pin_memory=options.device == "cuda",
    )
    module.interrupt, module.raw_losses = InterruptOnSignal(), []
    pl.seed_everything(seeds.stage(seed, index), verbose=False)
    with tempfile.TemporaryDirectory(prefix="headstart-lr-find-") as scratch:
        trainer = lightning_trainer(
            options,
            scratch,
            max_epochs=-1,
            max_steps=steps,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            limit_val_batches=0,
        )
        network.train()  # as fit_stage: the frozen BatchNorm policy keeps its layers in eval mode
        module.interrupt.listen()
        try:
            with accelerated(network, **memory_and_kernels(options, trainer.strategy.root_device.type)):
                finder = Tuner(trainer).lr_find(
                    module,
                    min_lr=min_lr,
                    max_lr=max_lr,
                    num_training=steps,
                    mode="exponential",
                    early_stop_threshold=divergence,
                    update_attr=False,
                )
            module.interrupt.raise_if_signalled()  # Ctrl+C after the sweep's last step
        except (RunInterrupted, SIGTERMException, KeyboardInterrupt) as interruption:
            raise SweepInterrupted(
                f"interrupted during the learning-rate sweep of stage '{stage.name}'; nothing was written"
            ) from interruption
        finally:
            module.interrupt.restore()
    if finder is None or not finder.results.get("lr"):
        raise HeadstartError(f"stage '{stage.name}': the learning-rate sweep took no step (no training batches?)")
    rates = [float(rate) for rate in finder.results["lr"]]
    raw = module.raw_losses[: len(rates)]
    losses = smooth(raw)
    suggestion, window = suggest(rates, losses, steps)
    return LRSweep(
        stage=stage.name,
        suggestion=suggestion,
        learning_rates=rates,
        losses=losses,
        raw_losses=raw,
        window=window,
        min_lr=min_lr,
        max_lr=max_lr,
        steps=steps,
        divergence=divergence,
        batch_size=stage.batch_size,
        frozen_parameters=len(network.frozen_parameter_names()),
        bn_policy=bn_policy,
        cached_features=cached,
        seconds=time.perf_counter() - started,
    )
