"""Adam's fused kernel against its per-tensor loop, on the demo's rotation stage.

Both sides train the demo's rotation pretext stage (resnet10t from the same random weights, 32 px,
every MNIST-5k training image of the demo's splits, batch 128, Adam 2e-3 with a cosine schedule)
for ``--epochs`` epochs: a small network and a large batch, where Adam's per-tensor loop (a dozen
small operations for each of resnet10t's ~60 parameter tensors, every step) is a visible share of
the step. The "loop" side builds Adam as headstart did before (``fused`` left to PyTorch, which
picks the per-tensor loop on the CPU); the "fused" side is what :func:`headstart.engine.losses.
build_optimizer` builds now. The sides alternate (best of each); they must end with validation
accuracies within round-off of each other (the kernels order their floating-point operations
differently). The ratio printed is loop seconds over fused seconds (above 1: fused is faster).

    python bench/bench_fused_adam.py [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from _alternate import alternate
from headstart.config import StageSpec
from headstart.data import TaskData
from headstart.engine import losses
from headstart.stage import fit_stage
from headstart.zoo import load

SPLITS = {"test_fraction": 0.2, "val_fraction": 0.05, "labels_per_class": 10, "seed": 0}
FUSABLE = losses.fusable


def _side(data: TaskData, epochs: int, fused: bool):
    stage = StageSpec(
        name="rotation",
        data="all",
        pretext={"name": "rotation"},
        epochs=epochs,
        batch_size=128,
        augment="crop",
        optimizer={"name": "adam", "lr": 2e-3, "schedule": "cosine"},
    )

    def run() -> dict:
        losses.fusable = FUSABLE if fused else (lambda groups: False)
        try:
            torch.manual_seed(0)
            network = load("resnet10t", weights=None, include_top=False, num_classes=10, in_chans=1)
            with tempfile.TemporaryDirectory() as folder:
                start = time.perf_counter()
                record = fit_stage(network, stage, data, folder=folder, image_size=32, options={"progress": False})
                seconds = time.perf_counter() - start
        finally:
            losses.fusable = FUSABLE
        return {
            "seconds": seconds,
            "epochs_per_second": epochs / seconds,
            "val_accuracy": record.history[-1]["val_accuracy"],
        }

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    data = TaskData.load({"kind": "mnist5k", "image_size": 32}, SPLITS)
    best = alternate(
        {"loop": _side(data, arguments.epochs, fused=False), "fused": _side(data, arguments.epochs, fused=True)},
        arguments.repeats,
        key="epochs_per_second",
    )
    loop, fused = best["loop"], best["fused"]
    assert abs(loop["val_accuracy"] - fused["val_accuracy"]) < 0.05, (loop, fused)
    print(
        f"{arguments.epochs} epochs of the rotation stage: per-tensor loop {loop['seconds']:.1f} s, fused "
        f"{fused['seconds']:.1f} s; ratio {loop['seconds'] / fused['seconds']:.3f}x; validation accuracy "
        f"{loop['val_accuracy']:.3f} / {fused['val_accuracy']:.3f}"
    )


if __name__ == "__main__":
    main()
