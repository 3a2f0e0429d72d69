"""Training throughput of a headstart stage against a plain PyTorch loop, same model and data.

Both sides train timm's resnet10t from the same initial weights on the same MNIST-5k images
(32 px, batch 64, Adam, no validation), with the same per-batch work on the device (resize,
grey → RGB, normalise). The ratio printed is plain-loop time / headstart time: 1.0 means the
Lightning stage costs nothing extra; the target is ≥ 0.95.

    python bench/bench_stage_throughput.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from headstart.config import parse_run
from headstart.data import load_source
from headstart.data.sources import SourceSpec
from headstart.engine import fit_channels, fit_size
from headstart.preprocess import normalize
from headstart.structure import run
from headstart.zoo import load

MODEL, SIZE, BATCH, LEARNING_RATE = "resnet10t", 32, 64, 1e-3


def plain_loop(images: torch.Tensor, labels: torch.Tensor, epochs: int) -> float:
    torch.manual_seed(0)
    network = load(MODEL, weights=None, include_top=False)
    from headstart.heads import HeadSpec, build_head

    network.replace_head(build_head(HeadSpec(outputs=10), network.num_features), labels=[str(i) for i in range(10)])
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=LEARNING_RATE)
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            index = order[start : start + BATCH]
            batch = normalize(fit_channels(fit_size(images[index], SIZE), 3), network.preprocessing)
            loss = F.cross_entropy(network(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def headstart_stage(epochs: int, output: str) -> float:
    spec = parse_run({
        "seed": 0, "output": output, "progress": False,
        "data": {"source": {"kind": "mnist5k"}, "splits": {"test_fraction": 0.2, "val_fraction": 0.0}},
        "model": {"name": MODEL, "weights": None, "image_size": SIZE},
        "stages": [{"name": "task", "epochs": epochs, "batch_size": BATCH, "optimizer": {"lr": LEARNING_RATE}}],
    })
    return run(spec).stages[0].seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    arguments = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    images, labels = load_source(SourceSpec(kind="mnist5k")).as_tensors()
    images, labels = images[:4000], labels[:4000]  # the training split's size
    with tempfile.TemporaryDirectory() as folder:
        headstart_seconds = headstart_stage(arguments.epochs, folder + "/run")
    plain_seconds = plain_loop(images, labels, arguments.epochs)
    steps = arguments.epochs * (4000 // BATCH)
    print(f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}; {MODEL} {SIZE}px batch {BATCH}, {arguments.epochs} epochs, {steps} steps")
    print(f"plain PyTorch loop : {plain_seconds:7.2f} s  ({steps * BATCH / plain_seconds:7.0f} images/s)")
    print(f"headstart stage    : {headstart_seconds:7.2f} s  ({steps * BATCH / headstart_seconds:7.0f} images/s)")
    print(f"throughput ratio headstart/plain = {plain_seconds / headstart_seconds:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
