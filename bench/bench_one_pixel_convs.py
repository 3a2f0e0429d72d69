"""One-pixel convolutions as matrix products against oneDNN's convolutions, on the demo's stages.

At the demo's 32 px, resnet10t's last stage works on 1×1 maps, where a 3×3 convolution is a matrix
product of the taps that land on the image (:class:`~headstart.engine.accelerate.OnePixelConv2d`,
always on for CPU stages). Both sides train the same stage from the same random weights (resnet10t,
one input channel, the demo's MNIST-5k splits): the rotation pretext stage (batch 128, every
training image), the task stage (batch 25, the 100 labelled images) and the semi-supervised stage
(FreeMatch, batch 25 labelled + 175 unlabelled), for ``--epochs`` epochs each. "convolution" puts
``nn.Conv2d``'s forward back for the run; "matmul" is what a CPU stage does. The sides alternate
(best of each) and must end with validation accuracies within round-off of each other. The ratio
printed is convolution seconds over matmul seconds (above 1: the matrix product is faster).

    python bench/bench_one_pixel_convs.py [--epochs 1] [--repeats 2] [--size 32]
"""

from __future__ import annotations

from functools import partial

from torch import nn

from _alternate import alternate
from _stage_sides import demo_data, demo_stage, print_ratio, stage_bench_arguments, stage_side, swapped
from headstart.engine.accelerate import OnePixelConv2d

EPOCHS_PER_UNIT = {"rotation": 1, "task": 10, "freematch": 1}
"""Each stage's epochs per ``--epochs`` (a task epoch is four steps)."""


def main() -> None:
    arguments = stage_bench_arguments(__doc__.splitlines()[0], epochs=1)
    data = demo_data(arguments.size)
    for name, scale in EPOCHS_PER_UNIT.items():
        stage = demo_stage(name, arguments.epochs * scale)
        print(f"{name} stage, {stage.epochs} epoch(s) at {arguments.size} px:")
        convolution = partial(swapped, OnePixelConv2d, "forward", nn.Conv2d.forward)
        best = alternate(
            {
                "convolution": stage_side(data, stage, size=arguments.size, around=convolution),
                "matmul": stage_side(data, stage, size=arguments.size),
            },
            arguments.repeats,
            key="epochs_per_second",
        )
        print_ratio(f"  {name}", best, "convolution", "matmul", tolerance=0.05)


if __name__ == "__main__":
    main()
