"""Dense heads and global pooling: structure, shapes, validation, logits → probabilities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.heads import (
    GlobalPooling,
    HeadSpec,
    accuracy,
    build_head,
    class_logits,
    class_probabilities,
    class_targets,
    is_single_sigmoid,
    output_kind,
    outputs_fit_labels,
    predicted_classes,
    to_probabilities,
)


def test_linear_head_is_one_dense_layer():
    head = build_head(HeadSpec(outputs=10), in_features=32)
    assert [type(layer) for layer in head] == [nn.Linear]
    assert head.output.in_features == 32 and head.output.out_features == 10
    assert head(torch.randn(4, 32)).shape == (4, 10)


def test_hidden_layers_with_norm_activation_and_dropout_in_order():
    spec = HeadSpec(hidden=[64, 16], activation="gelu", dropout=0.25, batch_norm=True, outputs=3)
    head = build_head(spec, in_features=40)
    assert list(dict(head.named_children())) == [
        "dropout0", "dense0", "norm0", "activation0",
        "dropout1", "dense1", "norm1", "activation1",
        "output_dropout", "output",
    ]  # fmt: skip
    assert isinstance(head.activation0, nn.GELU) and head.dropout1.p == 0.25
    assert (head.dense0.in_features, head.dense1.in_features, head.output.in_features) == (40, 64, 16)
    head.eval()
    assert head(torch.randn(5, 40)).shape == (5, 3)


def test_head_returns_logits_and_probabilities_follow_the_output_kind():
    torch.manual_seed(0)
    logits = torch.randn(6, 4) * 3
    assert torch.equal(to_probabilities(logits, "softmax"), torch.softmax(logits, dim=1))
    assert torch.allclose(to_probabilities(logits, "sigmoid"), torch.sigmoid(logits))
    assert torch.equal(to_probabilities(logits, "linear"), logits)
    head = build_head(HeadSpec(outputs=4, output="sigmoid"), in_features=8)
    assert output_kind(head) == "sigmoid" and output_kind(nn.Identity()) == "softmax"
    # a softmax head's output is not normalised: it is the logits cross-entropy expects
    softmax_head = build_head(HeadSpec(outputs=4), in_features=8)
    raw = softmax_head(torch.randn(3, 8))
    assert not torch.allclose(raw.sum(dim=1), torch.ones(3))


def test_loss_at_initialisation_is_near_log_classes():
    torch.manual_seed(0)
    head = build_head(HeadSpec(hidden=[32], outputs=10), in_features=64)
    with torch.no_grad():
        head.output.weight.mul_(0.01)
        head.output.bias.zero_()
    loss = nn.functional.cross_entropy(head(torch.randn(256, 64)), torch.randint(0, 10, (256,)))
    assert abs(loss.item() - math.log(10)) < 0.05


def test_spec_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="extra"):
        HeadSpec(outputs=2, hiden=[3])
    with pytest.raises(ValueError):
        HeadSpec(outputs=2, activation="sigmoid")
    with pytest.raises(ValueError):
        HeadSpec(outputs=0)
    with pytest.raises(ValueError):
        HeadSpec(outputs=2, dropout=1.0)
    with pytest.raises(HeadstartError, match=r"^head: hiden: unknown key; did you mean 'hidden'\?$"):
        build_head({"outputs": 2, "hiden": [3]}, in_features=4)
    with pytest.raises(HeadstartError, match=r"^head: outputs: Input should be greater than 0 \(got 0\)$"):
        build_head({"outputs": 0}, in_features=4)


def test_build_head_from_mapping_and_bad_width():
    head = build_head({"hidden": [8], "outputs": 2, "activation": "tanh"}, in_features=4)
    assert isinstance(head.activation0, nn.Tanh)
    with pytest.raises(HeadstartError, match="in_features=0"):
        build_head(HeadSpec(outputs=2), in_features=0)


def test_global_pooling_modes_on_feature_maps():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(GlobalPooling("avg")(features), features.mean(dim=(2, 3)))
    assert torch.equal(GlobalPooling("max")(features), features[:, :, 1, 1])
    assert GlobalPooling("flatten")(features).shape == (2, 12)
    assert GlobalPooling("none")(features) is features
    with pytest.raises(HeadstartError, match="pooling='mean'"):
        GlobalPooling("mean")


def test_global_pooling_of_tokens_skips_prefix_tokens():
    tokens = torch.zeros(1, 5, 4)
    tokens[:, 0] = 100.0  # a class token
    tokens[:, 1:] = 1.0
    assert torch.equal(GlobalPooling("avg", prefix_tokens=1)(tokens), torch.ones(1, 4))
    assert torch.equal(GlobalPooling("max", prefix_tokens=1)(tokens), torch.ones(1, 4))


# ------------------------------------------------------------------ binary means one sigmoid output


def test_one_output_is_the_log_odds_of_the_second_class_everywhere():
    z = torch.tensor([[2.0], [-0.5], [0.0], [3.0]])
    labels = torch.tensor([1, 0, 1, 0])
    assert is_single_sigmoid(z) and not is_single_sigmoid(torch.zeros(4, 2))
    assert predicted_classes(z).tolist() == [1, 0, 0, 1]  # z > 0: probability above one half
    assert float(accuracy(z, labels)) == 0.5 and float(accuracy(z, labels, reduction="sum")) == 2.0
    two = class_logits(z)
    assert torch.equal(two, torch.tensor([[0.0, 2.0], [0.0, -0.5], [0.0, 0.0], [0.0, 3.0]]))
    assert torch.allclose(two.softmax(1)[:, 1], torch.sigmoid(z[:, 0]))  # the same probability of class 1
    assert torch.equal(class_targets(labels, z), torch.tensor([[1.0], [0.0], [1.0], [0.0]]))
    assert torch.equal(class_probabilities(z), torch.sigmoid(z))
    assert outputs_fit_labels(1, ["cat", "dog"]) and outputs_fit_labels(3, "abc") and not outputs_fit_labels(1, "abc")
    assert HeadSpec.for_classes(2, "binary_cross_entropy").outputs == 1
    assert HeadSpec.for_classes(2, "cross_entropy").outputs == 2


def test_many_outputs_read_by_argmax_and_accuracy_counts_matches():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 2.0, 0.5]])
    labels = torch.tensor([1, 0, 1, 2])
    assert predicted_classes(logits).tolist() == [1, 0, 2, 1]
    assert float(accuracy(logits, labels)) == 0.5 and float(accuracy(logits, labels, reduction="sum")) == 2.0
    assert class_logits(logits) is logits
    assert torch.equal(class_targets(labels, logits), torch.eye(3)[labels])
    assert float(accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))) == 0.0
    with pytest.raises(HeadstartError, match="reduction='none'"):
        accuracy(logits, labels, reduction="none")


@pytest.mark.parametrize("kind", ["binary_cross_entropy", "mse", "huber"])
def test_task_losses_of_a_one_sigmoid_head_equal_those_of_its_two_class_form(kind):
    """A one-output head and the two-class head it stands for give the same loss (mse, huber) or the
    loss of the sigmoid against the label itself (binary cross-entropy)."""
    from headstart.engine.losses import task_loss

    torch.manual_seed(0)
    z, labels = torch.randn(8, 1) * 2, torch.randint(0, 2, (8,))
    single = task_loss(kind, z, labels)
    if kind == "binary_cross_entropy":
        expected = nn.functional.binary_cross_entropy(torch.sigmoid(z[:, 0]), labels.float())
    else:
        expected = task_loss(kind, class_logits(z), labels)
    assert float(single) == pytest.approx(float(expected), rel=1e-5)
    if kind == "mse":
        assert float(single) == pytest.approx(float(((torch.sigmoid(z[:, 0]) - labels) ** 2).mean()), rel=1e-5)
