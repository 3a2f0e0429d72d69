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

    python bench/bench_fused_adam.py [--epochs 2] [--repeats 2] [--size 32]
"""

from __future__ import annotations

from contextlib import nullcontext

from _alternate import alternate
from _stage_sides import demo_data, demo_stage, print_ratio, stage_bench_arguments, stage_side, swapped
from headstart.engine import losses


def main() -> None:
    arguments = stage_bench_arguments(__doc__.splitlines()[0], epochs=2)
    data = demo_data(arguments.size)
    stage = demo_stage("rotation", arguments.epochs)
    best = alternate(
        {
            "loop": stage_side(
                data, stage, size=arguments.size, around=lambda: swapped(losses, "fusable", lambda groups: False)
            ),
            "fused": stage_side(data, stage, size=arguments.size, around=nullcontext),
        },
        arguments.repeats,
        key="epochs_per_second",
    )
    print_ratio(f"{arguments.epochs} epochs of the rotation stage", best, "loop", "fused", tolerance=0.05)


if __name__ == "__main__":
    main()
