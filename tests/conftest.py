"""Shared test fixtures: small real images, a fixed thread count, offline hub."""

from __future__ import annotations

import os
import signal

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


@pytest.fixture
def interrupted_then_resumed():
    """A function: see :func:`_interrupted_then_resumed`."""
    return _interrupted_then_resumed


def _interrupted_then_resumed(fit, folder):
    """Run ``fit(folder, resume=False)`` with Ctrl+C arriving as the second epoch starts (it must raise
    Interrupted), then ``fit(folder, resume=True)``; return what the resumed call returns."""
    from lightning.pytorch.callbacks import Callback

    import headstart.stage as stage_module
    from headstart.stage import Interrupted

    class CtrlCAtSecondEpoch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    original = stage_module._trainer
    stage_module._trainer = lambda options, stage, where, callbacks, *rest: original(
        options, stage, where, [*callbacks, CtrlCAtSecondEpoch()], *rest)
    try:
        with pytest.raises(Interrupted):
            fit(folder, resume=False)
    finally:
        stage_module._trainer = original
    return fit(folder, resume=True)
