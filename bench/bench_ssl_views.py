"""Two SimCLR views of a batch: lightly's per-image ``SimCLRTransform`` against headstart's batched views.

lightly's transform is a torchvision pipeline applied to one PIL image at a time (as a
``DataLoader`` worker would); headstart draws both views of the whole batch at once on the
training device (:mod:`headstart.pretext.views`). Same batch of 256 MNIST digits at 32 px, flips
off on both sides; the sides alternate and each keeps its best run; the ratio is headstart / lightly.

    python bench/bench_ssl_views.py --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _alternate import alternate  # noqa: E402
from headstart.data.builtin import load_mnist5k  # noqa: E402
from headstart.imageops import to_unit_range  # noqa: E402
from headstart.pretext.views import ViewOptions  # noqa: E402

BATCH = 256
SIZE = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from lightly.transforms.simclr_transform import SimCLRTransform
    from PIL import Image

    digits = load_mnist5k()
    images = to_unit_range(digits.store.load(np.arange(BATCH)))
    images = torch.nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    pictures = [Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).convert("RGB") for image in images]
    transform = SimCLRTransform(input_size=SIZE, hf_prob=0.0, vf_prob=0.0, rr_prob=0.0)
    options = ViewOptions()

    def lightly() -> dict:
        started = time.perf_counter()
        views = [transform(picture) for picture in pictures]
        torch.stack([view[0] for view in views]), torch.stack([view[1] for view in views])
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images_per_second": BATCH / seconds}

    def headstart() -> dict:
        generator = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        options.two_views(images, generator)
        seconds = time.perf_counter() - started
        return {"seconds": seconds, "images_per_second": BATCH / seconds}

    print(f"two views of {BATCH} digits at {SIZE} px, {args.threads} thread(s), best of {args.repeats}")
    best = alternate({"headstart": headstart, "lightly": lightly}, args.repeats)
    ratio = best["headstart"]["images_per_second"] / best["lightly"]["images_per_second"]
    print(
        f"headstart {best['headstart']['images_per_second']:.0f} images/s, lightly "
        f"{best['lightly']['images_per_second']:.0f} images/s: {ratio:.1f}x"
    )


if __name__ == "__main__":
    main()
