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

    A signal that arrives after the last step (in the final validation, or while Lightning winds
    down) finds no step to stop after: :meth:`raise_if_signalled` raises it once the fit returns,
    so that Ctrl+C is never swallowed. :meth:`listen` installs the handlers before the fit starts:
    a Ctrl+C in Lightning's own set-up would otherwise meet Lightning's handler, which ignores every
    later SIGINT and exits the process.
    """

    _requested: str | None = None
    """A stop asked for from outside the process's signals (:meth:`request_stop`), seen by every fit."""

    @classmethod
    def request_stop(cls, reason: str | None) -> None:
        """Ask every fit of this process to stop after its current step, as a signal would (``None``:
        withdraw it). For a thread that cannot send the process a signal the fit will see: a Ray
        task told by its comparison to stop."""
        cls._requested = reason

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._held = False  # listen() was called before the fit: its caller restores, after the fit

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signal_name = signal.Signals(signum).name

    def listen(self) -> None:
        """Install the handlers before a fit (once; the previous ones are kept for :meth:`restore`,
        which the caller then calls after the fit: a signal in the fit's last hooks is caught too)."""
        self._held = True
        self._install()

    def _install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if signum in self._previous:
                continue
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread
                pass

    def on_fit_start(self, trainer, pl_module) -> None:
        self._install()

    def restore(self) -> None:
        """Put back the signal handlers that were in place before the fit started."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        self._held = False

    def raise_if_signalled(self) -> None:
        """Raise :class:`RunInterrupted` if a signal arrived (or a stop was requested) and nothing has
        acted on it yet."""
        reason = self.signal_name or InterruptOnSignal._requested
        if reason is not None:
            raise RunInterrupted(reason)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raise_if_signalled()

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self._held:
            self.restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if not self._held:
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
