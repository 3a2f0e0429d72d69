"""FreeMatch (Wang et al., ICLR 2023): self-adaptive thresholds follow the network's confidence, per
class; the fairness term; the stage trains and logs its threshold (its exact resume is tested with
FixMatch's in test_fixmatch.py)."""

from __future__ import annotations

import math

import pytest
import torch

from headstart.config import StageSpec, parse_run
from headstart.data import TaskData
from headstart.engine.fixmatch import PseudoLabels
from headstart.engine.freematch import SelfAdaptiveThreshold, fairness_loss
from headstart.errors import HeadstartError
from headstart.stage import fit_stage
from headstart.zoo import load


def _network(seed: int = 0):
    torch.manual_seed(seed)
    return load("test_resnet", weights=None, include_top=False, in_chans=1)


def _freematch_stage(epochs: int = 3, **extra) -> StageSpec:
    return StageSpec(
        name="freematch",
        epochs=epochs,
        steps_per_epoch=5,
        batch_size=10,
        augment="crop",
        optimizer={"lr": 3e-3},
        semi_supervised={"method": "freematch", "ratio": 4, **extra},
    )


def test_thresholds_start_at_one_over_the_classes_and_follow_the_running_confidence():
    threshold = SelfAdaptiveThreshold(4, momentum=0.5)
    assert float(threshold.confidence) == pytest.approx(0.25)
    assert torch.allclose(threshold.class_thresholds(), torch.full((4,), 0.25))
    # every image is sure of class 0 (probability ~1): the global threshold moves half-way to 1
    sure = torch.tensor([[20.0, 0.0, 0.0, 0.0]] * 8)
    pseudo = threshold(sure)
    assert float(threshold.confidence) == pytest.approx(0.5 * 0.25 + 0.5 * 1.0, abs=1e-6)
    # class 0 is now predicted most: its threshold is the global one, the others' are scaled down
    probability = torch.tensor([0.5 * 0.25 + 0.5, 0.125, 0.125, 0.125])
    expected = threshold.confidence * probability / probability.max()
    assert torch.allclose(threshold.class_thresholds(), expected, atol=1e-6)
    assert torch.allclose(threshold.histogram, torch.tensor([0.625, 0.125, 0.125, 0.125]))
    assert pseudo.labels.tolist() == [0] * 8 and bool(pseudo.mask.all())


def test_a_class_the_network_rarely_predicts_gets_a_lower_threshold_than_a_fixed_one():
    """The local scaling: after many batches that favour class 0, an image of class 2 with
    confidence 0.5 passes (its threshold is scaled by p̃(2)/max p̃), one of class 0 does not."""
    threshold = SelfAdaptiveThreshold(3, momentum=0.9)
    favour = torch.log(torch.tensor([[0.8, 0.1, 0.1]] * 16))
    for _ in range(60):
        threshold(favour)
    assert float(threshold.confidence) == pytest.approx(0.8, abs=0.01)
    probe = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))
    before = threshold.confidence.clone()
    pseudo = threshold(probe)
    assert pseudo.labels.tolist() == [0, 2]
    assert pseudo.mask.tolist() == [False, True], (before, threshold.class_thresholds())


def test_the_fairness_term_is_the_negative_cross_entropy_of_the_papers_eq_10():
    threshold = SelfAdaptiveThreshold(3)
    threshold.class_probability.copy_(torch.tensor([0.5, 0.3, 0.2]))
    threshold.histogram.copy_(torch.tensor([0.6, 0.3, 0.1]))
    strong = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.5, 0.0], [1.0, 0.0, 0.5], [0.0, 0.0, 3.0]], requires_grad=True)
    mask = torch.tensor([True, True, True, False])
    pseudo = PseudoLabels(torch.zeros(4, dtype=torch.long), torch.ones(4), mask)
    loss = fairness_loss(strong, pseudo, threshold)
    # by hand: the three passing strong copies
    p = strong[:3].detach().softmax(dim=1)
    h = torch.bincount(p.argmax(dim=1), minlength=3).float()
    h = h / h.sum()
    inverse = torch.where(h > 0, 1 / h, torch.zeros_like(h))
    batch = p.mean(0) * inverse
    batch = batch / batch.sum()
    target = torch.tensor([0.5 / 0.6, 0.3 / 0.3, 0.2 / 0.1])
    target = target / target.sum()
    assert float(loss.detach()) == pytest.approx(float((target * torch.log(batch + 1e-12)).sum()), abs=1e-6)
    loss.backward()
    assert strong.grad is not None and float(strong.grad[3].abs().sum()) == 0.0  # the masked copy gets none
    assert float(strong.grad[:3].abs().sum()) > 0
    nothing = PseudoLabels(torch.zeros(4, dtype=torch.long), torch.ones(4), torch.zeros(4, dtype=torch.bool))
    assert float(fairness_loss(strong, nothing, threshold).detach()) == 0.0


def test_a_freematch_stage_logs_a_threshold_that_rises_from_one_over_the_classes(tmp_path):
    record = fit_stage(_network(), _freematch_stage(momentum=0.9), _digits(), folder=tmp_path / "s", image_size=16)
    thresholds = [row["train_unlabelled_threshold"] for row in record.history]
    used = [row["train_unlabelled_used"] for row in record.history]
    assert 0.1 < thresholds[0] < thresholds[-1] < 1.0, thresholds
    assert used[0] > 0.5  # a threshold near 1/C admits most pseudo-labels at the start
    assert all(math.isfinite(row["train_loss"]) for row in record.history)
    assert record.stage.semi_supervised.method == "freematch"


def _digits() -> TaskData:
    return TaskData.load({"kind": "digits"}, {"labels_per_class": 5, "seed": 0})


def test_freematchs_options_do_not_change_the_hash_of_a_fixmatch_stage():
    def run(semi):
        return parse_run(
            {
                "name": "r",
                "data": {"source": {"kind": "digits"}},
                "model": {"name": "test_resnet"},
                "stages": [{"name": "s", "semi_supervised": semi}],
            },
            "run.yaml",
        )

    assert run({}).config_hash() == run({"method": "fixmatch", "ratio": 7}).config_hash()
    payload = run({"threshold": 0.9}).results_payload()["stages"][0]["semi_supervised"]
    assert "momentum" not in payload and "fairness_weight" not in payload
    assert run({"method": "freematch"}).config_hash() != run({"method": "freematch", "momentum": 0.99}).config_hash()


def test_a_semi_supervised_spec_dumped_with_its_defaults_validates_again():
    """Comparisons re-validate stages dumped with every field: the other method's defaults pass."""
    from headstart.config import SemiSupervisedSpec

    for spec in (SemiSupervisedSpec(), SemiSupervisedSpec(method="freematch", momentum=0.99)):
        assert SemiSupervisedSpec.model_validate(spec.model_dump()) == spec


@pytest.mark.parametrize(
    "semi, message",
    [
        ({"method": "freematch", "threshold": 0.9}, "semi_supervised.threshold is FixMatch's"),
        ({"method": "freematch", "distribution_alignment": True}, "distribution_alignment is FixMatch's"),
        ({"momentum": 0.99}, "momentum belongs to method: freematch"),
        ({"method": "freematch", "momentum": 1.0}, "momentum"),
        ({"method": "freematch", "fairness_weight": -1}, "fairness_weight"),
        ({"method": "flexmatch"}, "freematch"),
    ],
)
def test_bad_freematch_settings_name_the_key(semi, message):
    with pytest.raises(HeadstartError, match=message):
        parse_run(
            {
                "name": "r",
                "data": {"source": {"kind": "digits"}},
                "model": {"name": "test_resnet"},
                "stages": [{"name": "s", "semi_supervised": semi}],
            },
            "run.yaml",
        )
