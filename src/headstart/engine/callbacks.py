"""Lightning callbacks of a stage: clean interruption, per-epoch history, and non-finite losses.

Lightning's own pieces are used where they do the job: ``ModelCheckpoint`` writes ``last.ckpt``
every epoch and keeps the best-validation weights for ``restore_best_weights``; its SIGTERM
handling raises ``SIGTERMException`` at the next step. One piece is headstart's own,
:class:`InterruptOnSignal`, because Lightning answers Ctrl+C by calling ``sys.exit(1)`` from
inside ``Trainer.fit`` (``trainer/call.py``): a Python caller of ``fit_stage`` would lose control
of its process, and the command line could not exit with its documented code 130.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from lightning.pytorch.callbacks import Callback

from headstart.errors import HeadstartError


class NonFiniteLoss(HeadstartError):
    """Training produced NaN or infinity; the stage stops and the last good checkpoint stays."""


class RunInterrupted(Exception):
    """Ctrl+C or SIGTERM arrived; the epoch in progress is abandoned, earlier checkpoints stay."""


class InterruptOnSignal(Callback):
    """Turns SIGINT/SIGTERM into a clean stop after the current optimizer step.

    The partly trained epoch is abandoned rather than saved, so the checkpoint on disk is always
    an epoch boundary and a resumed run repeats exactly what an uninterrupted run would do.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signal_name = signal.Signals(signum).name

    def on_fit_start(self, trainer, pl_module) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread
                pass

    def restore(self) -> None:
        """Put back the signal handlers that were in place before the fit started."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signal_name is not None:
            raise RunInterrupted(self.signal_name)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.restore()


class EpochHistory(Callback):
    """Per-epoch metrics, per-step training losses and cumulative seconds, kept in the checkpoint.

    Recorded at the end of each training epoch (validation has run by then) and saved with the
    epoch's checkpoint, so a resumed stage reports the same history as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.step_losses: list[float] = []
        self.seconds_before = 0.0
        self._started: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        self.seconds_before = self.epochs[-1]["seconds"] if self.epochs else 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.step_losses.append(float(loss))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        entry: dict[str, float] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            entry[key.removesuffix("_epoch")] = float(value)
        entry["steps"] = trainer.global_step
        entry["seconds"] = self.seconds_before + time.perf_counter() - (self._started or time.perf_counter())
        self.epochs.append(entry)

    @property
    def seconds(self) -> float:
        return self.epochs[-1]["seconds"] if self.epochs else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "step_losses": self.step_losses}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs, self.step_losses = list(state_dict["epochs"]), list(state_dict["step_losses"])
