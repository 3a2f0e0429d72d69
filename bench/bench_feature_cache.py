"""A frozen-backbone head stage with feature caching against the same stage without it.

EfficientNet-Lite0 with its real ImageNet weights, backbone frozen and BatchNorm frozen, a
10-class head trained for 10 epochs on 500 MNIST digits at 96 px. Without caching every epoch runs
the backbone again; with caching it runs once, in one streaming pass. The two sides alternate
(A B A B …, best of each). Target speed-up ≥ 5×.

    python bench/bench_feature_cache.py [--epochs 10] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import torch

from _alternate import alternate
from headstart.config import parse_run
from headstart.structure import run

IMAGES = 500


def head_stage(cache: bool, epochs: int, output: str) -> dict:
    spec = parse_run(
        {
            "seed": 0,
            "output": output,
            "progress": False,
            "data": {"source": {"kind": "mnist5k"}, "splits": {"labels_per_class": IMAGES // 10, "val_fraction": 0.02}},
            "model": {"name": "efficientnet_lite0", "weights": "imagenet", "image_size": 96},
            "stages": [
                {
                    "name": "head",
                    "freeze": ["backbone"],
                    "bn_policy": "frozen",
                    "epochs": epochs,
                    "batch_size": 50,
                    "cache_features": cache,
                    "optimizer": {"lr": 3e-3},
                }
            ],
        }
    )
    result = run(spec)
    seconds = result.stages[0].seconds
    return {"seconds": seconds, "images_per_second": IMAGES * epochs / seconds, "accuracy": result.test["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; "
        f"torch {torch.__version__}; efficientnet_lite0 96px, {IMAGES} images, {arguments.epochs} epochs"
    )
    with tempfile.TemporaryDirectory() as folder:
        runs = iter(range(1000))
        best = alternate(
            {
                "uncached": lambda: head_stage(False, arguments.epochs, f"{folder}/{next(runs)}"),
                "cached": lambda: head_stage(True, arguments.epochs, f"{folder}/{next(runs)}"),
            },
            arguments.repeats,
        )
    for name, result in best.items():
        print(f"{name:<9}: {result['seconds']:7.2f} s  test accuracy {result['accuracy']:.3f}")
    print(f"speed-up = {best['uncached']['seconds'] / best['cached']['seconds']:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
