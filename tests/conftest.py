"""Shared test fixtures: small real images, a fixed thread count, offline hub."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

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
