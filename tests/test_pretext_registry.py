"""Finding tasks by name, checking options, registering and composing custom tasks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext import CustomTask, HeadSpec, PretextTask, SimpleEncoder


def test_the_chapter_tasks_jigsaw_and_joint_embedding_tasks_are_registered():
    assert pretext.names() == [
        "byol", "color_shift", "colorization", "context", "custom", "dino", "jigsaw",
        "masked_patches", "noise_level", "noise_presence", "rotation", "simclr",
    ]  # fmt: skip
    task = pretext.get("rotation", all_rotations=True)
    assert isinstance(task, pretext.RotationTask) and task.all_rotations and task.angles == (0, 90, 180, 270)


def test_unknown_name_lists_known_names_and_suggests_one():
    with pytest.raises(HeadstartError) as error:
        pretext.get("rotations")
    message = str(error.value)
    assert "'rotations'" in message and "did you mean 'rotation'" in message and "jigsaw" in message


def test_unknown_option_is_named_with_a_suggestion():
    with pytest.raises(HeadstartError, match="no option 'mask_ration'.*did you mean 'mask_ratio'"):
        pretext.get("masked_patches", mask_ration=0.6)


def test_bad_values_are_refused():
    with pytest.raises(HeadstartError, match="mask_ratio"):
        pretext.get("masked_patches", mask_ratio=1.5)
    with pytest.raises(HeadstartError, match="custom"):
        pretext.get("custom")  # no alter function given


@dataclass(kw_only=True)
class Brightest(PretextTask):
    """Which of the three channels is brightest (a user's task)."""

    name: ClassVar[str] = "brightest_channel"
    kind: ClassVar[str] = "classification"

    @property
    def num_outputs(self) -> int:
        return 3

    def alter(self, images, generator):
        return images, images.mean(dim=(2, 3)).argmax(dim=1)

    def build_head(self, encoder, image_size):
        return nn.Linear(encoder.num_features, 3)

    def decode(self, outputs):
        return [("red", "green", "blue")[i] for i in outputs.argmax(1).tolist()]


def test_register_a_user_task_and_get_it_by_name():
    with pretext.registered(Brightest) as registered:
        assert registered is Brightest
        assert "brightest_channel" in pretext.names()
        task = pretext.get("brightest_channel")
        assert isinstance(task, Brightest)
        assert task.chance_level() == {"accuracy": pytest.approx(1 / 3)}
        with pytest.raises(HeadstartError, match="no option"):
            pretext.get("brightest_channel", colour="red")

        @dataclass(kw_only=True)
        class Impostor(Brightest):
            pass

        with pytest.raises(HeadstartError, match="taken"):
            pretext.register(Impostor)
        with pytest.raises(HeadstartError, match="not a PretextTask"):
            pretext.register(dict)
    assert "brightest_channel" not in pretext.names()
    with pytest.raises(HeadstartError, match="unknown pretext task 'brightest_channel'"):
        pretext.get("brightest_channel")


def test_register_is_a_decorator_and_unregister_undoes_it():
    assert pretext.register(Brightest) is Brightest
    try:
        assert pretext.register(Brightest) is Brightest  # the same class again: no conflict
        assert isinstance(pretext.get("brightest_channel"), Brightest)
    finally:
        assert pretext.unregister("brightest_channel") is Brightest
    assert "brightest_channel" not in pretext.names()
    with pytest.raises(HeadstartError, match="no task named 'brightest_channel'"):
        pretext.unregister("brightest_channel")


def test_registered_cleans_up_after_an_error_and_keeps_earlier_registrations():
    with pytest.raises(RuntimeError, match="boom"), pretext.registered(Brightest):
        assert "brightest_channel" in pretext.names()
        raise RuntimeError("boom")
    assert "brightest_channel" not in pretext.names()
    with pretext.registered(pretext.RotationTask):  # registered before the block: stays registered
        pass
    assert isinstance(pretext.get("rotation"), pretext.RotationTask)


def test_custom_task_runs_a_user_alteration_end_to_end():
    def upside_down(images, generator):
        labels = torch.randint(0, 2, (images.shape[0],), generator=generator, device=images.device)
        return torch.where(labels.view(-1, 1, 1, 1).bool(), images.flip(-2), images), labels

    task = pretext.get(
        "custom",
        alter=upside_down,
        head=HeadSpec(outputs=2),
        decode=lambda outputs: ["flipped" if i else "upright" for i in outputs.argmax(1).tolist()],
    )
    encoder = SimpleEncoder(nn.Conv2d(3, 4, 3), 4, 4)
    inputs, labels = task.alter(torch.rand(6, 3, 8, 8), torch.Generator().manual_seed(0))
    outputs = task.forward(encoder, task.build_head(encoder, (8, 8)), inputs)
    assert outputs.shape == (6, 2) and task.kind == "classification"
    assert set(task.decode(outputs)) <= {"flipped", "upright"}
    assert task.chance_level() == {"accuracy": 0.5}


def test_custom_task_with_a_head_function_and_a_loss_function():
    def smooth(images, generator):
        return images, images.mean(dim=(1, 2, 3))[:, None]

    task = CustomTask(
        alter=smooth,
        head=lambda encoder, size: nn.Sequential(nn.Linear(encoder.num_features, 1)),
        loss=lambda outputs, targets: (outputs - targets).abs().mean(),
        kind="regression",
    )
    encoder = SimpleEncoder(nn.Conv2d(3, 4, 3), 4, 4)
    inputs, targets = task.alter(torch.rand(3, 3, 8, 8), torch.Generator())
    outputs = task.forward(encoder, task.build_head(encoder, (8, 8)), inputs)
    absolute, squared = (outputs - targets).abs().mean().item(), (outputs - targets).pow(2).mean().item()
    assert absolute != pytest.approx(squared)  # the two losses differ, so the check below means something
    assert task.loss(outputs, targets).item() == pytest.approx(absolute)
    assert task.decode(torch.tensor([[0.5]])) == ["value=0.50"]
    with pytest.raises(HeadstartError, match="kind"):
        CustomTask(alter=smooth, head=lambda encoder, size: None, loss=lambda o, t: o.sum())
    with pytest.raises(HeadstartError, match="unknown loss"):
        CustomTask(alter=smooth, head=HeadSpec(1, "regression"), loss="huber")


def test_custom_reconstruction_head_is_a_decoder():
    task = CustomTask(alter=lambda images, generator: (images, images), head=HeadSpec(3, "reconstruction"), loss="mse")
    encoder = SimpleEncoder(nn.Conv2d(3, 4, 3, stride=2, padding=1), 4, 4, reduction=2)
    outputs = task.forward(encoder, task.build_head(encoder, (8, 8)), torch.rand(2, 3, 8, 8))
    assert outputs.shape == (2, 3, 8, 8) and task.metrics(outputs, outputs)["mse"] == 0
