"""The semi-supervised task stage (FixMatch): its loss, its unlabelled batches, its strong
augmentation, the threshold's effect on real digits, resuming, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from headstart.config import StageSpec, parse_run
from headstart.data import TaskData
from headstart.engine.augment import STRONG_OPERATIONS, border_mean, cutout, strong_augment
from headstart.engine.batches import EpochBatches, StreamBatches
from headstart.engine.fixmatch import ALIGNMENT_MOMENTUM, DistributionAlignment, pseudo_labels, unlabelled_loss
from headstart.errors import HeadstartError
from headstart.stage import fit_stage
from headstart.zoo import load


def _network(seed: int = 0):
    torch.manual_seed(seed)
    return load("test_resnet", weights=None, include_top=False, in_chans=1)


def _digits(labels_per_class: int = 5) -> TaskData:
    return TaskData.load({"kind": "digits"}, {"labels_per_class": labels_per_class, "seed": 0})


def _semi_stage(threshold: float | None = None, epochs: int = 3, steps_per_epoch: int | None = 5, **extra) -> StageSpec:
    semi = {"ratio": 4, **({} if threshold is None else {"threshold": threshold}), **extra}
    return StageSpec(
        name="fixmatch",
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=10,
        augment="crop",
        optimizer={"lr": 3e-3},
        semi_supervised=semi,
    )


# ------------------------------------------------------------------------------------------ the loss


def test_unlabelled_loss_is_the_masked_cross_entropy_of_the_paper():
    weak = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.1, 0.0], [0.0, 0.0, 9.0], [0.0, 4.5, 0.0]])
    strong = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    pseudo = pseudo_labels(weak, threshold=0.95)
    confidence = weak.softmax(1).max(1).values
    assert torch.equal(pseudo.mask, confidence >= 0.95)
    assert pseudo.mask.tolist() == [True, False, True, True]
    assert pseudo.labels.tolist() == [0, 0, 2, 1]
    expected = sum(-F.log_softmax(strong[b], 0)[pseudo.labels[b]] for b in (0, 2, 3)) / 4  # over all μB images
    assert unlabelled_loss(strong, pseudo).item() == pytest.approx(expected.item(), rel=1e-6)
    assert pseudo.used.item() == pytest.approx(0.75)


def test_the_threshold_decides_which_images_teach_and_no_gradient_reaches_the_weak_copy():
    weak = torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 0.5]], requires_grad=True)
    strong = torch.zeros(3, 2, requires_grad=True)
    loose, strict = pseudo_labels(weak, 0.5), pseudo_labels(weak, 0.95)
    assert loose.used.item() == 1.0 and strict.used.item() == pytest.approx(1 / 3)
    unlabelled_loss(strong, strict).backward()
    assert weak.grad is None
    # only the confident first image pulls its strong copy towards class 0
    assert strong.grad[0, 0] < 0 < strong.grad[0, 1] and torch.all(strong.grad[1:] == 0)
    assert unlabelled_loss(torch.zeros(3, 2), pseudo_labels(weak.detach(), 1.0)).item() == 0.0


# ------------------------------------------------------------------------------ unlabelled batches


def test_distribution_alignment_scales_by_the_labelled_over_the_running_marginal():
    """ReMixMatch's q ← normalise(q · p(y) / p̃(y)); p̃ starts at the first batch's mean, then averages."""
    alignment = DistributionAlignment(torch.tensor([1.0, 1.0, 2.0]))  # labelled counts: p(y) = 1/4, 1/4, 1/2
    first = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    aligned = alignment(first)
    running = first.mean(0)
    expected = first * torch.tensor([0.25, 0.25, 0.5]) / running
    assert torch.allclose(aligned, expected / expected.sum(1, keepdim=True), atol=1e-5)
    assert torch.allclose(alignment.running, running) and int(alignment.steps) == 1
    second = torch.tensor([[0.1, 0.1, 0.8]])
    alignment(second)
    assert torch.allclose(alignment.running, ALIGNMENT_MOMENTUM * running + (1 - ALIGNMENT_MOMENTUM) * second[0])


def test_alignment_spreads_pseudo_labels_that_crowd_into_one_class():
    """A network that favours class 0 everywhere: plain pseudo-labels are all class 0; aligned ones
    follow the second-best guesses over a uniform labelled marginal, and more pass the threshold."""
    torch.manual_seed(0)
    logits = torch.randn(200, 4) + torch.tensor([3.0, 0.0, 0.0, 0.0])
    plain = pseudo_labels(logits, 0.5)
    aligned = pseudo_labels(logits, 0.5, DistributionAlignment(torch.ones(4)))
    assert torch.bincount(plain.labels, minlength=4)[0] > 180
    counts = torch.bincount(aligned.labels, minlength=4)
    assert counts.min() > 25, counts
    with pytest.raises(ValueError, match="two or more classes"):
        DistributionAlignment(torch.tensor([3.0]))


def test_unlabelled_batches_are_fixed_by_the_seed_and_the_step():
    whole = list(StreamBatches(23, 5, seed=3, start_step=0, steps=12))
    later = list(StreamBatches(23, 5, seed=3, start_step=7, steps=5))
    assert [b.tolist() for b in whole[7:]] == [b.tolist() for b in later]  # a resumed epoch reads the same images
    flat = torch.cat(whole)
    first_pass, second_pass = flat[:23], flat[23:46]
    assert sorted(first_pass.tolist()) == list(range(23)) == sorted(second_pass.tolist())  # each image once per pass
    assert first_pass.tolist() != second_pass.tolist()  # a new order each pass
    assert [b.tolist() for b in StreamBatches(23, 5, seed=4, start_step=0, steps=3)] != [b.tolist() for b in whole[:3]]


def test_unlabelled_batches_split_across_ranks_like_one_larger_batch():
    single = list(StreamBatches(50, 8, seed=0, start_step=2, steps=3))
    ranks = [list(StreamBatches(50, 4, seed=0, start_step=2, steps=3, rank=r, world_size=2)) for r in range(2)]
    for step in range(3):
        together = torch.stack([ranks[0][step], ranks[1][step]], 1).flatten()
        assert together.tolist() == single[step].tolist()


def test_a_labelled_split_smaller_than_an_epoch_cycles_in_seeded_passes():
    """With ``steps`` an epoch is that many batches from the endless stream: 7 labelled images fill
    4 batches of 5, every image in every pass, and epoch 1 continues the stream where epoch 0 ended."""
    sampler = EpochBatches(7, 5, seed=2, shuffle=True, drop_last=True, steps=4)
    first = list(sampler)
    assert len(sampler) == 4 and [len(b) for b in first] == [5] * 4
    assert sorted(torch.cat(first)[:14].tolist()) == sorted(list(range(7)) * 2)
    sampler.set_epoch(1)
    assert [b.tolist() for b in sampler] == [b.tolist() for b in StreamBatches(7, 5, seed=2, start_step=4, steps=4)]
    ranks = [EpochBatches(7, 2, seed=2, shuffle=True, drop_last=True, steps=4, rank=r, world_size=2) for r in (0, 1)]
    merged = [torch.stack([a, b], 1).flatten().tolist() for a, b in zip(*ranks, strict=True)]
    assert merged == [b.tolist() for b in EpochBatches(7, 4, seed=2, shuffle=True, drop_last=True, steps=4)]


def test_the_budget_of_a_semi_supervised_stage_does_not_shrink_with_the_labels(tmp_path):
    """An epoch is a pass over the unlabelled images: 1 and 5 labels per class train the same
    number of steps, ``ceil(images / (ratio × batch))``; ``epoch: labelled`` counts labelled passes."""
    steps = {}
    for labels in (1, 5):
        data = _digits(labels)
        record = fit_stage(
            _network(),
            _semi_stage(0.9, epochs=1, steps_per_epoch=None),
            data,
            folder=tmp_path / f"l{labels}",
            image_size=8,
        )
        steps[labels] = record.steps
        assert record.steps == -(-len(data.split("all")) // (4 * 10))
    assert steps[1] == steps[5] > 20
    labelled = fit_stage(
        _network(),
        _semi_stage(0.9, epochs=2, steps_per_epoch=None, epoch="labelled"),
        _digits(5),
        folder=tmp_path / "labelled",
        image_size=8,
    )
    assert labelled.steps == 2 * 5  # 50 labelled images, batches of 10


def test_no_unlabelled_images_is_an_error():
    with pytest.raises(HeadstartError, match="no unlabelled images"):
        StreamBatches(0, 5, seed=0, start_step=0, steps=1)


# --------------------------------------------------------------------------------- strong augment


def _digit_batch(count: int = 64) -> torch.Tensor:
    from headstart.imageops import to_unit_range

    return to_unit_range(_digits().split("all").store.load(np.arange(count)))


def test_strong_augmentation_is_seeded_batched_and_keeps_grey_images_grey():
    images = torch.nn.functional.interpolate(_digit_batch(), size=32)

    def draw(seed):
        return strong_augment(images, torch.Generator().manual_seed(seed))

    first, again, other = draw(0), draw(0), draw(1)
    assert first.shape == images.shape and torch.equal(first, again) and not torch.equal(first, other)
    assert 0.0 <= first.min() and first.max() <= 1.0
    changed = (first - images).abs().flatten(1).amax(1) > 0
    assert changed.float().mean() > 0.9  # cutout alone changes almost every image


def test_geometric_operations_fill_with_the_border_and_cutout_covers_a_square():
    image = torch.zeros(1, 1, 16, 16)
    image[..., 4:12, 4:12] = 1.0
    rotated = STRONG_OPERATIONS["rotate"](image, torch.ones(1), torch.Generator().manual_seed(0))
    assert rotated[..., 0, 0].item() == 0.0  # black digit background stays black in the corners
    flat = torch.full((2, 1, 10, 10), 0.3)
    assert torch.allclose(border_mean(flat), torch.full((2, 1, 1, 1), 0.3))
    noisy = torch.rand(4, 1, 20, 20, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.5
    covered = cutout(noisy, 0.5, torch.Generator().manual_seed(0))
    changed = (covered != noisy).flatten(1).sum(1)
    assert torch.all(changed <= 100) and torch.all(changed > 0)  # at most a 10×10 square, clipped at the edges
    assert torch.equal(
        strong_augment(noisy, torch.Generator().manual_seed(0), ops=1, operations=("identity",), cutout_fraction=0.5),
        cutout(noisy, 0.5, _after_identity_draws(4)),
    )


def _after_identity_draws(batch: int) -> torch.Generator:
    """The generator as strong_augment leaves it after drawing one round of choices and magnitudes."""
    generator = torch.Generator().manual_seed(0)
    torch.randint(0, 1, (batch,), generator=generator)
    torch.rand(batch, generator=generator)
    return generator


# ------------------------------------------------------------------------------ the stage, for real


def test_the_threshold_decides_how_much_of_the_unlabelled_pool_teaches_on_real_digits(tmp_path):
    data = _digits()
    loose = fit_stage(_network(), _semi_stage(0.3), data, folder=tmp_path / "loose", image_size=16)
    strict = fit_stage(_network(), _semi_stage(0.99), data, folder=tmp_path / "strict", image_size=16)
    used_loose = [row["train_unlabelled_used"] for row in loose.history]
    used_strict = [row["train_unlabelled_used"] for row in strict.history]
    assert max(used_strict) < 0.05  # hardly a digit reaches 0.99 confidence this early
    assert used_loose[-1] > used_loose[0] + 0.05  # the share grows as the network learns
    assert used_loose[-1] > 0.1 and np.mean(used_loose) > np.mean(used_strict) + 0.05, (used_loose, used_strict)
    assert loose.data.unlabelled_images == len(data.split("all")) > loose.data.train_images
    assert loose.stage.semi_supervised.threshold == 0.3
    with pytest.raises(HeadstartError, match="no images"):
        fit_stage(
            _network(),
            _semi_stage(0.9, unlabelled="unlabelled"),
            TaskData.load({"kind": "digits"}, {"labelled_fraction": 1.0, "seed": 0}),
            folder=tmp_path / "none",
            image_size=16,
        )


def test_pseudo_labels_from_a_trained_network_lift_accuracy_above_labels_alone(tmp_path):
    """Five labels per class: the stage with FixMatch beats the same stage without it."""
    data = _digits(5)
    supervised = StageSpec(name="task", epochs=12, batch_size=10, augment="crop", optimizer={"lr": 3e-3})
    semi = _semi_stage(0.8, epochs=12)
    plain = fit_stage(_network(), supervised, data, folder=tmp_path / "plain", image_size=16)
    fixmatch = fit_stage(_network(), semi, data, folder=tmp_path / "semi", image_size=16)
    assert fixmatch.history[-1]["val_accuracy"] > plain.history[-1]["val_accuracy"] + 0.03, (
        plain.history[-1],
        fixmatch.history[-1],
    )


@pytest.mark.parametrize(
    "semi",
    [{"threshold": 0.5}, {"threshold": 0.5, "distribution_alignment": True}, {"method": "freematch", "momentum": 0.9}],
    ids=["plain", "distribution-alignment", "freematch"],
)
def test_an_interrupted_semi_supervised_stage_resumes_to_the_same_weights(tmp_path, interrupted_then_resumed, semi):
    """Distribution alignment's running marginal and FreeMatch's running confidence, class
    prediction and histogram travel in the checkpoint too."""
    data = _digits()
    spec = _semi_stage(epochs=3, **semi)
    fit_stage(_network(), spec, data, folder=tmp_path / "whole", image_size=16)
    resumed = interrupted_then_resumed(
        lambda folder, resume, callbacks: fit_stage(
            _network(), spec, data, folder=folder, image_size=16, resume=resume, callbacks=callbacks
        ),
        tmp_path / "cut",
    )
    assert [row["epoch"] for row in resumed.history] == [0, 1, 2]
    whole, cut = (
        load_file(tmp_path / "whole" / "weights.safetensors"),
        load_file(tmp_path / "cut" / "weights.safetensors"),
    )
    assert all(torch.equal(whole[key], cut[key]) for key in whole)


# ------------------------------------------------------------------------------------ bad settings


@pytest.mark.parametrize(
    "stage, message",
    [
        (
            {"name": "s", "pretext": {"name": "rotation"}, "data": "all", "semi_supervised": {}},
            "a pretext stage has no task labels",
        ),
        ({"name": "s", "data": "all", "semi_supervised": {}}, "semi_supervised needs data: train"),
        ({"name": "s", "semi_supervised": {"treshold": 0.9}}, "did you mean 'threshold'"),
        ({"name": "s", "semi_supervised": {"threshold": 1.5}}, "threshold"),
        ({"name": "s", "semi_supervised": {"ratio": 0}}, "ratio"),
        ({"name": "s", "semi_supervised": {"method": "mixmatch"}}, "fixmatch"),
        ({"name": "s", "semi_supervised": {"epoch": "steps"}}, "unlabelled"),
    ],
)
def test_bad_semi_supervised_settings_name_the_key(stage, message):
    with pytest.raises(HeadstartError, match=message):
        parse_run(
            {"name": "r", "data": {"source": {"kind": "digits"}}, "model": {"name": "test_resnet"}, "stages": [stage]},
            "run.yaml",
        )


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"operations": ("rotate", "equalise")}, "operations has 'equalise'"),
        ({"ops": -1}, "ops=-1"),
        ({"cutout_fraction": 1.5}, "cutout_fraction=1.5"),
    ],
)
def test_strong_augment_names_a_bad_argument(arguments, message):
    with pytest.raises(HeadstartError, match=message):
        strong_augment(torch.rand(2, 1, 8, 8), torch.Generator(), **arguments)
    with pytest.raises(HeadstartError, match="expected float"):
        strong_augment(torch.zeros(2, 8, 8, dtype=torch.uint8), torch.Generator())
