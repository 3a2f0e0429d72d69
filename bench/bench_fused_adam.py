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
from contextlib import nullcontext

from _alternate import alternate
from _stage_sides import demo_data, print_ratio, stage_side, swapped
from headstart.config import StageSpec
from headstart.engine import losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    stage = StageSpec(
        name="rotation",
        data="all",
        pretext={"name": "rotation"},
        epochs=arguments.epochs,
        batch_size=128,
        augment="crop",
        optimizer={"name": "adam", "lr": 2e-3, "schedule": "cosine"},
    )
    data = demo_data()
    best = alternate(
        {
            "loop": stage_side(data, stage, around=lambda: swapped(losses, "fusable", lambda groups: False)),
            "fused": stage_side(data, stage, around=nullcontext),
        },
        arguments.repeats,
        key="epochs_per_second",
    )
    print_ratio(f"{arguments.epochs} epochs of the rotation stage", best, "loop", "fused", tolerance=0.05)


if __name__ == "__main__":
    main()
