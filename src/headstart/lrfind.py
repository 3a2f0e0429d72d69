"""The learning-rate finder of a stage: the LR range test, run as the stage would train.

Smith (2017), "Cyclical Learning Rates for Training Neural Networks" (WACV), section 3.3: train
for a short while with the learning rate rising from a tiny value to a large one and watch the
loss — it stays flat while the rate is too small to matter, falls fastest at useful rates and
blows up past the largest usable one. fastai's ``lr_find`` and Lightning's ``LearningRateFinder``
made it routine; this module runs it *per stage*, because the right rate for a new head on a
frozen backbone (features cached, BatchNorm statistics fixed) is far from the right one for
fine-tuning everything::

    sweep = headstart.stage.lr_find(network, {"name": "head", "freeze": ["backbone"]}, data, image_size=32)
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

This module holds the rule and the record (:class:`LRSweep`, :func:`smooth`, :func:`valley`,
:func:`suggest`); the sweep itself runs on Lightning in :mod:`headstart.engine.sweep`, and only
the stage calls it (:func:`headstart.stage.lr_find`, :func:`headstart.structure.find_learning_rate`).

``optimizer: {lr: find}`` sweeps when the run reaches the stage, writes ``lr_find.json`` and
``lr_find.png`` into the stage folder, records the sweep in ``stage.json`` (``lr_find``) and
trains with the suggestion; a resumed stage reuses the sweep it recorded.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, Field

from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError
from headstart.files import atomic_write_bytes, png_bytes

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
        return (
            f"stage '{self.stage}': suggested learning rate {self.suggestion:.3g} (fastai's {self.rule} rule) from "
            f"{len(self.losses)} steps between {self.min_lr:.0e} and {self.max_lr:g}{stop}; "
            f"{self.frozen_parameters} frozen parameter tensors, BatchNorm {self.bn_policy}"
            f"{', cached features' if self.cached_features else ''}, batch {self.batch_size}; {self.seconds:.1f} s"
        )

    def plot_png(self) -> bytes:
        """Loss against learning rate (log axis), the rule's window shaded, the suggestion marked."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.0), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        if self.raw_losses:
            axes.plot(
                self.learning_rates[: len(self.raw_losses)],
                self.raw_losses,
                color="#1f77b4",
                alpha=0.25,
                linewidth=0.8,
                label="training loss per step",
            )
        axes.plot(self.learning_rates, self.losses, color="#1f77b4", label="smoothed training loss")
        start, stop = self.window
        if stop > start:
            axes.axvspan(
                self.learning_rates[start],
                self.learning_rates[stop - 1],
                color="#dddddd",
                alpha=0.6,
                label="read by the rule",
            )
        nearest = min(
            range(len(self.learning_rates)),
            key=lambda index: abs(math.log(self.learning_rates[index]) - math.log(self.suggestion)),
        )
        axes.plot(
            [self.suggestion],
            [self.losses[nearest]],
            "o",
            color="#d62728",
            markersize=8,
            label=f"suggestion {self.suggestion:.3g} ({self.rule})",
        )
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
        return png_bytes(figure)

    def plot(self, path: str | Path) -> Path:
        """Write :meth:`plot_png` to ``path`` (atomic); return the path."""
        path = Path(path)
        atomic_write_bytes(path, self.plot_png())
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
        raise HeadstartError(
            f"the learning-rate sweep stopped after {len(losses)} of {steps} steps, too early to "
            f"suggest a rate (the loss diverged at {learning_rates[-1]:.2g}); lower max_lr or give "
            "the stage more training images"
        )
    offset, _ = valley(losses[start:stop])
    return float(learning_rates[start + offset]), (start, stop)


__all__ = ["MIN_LR", "MAX_LR", "STEPS", "DIVERGENCE", "LRSweep", "SweepInterrupted", "smooth", "valley", "suggest"]
