"""Whole-set passes borrow the caller's network: they run it in evaluation mode on the pass's device
and give it back on the device and in the mode they found it in, also when the pass fails; their
accuracy is :func:`headstart.heads.accuracy` over the whole set."""

from __future__ import annotations

import pytest
import torch

from headstart.engine.passes import compute_features, evaluate, network_input
from headstart.heads import accuracy, predicted_classes
from headstart.zoo import load


def _network(outputs: int = 3):
    torch.manual_seed(0)
    return load("test_resnet", weights=None, include_top=False, in_chans=1, head={"outputs": outputs})


def _data(count: int = 37, classes: int = 3):
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 1, 12, 12), dtype=torch.uint8, generator=generator)
    return pixels, torch.arange(count) % classes


def _spy_on_moves(network) -> list:
    """Record every ``network.to(...)`` target (the passes' only way to move the network)."""
    moves = []
    move = network.to

    def to(*args, **kwargs):
        moves.append(torch.device(args[0] if args else kwargs["device"]))
        return move(*args, **kwargs)

    network.to = to
    return moves


def _passes():
    return {
        "compute_features": lambda network, data, **options: compute_features(network, data, **options),
        "evaluate": lambda network, data, **options: evaluate(network, data, num_classes=3, **options),
    }


@pytest.mark.parametrize("name", ["compute_features", "evaluate"])
@pytest.mark.parametrize("training", [True, False])
def test_a_pass_gives_the_network_back_in_its_mode_and_on_its_device(name, training):
    network = _network().train(training)
    before = {key: value.clone() for key, value in network.state_dict().items()}
    moves = _spy_on_moves(network)
    _passes()[name](network, _data(), image_size=16, batch_size=8, device="cpu")
    assert network.training == training
    assert moves == [torch.device("cpu"), torch.device("cpu")]  # to the pass's device, then back where it was
    assert next(network.parameters()).device == torch.device("cpu")
    after = network.state_dict()  # evaluation mode: BatchNorm statistics untouched
    assert all(torch.equal(before[key], after[key]) for key in before)


@pytest.mark.parametrize("name", ["compute_features", "evaluate"])
def test_a_failing_pass_still_gives_the_network_back(name):
    network = _network().train()
    moves = _spy_on_moves(network)
    seen = []

    def failing(module, inputs):
        seen.append(torch.is_grad_enabled())
        if len(seen) == 2:
            raise RuntimeError("the second batch fails")

    next(m for m in network.backbone.modules() if isinstance(m, torch.nn.Conv2d)).register_forward_pre_hook(failing)
    with pytest.raises(RuntimeError, match="second batch"):
        _passes()[name](network, _data(), image_size=16, batch_size=8, device="cpu")
    assert network.training and len(moves) == 2 and moves[-1] == torch.device("cpu")
    assert seen == [False, False]  # no gradients were recorded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
@pytest.mark.parametrize("name", ["compute_features", "evaluate"])
def test_a_pass_on_the_gpu_leaves_a_cpu_network_on_the_cpu_and_back(name):
    network = _network()
    _passes()[name](network, _data(), image_size=16, batch_size=8, device="cuda")
    assert next(network.parameters()).device.type == "cpu"
    network.cuda()
    _passes()[name](network, _data(), image_size=16, batch_size=8, device="cpu")
    assert next(network.parameters()).device.type == "cuda"


def test_evaluate_reports_the_accuracy_and_confusion_of_the_whole_set():
    network = _network()
    pixels, labels = _data()
    metrics = evaluate(network, (pixels, labels), image_size=16, batch_size=8, num_classes=3)
    with torch.no_grad():
        logits = network.eval()(network_input(network, pixels, 16, "cpu"))
    assert metrics["count"] == 37
    assert metrics["accuracy"] == pytest.approx(float(accuracy(logits, labels)))
    expected = torch.zeros(3, 3, dtype=torch.long)
    for true, predicted in zip(labels.tolist(), predicted_classes(logits).tolist(), strict=True):
        expected[true, predicted] += 1
    assert metrics["confusion"] == expected.tolist()
    assert metrics["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)


def test_evaluate_reads_a_one_sigmoid_head_as_two_classes():
    network = _network(outputs=1)
    pixels, labels = _data(classes=2)
    metrics = evaluate(
        network, (pixels, labels), image_size=16, batch_size=8, loss="binary_cross_entropy", num_classes=2
    )
    with torch.no_grad():
        z = network.eval()(network_input(network, pixels, 16, "cpu"))[:, 0]
    assert metrics["accuracy"] == pytest.approx(float(((z > 0).long() == labels).float().mean()))
    assert sum(map(sum, metrics["confusion"])) == 37
    assert [row[1] for row in metrics["confusion"]] == [int(((z > 0) & (labels == c)).sum()) for c in (0, 1)]


@pytest.mark.parametrize(("outputs", "loss"), [(3, "cross_entropy"), (1, "binary_cross_entropy")])
def test_evaluate_gives_balanced_accuracy_macro_f1_and_recall_of_its_predictions(outputs, loss):
    """With the classes known, evaluate adds torchmetrics' balanced accuracy, macro F1 and per-class
    recall of the predicted classes — a one-sigmoid binary head counts as two classes."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

    classes = max(2, outputs)
    network = _network(outputs)
    metrics = evaluate(
        network,
        _data(classes=classes),
        image_size=16,
        batch_size=8,
        loss=loss,
        num_classes=classes,
        predictions=True,
    )
    truth, guess = metrics["targets"], metrics["predictions"]
    labels = list(range(classes))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, guess))
    assert metrics["macro_f1"] == pytest.approx(f1_score(truth, guess, average="macro", labels=labels, zero_division=0))
    assert metrics["recall"] == pytest.approx(recall_score(truth, guess, average=None, labels=labels).tolist())
    assert len(metrics["recall"]) == classes and metrics["count"] == 37
