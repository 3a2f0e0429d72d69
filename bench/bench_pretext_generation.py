"""Rotation pretext data: batched ``RotationTask.alter`` against the chapter's listing 2-20.

Listing 2-20 builds the altered CIFAR-10 dataset with a Python loop that draws an angle per image
and calls ``scipy.ndimage.rotate(img, angle)``. ``RotationTask.alter`` draws all labels at once and
rotates groups with ``torch.rot90`` on the training device. Both run here on the same images in
the same process, on the CPU, and the script prints images per second for each and their ratio.

    python bench/bench_pretext_generation.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy
import scipy.ndimage
import torch

from headstart.pretext.rotation import RotationTask

SETTINGS = ((32, 2048), (224, 128))
"""(image side in pixels, images per measurement): enough to time, small enough for < 1 minute."""


def listing_2_20(images_hwc: np.ndarray, rng: np.random.Generator):
    """The chapter's loop: one random right angle per image, ``scipy.ndimage.rotate``, one-hot label."""
    altered, labels = [], []
    for index in range(len(images_hwc)):
        angle = rng.choice([0, 90, 180, 270])
        altered.append(scipy.ndimage.rotate(images_hwc[index], angle))
        labels.append(np.eye(4)[angle // 90])
    return np.array(altered), np.array(labels)


def best_rate(run, count: int, repeats: int) -> float:
    """Images per second of the fastest of ``repeats`` runs (after one warm-up)."""
    run()
    fastest = min(_timed(run) for _ in range(repeats))
    return count / fastest


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest counts")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, scipy {scipy.__version__}, "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, CPU"
    )
    print(f"{'size':>5} {'images':>7} {'listing 2-20 (img/s)':>21} {'alter (img/s)':>14} {'ratio':>8}")
    task = RotationTask()
    for side, count in SETTINGS:
        images = torch.rand(count, 3, side, side)
        images_hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
        generator = torch.Generator().manual_seed(0)
        rng = np.random.default_rng(0)
        loop_rate = best_rate(
            lambda images_hwc=images_hwc, rng=rng: listing_2_20(images_hwc, rng), count, arguments.repeats
        )
        batched_rate = best_rate(
            lambda images=images, generator=generator: task.alter(images, generator), count, arguments.repeats
        )
        print(f"{side:>5} {count:>7} {loop_rate:>21,.0f} {batched_rate:>14,.0f} {batched_rate / loop_rate:>7.1f}x")


if __name__ == "__main__":
    main()
