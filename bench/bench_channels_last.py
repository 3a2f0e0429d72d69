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

import argparse
import tempfile
import time

import torch

from _alternate import alternate
from headstart.config import StageSpec
from headstart.data import TaskData
from headstart.stage import fit_stage
from headstart.zoo import load

SPLITS = {"test_fraction": 0.2, "val_fraction": 0.05, "labels_per_class": 10, "seed": 0}
STAGES = {
    "rotation": {"data": "all", "pretext": {"name": "rotation"}, "batch_size": 128},
    "freematch": {"batch_size": 25, "semi_supervised": {"method": "freematch", "ratio": 7, "momentum": 0.99}},
}


def _side(data: TaskData, stage: StageSpec, size: int, channels_last: bool):
    def run() -> dict:
        torch.manual_seed(0)
        network = load("resnet10t", weights=None, include_top=False, num_classes=10, in_chans=1)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            record = fit_stage(
                network,
                stage,
                data,
                folder=folder,
                image_size=size,
                options={"progress": False, "channels_last": channels_last},
            )
            seconds = time.perf_counter() - start
        assert record.device is not None and record.device.channels_last == channels_last
        accuracy = record.history[-1]["val_accuracy"]
        return {"seconds": seconds, "epochs_per_second": stage.epochs / seconds, "val_accuracy": accuracy}

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    arguments = parser.parse_args()
    data = TaskData.load({"kind": "mnist5k", "image_size": arguments.size}, SPLITS)
    for name, settings in STAGES.items():
        stage = StageSpec(
            name=name,
            epochs=arguments.epochs,
            augment="crop",
            optimizer={"name": "adam", "lr": 2e-3, "schedule": "cosine"},
            **settings,
        )
        print(f"{name} stage, {arguments.epochs} epoch(s) at {arguments.size} px:")
        best = alternate(
            {
                "NCHW": _side(data, stage, arguments.size, channels_last=False),
                "NHWC": _side(data, stage, arguments.size, channels_last=True),
            },
            arguments.repeats,
            key="epochs_per_second",
        )
        nchw, nhwc = best["NCHW"], best["NHWC"]
        assert abs(nchw["val_accuracy"] - nhwc["val_accuracy"]) < 0.05, (nchw, nhwc)
        print(
            f"  {name}: NCHW {nchw['seconds']:.1f} s, NHWC {nhwc['seconds']:.1f} s; ratio "
            f"{nchw['seconds'] / nhwc['seconds']:.3f}x; validation accuracy {nchw['val_accuracy']:.3f} / "
            f"{nhwc['val_accuracy']:.3f}"
        )


if __name__ == "__main__":
    main()
