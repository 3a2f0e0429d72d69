"""Audit: the target-agnostic attack reaches the fine-tuned model only through its predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart.audit import AttackConfig, PublicFeatures, QueryOnly, attack_metrics, audit, craft
from headstart.audit.craft import craft_batch
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.zoo import load

TINY = "test_efficientnet"
SMALL = AttackConfig(steps=3)


def _victim(classes: int = 5, seed: int = 1):
    torch.manual_seed(seed)
    network = load(TINY, weights=None, include_top=False, head={"hidden": [16], "outputs": classes})
    network.labels = [f"class {index}" for index in range(classes)]
    return network.eval()


def _public(seed: int = 0):
    torch.manual_seed(seed)
    return load(TINY, weights=None, include_top=False)


def _papers_loop(probabilities, order, classes):
    """Rezaei & Liu's attack.py loop: walk the order, break a class at confidence > 0.99, count failures."""
    flags, failed95, failed99 = np.zeros(classes), 0, 0
    for attempt, index in enumerate(order, start=1):
        confidence, label = probabilities[index].max(), probabilities[index].argmax()
        if confidence > 0.99:
            flags[label] += 1
            if (flags != 0).sum() == classes:
                return attempt, 1 - failed95 / attempt, 1 - failed99 / attempt
        if confidence < 0.95:
            failed95 += 1
            failed99 += 1
        elif confidence < 0.99:
            failed99 += 1
    return len(order), 1 - failed95 / len(order), 1 - failed99 / len(order)


def test_nabac_and_effectiveness_equal_the_papers_code():
    probabilities = np.array(
        [
            [0.995, 0.004, 0.001],
            [0.999, 0.0005, 0.0005],
            [0.001, 0.998, 0.001],
            [0.5, 0.3, 0.2],
            [0.002, 0.003, 0.995],
            [0.96, 0.02, 0.02],
            [0.97, 0.01, 0.02],
        ]
    )
    metrics = attack_metrics(probabilities, orders=200, seed=3)
    rng = np.random.default_rng(3)
    expected = np.array([_papers_loop(probabilities, rng.permutation(7), 3) for _ in range(200)])
    assert metrics.nabac_mean == pytest.approx(expected[:, 0].mean()) and metrics.reached == 1.0
    assert metrics.nabac_std == pytest.approx(expected[:, 0].std())
    assert metrics.effectiveness["95"][0] == pytest.approx(expected[:, 1].mean())
    assert metrics.effectiveness["99"][0] == pytest.approx(expected[:, 2].mean())
    assert metrics.hits_per_class == [2, 1, 1] and metrics.predicted_per_class == [5, 1, 1]
    assert metrics.classes_hit == {"95": 1.0, "99": 1.0}
    unreached = attack_metrics(np.array([[0.6, 0.4], [0.7, 0.3]]), orders=10)
    assert unreached.nabac_mean == 2 and unreached.reached == 0 and unreached.effectiveness["95"] == (0.0, 0.0)


def test_crafting_in_batches_equals_one_at_a_time():
    public = _public()
    features = PublicFeatures(public)
    mean, std = public.preprocessing.mean, public.preprocessing.std
    neurons = torch.tensor([0, 5, 17])
    together, _ = craft_batch(features, neurons, (3, 32, 32), mean, std, SMALL)
    alone = torch.cat([craft_batch(features, neurons[i : i + 1], (3, 32, 32), mean, std, SMALL)[0] for i in range(3)])
    assert torch.allclose(together, alone, atol=1e-3)
    assert together.min() >= 0 and together.max() <= 255  # clip keeps pixels valid


def test_crafting_moves_the_chosen_neuron_towards_its_target():
    public = _public()
    features = PublicFeatures(public)
    mean, std = public.preprocessing.mean, public.preprocessing.std
    neurons = torch.arange(4)
    start = torch.full((4, 3, 32, 32), 100.0)
    from headstart.imageops import normalize

    with torch.no_grad():
        before = features(normalize(start / 255, mean, std))[torch.arange(4), neurons]
    _, after = craft_batch(features, neurons, (3, 32, 32), mean, std, AttackConfig(steps=5, step_size=1e-4))
    assert (after[torch.arange(4), neurons] > before).all()


def test_the_audit_reaches_the_fine_tuned_model_only_through_its_predictions():
    victim = _victim()
    before = {name: value.clone() for name, value in victim.state_dict().items()}
    gradients: list[str] = []
    for name, parameter in victim.named_parameters():
        parameter.requires_grad_(True)
        parameter.register_hook(lambda grad, name=name: gradients.append(name))

    forward_grad_modes: list[bool] = []
    victim.register_forward_hook(lambda module, inputs, output: forward_grad_modes.append(torch.is_grad_enabled()))
    # given the network: the audit wraps it in QueryOnly itself
    result = audit(victim, backbone=_public(), neurons=12, image_size=32, config=SMALL, batch_size=6, orders=20)
    # given only a predict callable, the audit cannot reach the module at all and answers the same
    again = audit(
        QueryOnly(victim), backbone=_public(), neurons=12, image_size=32, config=SMALL, batch_size=6, orders=20
    )
    assert torch.equal(result.probabilities, again.probabilities)
    assert forward_grad_modes and not any(forward_grad_modes)  # every query ran without autograd
    assert gradients == []
    assert all(parameter.grad is None for parameter in victim.parameters())
    after = victim.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # bit-identical
    from headstart.imageops import normalize

    public = _public()
    direct = victim.predict(
        normalize(result.crafted.pixels / 255.0, public.preprocessing.mean, public.preprocessing.std)
    )
    assert result.probabilities.shape == (12, 5) and torch.allclose(result.probabilities, direct, atol=1e-6)
    assert result.metrics.attempts == 12 and len(result.metrics.hits_per_class) == 5
    assert result.labels == [f"class {index}" for index in range(5)]


def test_query_only_exposes_predictions_and_nothing_else():
    black_box = QueryOnly(_victim())
    assert not hasattr(black_box, "network") and not hasattr(black_box, "__dict__")
    images = torch.zeros(2, 3, 32, 32, requires_grad=True)
    answer = black_box(images)
    assert answer.shape == (2, 5) and not answer.requires_grad


def test_the_attack_crafts_on_public_weights_not_the_fine_tuned_ones():
    public, victim = _public(seed=0), _victim(seed=1)
    assert not torch.equal(public.backbone.conv_stem.weight, victim.backbone.conv_stem.weight)
    seen: list[int] = []
    public.backbone.conv_stem.register_forward_hook(lambda *_: seen.append(1))
    victim_calls: list[int] = []
    victim.backbone.conv_stem.register_forward_hook(
        lambda module, inputs, output: victim_calls.append(int(torch.is_grad_enabled()))
    )
    audit(victim, backbone=public, neurons=4, image_size=32, config=SMALL, orders=5)
    assert len(seen) >= SMALL.steps and victim_calls and not any(victim_calls)  # victim: no-grad queries only


def test_audit_errors_name_the_value(tmp_path):
    with pytest.raises(HeadstartError, match="neurons=999: the backbone has"):
        audit(_victim(), backbone=_public(), neurons=999, image_size=32, config=SMALL)
    with pytest.raises(HeadstartError, match="needs backbone="):
        audit(lambda images: torch.ones(len(images), 2) / 2)
    result = CliRunner().invoke(app, ["audit", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing: no such stage or run folder" in result.output
    assert "Traceback" not in result.output


def test_pooled_measures_equal_the_measures_over_every_victim_and_order():
    from headstart.audit import pool_metrics

    first = np.array([[0.995, 0.005], [0.2, 0.8], [0.001, 0.999], [0.97, 0.03]])
    second = np.array([[0.999, 0.001], [0.0, 1.0], [0.5, 0.5], [0.6, 0.4], [0.996, 0.004]])
    pooled = pool_metrics([attack_metrics(first, orders=50, seed=1), attack_metrics(second, orders=50, seed=2)])
    runs = []
    for probabilities, seed in ((first, 1), (second, 2)):
        rng = np.random.default_rng(seed)
        runs += [_papers_loop(probabilities, rng.permutation(len(probabilities)), 2) for _ in range(50)]
    runs = np.array(runs)
    assert pooled.orders == 100
    assert pooled.nabac_mean == pytest.approx(runs[:, 0].mean()) and pooled.nabac_std == pytest.approx(runs[:, 0].std())
    assert pooled.effectiveness["95"][0] == pytest.approx(runs[:, 1].mean())
    assert pooled.effectiveness["99"][1] == pytest.approx(runs[:, 2].std())


def test_crafting_leaves_the_callers_backbone_as_it_was():
    # a hook left on the caller's backbone kept capturing (graph attached) on every later forward pass
    public = _public()
    public.train()
    before = [parameter.requires_grad for parameter in public.parameters()]
    hooks = sum(len(module._forward_pre_hooks) + len(module._forward_hooks) for module in public.modules())
    features = PublicFeatures(public)
    craft(features, torch.arange(2), 32, SMALL, batch_size=2)
    assert features.layer == "pre-activation"
    assert public.training and [parameter.requires_grad for parameter in public.parameters()] == before
    assert sum(len(module._forward_pre_hooks) + len(module._forward_hooks) for module in public.modules()) == hooks


def test_crafted_inputs_record_what_the_head_reads():
    public = _public()
    crafted = craft(PublicFeatures(public), torch.tensor([1, 3]), 32, SMALL, batch_size=2)
    mean, std = public.preprocessing.mean, public.preprocessing.std
    from headstart.imageops import normalize

    with torch.no_grad():
        read = public.eval().pooled(normalize(crafted.pixels / 255, mean, std))
    assert torch.allclose(crafted.output_target, read[torch.arange(2), torch.tensor([1, 3])], atol=1e-5)
    assert crafted.output_largest_other.shape == (2,)


def test_victims_on_cached_features_answer_as_their_networks_do():
    from headstart.audit.experiment import VictimConfig, _accuracy, cached_features, iter_victims, pool_cells
    from headstart.heads import accuracy
    from headstart.imageops import normalize

    def public_statistics(network):
        return network.preprocessing.mean, network.preprocessing.std

    torch.manual_seed(0)
    public = _public().train()
    images, labels = torch.rand(40, 3, 32, 32), torch.arange(40) % 10
    features = cached_features(public, images)
    assert public.training  # computed in evaluation mode, given back in the mode it came in
    assert torch.allclose(
        features,
        public.eval().pooled(torch.stack([normalize(image[None], *public_statistics(public))[0] for image in images])),
        atol=1e-5,
    )
    config = VictimConfig(
        image_size=32,
        class_counts=(5,),
        layer_counts=(1, 2),
        seeds=2,
        head_epochs=2,
        fine_tune_seeds=1,
        fine_tune_epochs=1,
        fine_tune_batch=8,
    )
    mean, std = public.preprocessing.mean, public.preprocessing.std
    results, seen = [], []
    for victim in iter_victims(public, images, labels, features, config, echo=lambda line: None):
        seen.append((victim.classes, victim.layers, victim.defence, victim.seed))
        if victim.defence != "full fine-tuning":  # a head on cached features = the whole network on the images
            chosen = torch.isin(labels, torch.tensor(victim.digits))
            relabel = {digit: index for index, digit in enumerate(victim.digits)}
            task = torch.tensor([relabel[int(label)] for label in labels[chosen]])
            from_features = float(accuracy(victim.network.head(features[chosen]), task))
            assert _accuracy(victim.network, images[chosen], task, mean, std) == pytest.approx(from_features)
        probabilities = torch.softmax(torch.randn(6, 5), 1)
        results.append(
            {"victim": victim, "result": type("R", (), {"metrics": attack_metrics(probabilities, orders=4)})()}
        )
    assert (
        len(seen) == 2 * 2 * 2 + 2
        and len({digits for digits in map(tuple, [r["victim"].digits for r in results])}) == 2
    )
    cells = pool_cells(results)
    assert [(cell.layers, cell.defence, cell.victims) for cell in cells] == [
        (1, "none", 2),
        (2, "none", 2),
        (1, "feature clipping", 2),
        (2, "feature clipping", 2),
        (1, "full fine-tuning", 1),
        (2, "full fine-tuning", 1),
    ]
