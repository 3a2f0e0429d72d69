"""Probes: the linear probe against scikit-learn, the k-NN probe against a direct loop, probes of a
trained backbone above a random one on real digits, attention maps against their formula."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.probe import (
    attention_maps,
    fit_logistic_regression,
    knn_predict,
    knn_probe,
    linear_probe,
    probe_network,
    probe_stage,
    read_probe,
    run_data,
    standardize,
)


@pytest.fixture(scope="module")
def digits():
    features, labels = load_digits(return_X_y=True)
    return torch.tensor(features, dtype=torch.float64), torch.tensor(labels)


def _pipeline(c: float = 1.0):
    """The linear probe written directly with scikit-learn: standardise, then logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))


def test_linear_probe_is_scikit_learns_pipeline_on_standardised_features(digits):
    features, labels = digits
    reference = _pipeline(0.5).fit(features[:300].numpy(), labels[:300].numpy())
    bank, probe = standardize(features[:300], features[300:])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # converged within LINEAR_MAX_ITER
        weights, bias = fit_logistic_regression(bank, labels[:300], 10, c=0.5)
        accuracy = linear_probe(features[:300], labels[:300], features[300:], labels[300:], c=0.5)
    ours = torch.softmax(probe @ weights.T + bias, 1).numpy()
    assert np.abs(ours - reference.predict_proba(features[300:].numpy())).max() < 1e-9
    assert accuracy == pytest.approx(reference.score(features[300:].numpy(), labels[300:].numpy()))
    assert accuracy > 0.85  # real digits: far above chance (0.1)
    # the default C = 1 (scikit-learn's) scores what the pipeline with C = 1 scores
    default = _pipeline().fit(features[:300].numpy(), labels[:300].numpy())
    assert linear_probe(features[:300], labels[:300], features[300:], labels[300:]) == pytest.approx(
        default.score(features[300:].numpy(), labels[300:].numpy())
    )


def test_linear_probe_of_two_classes_is_one_sigmoid_output_and_absent_classes_are_never_predicted(digits):
    features, labels = digits
    pair = (labels == 3) | (labels == 8)
    x, y = features[pair], (labels[pair] == 8).long()  # two classes: 0 = "3", 1 = "8"
    reference = _pipeline().fit(x[:100].numpy(), y[:100].numpy())
    bank, probe = standardize(x[:100], x[100:])
    weights, bias = fit_logistic_regression(bank, y[:100], 2)
    assert weights.shape == (1, 64) and bias.shape == (1,)  # the log-odds of class 1, as headstart.heads reads it
    assert (
        np.abs(
            torch.sigmoid(probe @ weights.T + bias)[:, 0].numpy() - reference.predict_proba(x[100:].numpy())[:, 1]
        ).max()
        < 1e-9
    )
    assert linear_probe(x[:100], y[:100], x[100:], y[100:]) == pytest.approx(
        reference.score(x[100:].numpy(), y[100:].numpy())
    )
    # a bank without digits 7..9: those classes are never predicted, the others as scikit-learn predicts them
    seen = labels[:400] < 7
    weights, bias = fit_logistic_regression(standardize(features[:400][seen])[0], labels[:400][seen], 10)
    assert weights.shape == (10, 64) and torch.isinf(bias[7:]).all() and torch.isfinite(bias[:7]).all()
    with pytest.raises(HeadstartError, match="one class"):
        fit_logistic_regression(features[:5], torch.zeros(5, dtype=torch.long), 10)


def test_knn_probe_is_the_weighted_cosine_vote_of_dino_and_lightly(digits):
    features, labels = digits
    bank, bank_labels, queries = features[:400].float(), labels[:400], features[400:460].float()
    predicted = knn_predict(bank, bank_labels, queries, 10, k=20, temperature=0.07, chunk=7)
    normal_bank = bank / bank.norm(dim=1, keepdim=True)
    for row, query in enumerate(queries):
        similarity = normal_bank @ (query / query.norm())
        top = similarity.argsort(descending=True)[:20]
        votes = np.zeros(10)
        for index in top:
            votes[int(bank_labels[index])] += float(torch.exp(similarity[index] / 0.07))
        assert int(predicted[row]) == int(votes.argmax())
    # k larger than the bank uses the whole bank; a bad k is refused
    assert knn_predict(bank[:5], bank_labels[:5], queries, 10, k=50).shape == (60,)
    with pytest.raises(HeadstartError, match="k=0"):
        knn_predict(bank, bank_labels, queries, 10, k=0)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from headstart.config import parse_run
    from headstart.structure import run

    folder = tmp_path_factory.mktemp("probe") / "run"
    spec = parse_run(
        {
            "output": str(folder),
            "progress": False,
            "seed": 0,
            "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 20}},
            "model": {"name": "test_resnet", "weights": None, "image_size": 16},
            "stages": [
                {"name": "rotation", "data": "all", "pretext": {"name": "rotation"}, "epochs": 1, "batch_size": 64},
                {"name": "task", "epochs": 12, "batch_size": 25, "optimizer": {"lr": 3e-3}},
            ],
        }
    )
    run(spec)
    return folder


def test_probes_score_a_trained_backbone_above_a_random_one(trained_run):
    from headstart.zoo import load

    trained = probe_stage(trained_run / "1-task")
    data, _ = run_data(trained_run)
    torch.manual_seed(0)
    random = probe_network(load("test_resnet", weights=None, include_top=False), data, image_size=16, source="init")
    assert trained.linear_accuracy > random.linear_accuracy + 0.05
    assert trained.knn_accuracy > random.knn_accuracy + 0.05
    assert trained.bank_size == 200 and trained.probe_size == random.probe_size > 300
    stored = json.loads((trained_run / "1-task" / "probe.json").read_text())
    assert stored["knn_accuracy"] == trained.knn_accuracy
    assert stored["settings"]["knn"] == {"k": 20, "metric": "cosine", "vote": "exp(similarity / 0.07)"}
    assert stored["settings"]["linear"]["C"] == 1.0
    assert read_probe(trained_run / "1-task") == trained


def test_probe_command_reads_a_pretext_stage_and_names_bad_folders(trained_run, tmp_path):
    result = CliRunner().invoke(app, ["probe", str(trained_run / "0-rotation"), "--k", "5", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["settings"]["knn"]["k"] == 5
    assert read_probe(trained_run / "0-rotation").model_dump(mode="json") == record  # what the command stored
    # the command's scores are the probes of that stage's backbone, recomputed here from its features
    from headstart.checkpoint import load_backbone
    from headstart.engine.batches import plan_images
    from headstart.engine.passes import compute_features

    data, _ = run_data(trained_run)
    network = load_backbone(trained_run / "0-rotation")
    bank, bank_labels = compute_features(network, plan_images(data.split("train")), image_size=16)
    probe, probe_labels = compute_features(network, plan_images(data.split("test")), image_size=16)
    knn = knn_probe(bank, bank_labels, probe, probe_labels, k=5, num_classes=10)
    linear = linear_probe(bank, bank_labels, probe, probe_labels, num_classes=10)
    assert record["knn_accuracy"] == pytest.approx(knn) and record["linear_accuracy"] == pytest.approx(linear)
    assert record["knn_accuracy"] > 0.3 and record["linear_accuracy"] > 0.3  # ten digits: chance is 0.1
    missing = CliRunner().invoke(app, ["probe", str(tmp_path)])
    assert missing.exit_code == 2 and "no stage.json here" in missing.output and "Traceback" not in missing.output
    unknown_split = CliRunner().invoke(app, ["probe", str(trained_run / "1-task"), "--split", "nope"])
    assert unknown_split.exit_code == 2 and "nope" in unknown_split.output


def test_probe_command_ranks_suspected_label_errors_of_the_labelled_images(trained_run):
    from headstart.checkpoint import load_backbone
    from headstart.label_errors import read_label_issues, suspect_labels
    from headstart.probe import probe_features

    result = CliRunner().invoke(app, ["probe", str(trained_run / "1-task"), "--label-errors", "5"])
    assert result.exit_code == 0, result.output
    assert "suspected label errors: cleanlab flags" in result.output and "looks like" in result.output
    stored = read_label_issues(trained_run / "1-task")
    assert stored is not None and stored.images == 200 and len(stored.suspects) == 5
    data, _ = run_data(trained_run)  # the same ranking, recomputed from the stage's bank features
    features = probe_features(load_backbone(trained_run / "1-task"), data, image_size=16)
    again = suspect_labels(features[0], data.split("train"), data.class_names, source="x", top=5)
    assert [s.position for s in again.suspects] == [s.position for s in stored.suspects]
    for suspect in stored.suspects:
        assert f"{suspect.name}: given {suspect.given}, looks like {suspect.suggested}" in result.output
    refused = CliRunner().invoke(app, ["probe", str(trained_run / "1-task"), "--bank", "test", "--split", "val"])
    assert refused.exit_code == 0 and "suspected label errors" not in refused.output  # no labels to doubt there


def test_attention_maps_follow_their_formula_and_refuse_unknown_layers(trained_run):
    from headstart.checkpoint import load_backbone
    from headstart.imageops import resize

    network = load_backbone(trained_run / "1-task").train()
    images = torch.rand(3, 1, 8, 8)
    maps = attention_maps(network, images, image_size=16, power=2)
    assert network.training  # given back in the mode it came in
    network.eval()
    assert maps and all(value.shape[0] == 3 for value in maps.values())
    name = next(iter(maps))
    captured = {}
    hook = dict(network.named_modules())[name].register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out))
    with torch.no_grad():
        network.forward_features(network.encoder(16).prepare(resize(images, 16, "stretch")))
    hook.remove()
    expected = captured["a"].abs().pow(2).mean(1)
    expected = (expected - expected.amin((1, 2), keepdim=True)) / (
        expected.amax((1, 2), keepdim=True) - expected.amin((1, 2), keepdim=True)
    )
    assert torch.allclose(maps[name], expected, atol=1e-5)
    assert float(maps[name].min()) == 0.0 and float(maps[name].max()) == pytest.approx(1.0)
    with pytest.raises(HeadstartError, match="backbone.nowhere"):
        attention_maps(network, images, layers=["backbone.nowhere"], image_size=16)
    with pytest.raises(HeadstartError, match="power=0"):
        attention_maps(network, images, power=0, image_size=16)


def test_probes_of_a_per_seed_comparison_use_each_runs_own_labelled_draw(tmp_path):
    """The start's backbone is the same file at both seeds; with a draw per seed its probes are not
    reused across seeds: each seed's k-NN bank is that run's own labelled digits."""
    from safetensors.torch import save_file

    from headstart.checkpoint import RunRecord
    from headstart.compare import run as run_comparison
    from headstart.zoo import load

    torch.manual_seed(0)
    start = load("test_resnet", weights=None, include_top=False).backbone.state_dict()
    save_file({key: value.contiguous() for key, value in start.items()}, tmp_path / "start.safetensors")
    model = {"name": "test_resnet", "weights": str(tmp_path / "start.safetensors"), "image_size": 16}
    lines: list[str] = []
    run_comparison(
        {
            "output": str(tmp_path / "out"),
            "seeds": [0, 1],
            "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 3, "labelled_draw": "per_seed"}},
            "arms": {"head": {"model": model, "stages": [{"name": "head", "freeze": ["backbone"], "epochs": 1}]}},
            "attention": {"enabled": False},
        },
        echo=lines.append,
        progress=False,
    )
    # the head stage keeps the start's backbone: met again within a seed, never across seeds
    assert sum("probes of 2 backbones (1 met before)" in line for line in lines) == 2, lines
    network = load("test_resnet", weights=tmp_path / "start.safetensors", include_top=False)
    scores = []
    for seed in (0, 1):
        folder = tmp_path / "out" / "head" / f"seed-{seed}"
        data, _ = run_data(folder)
        assert data.split("train").positions.tolist() == RunRecord.read(folder).splits["labelled_ids"]
        stored = json.loads((folder / "init-probe.json").read_text())
        direct = probe_network(network, data, image_size=16, source="init")
        assert stored["knn_accuracy"] == pytest.approx(direct.knn_accuracy) and stored["bank_size"] == 30
        scores.append((stored["knn_accuracy"], stored["linear_accuracy"]))
    assert scores[0] != scores[1]  # two banks of 30 digits, not one
