"""SimCLR, BYOL and DINO as pretext tasks: losses against direct formulas and lightly, the two
views, the momentum teacher, stages that train and resume on real digits, diagnostics."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from headstart import pretext
from headstart.checkpoint import load_backbone
from headstart.config import StageSpec, parse_run
from headstart.data import TaskData
from headstart.errors import HeadstartError
from headstart.pretext.diagnostics import COLLAPSED_SPREAD, diagnose
from headstart.pretext.distillation import followed_pair
from headstart.pretext.views import ViewOptions, is_grey
from headstart.stage import fit_stage
from headstart.stage.prepare import prepare_stage
from headstart.zoo import load
from helpers import digit_run


def _network(seed: int = 0):
    torch.manual_seed(seed)
    return load("test_resnet", weights=None, include_top=False, in_chans=1)


def _digits() -> TaskData:
    return TaskData.load({"kind": "digits"}, {"labels_per_class": 5, "seed": 0})


def _random(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ losses


def test_simclr_loss_is_nt_xent_and_lightlys():
    from lightly.loss import NTXentLoss

    task = pretext.get("simclr", temperature=0.3)
    z = _random(12, 8)
    first, second = z.chunk(2)
    n = 6
    normed = F.normalize(z, dim=1)
    similarity = normed @ normed.T / 0.3
    expected = 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = torch.cat([similarity[i, :i], similarity[i, i + 1 :]])
        expected += -(similarity[i, partner] - torch.logsumexp(others, 0))
    expected /= 2 * n
    assert task.loss(z, None).item() == pytest.approx(expected.item(), rel=1e-5)
    assert task.loss(z, None).item() == pytest.approx(NTXentLoss(temperature=0.3)(first, second).item(), rel=1e-6)


def test_byol_loss_is_two_minus_two_cosine_both_ways():
    task = pretext.get("byol")
    predictions, projections = _random(8, 5, seed=1), _random(8, 5, seed=2)
    p1, p2 = predictions.chunk(2)
    t1, t2 = projections.chunk(2)
    expected = 0.5 * ((2 - 2 * F.cosine_similarity(p1, t2)).mean() + (2 - 2 * F.cosine_similarity(p2, t1)).mean())
    assert task.loss(torch.stack([predictions, projections]), None).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dino_loss_is_cross_entropy_of_centred_sharpened_teacher_across_views():
    task = pretext.get(
        "dino",
        output_dim=16,
        hidden_dim=8,
        bottleneck_dim=4,
        teacher_temperature=0.05,
        student_temperature=0.2,
        center_momentum=0.5,
    )
    network = _network()
    head = task.build_head(network.encoder(16), (16, 16))
    center = _random(1, 16, seed=3)
    head.criterion.center.copy_(center)
    student, teacher = _random(6, 16, seed=4), _random(6, 16, seed=5)
    s1, s2 = student.chunk(2)
    t1, t2 = teacher.chunk(2)

    def cross(t, s):
        return -(F.softmax((t - center) / 0.05, dim=1) * F.log_softmax(s / 0.2, dim=1)).sum(1).mean()

    expected = 0.5 * (cross(t1, s2) + cross(t2, s1))
    head.train()
    assert task.loss(torch.cat([student, teacher]), None).item() == pytest.approx(expected.item(), rel=1e-5)
    moved = 0.5 * center + 0.5 * teacher.mean(0, keepdim=True)
    assert torch.allclose(head.criterion.center.reshape(1, -1), moved, atol=1e-6)
    head.eval()  # validation computes the loss without moving the centre
    before = head.criterion.center.clone()
    task.loss(torch.cat([student, teacher]), None)
    assert torch.equal(head.criterion.center, before)


def test_dino_local_crops_are_seen_by_the_student_alone_at_their_own_size():
    task = pretext.get("dino", output_dim=16, hidden_dim=8, bottleneck_dim=4, local_crops=3, local_size=0.5)
    network = _network()
    encoder = network.encoder(16)
    head = task.build_head(encoder, (16, 16))
    images = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    inputs, index = task.alter(images, torch.Generator().manual_seed(1))
    assert inputs.shape == (20, 1, 16, 16) and index.tolist() == list(range(4)) * 5
    sizes = []
    first_conv = next(module for module in network.backbone.modules() if isinstance(module, torch.nn.Conv2d))
    hook = first_conv.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape)))
    outputs = task.forward(encoder, head, inputs)
    hook.remove()
    # the student's backbone: 8 global views at 16 px, 12 local views at 8 px (the teacher is a copy)
    assert sorted((shape[0], shape[-1]) for shape in sizes) == [(8, 16), (12, 8)]
    assert outputs.shape == (20 + 8, 16)
    student, teacher = outputs[:20], outputs[20:]
    head.criterion.center.zero_()
    head.eval()
    t = [F.softmax(view / 0.04, dim=1) for view in teacher.chunk(2)]
    s = [F.log_softmax(view / 0.1, dim=1) for view in student.chunk(5)]
    terms = [-(t[i] * s[j]).sum(1).mean() for i in range(2) for j in range(5) if i != j]
    expected = sum(terms) / len(terms)  # each local view against both global ones, no view against itself
    assert task.loss(outputs, index).item() == pytest.approx(expected.item(), rel=1e-5)


def test_dino_teacher_temperature_warms_up_and_is_kept_in_the_head():
    task = pretext.get(
        "dino", output_dim=16, warmup_teacher_temperature=0.04, teacher_temperature=0.07, teacher_warmup=0.5
    )
    assert [task.temperature_at(p) for p in (0.0, 0.25, 0.5, 1.0)] == pytest.approx([0.04, 0.055, 0.07, 0.07])
    assert pretext.get("dino").temperature_at(0.0) == pretext.get("dino").teacher_temperature  # no warm-up
    encoder = _network().encoder(16)
    head = task.build_head(encoder, (16, 16))
    assert float(head.teacher_temperature_now) == pytest.approx(0.04)
    task.after_step(head, encoder, 0.25)
    assert float(head.teacher_temperature_now) == pytest.approx(0.055)
    assert "teacher_temperature_now" in head.state_dict()  # saved with the stage, restored on resume
    for bad, match in (
        ({"local_crops": -1}, "local_crops"),
        ({"local_crop_scale": (0.5, 0.2)}, "local_crop_scale"),
        ({"local_size": 0}, "local_size"),
        ({"teacher_warmup": 2}, "teacher_warmup"),
        ({"warmup_teacher_temperature": 0}, "warmup_teacher_temperature"),
        ({"local_crop_scale": 5}, r"local_crop_scale 5: expected two numbers"),
        ({"local_crop_scale": [0.1]}, r"local_crop_scale \[0.1\]: expected two numbers"),
        ({"crop_scale": "big"}, "crop_scale 'big': expected two numbers"),
        ({"rotate": "a"}, "rotate 'a': expected 0..180 degrees"),
    ):
        with pytest.raises(HeadstartError, match=match):
            pretext.get("dino", **bad)


# ------------------------------------------------------------------------------------------- views


def test_views_are_seeded_shaped_and_keep_grey_images_grey():
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    options = ViewOptions()
    first = options.view(images, torch.Generator().manual_seed(1))
    again = options.view(images, torch.Generator().manual_seed(1))
    other = options.view(images, torch.Generator().manual_seed(2))
    assert first.shape == images.shape and torch.equal(first, again) and not torch.equal(first, other)
    grey3 = images.expand(-1, 3, -1, -1).contiguous()
    assert is_grey(grey3) and not is_grey(torch.rand(2, 3, 4, 4))
    assert is_grey(options.view(grey3, torch.Generator().manual_seed(1)))  # no colour jitter, no colour
    colour = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    assert not is_grey(options.view(colour, torch.Generator().manual_seed(1)))
    task = pretext.get("simclr")
    inputs, partners = task.alter(images, torch.Generator().manual_seed(0))
    assert inputs.shape == (16, 1, 16, 16) and partners.tolist() == list(range(8, 16)) + list(range(8))


def test_views_can_turn_each_crop_by_a_random_angle():
    from headstart.pretext.views import random_resized_crop

    bar = torch.zeros(64, 1, 17, 17)
    bar[..., 8, 2:15] = 1.0  # a horizontal stroke through the centre
    whole = random_resized_crop(bar, (1.0, 1.0), torch.Generator().manual_seed(0), ratio=(1.0, 1.0))
    assert torch.allclose(whole, bar, atol=1e-5)  # no turn: the whole image back
    turned = random_resized_crop(bar, (1.0, 1.0), torch.Generator().manual_seed(0), ratio=(1.0, 1.0), degrees=90)
    column = turned[..., 2:15, 8].mean(dim=(1, 2))  # ink on the vertical line through the centre
    assert (column > 0.5).any() and (column < 0.2).any()  # some strokes turned upright, some barely
    assert (turned - bar).abs().amax(dim=(1, 2, 3)).gt(0.5).float().mean() > 0.5
    with pytest.raises(HeadstartError, match="rotate"):
        pretext.get("simclr", rotate=270)
    draws = ViewOptions(rotate=0).view(bar, torch.Generator().manual_seed(3))
    assert torch.equal(draws, ViewOptions().view(bar, torch.Generator().manual_seed(3)))  # no extra random draws


def test_grey_images_are_not_flipped_unless_asked():
    left = torch.zeros(64, 1, 16, 16)
    left[..., :8] = 1.0  # white on the left

    def left_heavy(view):
        return (view[..., :8].mean(dim=(1, 2, 3)) > view[..., 8:].mean(dim=(1, 2, 3))).float().mean().item()

    generator = torch.Generator().manual_seed(0)
    assert (
        left_heavy(ViewOptions(colour_jitter=0, crop_scale=(0.9, 1.0)).view(left, generator)) == 1.0
    )  # flip: auto, grey → off
    flipped = left_heavy(ViewOptions(colour_jitter=0, crop_scale=(0.9, 1.0), flip=True).view(left, generator))
    assert 0.25 < flipped < 0.75


def test_bad_options_name_the_option():
    with pytest.raises(HeadstartError, match="has no option 'temprature'.*did you mean 'temperature'"):
        pretext.get("simclr", temprature=0.1)
    with pytest.raises(HeadstartError, match="crop_scale"):
        pretext.get("byol", crop_scale=(0.9, 0.1))
    with pytest.raises(HeadstartError, match="momentum"):
        pretext.get("dino", momentum=1.5)
    with pytest.raises(HeadstartError, match="flip"):
        pretext.get("simclr", flip="sometimes")


# ---------------------------------------------------------------------------------- the teacher


@pytest.mark.parametrize("name", ["byol", "dino"])
def test_the_teacher_moves_only_by_its_momentum_update(name):
    task = pretext.get(name, momentum=0.9)
    network = _network()
    encoder = network.encoder(16)
    head = task.build_head(encoder, (16, 16))
    network.use_pretext_head(head, name)
    network.unfreeze("all")  # as a stage does: the teacher's flags flip back on
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    teacher_before = {key: value.clone() for key, value in head.teacher.state_dict().items()}
    inputs, targets = task.alter(torch.rand(8, 1, 16, 16), torch.Generator().manual_seed(0))
    task.loss(task.forward(encoder, head, inputs), targets).backward()
    optimizer.step()
    assert all(parameter.grad is None for parameter in head.teacher.parameters())
    assert all(
        torch.equal(head.teacher.state_dict()[key], value)
        for key, value in teacher_before.items()
        if value.is_floating_point() and "running" not in key
    )  # BatchNorm statistics follow batches
    student_module, teacher_module = followed_pair(encoder, head.teacher)
    assert teacher_module is not network.backbone and student_module is network.backbone
    student = dict(student_module.named_parameters())
    teacher = {key: value.clone() for key, value in teacher_module.named_parameters()}
    momentum = task.momentum_at(0.0)
    assert momentum == pytest.approx(0.9)
    task.after_step(head, encoder, 0.0)
    for key, value in teacher_module.named_parameters():
        assert torch.allclose(value, momentum * teacher[key] + (1 - momentum) * student[key], atol=1e-6)
    assert task.momentum_at(1.0) == pytest.approx(1.0) and 0.9 < task.momentum_at(0.5) < 1.0


# ------------------------------------------------------------------------------ stages, for real


@pytest.mark.parametrize("name", ["simclr", "byol", "dino"])
def test_a_stage_of_each_trains_on_real_digits_and_its_backbone_reads_back(tmp_path, name):
    data = _digits()
    network = _network()
    record = fit_stage(
        network,
        {
            "name": name,
            "data": "all",
            "pretext": {"name": name},
            "epochs": 2,
            "batch_size": 64,
            "optimizer": {"lr": 3e-3},
        },
        data,
        folder=tmp_path / name,
        image_size=16,
    )
    assert record.head.pretext == name and len(record.history) == 2
    metric = {"simclr": "val_contrastive_accuracy", "byol": "val_view_similarity", "dino": "val_teacher_entropy"}[name]
    assert metric in record.history[-1]
    if name in ("simclr", "byol"):  # spread over the sphere, not collapsed (about 1 when healthy, 0 collapsed)
        assert COLLAPSED_SPREAD < record.history[-1]["val_embedding_spread"] < 1.5, record.history[-1]
    if name == "simclr":  # each view finds its partner among the other 2N − 1 views far above chance
        chance = 1 / (2 * record.data.val_images - 1)
        assert record.history[-1][metric] > 4 * chance, (record.history[-1], chance)
    backbone = load_backbone(tmp_path / name)
    stored = load_file(tmp_path / name / "weights.safetensors")
    loaded = {f"backbone.{key}": value for key, value in backbone.backbone.state_dict().items()}
    assert all(torch.equal(stored[key], value) for key, value in loaded.items())
    initial = _network().backbone.state_dict()  # the same seed: the weights the stage started from
    changed = [
        key
        for key, value in backbone.backbone.state_dict().items()
        if key.endswith("conv1.weight") and not torch.equal(initial[key], value)
    ]
    assert changed, "the stage did not train the backbone"


def test_simclr_views_make_a_better_backbone_than_random_weights(tmp_path):
    """Five epochs of SimCLR on 1,797 real digits lift the k-NN probe of the backbone above random
    weights (the labelled 50 are the bank, the test split the queries)."""
    from headstart.probe import probe_network

    data = _digits()
    random_probe = probe_network(_network(), data, image_size=16, source="init")
    network = _network()
    fit_stage(
        network,
        {
            "name": "simclr",
            "data": "all",
            "pretext": {"name": "simclr"},
            "epochs": 5,
            "batch_size": 128,
            "optimizer": {"lr": 3e-3},
        },
        data,
        folder=tmp_path / "s",
        image_size=16,
    )
    trained = probe_network(network, data, image_size=16, source="simclr")
    assert trained.knn_accuracy > random_probe.knn_accuracy + 0.03, (random_probe.knn_accuracy, trained.knn_accuracy)


@pytest.mark.parametrize("name", ["simclr", "byol"])
def test_an_interrupted_stage_resumes_to_the_same_weights(tmp_path, name, interrupted_then_resumed):
    data = _digits()
    spec = {"name": name, "data": "all", "pretext": {"name": name}, "epochs": 3, "batch_size": 128}
    fit_stage(_network(), spec, data, folder=tmp_path / "whole", image_size=16)
    interrupted_then_resumed(
        lambda folder, resume, callbacks: fit_stage(
            _network(), spec, data, folder=folder, image_size=16, resume=resume, callbacks=callbacks
        ),
        tmp_path / "cut",
    )
    whole, cut = (
        load_file(tmp_path / "whole" / "weights.safetensors"),
        load_file(tmp_path / "cut" / "weights.safetensors"),
    )
    assert set(whole) == set(cut) and any(key.startswith("head.") for key in whole)
    assert all(torch.equal(whole[key], cut[key]) for key in whole)


# ------------------------------------------------------------------------------------- diagnostics


def test_diagnostics_say_when_a_pretext_is_still_learning_or_an_embedding_is_not():
    rotation = pretext.get("rotation")
    rising = [
        {"train_accuracy": value, "val_accuracy": value} for value in (0.5, 0.6, 0.66, 0.7, 0.73, 0.75, 0.77, 0.8)
    ]
    assert any(
        line.startswith("underfit: still learning") and "0.750 to 0.800" in line for line in diagnose(rising, rotation)
    )
    settled = rising[:-2] + [{"train_accuracy": 0.75, "val_accuracy": 0.75}] * 3
    assert not any("underfit" in line for line in diagnose(settled, rotation))
    high = [{"train_accuracy": v, "val_accuracy": v} for v in (0.5, 0.8, 0.9, 0.93, 0.96, 0.97)]
    assert not any("underfit" in line for line in diagnose(high, rotation))
    simclr = pretext.get("simclr")
    flat = [{"train_loss": 5.0, "val_loss": 5.0}, {"train_loss": 5.0, "val_loss": 5.01}]
    assert any("not learning" in line for line in diagnose(flat, simclr))
    assert diagnose([{"val_loss": 5.0}, {"val_loss": 4.5}], simclr) == []
    dino = pretext.get("dino", output_dim=64)
    assert (
        diagnose([{"val_loss": 4.0, "val_teacher_entropy": 2.0}, {"val_loss": 4.2, "val_teacher_entropy": 2.1}], dino)
        == []
    )  # a loss against a moving teacher may rise
    assert "one prototype" in diagnose([{"val_loss": 4.0, "val_teacher_entropy": 0.01}], dino)[0]
    assert "uniform" in diagnose([{"val_loss": 4.0, "val_teacher_entropy": 4.15}], dino)[0]


@pytest.mark.parametrize("name", ["simclr", "byol", "dino"])
def test_a_batch_of_one_image_is_refused_when_the_run_file_is_read(tmp_path, name):
    stages = [{"name": "pre", "data": "all", "pretext": {"name": name}, "batch_size": 1}, {"name": "task"}]
    with pytest.raises(HeadstartError, match=rf"stage 'pre': pretext {name} needs batch_size >= 2, got 1"):
        parse_run(digit_run(tmp_path / "run", stages))
    with pytest.raises(HeadstartError, match=rf"pretext {name} needs batch_size >= 2, got 1"):
        fit_stage(_network(), stages[0], _digits(), folder=tmp_path / "stage", image_size=16)
    assert not (tmp_path / "stage").exists() and not (tmp_path / "run").exists()
    stages[0]["batch_size"] = 2
    parse_run(digit_run(tmp_path / "run", stages))
    parse_run(digit_run(tmp_path / "run", [{**stages[0], "pretext": {"name": "rotation"}, "batch_size": 1}]))


@pytest.mark.parametrize(
    "name, useful, source",
    [("simclr", 32, "Chen et al. 2020"), ("byol", 16, "Grill et al. 2020"), ("dino", 16, "Caron et al. 2021")],
)
def test_a_batch_below_the_useful_size_is_a_warning_when_the_stage_is_prepared(caplog, name, useful, source):
    task = pretext.get(name)
    assert task.check_batch_size(useful) is None and pretext.get("rotation").check_batch_size(1) is None
    warning = task.check_batch_size(useful - 1, "stage 'pre'")
    assert warning is not None and warning.startswith(f"stage 'pre': batch_size {useful - 1} is below {useful}")
    assert source in warning
    spec = StageSpec.model_validate({"name": "pre", "data": "all", "pretext": {"name": name}, "batch_size": 2})
    with caplog.at_level(logging.WARNING, logger="headstart"):
        prepare_stage(_network(), spec, _digits(), index=0, seed=0, image_size=16)
    assert [record.getMessage() for record in caplog.records if "is below" in record.getMessage()] == [
        task.check_batch_size(2, "stage 'pre'")
    ]


def test_view_options_are_checked_when_made_directly():
    with pytest.raises(HeadstartError, match="views: blur 2"):
        ViewOptions(blur=2)
