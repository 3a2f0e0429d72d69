"""Training throughput of a headstart stage against a plain PyTorch loop, same model and data.

Both sides train timm's resnet10t from the same initial weights on the same 4,000 MNIST-5k images
(32 px, batch 64, Adam, no validation), with the same per-batch work on the device (uint8 →
0..1, resize, grey → RGB, normalise, all from :mod:`headstart.imageops`). The sides alternate
(A B A B …, best of each) so that load from other processes cannot land on one side only. The
ratio printed is headstart images/s over plain-loop images/s: 1.0 means the Lightning stage costs
nothing extra; the target is ≥ 0.95.

    python bench/bench_stage_throughput.py [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from _alternate import alternate
from headstart.config import StageSpec
from headstart.data import TaskData
from headstart.heads import HeadSpec
from headstart.imageops import convert_channels, normalize, resize, to_unit_range
from headstart.stage import TrainerOptions, fit_stage
from headstart.zoo import load

MODEL, SIZE, BATCH, LEARNING_RATE = "resnet10t", 32, 64, 1e-3
SPLITS = {"test_fraction": 0.2, "val_fraction": 0.0001, "seed": 0}


def _network():
    torch.manual_seed(0)
    network = load(MODEL, weights=None, include_top=False)
    network.replace_head(HeadSpec(outputs=10), labels=[str(i) for i in range(10)])
    return network


def plain_loop(data: TaskData, epochs: int) -> dict:
    train = data.split("train")
    pixels, labels = train.store.pixels(train.positions), torch.from_numpy(train.labels)
    network = _network()
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    mean, std = network.preprocessing.mean, network.preprocessing.std
    started, steps = time.perf_counter(), 0
    for epoch in range(epochs):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            index = order[start : start + BATCH]
            batch = normalize(convert_channels(resize(to_unit_range(pixels[index]), SIZE, "stretch"), 3), mean, std)
            loss = F.cross_entropy(network(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "images_per_second": steps * BATCH / seconds}


def headstart_stage(data: TaskData, epochs: int, output: str) -> dict:
    stage = StageSpec(name="task", epochs=epochs, batch_size=BATCH, optimizer={"lr": LEARNING_RATE})
    record = fit_stage(_network(), stage, data, folder=output, image_size=SIZE, options=TrainerOptions(progress=False))
    return {
        "seconds": record.seconds,
        "images_per_second": record.steps * BATCH / record.seconds,
        "residency": record.data.residency,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    data = TaskData.load({"kind": "mnist5k"}, SPLITS)
    print(
        f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; {MODEL} {SIZE}px batch {BATCH}, {arguments.epochs} epochs, "
        f"{len(data.split('train'))} images"
    )
    with tempfile.TemporaryDirectory() as folder:
        runs = iter(range(1000))
        best = alternate(
            {
                "plain": lambda: plain_loop(data, arguments.epochs),
                "headstart": lambda: headstart_stage(data, arguments.epochs, f"{folder}/{next(runs)}"),
            },
            arguments.repeats,
        )
    ratio = best["headstart"]["images_per_second"] / best["plain"]["images_per_second"]
    print(f"throughput ratio headstart/plain = {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
