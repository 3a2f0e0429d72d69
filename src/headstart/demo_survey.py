"""What a folder of one's own images is, before the folder demo plans anything: listed, checked, sized.

:func:`survey` lists ``PATH/<class>/<image>`` as the folder source lists them
(:mod:`headstart.data.sources`: sub-folders are the classes, hidden files skipped, image suffixes
only) and runs the data check (:mod:`headstart.data.datacheck`), which reads every file once, or
none for unchanged files whose fingerprints are cached; an unreadable image, fewer than two classes
or a class under :data:`MIN_IMAGES_PER_CLASS` images stops the job with the path, before anything is
written. Sizes and colour come from the check's fingerprints; decoding as a run decodes is timed on
:data:`DECODE_SAMPLE` files, for the budget (:mod:`headstart.demo_budget`).

:func:`choose_sizes` picks the two models' input sides from the images' median shorter side:
photographs at the ImageNet model's own resolution, small images kept small. Used by
:mod:`headstart.demo_folder`.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.data.datacheck import check_loaded
from headstart.data.dataset import FileStore, ImageSet, decode_file
from headstart.data.findings import DataCheck
from headstart.data.sources import MAX_LISTED, SourceSpec, load_source
from headstart.demo import IMAGENET_MODEL
from headstart.demo_budget import PROBE_SMALL_SIDE
from headstart.errors import HeadstartError

MIN_IMAGES_PER_CLASS = 5
"""Five images give one test image, one validation image and three training images."""

PHOTO_SIDE = PROBE_SMALL_SIDE
"""Median shorter side (pixels) from which images count as photographs. BiT's HyperRule
(Kolesnikov et al., ECCV 2020; ``bit_hyperrule.get_resolution`` in google-research/big_transfer)
draws the same line: images of less than 96 × 96 pixels are fine-tuned at 128 px, larger ones at
480 px."""
SMALL_SIDES = (32, 64)
"""Smallest and largest side the small model trains at: 32 is the MNIST demo's size for 28-px
digits; 64 leaves resnet10t's five stride-2 stages a 2 × 2 map and costs a quarter of 128 px."""
IMAGENET_MIN_SIDE = 64
"""Smallest side of the ImageNet arm: EfficientNet-Lite0 at 64 px is the MNIST demo's choice."""
DECODE_SAMPLE = 64
"""Files decoded at the stored size to time decoding for the budget (spread over the listing): the
data check has already read every file, so the survey decodes no more than these."""


@dataclass(frozen=True)
class Survey:
    """What the images of the folder (and the unlabelled folder) are: listed, sized, checked."""

    images: ImageSet
    """Every image, labelled images with their class and the unlabelled folder's labelled -1."""
    median_side: int
    """Median shorter side of the stored images, in pixels (before EXIF orientation)."""
    smallest_side: int
    largest_side: int
    colour: bool
    """Whether any image is in colour (:func:`headstart.data.fingerprints.is_colour`)."""
    decode_seconds: float
    """Wall seconds per image of decoding every file at the stored size, as a run loads them."""


def _list_images(data: Path, unlabelled: Path | None) -> ImageSet:
    """The folder's images as the folder source lists them (headers checked, nothing decoded)."""
    if not data.is_dir():
        raise HeadstartError(
            f"{data}: {'is a file' if data.exists() else 'no such folder'}; expected a folder with one "
            f"sub-folder per class (PATH/<class>/<image>)"
        )
    spec = SourceSpec(
        kind="folder",
        path=str(data),
        unlabelled=None if unlabelled is None else str(unlabelled),
        image_size=8,
        verify="checked",  # the data check that follows decodes every file once (cached)
        on_corrupt="skip",
    )
    images = load_source(spec)
    if images.skipped:
        _refuse_unreadable(data, [f"{path}: {reason}" for path, reason in images.skipped])
    if not images.class_names:
        raise HeadstartError(
            f"{data}: holds {len(images)} image file(s) but no class sub-folders; expected one sub-folder "
            f"per class (PATH/<class>/<image>), and unlabelled images in a folder of their own (--unlabelled)"
        )
    return images


def _refuse_unreadable(data: Path, problems: list[str]) -> None:
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise HeadstartError(
        f"{data}: {len(problems)} unreadable image file(s); expected JPEG, PNG, BMP, GIF, TIFF or WebP images "
        f"that decode (remove or replace them): " + "; ".join(problems[:MAX_LISTED]) + more
    )


def _check_classes(data: Path, images: ImageSet) -> None:
    counts = images.class_counts()
    if len(counts) < 2:
        raise HeadstartError(
            f"{data}: has {len(counts)} class sub-folder(s) ({', '.join(counts)}); expected at least two "
            f"(PATH/<class>/<image>), one per class to tell apart"
        )
    short = [f"{data / name}: {count} image(s)" for name, count in counts.items() if count < MIN_IMAGES_PER_CLASS]
    if short:
        raise HeadstartError(
            f"{data}: too few images for the splits (at least {MIN_IMAGES_PER_CLASS} per class: one for "
            f"test, one for validation and three for training): " + "; ".join(short)
        )


def survey(
    data: str | os.PathLike, unlabelled: str | os.PathLike | None = None, *, progress: bool | None = None
) -> tuple[Survey, DataCheck]:
    """List the images and run the data check, which reads every file once (or none: its
    fingerprints of unchanged files are cached), and take the sizes and colour from it; decoding as
    a run decodes is timed on :data:`DECODE_SAMPLE` files. A problem raises HeadstartError naming
    the path and what was expected, before anything is written."""
    root = Path(data)
    extra = None if unlabelled is None else Path(unlabelled)
    if extra is not None and not extra.is_dir():
        raise HeadstartError(f"{extra}: no such folder (expected a folder of unlabelled images, --unlabelled)")
    images = _list_images(root, extra)
    _check_classes(root, images)
    listed = SourceSpec(
        kind="folder", path=str(root), unlabelled=None if extra is None else str(extra), image_size=8, on_corrupt="skip"
    )
    _, checked = check_loaded(images, listed, progress=progress)  # copies stay in one split (headstart.data.datacheck)
    if checked.unreadable:
        _refuse_unreadable(root, [f"{path}: {reason}" for path, reason in checked.unreadable])
    sides = np.minimum(checked.widths, checked.heights)
    median_side = int(np.median(sides))
    small, imagenet = choose_sizes(median_side)
    stored = max(small, imagenet)
    store = images.store
    assert isinstance(store, FileStore), "a folder source is file-backed"
    spread = np.linspace(0, len(store.paths) - 1, min(DECODE_SAMPLE, len(store.paths))).round().astype(int)
    sample = [store.paths[i] for i in np.unique(spread)]
    workers = max(1, min(8, os.cpu_count() or 1))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda path: decode_file(path, stored, 3), sample))
    seconds = time.perf_counter() - started
    found = Survey(
        images=images,
        median_side=median_side,
        smallest_side=int(sides.min()),
        largest_side=int(sides.max()),
        colour=bool(checked.colours is not None and checked.colours.any()),
        decode_seconds=seconds / len(sample),
    )
    return found, checked


def _multiple_of_16(side: float) -> int:
    return int(16 * math.ceil(side / 16))


def imagenet_resolution() -> int:
    """The side the ImageNet model was trained and evaluated at (timm's pretrained config): 224 for
    EfficientNet-Lite0."""
    from headstart.zoo import resolve

    return int(resolve(IMAGENET_MODEL).input_size[-1])


def choose_sizes(median_side: int, resolution: int | None = None) -> tuple[int, int]:
    """Sides (pixels) of the small model and of the ImageNet model, from the images' median shorter side.

    * Photographs (median shorter side ≥ :data:`PHOTO_SIDE`): the ImageNet model at its own
      ``resolution`` (224 for EfficientNet-Lite0: its features were learned at that scale, and
      evaluating a network away from its training resolution costs accuracy, Touvron et al.,
      NeurIPS 2019); the small model at 64 px.
    * Smaller images stay small: the small model at the median side rounded up to a multiple of 16,
      within :data:`SMALL_SIDES` (25-px faces and 28-px digits: 32 px, the MNIST demo's size); the
      ImageNet model at the same rounding, at least :data:`IMAGENET_MIN_SIDE` (digits: 64 px, as the
      MNIST demo).
    """
    resolution = resolution or imagenet_resolution()
    rounded = _multiple_of_16(median_side)
    small = min(SMALL_SIDES[1], max(SMALL_SIDES[0], rounded))
    if median_side >= PHOTO_SIDE:
        return small, resolution
    return small, min(resolution, max(IMAGENET_MIN_SIDE, rounded))


__all__ = [
    "DECODE_SAMPLE",
    "IMAGENET_MIN_SIDE",
    "MIN_IMAGES_PER_CLASS",
    "PHOTO_SIDE",
    "SMALL_SIDES",
    "Survey",
    "choose_sizes",
    "imagenet_resolution",
    "survey",
]
