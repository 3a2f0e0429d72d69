"""A stage whose ``last.ckpt`` is written behind the training against the same stage writing it in line.

Both sides train the demo's scratch stage (resnet10t from the same random weights, 32 px, the 100
labelled MNIST-5k digits of the demo's splits, batch 25, 40 epochs of 4 steps, validation on 250
images every epoch): many short epochs, so the per-epoch checkpoint (weights, Adam's two moments,
loop and random states; atomic: temporary file, ``fsync``, ``os.replace``) is a visible share of
the stage. The "in line" side swaps Lightning's ``AsyncCheckpointIO`` for the atomic writer alone,
as headstart wrote checkpoints before. The sides alternate (best of each) and must end with the same
validation accuracy: the checkpoint is a copy, the training is the same. The ratio printed is
in-line seconds over behind-the-training seconds (above 1: writing behind the training is faster).

    python bench/bench_checkpoint_writes.py [--epochs 40] [--repeats 2] [--size 32]
"""

from __future__ import annotations

from contextlib import nullcontext

from _alternate import alternate
from _stage_sides import demo_data, demo_stage, print_ratio, stage_bench_arguments, stage_side, swapped
from headstart.engine import trainer as trainer_module


def main() -> None:
    arguments = stage_bench_arguments(__doc__.splitlines()[0], epochs=40)
    data = demo_data(arguments.size)
    stage = demo_stage("task", arguments.epochs)
    best = alternate(
        {
            "in line": stage_side(
                data,
                stage,
                size=arguments.size,
                around=lambda: swapped(trainer_module, "AsyncCheckpointIO", lambda inner: inner),
            ),
            "behind": stage_side(data, stage, size=arguments.size, around=nullcontext),
        },
        arguments.repeats,
        key="epochs_per_second",
    )
    print_ratio(f"{arguments.epochs} epochs", best, "in line", "behind")


if __name__ == "__main__":
    main()
