"""Datasets from numpy arrays: layouts (NHW, NHWC, NCHW), pixel ranges and labels checked.

The one way images held in memory become an :class:`~headstart.data.dataset.ImageSet`: the
built-in datasets (:mod:`headstart.data.builtin`), ``.npz`` files and a user's own arrays.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from headstart.data.dataset import ArrayStore, ImageSet, convert_channels, resize_tensor
from headstart.errors import HeadstartError

MAX_LISTED = 10


def _layout(shape: tuple[int, ...], layout: str) -> str:
    if layout != "auto":
        expected = {"NHW": 3, "NHWC": 4, "NCHW": 4}.get(layout)
        if expected is None:
            raise HeadstartError(f"layout {layout!r} is not known; expected 'auto', 'NHW', 'NHWC' or 'NCHW'")
        if len(shape) != expected:
            raise HeadstartError(f"images of shape {shape} do not match layout {layout!r}")
        return layout
    if len(shape) == 3:
        return "NHW"
    if len(shape) != 4:
        raise HeadstartError(f"images of shape {shape}; expected NHW, NHWC or NCHW (3 or 4 dimensions)")
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first and last:
        raise HeadstartError(f"images of shape {shape} could be NHWC or NCHW; pass layout='NHWC' or layout='NCHW'")
    if first:
        return "NCHW"
    if last:
        return "NHWC"
    raise HeadstartError(f"images of shape {shape} have no channel axis of size 1 or 3; expected NHW, NHWC or NCHW")


def _pixels(images: np.ndarray, name: str) -> torch.Tensor:
    """uint8 0..255 or float 0..1 numpy pixels → uint8 or float32 tensor, checking the range."""
    if images.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype == bool:
        return torch.from_numpy(np.ascontiguousarray(images.astype(np.float32)))
    if np.issubdtype(images.dtype, np.integer):
        low, high = (int(images.min()), int(images.max())) if images.size else (0, 0)
        if low < 0 or high > 255:
            raise HeadstartError(f"{name}: integer pixels span {low}..{high}; expected 0..255")
        return torch.from_numpy(images.astype(np.uint8))
    if np.issubdtype(images.dtype, np.floating):
        if images.size and not np.isfinite(images).all():
            raise HeadstartError(f"{name}: pixels include NaN or infinity; expected finite values in 0..1")
        lowest, highest = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if lowest < 0.0 or highest > 1.0:
            hint = " (divide 0..255 pixels by 255)" if highest <= 255.0 and lowest >= 0.0 else ""
            raise HeadstartError(f"{name}: float pixels span {lowest:g}..{highest:g}; expected 0..1{hint}")
        return torch.from_numpy(images.astype(np.float32))
    raise HeadstartError(f"{name}: pixels of dtype {images.dtype}; expected uint8 0..255 or float 0..1")


def _labels(
    labels: np.ndarray | None, count: int, class_names: list[str] | None, name: str
) -> tuple[np.ndarray, list[str]]:
    """Integer or string labels → int64 indices and class names."""
    if labels is None:
        return np.full(count, -1, dtype=np.int64), list(class_names or [])
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != count:
        raise HeadstartError(f"{name}: labels of shape {labels.shape} for {count} images; expected ({count},)")
    if labels.dtype.kind in "USO":
        text = labels.astype(str)
        names = list(class_names) if class_names is not None else sorted(set(text.tolist()))
        lookup = {n: k for k, n in enumerate(names)}
        unknown = sorted(set(text.tolist()) - set(lookup))
        if unknown:
            raise HeadstartError(f"{name}: labels {unknown[:MAX_LISTED]} are not in class_names {names}")
        return np.array([lookup[t] for t in text.tolist()], dtype=np.int64), names
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise HeadstartError(f"{name}: labels must be whole numbers; got non-integer values")
    if labels.dtype.kind not in "iuf":
        raise HeadstartError(f"{name}: labels of dtype {labels.dtype}; expected integers or strings")
    indices = labels.astype(np.int64)
    if indices.size and indices.min() < -1:
        raise HeadstartError(f"{name}: label {int(indices.min())} is negative; expected -1 (unlabelled) or 0 and up")
    if class_names is None:
        top = int(indices.max()) + 1 if indices.size else 0
        class_names = [str(k) for k in range(top)]
    return indices, list(class_names)


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray | None,
    class_names: list[str] | None = None,
    name: str = "arrays",
    *,
    layout: Literal["auto", "NHW", "NHWC", "NCHW"] = "auto",
    image_size: int | None = None,
    channels: Literal[1, 3] | None = None,
    resize: Literal["crop", "stretch"] = "crop",
) -> ImageSet:
    """An in-memory ImageSet from numpy arrays.

    ``images``: NHW (grey), NHWC or NCHW with 1 or 3 channels; uint8 0..255 (or any integer type
    within 0..255) or float 0..1. ``layout="auto"`` takes the axis of size 1 or 3 as channels and
    refuses shapes where both axes 1 and 3 qualify. ``labels``: integers (-1 = unlabelled), or
    strings naming classes; None for an unlabelled set. ``class_names`` defaults to
    ``"0".."max label"`` for integers and to the sorted distinct strings otherwise. Integer labels
    beyond ``class_names`` are kept, for the dataset check to report. ``image_size`` and
    ``channels`` resize and convert (see :mod:`headstart.data.dataset`).
    """
    images = np.asarray(images)
    order = _layout(tuple(images.shape), layout)
    if order == "NHW":
        images = images[:, None, :, :]
    elif order == "NHWC":
        images = images.transpose(0, 3, 1, 2)
    pixels = _pixels(images, name)
    label_indices, names = _labels(labels, pixels.shape[0], class_names, name)
    if image_size is not None or (channels is not None and channels != pixels.shape[1]):
        converted = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels
        if channels is not None:
            converted = convert_channels(converted, channels)
        if image_size is not None:
            converted = resize_tensor(converted, image_size, resize)
        pixels = converted.float()
    return ImageSet(ArrayStore(pixels), label_indices, names, name)
