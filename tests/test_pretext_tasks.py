"""Every registered pretext task through the same checks (timm's test_models pattern).

Shapes of alter / forward / loss on a tiny encoder and on timm's test backbones, seeded
reproducibility, device and dtype, decoded strings, chance levels (Karpathy: the loss at init is
log K), the size the encoder sees, grey inputs, and a short training run in which the loss falls.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import headstart.pretext as pretext
from headstart.errors import HeadstartError
from headstart.pretext import HeadSpec, SimpleEncoder

SIZE = 32


def upside_down(images, generator):
    """A user's alteration: flip half the images vertically, label 1 when flipped."""
    labels = torch.randint(0, 2, (images.shape[0],), generator=generator, device=images.device)
    return torch.where(labels.view(-1, 1, 1, 1).bool(), images.flip(-2), images), labels


OPTIONS = {
    "jigsaw": {"permutations": 10},
    "masked_patches": {"patch_size": 8},
    "custom": {"alter": upside_down, "head": HeadSpec(outputs=2, kind="classification")},
}
DECODED = {
    "rotation": r"rot=(0|90|180|270)",
    "noise_presence": r"(clean|noisy)",
    "noise_level": r"σ≈-?\d+\.\d\d",
    "color_shift": r"brightness=[+-]\d+\.\d\d hue=[+-]\d+\.\d\d",
    "colorization": r"rgb≈\(\d\.\d\d,\d\.\d\d,\d\.\d\d\)",
    "context": r"patch=(top-left|top|top-right|left|right|bottom-left|bottom|bottom-right)",
    "jigsaw": r"perm=\d",
    "masked_patches": r"mean=\d\.\d\d",
    "custom": r"class=[01]",
    "simclr": r"nearest=(pair|\d+)",
    "byol": r"cos=-?\d\.\d\d",
    "dino": r"prototype=\d+",
}
DETERMINISTIC = {"colorization"}
"""Tasks whose alteration draws no random numbers (grey input, colour target)."""
ALL = pretext.names()


def make_task(name):
    return pretext.get(name, **OPTIONS.get(name, {}))


def tiny_encoder() -> SimpleEncoder:
    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
    )  # fmt: skip
    return SimpleEncoder(backbone, 32, 32, in_channels=3, reduction=4)


def generator(seed=0, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.fixture(scope="module")
def structured_images():
    """64 crops of scikit-image photographs blended with a fixed grey ramp, 32×32, in 0..1.

    The photographs give colour and texture; the ramp (brightness rising right and, three times
    faster, down) gives every position a brightness, so position tasks (rotation, context, jigsaw)
    can be learnt by a tiny network in a hundred steps.
    """
    from skimage import data

    rng = np.random.default_rng(0)
    photographs = []
    for name in ("astronaut", "coffee", "chelsea"):
        image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float()[None] / 255
        photographs.append(F.interpolate(image, scale_factor=0.25, mode="area")[0])
    crops = []
    for index in range(64):
        image = photographs[index % 3]
        top = rng.integers(0, image.shape[1] - SIZE)
        left = rng.integers(0, image.shape[2] - SIZE)
        crops.append(image[:, top : top + SIZE, left : left + SIZE])
    ramp = torch.linspace(0, 1, SIZE)
    grey = ((ramp.view(1, -1) + 3 * ramp.view(-1, 1)) / 4).expand(3, SIZE, SIZE)
    return 0.3 * torch.stack(crops) + 0.7 * grey


@pytest.mark.parametrize("name", ALL)
def test_alter_forward_loss_shapes_and_gradients(name, structured_images):
    task = make_task(name)
    encoder = tiny_encoder()
    head = task.build_head(encoder, (SIZE, SIZE))
    images = structured_images[:6]
    inputs, targets = task.alter(images, generator())
    assert inputs.dtype == images.dtype
    batch = 24 if getattr(task, "all_rotations", False) else 12 if task.kind == "embedding" else 6
    assert targets.shape[0] == batch and inputs.shape[0] == batch
    outputs = task.forward(encoder, head, inputs)
    if task.kind == "embedding":  # two views per image; with a teacher, BYOL stacks student and teacher
        # outputs, DINO concatenates every student view and then the teacher's two global views
        assert outputs.shape[0] in (batch, 2 * batch) or outputs.shape[:2] == (2, batch)
    else:
        assert outputs.shape[0] == batch
    if task.kind == "embedding":
        pass  # their losses are checked against direct formulas in test_pretext_ssl.py
    elif task.kind == "classification":
        assert outputs.shape == (batch, task.num_outputs) and targets.dtype == torch.long
    elif task.kind == "regression":
        assert outputs.shape == targets.shape
    else:
        assert outputs.shape[-2:] == images.shape[-2:]
    loss = task.loss(outputs, targets)
    assert loss.dim() == 0
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters())
    assert sum(float(p.grad.abs().sum()) for p in encoder.parameters()) > 0  # a real gradient (NaN fails too)
    # an embedding task's headline metric is the stage's val_loss; its metrics are extra measures
    assert set(task.metrics(outputs, targets)) >= ({task.metric} if task.kind != "embedding" else set())


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_batch_other_seed_other_batch(name, structured_images):
    task = make_task(name)
    images = structured_images[:8]
    first = task.alter(images, generator(3))
    again = task.alter(images, generator(3))
    other = task.alter(images, generator(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    same = torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])
    assert same == (name in DETERMINISTIC)


@pytest.mark.parametrize("name", ALL)
def test_alter_leaves_input_untouched_and_stays_on_device(name, structured_images):
    task = make_task(name)
    images = structured_images[:4].clone()
    inputs, targets = task.alter(images, generator())
    assert torch.equal(images, structured_images[:4])
    assert inputs.device == images.device and targets.device == images.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL)
def test_alter_on_cuda_stays_on_cuda(name, structured_images):
    task = make_task(name)
    images = structured_images[:4].cuda()
    inputs, targets = task.alter(images, generator(0, "cuda"))
    assert inputs.is_cuda and targets.is_cuda
    again = task.alter(images, generator(0, "cuda"))
    assert torch.equal(inputs, again[0])
    encoder = tiny_encoder().cuda()
    outputs = task.forward(encoder, task.build_head(encoder, (SIZE, SIZE)).cuda(), inputs)
    assert outputs.is_cuda and torch.isfinite(task.loss(outputs, targets))
    with pytest.raises(HeadstartError, match="generator"):
        task.alter(images, generator(0, "cpu"))


@pytest.mark.parametrize("name", ALL)
def test_decode_gives_one_readable_label_per_sample(name, structured_images):
    task = make_task(name)
    encoder = tiny_encoder()
    head = task.build_head(encoder, (SIZE, SIZE))
    inputs, _ = task.alter(structured_images[:5], generator())
    with torch.no_grad():
        labels = task.decode(task.forward(encoder, head, inputs))
    assert len(labels) == inputs.shape[0]
    assert all(re.fullmatch(DECODED[name], label) for label in labels), labels


@pytest.mark.parametrize("name", ALL)
def test_chance_level_matches_an_untrained_network(name, structured_images):
    """Classification: 1/K and an initial loss near log K. Regression: mae of predicting the mean."""
    task = make_task(name)
    chance = task.chance_level()
    if task.kind == "classification":
        assert chance["accuracy"] == pytest.approx(1 / task.num_outputs)
        torch.manual_seed(0)
        encoder = tiny_encoder()
        head = task.build_head(encoder, (SIZE, SIZE))
        inputs, targets = task.alter(structured_images, generator())
        with torch.no_grad():
            loss = task.loss(task.forward(encoder, head, inputs), targets).item()
        assert abs(loss - math.log(task.num_outputs)) < 0.35 * math.log(task.num_outputs)
    elif task.kind == "regression":
        images = structured_images.repeat(16, 1, 1, 1)
        _, targets = task.alter(images, generator())
        mean_prediction = (targets - targets.mean(dim=0)).abs().mean().item()
        assert chance["mae"] == pytest.approx(mean_prediction, rel=0.1)
    else:
        assert chance == {}


@pytest.mark.parametrize("name", ALL)
def test_encoder_sees_input_size(name):
    """``input_size`` tells the size the backbone receives (smaller patches for context and jigsaw)."""
    task = make_task(name)
    seen = []

    class Recording(nn.Module):
        def forward(self, images):
            seen.append(tuple(images.shape[-2:]))
            return F.avg_pool2d(images, 2)

    encoder = SimpleEncoder(Recording(), 3, 3)
    image_size = (32, 40)
    head = task.build_head(encoder, image_size)
    inputs, _ = task.alter(torch.rand(2, 3, *image_size), generator())
    task.forward(encoder, head, inputs)
    assert seen and set(seen) == {task.input_size(image_size)}


@pytest.mark.parametrize("name", ALL)
def test_grey_images_work_except_colorization(name, structured_images):
    task = make_task(name)
    grey = structured_images[:4].mean(dim=1, keepdim=True)
    if name == "colorization":
        with pytest.raises(HeadstartError, match="colour"):
            task.alter(grey, generator())
        return
    encoder = tiny_encoder()
    head = task.build_head(encoder, (SIZE, SIZE))
    inputs, targets = task.alter(grey, generator())
    assert inputs.shape[-3] == 1 if inputs.dim() == 4 else inputs.shape[2] == 1
    task.loss(task.forward(encoder, head, inputs), targets).backward()
    assert sum(float(p.grad.abs().sum()) for p in encoder.parameters()) > 0  # grey images teach the encoder


@pytest.mark.parametrize("model_name", ["test_resnet", "test_efficientnet"])
@pytest.mark.parametrize("name", ALL)
def test_one_step_on_timm_test_backbones(name, model_name, structured_images):
    torch.manual_seed(0)
    backbone = timm.create_model(model_name, num_classes=0, global_pool="")
    encoder = SimpleEncoder(backbone, backbone.num_features, backbone.num_features, in_channels=3)
    task = make_task(name)
    head = task.build_head(encoder, (SIZE, SIZE))
    optimizer = torch.optim.SGD([*encoder.parameters(), *head.parameters()], lr=0.01)
    inputs, targets = task.alter(structured_images[:4], generator())
    before = [parameter.detach().clone() for parameter in backbone.parameters()]
    loss = task.loss(task.forward(encoder, head, inputs), targets)
    loss.backward()
    optimizer.step()
    moved = [not torch.equal(old, new) for old, new in zip(before, backbone.parameters(), strict=True)]
    assert any(moved) and all(torch.isfinite(parameter).all() for parameter in backbone.parameters())


RUN = {"context": (150, 32), "simclr": (150, 32)}
"""(steps, batch) of the short run; context, an 8-way question about 7-pixel patches, needs more."""


@pytest.mark.parametrize("name", ALL)
def test_short_training_run_lowers_the_loss(name, structured_images):
    """Forty Adam steps (context: 150): the mean of the last five losses < 0.7 × the first five.

    Regression must also beat 0.7 × the mean squared error of always predicting the mean, so a
    head that only learns the average target does not pass.
    """
    torch.manual_seed(0)
    task = make_task(name)
    if task.kind == "embedding" and not getattr(task, "loss_should_fall", False):
        pytest.skip("a loss against a moving teacher need not fall (test_pretext_ssl.py checks the teacher)")
    encoder = tiny_encoder()
    head = task.build_head(encoder, (SIZE, SIZE))
    optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    draw = generator(1)
    losses = []
    steps, size = RUN.get(name, (40, 16))
    for _ in range(steps):
        batch = structured_images[torch.randint(0, len(structured_images), (size,), generator=draw)]
        inputs, targets = task.alter(batch, draw)
        loss = task.loss(task.forward(encoder, head, inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    if task.kind == "embedding":
        # NT-Xent starts at log(2N − 1) (4.14 at batch 32) and its floor with colour-jittered views of
        # photographs is far above 0: a fall of 0.4 nats is learning (random weights do not move it)
        assert last < first - 0.4, (first, last)
        return
    assert last < 0.7 * first, (first, last)
    if task.kind == "regression":
        _, targets = task.alter(structured_images.repeat(8, 1, 1, 1), generator(2))
        assert last < 0.7 * targets.var(dim=0, unbiased=False).mean().item()
