"""Shared test fixtures: small real images, a fixed thread count, offline hub, the interrupt-and-resume
helper, EfficientNet-Lite0. Plain helpers are in ``helpers.py`` (``from helpers import ...``)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

import helpers

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory):
    """scikit-image's chelsea (cat), coffee (espresso) and rocket (missile) written to disk."""
    from skimage import data

    folder = tmp_path_factory.mktemp("samples")
    paths = {}
    for name, suffix in (("chelsea", ".jpg"), ("coffee", ".png"), ("rocket", ".jpg")):
        path = folder / f"{name}{suffix}"
        Image.fromarray(getattr(data, name)()).save(path)
        paths[name] = path
    return paths


@pytest.fixture
def seeded():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture
def interrupted_then_resumed():
    """A function: see :func:`helpers.interrupted_then_resumed` (Ctrl+C through ``callbacks=``, then resume)."""
    return helpers.interrupted_then_resumed


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with its real ImageNet weights (offline package), one per test module."""
    from headstart import zoo

    return zoo.load("EfficientNetLite0")
