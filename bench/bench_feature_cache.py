"""A frozen-backbone head stage with feature caching against the same stage without it.

EfficientNet-Lite0 with its real ImageNet weights, backbone frozen and BatchNorm frozen, a
10-class head trained for 10 epochs on 500 MNIST digits at 96 px. Without caching every epoch runs
the backbone again; with caching it runs once. Target speed-up ≥ 5×.

    python bench/bench_feature_cache.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import torch

from headstart.config import parse_run
from headstart.structure import run


def head_stage(cache: bool, epochs: int, output: str) -> tuple[float, float]:
    spec = parse_run({
        "seed": 0, "output": output, "progress": False,
        "data": {"source": {"kind": "mnist5k"}, "splits": {"labels_per_class": 50, "val_fraction": 0.02}},
        "model": {"name": "efficientnet_lite0", "weights": "imagenet", "image_size": 96},
        "stages": [{"name": "head", "freeze": ["backbone"], "bn_policy": "frozen", "epochs": epochs,
                    "batch_size": 50, "cache_features": cache, "optimizer": {"lr": 3e-3}}],
    })
    result = run(spec)
    return result.stages[0].seconds, result.test["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    arguments = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as folder:
        cached_seconds, cached_accuracy = head_stage(True, arguments.epochs, folder + "/cached")
        plain_seconds, plain_accuracy = head_stage(False, arguments.epochs, folder + "/uncached")
    print(f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
          f"torch {torch.__version__}; efficientnet_lite0 96px, 500 images, {arguments.epochs} epochs")
    print(f"without caching : {plain_seconds:7.2f} s  test accuracy {plain_accuracy:.3f}")
    print(f"with caching    : {cached_seconds:7.2f} s  test accuracy {cached_accuracy:.3f}")
    print(f"speed-up = {plain_seconds / cached_seconds:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
