"""Verdicts that see the small classes: balanced accuracy, macro F1 and per-class recall in every run,
the comparison's judging metric (``metric: auto`` picks balanced accuracy for imbalanced labelled
classes and says so), and the class-weighted task loss (``class_weights``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score, f1_score
from sklearn.utils.class_weight import compute_class_weight

from headstart.checkpoint import RunRecord
from headstart.errors import HeadstartError
from headstart.files import COMPARISON_FILE
from headstart.metrics import class_metrics, confusion_matrix
from helpers import TINY_RESNET, write_image_folder

LABELS = ["cat", "fox"]
TRAIN_COUNTS = {"cat": 900, "fox": 40}
TARGETS = [0] * 180 + [1] * 8  # the test split of 900 cats and 40 foxes


def _predictions(cats_right: int, foxes_right: int) -> list[int]:
    """Predictions of :data:`TARGETS` with the first ``cats_right`` cats and ``foxes_right`` foxes right."""
    cats = [0] * cats_right + [1] * (180 - cats_right)
    foxes = [1] * foxes_right + [0] * (8 - foxes_right)
    return cats + foxes


PLANTED = {
    # seed → (cats right, foxes right) of each arm; "blind" never says fox
    "sees": {0: (172, 6), 1: (170, 7), 2: (171, 7)},
    "blind": {0: (180, 0), 1: (180, 0), 2: (180, 0)},
}


def _write_run(folder: Path, name: str, seed: int, predictions: list[int], *, recorded: str = "all") -> None:
    """A finished run folder as structure.run writes it (no stages needed for the verdicts); ``recorded``:
    ``all`` (this version), ``confusion`` (a run.json from before balanced accuracy was recorded), or
    ``accuracy`` (older still: no confusion matrix either)."""
    metrics = class_metrics(confusion_matrix(predictions, TARGETS, 2))
    test = {"loss": 0.3, "accuracy": metrics["accuracy"], "count": float(len(TARGETS))}
    extra: dict = {}
    if recorded == "all":
        test |= {"balanced_accuracy": metrics["balanced_accuracy"], "macro_f1": metrics["macro_f1"]}
        extra = {"test_recall": metrics["recall"], "train_class_counts": TRAIN_COUNTS}
    if recorded in ("all", "confusion"):
        extra |= {
            "test_confusion": confusion_matrix(predictions, TARGETS, 2).tolist(),
            "test_predictions": predictions,
            "test_targets": TARGETS,
        }
    folder.mkdir(parents=True)
    RunRecord(
        name=name,
        config_hash=f"{name}-{seed}",
        config={"seed": seed},
        status="finished",
        test=test,
        labels=LABELS,
        **extra,
    ).write(folder)


def _comparison(root: Path, seeds: list[int], *, metric: str | None = None, recorded: str = "all") -> Path:
    """A comparison folder of the planted arms: ``sees`` (the baseline) and ``blind``."""
    runs = []
    for seed in seeds:
        for arm, scores in PLANTED.items():
            folder = f"{arm}/seed-{seed}"
            _write_run(root / folder, arm, seed, _predictions(*scores[seed]), recorded=recorded)
            runs.append({"arm": arm, "seed": seed, "budget": None, "folder": folder})
    manifest = {
        "name": "cats-and-foxes",
        "spec": {} if metric is None else {"metric": metric},
        "baseline": "sees",
        "arms": list(PLANTED),
        "seeds": seeds,
        "label_budgets": None,
        "runs": runs,
    }
    (root / COMPARISON_FILE).write_text(json.dumps(manifest))
    return root


def _arm(budget: dict, name: str) -> dict:
    return next(arm for arm in budget["arms"] if arm["name"] == name)


def test_the_arm_that_ignores_the_small_class_wins_on_accuracy_and_loses_on_balanced_accuracy(tmp_path):
    from headstart.report.summary import summarise
    from headstart.report.verdicts import budget_verdict

    on_accuracy = summarise(_comparison(tmp_path / "accuracy", [0, 1, 2], metric="accuracy"))
    budget = on_accuracy["budgets"][0]
    assert on_accuracy["metric"] == "accuracy" and budget["winner"]["arm"] == "blind"
    assert budget["winner"]["verdict"]["word"] == "better"  # 0.957 against 0.946: blind wins on accuracy

    auto = summarise(_comparison(tmp_path / "auto", [0, 1, 2]))
    budget = auto["budgets"][0]
    assert auto["metric"] == "balanced_accuracy" and auto["metric_choice"] == "auto"
    assert auto["metric_reason"] == (
        "judged on balanced accuracy: the labelled classes are imbalanced, 900 (cat) against 40 (fox)"
    )
    assert budget["winner"]["arm"] == "sees"
    blind = _arm(budget, "blind")
    assert blind["verdict"]["word"] == "worse" and blind["verdict"]["metric"] == "balanced_accuracy"
    assert blind["balanced_accuracy"]["mean"] == pytest.approx(0.5)
    assert blind["test_accuracy"]["mean"] == pytest.approx(180 / 188)
    assert blind["gain"]["mean"] == pytest.approx(0.5 - _arm(budget, "sees")["balanced_accuracy"]["mean"])
    sees_recall = _arm(budget, "sees")["recall"]
    assert sees_recall["labels"] == LABELS
    assert sees_recall["classes"][1]["mean"] == pytest.approx(np.mean([6 / 8, 7 / 8, 7 / 8]))
    assert blind["recall"]["classes"][1]["mean"] == 0.0
    line = budget_verdict(budget)
    assert line.startswith("the baseline sees had the best test balanced accuracy") and "accuracy 0.94" in line
    written = json.loads((tmp_path / "auto" / "comparison.json").read_text())
    assert written["metric"] == "balanced_accuracy" and written["budgets"][0]["metric"] == "balanced_accuracy"
    assert written["metric_reason"] == auto["metric_reason"]
    # macro F1 judges alike here, and the balanced accuracy of each run is scikit-learn's
    macro = summarise(_comparison(tmp_path / "macro", [0, 1, 2], metric="macro_f1"))
    assert macro["budgets"][0]["winner"]["arm"] == "sees"
    assert _arm(macro["budgets"][0], "sees")["macro_f1"]["values"][0] == pytest.approx(
        f1_score(TARGETS, _predictions(172, 6), average="macro")
    )
    assert _arm(budget, "sees")["balanced_accuracy"]["values"][0] == pytest.approx(
        balanced_accuracy_score(TARGETS, _predictions(172, 6))
    )


def test_one_seed_judges_balanced_accuracy_by_a_paired_bootstrap_and_accuracy_by_mcnemar(tmp_path):
    from headstart.report.summary import summarise

    auto = summarise(_comparison(tmp_path / "auto", [0]))
    verdict = _arm(auto["budgets"][0], "blind")["verdict"]
    assert verdict["method"] == "paired bootstrap" and verdict["word"] == "worse" and verdict["resamples"] == 2000
    accuracy = summarise(_comparison(tmp_path / "accuracy", [0], metric="accuracy"))
    assert _arm(accuracy["budgets"][0], "blind")["verdict"]["method"] == "McNemar exact"


def test_the_report_tables_and_terminal_say_which_metric_judged(tmp_path, capsys):
    from headstart.cli.training import _print_comparison
    from headstart.compare import CompareResult
    from headstart.report.html import write_report
    from headstart.report.summary import summarise
    from headstart.report.tables import render

    folder = _comparison(tmp_path / "auto", [0, 1, 2])
    table = summarise(folder)
    page = write_report(folder).read_text()
    assert "Judged on balanced accuracy: the labelled classes are imbalanced, 900 (cat) against 40 (fox)" in page
    assert "Recall per class" in page and "recall of fox" in page and "balanced accuracy gain over sees" in page
    written = json.loads((folder / "comparison.json").read_text())
    levels = render("levels", written)
    assert "| arm | test balanced accuracy |" in levels and "**0.892 ± 0.034 (3)**" in levels
    arms = render("arms", written)
    assert "| balanced accuracy |" in arms and "balanced accuracy against `sees`, paired" in arms
    assert "| difference in balanced accuracy |" in render("effects", written)
    recall = render("recall", written)
    assert (
        "| arm | recall of cat | recall of fox |" in recall and "| `blind` | 1.000 ± 0.000 | 0.000 ± 0.000 |" in recall
    )
    _print_comparison(CompareResult(folder, table, folder / "report.html", 0.0))
    printed = capsys.readouterr().out
    assert "judged on balanced accuracy: the labelled classes are imbalanced" in printed
    assert "balanced acc." in printed and "the baseline sees had the best test balanced accuracy" in printed


@pytest.mark.parametrize("recorded", ["confusion", "accuracy"])
def test_old_run_files_without_the_new_fields_still_summarise(tmp_path, recorded):
    """run.json from before balanced accuracy was recorded: judged on accuracy as before (auto reads the
    labelled class counts, which they lack); balanced accuracy and recall come from the confusion matrix
    when there is one."""
    from headstart.report.html import write_report
    from headstart.report.summary import summarise

    folder = _comparison(tmp_path / recorded, [0, 1], recorded=recorded)
    summary = summarise(folder)
    assert summary["metric"] == "accuracy"
    assert summary["metric_reason"] == "judged on accuracy: the runs did not record their labelled class counts"
    budget = summary["budgets"][0]
    assert budget["winner"]["arm"] == "blind" and _arm(budget, "blind")["verdict"] is not None
    blind = _arm(budget, "blind")
    if recorded == "confusion":
        assert blind["balanced_accuracy"]["mean"] == pytest.approx(0.5) and blind["recall"]["labels"] == LABELS
    else:
        assert blind["balanced_accuracy"]["mean"] is None and blind["recall"] is None
    assert "recall of fox" in write_report(folder).read_text() or recorded == "accuracy"
    # asked for balanced accuracy, runs without it are left unjudged rather than failing
    (folder / COMPARISON_FILE).write_text(
        json.dumps({**json.loads((folder / COMPARISON_FILE).read_text()), "spec": {"metric": "balanced_accuracy"}})
    )
    chosen = summarise(folder, write=False)["budgets"][0]
    assert chosen["winner"] is None if recorded == "accuracy" else chosen["winner"]["arm"] == "sees"


def test_the_comparison_file_takes_a_metric_and_refuses_an_unknown_one():
    from headstart.compare import parse_compare

    data = {
        "data": {"source": {"kind": "digits"}},
        "arms": {"a": {"model": {"name": TINY_RESNET}, "stages": [{"name": "t"}]}},
    }
    assert parse_compare(data).metric == "auto"
    assert parse_compare({**data, "metric": "macro_f1"}).metric == "macro_f1"
    with pytest.raises(HeadstartError, match="metric"):
        parse_compare({**data, "metric": "f1"})


# ---------------------------------------------------------------------------- the class-weighted loss


def test_the_weighted_task_loss_is_torchs_weighted_cross_entropy():
    from headstart.engine.losses import task_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 3, generator=generator)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2])
    weight = torch.tensor([0.5, 2.0, 2.0])
    weighted = task_loss("cross_entropy", logits, labels, weight)
    assert torch.allclose(weighted, F.cross_entropy(logits, labels, weight=weight))
    assert not torch.allclose(weighted, task_loss("cross_entropy", logits, labels))
    # every loss: the images' losses weighted by their class, divided by the sum of the weights
    per_image = F.cross_entropy(logits, labels, reduction="none")
    assert torch.allclose(weighted, (per_image * weight[labels]).sum() / weight[labels].sum())
    one = torch.randn(12, 1, generator=generator)  # binary ⇒ one sigmoid
    binary = labels.clamp(max=1)
    two = torch.tensor([1.0, 3.0])
    expected = F.binary_cross_entropy_with_logits(one[:, 0], binary.float(), reduction="none")
    assert torch.allclose(
        task_loss("binary_cross_entropy", one, binary, two), (expected * two[binary]).sum() / two[binary].sum()
    )
    for kind in ("binary_cross_entropy", "mse", "huber"):  # equal weights change nothing
        assert torch.allclose(task_loss(kind, logits, labels, torch.full((3,), 4.0)), task_loss(kind, logits, labels))


def test_balanced_class_weights_are_scikit_learns_and_a_wrong_count_names_the_key():
    from headstart.engine.losses import class_weights

    labels = np.array([0] * 90 + [1] * 4 + [2] * 6)
    counts = np.bincount(labels).tolist()
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert class_weights("balanced", counts, ["a", "b", "c"], "stages[0].class_weights") == pytest.approx(expected)
    assert class_weights([1, 2, 3], counts, ["a", "b", "c"], "x") == [1.0, 2.0, 3.0]
    assert class_weights(None, counts, ["a", "b", "c"], "x") is None
    with pytest.raises(HeadstartError, match=r"stages\[1\]\.class_weights: 2 weights for 3 classes \(a, b, c\)"):
        class_weights([1, 2], counts, ["a", "b", "c"], "stages[1].class_weights")
    with pytest.raises(HeadstartError, match="c has none"):
        class_weights("balanced", [5, 5, 0], ["a", "b", "c"], "stages[0].class_weights")


def test_class_weights_in_the_run_file_change_the_hash_only_when_set():
    from headstart.config import parse_run

    run = {
        "data": {"source": {"kind": "digits"}},
        "model": {"name": TINY_RESNET, "weights": None},
        "stages": [{"name": "task"}],
    }
    plain = parse_run(run).config_hash()
    assert parse_run({**run, "stages": [{"name": "task", "class_weights": "none"}]}).stages[0].class_weights is None
    assert parse_run({**run, "stages": [{"name": "task", "class_weights": "none"}]}).config_hash() == plain
    balanced = parse_run({**run, "stages": [{"name": "task", "class_weights": "balanced"}]})
    assert balanced.config_hash() != plain and balanced.stages[0].class_weights == "balanced"
    listed = parse_run({**run, "stages": [{"name": "task", "class_weights": [1, 2.5]}]})
    assert listed.stages[0].class_weights == [1.0, 2.5] and listed.config_hash() not in (plain, balanced.config_hash())
    with pytest.raises(HeadstartError, match=r"stages\[0\]\.class_weights"):
        parse_run({**run, "stages": [{"name": "task", "class_weights": [1, -2]}]})
    with pytest.raises(HeadstartError, match="pretext stage has none"):
        parse_run(
            {
                **run,
                "stages": [{"name": "r", "data": "all", "pretext": {"name": "rotation"}, "class_weights": "balanced"}],
            }
        )


def _imbalanced_run(tmp_path: Path, class_weights) -> dict:
    """A run file on a folder of 36 dark "cat" images and 9 bright "fox" images, 8 px."""
    root = write_image_folder(
        tmp_path / "photos",
        {"cat": 36, "fox": 9},
        size=8,
        colour=lambda name, index: (20 + index, 30, 40) if name == "cat" else (200, 180 + index, 160),
    )
    stage = {"name": "task", "epochs": 1, "batch_size": 8, "class_weights": class_weights}
    return {
        "output": str(tmp_path / "run"),
        "progress": False,
        "data": {"source": {"kind": "folder", "path": str(root), "image_size": 8}},
        "model": {"name": TINY_RESNET, "weights": None, "image_size": 16},
        "stages": [stage],
    }


def test_a_run_records_its_class_metrics_and_a_weighted_stage_records_its_weights(tmp_path):
    from headstart.config import parse_run
    from headstart.data import TaskData
    from headstart.structure import run

    spec = parse_run(_imbalanced_run(tmp_path, "balanced"))
    result = run(spec)
    record = RunRecord.read(result.folder)
    assert record.train_class_counts is not None and set(record.train_class_counts) == {"cat", "fox"}
    train = TaskData.from_spec(spec.data, run_seed=0).split("train").labels
    assert list(record.train_class_counts.values()) == np.bincount(train).tolist()
    expected = class_metrics(record.test_confusion)
    assert record.test["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert record.test["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert record.test_recall == pytest.approx(expected["recall"])
    assert record.test["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(record.test_targets, record.test_predictions)
    )
    stage = json.loads((result.folder / "0-task" / "stage.json").read_text())
    assert stage["stage"]["class_weights"] == "balanced"
    assert stage["class_weights"] == pytest.approx(compute_class_weight("balanced", classes=np.arange(2), y=train))
    assert stage["class_weights"][1] > 1 > stage["class_weights"][0]
    # the same run unweighted: same network, same batches, other losses once a batch mixes the classes
    plain = run(parse_run({**_imbalanced_run(tmp_path, None), "output": str(tmp_path / "plain")}))
    unweighted = json.loads((plain.folder / "0-task" / "stage.json").read_text())
    assert unweighted["class_weights"] is None and unweighted["stage"]["class_weights"] is None
    assert unweighted["step_losses"] != pytest.approx(stage["step_losses"], rel=1e-3)
    assert plain.spec.config_hash() != spec.config_hash()


def test_a_wrong_count_of_class_weights_fails_before_any_stage_trains(tmp_path):
    from headstart.config import parse_run
    from headstart.structure import run

    spec = parse_run(_imbalanced_run(tmp_path, [1.0, 2.0, 3.0]))
    with pytest.raises(HeadstartError, match=r"stages\[0\]\.class_weights \(stage 'task'\): 3 weights for 2 classes"):
        run(spec)
    assert not (tmp_path / "run" / "0-task").exists()


def test_a_stage_trains_on_torchs_weighted_cross_entropy_with_balanced_weights_of_its_split():
    from headstart.config import StageSpec
    from headstart.engine.module import StageData, StageModule
    from headstart.heads import HeadSpec, build_head
    from helpers import digit_network

    network = digit_network()
    head = build_head(HeadSpec.for_classes(3, "cross_entropy"), network.head_in_features)
    network.replace_head(head, labels=["a", "b", "c"])
    labels = torch.tensor([0] * 8 + [1] * 2 + [2] * 2)
    data = StageData(train=(torch.zeros(12, network.head_in_features), labels), val=None)
    module = StageModule(network, StageSpec(name="t", class_weights="balanced"), 0, data, seed=0, image_size=16)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert module.class_weights == pytest.approx(expected)
    logits = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    loss, _ = module._task_step(logits, labels, training=True)
    assert torch.allclose(loss, F.cross_entropy(logits, labels, weight=torch.tensor(expected, dtype=torch.float32)))
    plain = StageModule(network, StageSpec(name="t"), 0, data, seed=0, image_size=16)
    assert plain.class_weights is None
    assert torch.allclose(plain._task_step(logits, labels, training=True)[0], F.cross_entropy(logits, labels))
    assert "loss_weights" not in module.state_dict()  # checkpoints keep their keys
