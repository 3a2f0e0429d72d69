"""Sides of a stage benchmark: one of the demo's stages, trained from the same random weights each run.

Every side trains resnet10t (one input channel, random weights seeded 0) on the demo's MNIST-5k
splits for one stage, with a change applied around the run (an option, or a patched function put
back afterwards), and reports its wall seconds, epochs per second and final validation accuracy.
:func:`print_ratio` prints the slower side's seconds over the faster one's and checks that the two
ended where they should (the same accuracy, or within round-off of it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch

from headstart.checkpoint import StageRecord
from headstart.config import StageSpec
from headstart.data import TaskData
from headstart.stage import fit_stage
from headstart.zoo import load

SPLITS = {"test_fraction": 0.2, "val_fraction": 0.05, "labels_per_class": 10, "seed": 0}


DEMO_STAGES = {
    "rotation": {"data": "all", "pretext": {"name": "rotation"}, "batch_size": 128},
    "task": {"batch_size": 25},
    "freematch": {"batch_size": 25, "semi_supervised": {"method": "freematch", "ratio": 7, "momentum": 0.99}},
}
"""The demo's stages as the speed benches train them: the rotation pretext stage (batch 128, every
training image), the task stage (batch 25, the 100 labelled images) and the semi-supervised stage
(FreeMatch, batch 25 labelled + 175 unlabelled), each with Adam 2e-3 on a cosine schedule."""


def demo_stage(name: str, epochs: int) -> StageSpec:
    """One of :data:`DEMO_STAGES` for ``epochs`` epochs."""
    optimizer = {"name": "adam", "lr": 2e-3, "schedule": "cosine"}
    return StageSpec(name=name, epochs=epochs, augment="crop", optimizer=optimizer, **DEMO_STAGES[name])


def stage_bench_arguments(description: str, *, epochs: int) -> argparse.Namespace:
    """``--epochs`` (default ``epochs``), ``--repeats`` (2) and ``--size`` (32 px) of a stage bench."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    return parser.parse_args()


def demo_data(size: int = 32) -> TaskData:
    """The demo's splits of MNIST-5k, read at ``size`` pixels."""
    return TaskData.load({"kind": "mnist5k", "image_size": size}, SPLITS)


@contextmanager
def swapped(owner: Any, name: str, value: Any) -> Iterator[None]:
    """``owner.name`` replaced by ``value`` inside the block, put back afterwards (also on error)."""
    kept = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, kept)


def stage_side(
    data: TaskData,
    stage: StageSpec,
    *,
    size: int = 32,
    options: dict | None = None,
    around: Callable[[], AbstractContextManager] = nullcontext,
    check: Callable[[StageRecord], None] = lambda record: None,
) -> Callable[[], dict]:
    """A side for :func:`_alternate.alternate`: ``stage`` from the same random resnet10t, trained
    with ``options`` inside the context ``around()`` makes; ``check`` looks at the record."""

    def run() -> dict:
        with around():
            torch.manual_seed(0)
            network = load("resnet10t", weights=None, include_top=False, num_classes=10, in_chans=1)
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                record = fit_stage(
                    network, stage, data, folder=folder, image_size=size, options={"progress": False, **(options or {})}
                )
                seconds = time.perf_counter() - start
        check(record)
        accuracy = record.history[-1]["val_accuracy"]
        return {"seconds": seconds, "epochs_per_second": stage.epochs / seconds, "val_accuracy": accuracy}

    return run


def print_ratio(title: str, best: dict[str, dict], slow: str, fast: str, *, tolerance: float = 0.0) -> None:
    """``title``: each side's best seconds and ``slow`` seconds over ``fast`` seconds (above 1: ``fast``
    is faster); the two sides' validation accuracies must agree within ``tolerance``."""
    before, after = best[slow], best[fast]
    assert abs(before["val_accuracy"] - after["val_accuracy"]) <= tolerance, (before, after)
    print(
        f"{title}: {slow} {before['seconds']:.1f} s, {fast} {after['seconds']:.1f} s; ratio "
        f"{before['seconds'] / after['seconds']:.3f}x; validation accuracy {before['val_accuracy']:.3f} / "
        f"{after['val_accuracy']:.3f}"
    )
