"""Channels-last (NHWC) training against the default NCHW order on the CPU, on the demo's stages.

Both sides train the same stage from the same random weights (resnet10t, one input channel, the
demo's MNIST-5k splits): the rotation pretext stage (batch 128, every training image) and the
semi-supervised stage (FreeMatch, batch 25 labelled + 175 unlabelled, whose step is three passes
of 175-200 images), for ``--epochs`` epochs each. "NCHW" forces ``channels_last: false``;
"NHWC" is what ``channels_last: auto`` does on the CPU. The sides alternate (best of each) and
must end with validation accuracies within round-off of each other. The ratio printed is NCHW
seconds over NHWC seconds (above 1: channels-last is faster).

    python bench/bench_channels_last.py [--epochs 1] [--repeats 2] [--size 32]
"""

from __future__ import annotations

from _alternate import alternate
from _stage_sides import demo_data, demo_stage, print_ratio, stage_bench_arguments, stage_side
from headstart.config import StageSpec


def _side(data, stage: StageSpec, size: int, channels_last: bool):
    def check(record) -> None:
        assert record.device is not None and record.device.channels_last == channels_last

    return stage_side(data, stage, size=size, options={"channels_last": channels_last}, check=check)


def main() -> None:
    arguments = stage_bench_arguments(__doc__.splitlines()[0], epochs=1)
    data = demo_data(arguments.size)
    for name in ("rotation", "freematch"):
        stage = demo_stage(name, arguments.epochs)
        print(f"{name} stage, {arguments.epochs} epoch(s) at {arguments.size} px:")
        best = alternate(
            {
                "NCHW": _side(data, stage, arguments.size, channels_last=False),
                "NHWC": _side(data, stage, arguments.size, channels_last=True),
            },
            arguments.repeats,
            key="epochs_per_second",
        )
        print_ratio(f"  {name}", best, "NCHW", "NHWC", tolerance=0.05)


if __name__ == "__main__":
    main()
