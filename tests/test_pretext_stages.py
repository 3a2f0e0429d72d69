"""Every registered pretext task trains as a stage of a run, then hands over to a task head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from headstart import pretext
from headstart.config import parse_run
from headstart.structure import run


@pytest.fixture(scope="module")
def colour_arrays(tmp_path_factory):
    """120 colour crops (32×32) of scikit-image photos, two classes: cat/coffee vs rocket/astronaut."""
    from skimage import data

    generator = np.random.default_rng(0)
    photos = [data.chelsea(), data.coffee(), data.rocket(), data.astronaut()]
    images, labels = [], []
    for index in range(120):
        photo = photos[index % 4]
        row = generator.integers(0, photo.shape[0] - 96)
        col = generator.integers(0, photo.shape[1] - 96)
        crop = photo[row : row + 96 : 3, col : col + 96 : 3]
        images.append(crop)
        labels.append(0 if index % 4 < 2 else 1)
    path = tmp_path_factory.mktemp("arrays") / "photos.npz"
    np.savez(path, images=np.stack(images), labels=np.array(labels))
    return path


def _spec(tmp_path, source, task, image_size=32, **options):
    return parse_run(
        {
            "seed": 0,
            "output": str(tmp_path / task),
            "progress": False,
            "data": {"source": source, "splits": {"test_fraction": 0.2, "val_fraction": 0.1}},
            "model": {"name": "test_resnet", "weights": None, "image_size": image_size},
            "stages": [
                {"name": "pretext", "data": "all", "pretext": {"name": task, **options}, "epochs": 1, "batch_size": 16},
                {"name": "task", "epochs": 8, "batch_size": 16, "optimizer": {"lr": 0.003}},
            ],
        }
    )


@pytest.mark.parametrize("task", sorted(set(pretext.names()) - {"custom"}))
def test_each_pretext_runs_as_a_stage_and_hands_over(tmp_path, colour_arrays, task):
    result = run(_spec(tmp_path, {"kind": "arrays", "path": str(colour_arrays)}, task))
    pretext_stage, task_stage = result.stages
    assert pretext_stage.handover.head == f"new {task} pretext head"
    assert task_stage.handover.head == "new task head"
    assert all(key.startswith("head.") for key in task_stage.handover.reinitialised)
    assert len(pretext_stage.step_losses) == pretext_stage.steps > 0  # the pretext stage ran every planned step
    # chelsea + coffee against rocket + astronaut crops: chance is 0.5, every handed-over backbone
    # learns the task (seed 0: 0.79 to 1.0 on the 24 test crops)
    assert result.test["accuracy"] >= 0.7


def test_a_registered_user_task_is_usable_by_name(tmp_path):
    from headstart.pretext import CustomTask, names, register, unregister

    factors = torch.tensor([0.5, 1.0, 1.5])

    def alter(images, generator):
        labels = torch.randint(0, 3, (len(images),), generator=generator, device=images.device)
        return (images * factors.to(images.device)[labels].view(-1, 1, 1, 1)).clamp(0, 1), labels

    @register
    class BrightnessFactor(CustomTask):
        """Predict which of three brightness factors was applied."""

        name = "brightness_factor"

        def __init__(self) -> None:
            super().__init__(
                alter=alter,
                head=lambda encoder, size: nn.Linear(encoder.num_features, 3),
                loss="cross_entropy",
                kind="classification",
            )

    try:
        result = run(_spec(tmp_path, {"kind": "digits"}, "brightness_factor", image_size=16))
    finally:
        unregister("brightness_factor")
    assert "brightness_factor" not in names()
    assert result.stages[0].handover.head == "new brightness_factor pretext head"
    assert result.stages[0].history[-1]["train_loss"] > 0
