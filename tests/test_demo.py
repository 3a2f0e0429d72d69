"""The main job and the comparison that judges pretraining by its two gains.

``headstart demo --quick`` runs the same three arms as the full demo with a fifth of the epochs,
on the real MNIST-5k digits and the real EfficientNet-Lite0 ImageNet weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from headstart.cli import app
from headstart.data.builtin import load_mnist5k
from headstart.data.splits import make_splits
from headstart.demo import LABELS_PER_CLASS, SPLITS, demo_arms
from headstart.report.comparison import ArmOutcome, arm_outcome, compare, epochs_to_reach, write_comparison


def test_epochs_to_reach_counts_from_one_and_reports_never():
    assert epochs_to_reach([0.2, 0.5, 0.7, 0.6], 0.5) == 2
    assert epochs_to_reach([0.2, 0.5, 0.7], 0.71) is None
    assert epochs_to_reach([], 0.1) is None


def test_compare_uses_the_best_of_the_baseline_as_target():
    scratch = ArmOutcome("scratch", ["task"], 0.70, 10.0, [0.3, 0.6, 0.65, 0.62], 0.0)
    pretrained = ArmOutcome("rotation", ["rotation", "task"], 0.80, 30.0, [0.5, 0.66, 0.7], 20.0)
    slow = ArmOutcome("slow", ["task"], 0.60, 5.0, [0.1, 0.2], 0.0)
    table = compare([scratch, pretrained, slow])
    assert table["target_val_accuracy"] == pytest.approx(0.65)
    rows = {row["name"]: row for row in table["arms"]}
    assert rows["scratch"]["epochs_to_target"] == 3
    assert rows["rotation"]["epochs_to_target"] == 2
    assert rows["slow"]["epochs_to_target"] is None
    assert rows["rotation"]["test_gain"] == pytest.approx(0.10)
    assert rows["scratch"]["test_gain"] == 0
    with pytest.raises(ValueError, match="baseline arm 'other'"):
        compare([scratch], baseline="other")


def test_arm_outcome_reads_the_run_from_disk_and_counts_only_labelled_stages(tmp_path):
    from headstart.config import parse_run
    from headstart.structure import run

    spec = parse_run({
        "output": str(tmp_path / "arm"), "progress": False, "seed": 1,
        "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 10}},
        "model": {"name": "test_resnet", "weights": None, "image_size": 16},
        "stages": [{"name": "rotation", "data": "all", "pretext": {"name": "rotation"}, "epochs": 1, "batch_size": 64},
                   {"name": "task", "epochs": 3, "batch_size": 25}],
    })
    result = run(spec)
    del result  # the report reads only what the run wrote
    outcome = arm_outcome("rotation", tmp_path / "arm")
    records = [json.loads((tmp_path / "arm" / folder / "stage.json").read_text()) for folder in ("0-rotation", "1-task")]
    assert outcome.stages == ["rotation", "task"]
    assert outcome.labelled_curve == [row["val_accuracy"] for row in records[1]["history"]]
    assert len(outcome.labelled_curve) == 3
    assert outcome.head_start_seconds == pytest.approx(records[0]["seconds"])
    assert outcome.test_accuracy == json.loads((tmp_path / "arm" / "run.json").read_text())["test"]["accuracy"]
    # a run that did not finish is not an arm
    status = json.loads((tmp_path / "arm" / "run.json").read_text())
    (tmp_path / "arm" / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    with pytest.raises(ValueError, match="interrupted, not finished"):
        arm_outcome("rotation", tmp_path / "arm")


def test_write_comparison_writes_a_table_and_a_figure(tmp_path):
    outcomes = [ArmOutcome("scratch", ["task"], 0.7, 10.0, [0.3, 0.6], 0.0),
                ArmOutcome("rotation", ["rotation", "task"], 0.8, 30.0, [0.5, 0.7], 20.0)]
    table = write_comparison(outcomes, tmp_path / "out", title="unit")
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())["arms"][1]["epochs_to_target"] == 2
    with Image.open(tmp_path / "out" / "comparison.png") as figure:
        assert figure.size[0] > 600 and figure.size[1] > 300
    assert table["title"] == "unit"
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_demo_arms_are_the_three_of_the_main_job():
    arms = demo_arms("out")
    assert list(arms) == ["scratch", "rotation", "imagenet"]
    for spec in arms.values():
        assert spec.data.source.kind == "mnist5k"
        assert spec.data.splits.labels_per_class == LABELS_PER_CLASS == 10
        assert spec.stages[-1].data == "train" and spec.stages[-1].pretext is None
    assert arms["scratch"].model.weights is None and len(arms["scratch"].stages) == 1
    assert arms["rotation"].stages[0].pretext.name == "rotation"
    assert arms["rotation"].stages[0].data == "all"
    assert arms["imagenet"].model.name == "efficientnet_lite0" and arms["imagenet"].model.weights == "imagenet"
    assert arms["imagenet"].stages[0].freeze == ["backbone"] and arms["imagenet"].stages[1].freeze == []


def test_show_config_prints_runnable_run_files(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--show-config", "--output", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    documents = [part for part in result.output.split("# --- ") if part.strip()]
    assert [part.splitlines()[0].strip(" -") for part in documents] == ["scratch", "rotation", "imagenet"]
    for part in documents:
        assert yaml.safe_load(part.split("\n", 1)[1])["data"]["source"]["kind"] == "mnist5k"
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path):
    keep = tmp_path / "demo" / "scratch" / "thesis.tex"
    keep.parent.mkdir(parents=True)
    keep.write_text("precious")
    result = CliRunner().invoke(app, ["demo", "--quick", "--output", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "is not a headstart run" in result.output
    assert keep.read_text() == "precious"


@pytest.mark.slow
def test_quick_demo_runs_the_three_arms_and_plots_them(tmp_path: Path):
    output = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--output", str(output)])
    assert result.exit_code == 0, result.output
    for arm in ("scratch", "rotation", "imagenet"):
        assert arm in result.output
        assert (output / arm / "run.json").exists()
    table = json.loads((output / "comparison.json").read_text())
    assert [row["name"] for row in table["arms"]] == ["scratch", "rotation", "imagenet"]
    rows = {row["name"]: row for row in table["arms"]}
    for row in rows.values():
        assert row["seconds"] > 0
    # chance is 0.1: every arm is far above it after a fifth of the epochs (seed 0 gives scratch
    # 0.586, rotation 0.749, ImageNet 0.507 on this build)
    assert rows["scratch"]["test_accuracy"] > 0.4
    assert rows["rotation"]["test_accuracy"] > 0.5
    assert rows["imagenet"]["test_accuracy"] > 0.45
    assert rows["rotation"]["head_start_seconds"] > 0 and rows["scratch"]["head_start_seconds"] == 0
    assert (output / "comparison.png").stat().st_size > 10_000
    assert "test accuracy" in result.output and "comparison plotted" in result.output
    # the trained ImageNet arm predicts real test digits, saved as grey PNGs, through the command
    splits = make_splits(load_mnist5k(), **SPLITS)
    digits = tmp_path / "digits"
    digits.mkdir()
    paths, truth = [], []
    for index, position in enumerate(splits.test.positions[:30]):
        image = (splits.test.store.load(np.array([position]))[0, 0].numpy() * 255).round().astype(np.uint8)
        path = digits / f"{index:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
        truth.append(splits.test.class_names[splits.test.labels[index]])
    predicted = CliRunner().invoke(app, ["predict", *paths, "--checkpoint", str(output / "imagenet"), "--json", "--top", "1"])
    assert predicted.exit_code == 0, predicted.output
    labels = [entry["predictions"][0]["label"] for entry in json.loads(predicted.stdout)]
    assert set(labels) <= {str(digit) for digit in range(10)}
    assert np.mean([label == answer for label, answer in zip(labels, truth)]) > 0.5
