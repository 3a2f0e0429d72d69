"""A stage whose ``last.ckpt`` is written behind the training against the same stage writing it in line.

Both sides train the demo's scratch stage (resnet10t from the same random weights, 32 px, the 100
labelled MNIST-5k digits of the demo's splits, batch 25, 40 epochs of 4 steps, validation on 250
images every epoch): many short epochs, so the per-epoch checkpoint (weights, Adam's two moments,
loop and random states; atomic: temporary file, ``fsync``, ``os.replace``) is a visible share of
the stage. The "in line" side swaps Lightning's ``AsyncCheckpointIO`` for the atomic writer alone,
as headstart wrote checkpoints before. The sides alternate (best of each) and must end with the same
validation accuracy: the checkpoint is a copy, the training is the same. The ratio printed is
in-line seconds over behind-the-training seconds (above 1: writing behind the training is faster).

    python bench/bench_checkpoint_writes.py [--epochs 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from _alternate import alternate
from headstart.config import StageSpec
from headstart.data import TaskData
from headstart.engine import trainer as trainer_module
from headstart.stage import fit_stage
from headstart.zoo import load

SPLITS = {"test_fraction": 0.2, "val_fraction": 0.05, "labels_per_class": 10, "seed": 0}
BEHIND = trainer_module.AsyncCheckpointIO


def _side(data: TaskData, epochs: int, behind: bool):
    stage = StageSpec(
        name="task",
        epochs=epochs,
        batch_size=25,
        augment="crop",
        optimizer={"name": "adam", "lr": 2e-3, "schedule": "cosine"},
    )

    def run() -> dict:
        trainer_module.AsyncCheckpointIO = BEHIND if behind else (lambda inner: inner)
        try:
            torch.manual_seed(0)
            network = load("resnet10t", weights=None, include_top=False, num_classes=10, in_chans=1)
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                record = fit_stage(network, stage, data, folder=folder, image_size=32, options={"progress": False})
                seconds = time.perf_counter() - start
        finally:
            trainer_module.AsyncCheckpointIO = BEHIND
        return {
            "seconds": seconds,
            "epochs_per_second": epochs / seconds,
            "val_accuracy": record.history[-1]["val_accuracy"],
        }

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    data = TaskData.load({"kind": "mnist5k", "image_size": 32}, SPLITS)
    best = alternate(
        {
            "in line": _side(data, arguments.epochs, behind=False),
            "behind": _side(data, arguments.epochs, behind=True),
        },
        arguments.repeats,
        key="epochs_per_second",
    )
    inline, behind = best["in line"], best["behind"]
    assert inline["val_accuracy"] == behind["val_accuracy"], (inline, behind)
    print(
        f"{arguments.epochs} epochs: in line {inline['seconds']:.1f} s, behind the training {behind['seconds']:.1f} s; "
        f"ratio {inline['seconds'] / behind['seconds']:.3f}x; validation accuracy {behind['val_accuracy']:.3f} on both"
    )


if __name__ == "__main__":
    main()
