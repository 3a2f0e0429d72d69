"""Decoding files: reduced-scale JPEG decoding, and checking a folder's files on every core.

* A 4000×3000 JPEG (scikit-image's astronaut, enlarged) read for a 224-pixel network, decoded at
  full size then resized, against headstart's ``decode_file`` (Pillow ``draft``: the inverse DCT
  decodes at 1/8 scale). Prints milliseconds per image and the mean difference in grey levels.
* Loading a folder with ``verify: decode`` (every file decoded once) with one thread against one
  per core. Uses the 5,000-photo folder of ``bench_streaming.py`` (made there, reused here).

Both comparisons alternate their sides (A B A B …, best of each).

    python bench/bench_decoding.py [--folder /tmp/headstart-bench/photos-5000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _alternate import alternate
from headstart.data import SourceSpec, load_source
from headstart.data.dataset import decode_file
from headstart.data.images import read_image
from headstart.imageops import resize_pil


def timed(function, repeats: int = 5) -> dict:
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    seconds = (time.perf_counter() - started) / repeats
    return {"seconds": seconds, "per_second": 1.0 / seconds}


def draft(path: Path) -> None:
    full = lambda: np.asarray(resize_pil(read_image(path), 224))  # noqa: E731
    reduced = lambda: decode_file(path, 224, 3)  # noqa: E731
    best = alternate({"full": lambda: timed(full), "draft": lambda: timed(reduced)}, 2, key="per_second")
    difference = np.abs(full().astype(float) - reduced().permute(1, 2, 0).numpy().astype(float)).mean()
    print(
        f"4000x3000 JPEG for 224 px: full decode {best['full']['seconds'] * 1000:.0f} ms, "
        f"draft {best['draft']['seconds'] * 1000:.0f} ms ({best['full']['seconds'] / best['draft']['seconds']:.1f}x); "
        f"mean difference {difference:.2f} grey levels"
    )


def verification(folder: Path) -> None:
    spec = SourceSpec(kind="folder", path=str(folder), image_size=224)
    cores = os.cpu_count() or 1

    def load(threads: int) -> dict:
        os.cpu_count = lambda: threads  # the thread pool sizes itself from the core count
        try:
            return timed(lambda: load_source(spec), repeats=1)
        finally:
            os.cpu_count = lambda: cores

    best = alternate({"1 thread": lambda: load(1), f"{cores} threads": lambda: load(cores)}, 2, key="per_second")
    one, many = best["1 thread"]["seconds"], best[f"{cores} threads"]["seconds"]
    print(f"verify: decode, {folder}: 1 thread {one:.1f} s, {cores} threads {many:.1f} s ({one / many:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/headstart-bench/photos-5000"))
    arguments = parser.parse_args()
    from skimage import data

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "big.jpg"
        Image.fromarray(data.astronaut()).resize((4000, 3000), Image.BILINEAR).save(path, quality=90)
        draft(path)
    if arguments.folder.is_dir():
        verification(arguments.folder)
    else:
        print(f"{arguments.folder}: no such folder; run bench/bench_streaming.py once to make it")


if __name__ == "__main__":
    main()
