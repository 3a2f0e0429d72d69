"""The main job: five arms over seeds, judged by both gains, with its report.

``headstart demo --quick`` runs the same five arms as the full demo with a fifth of the epochs,
on the real MNIST-5k digits and the real EfficientNet-Lite0 ImageNet weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from headstart.cli import app
from headstart.compare import parse_compare
from headstart.data.builtin import load_mnist5k
from headstart.data.splits import make_splits
from headstart.demo import LABELS_PER_CLASS, SPLITS, demo_arms
from helpers import grey_image

ARMS = ["scratch", "rotation", "scratch+freematch", "rotation+freematch", "imagenet"]


def test_demo_arms_are_the_five_of_the_main_job():
    arms = demo_arms("out")
    assert list(arms) == ARMS
    for spec in arms.values():
        assert spec.data.source.kind == "mnist5k"
        assert spec.data.splits.labels_per_class == LABELS_PER_CLASS == 10
        assert spec.data.splits.labelled_draw == "per_seed"  # each seed labels its own 100 digits
        assert spec.stages[-1].data == "train" and spec.stages[-1].pretext is None
    assert arms["scratch"].model.weights is None and len(arms["scratch"].stages) == 1
    assert arms["rotation"].stages[0].pretext.name == "rotation"
    assert arms["rotation"].stages[0].data == "all"
    # the semi-supervised arm extends the rotation arm by one FixMatch stage (so the comparison shares
    # the rotation arm's stages and reports what FixMatch added)
    assert arms["rotation+freematch"].stages[:2] == arms["rotation"].stages
    semi = arms["rotation+freematch"].stages[2].semi_supervised
    assert (semi.method, semi.momentum, semi.ratio, semi.epoch) == ("freematch", 0.99, 7, "unlabelled")
    assert arms["rotation+freematch"].stages[2].epochs == 9 and arms["rotation"].model.image_size == 32
    assert arms["imagenet"].model.name == "efficientnet_lite0" and arms["imagenet"].model.weights == "imagenet"
    # the control: the same semi-supervised stage after the scratch arm's stage, without the rotation stage
    assert arms["scratch+freematch"].stages[0] == arms["scratch"].stages[0]
    assert arms["scratch+freematch"].stages[1] == arms["rotation+freematch"].stages[2]
    assert arms["imagenet"].stages[0].freeze == ["backbone"] and arms["imagenet"].stages[1].freeze == []


def test_show_config_prints_a_runnable_comparison_file(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--show-config", "--output", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    spec = parse_compare(yaml.safe_load(result.stdout), "shown")
    assert list(spec.arms) == ARMS
    assert spec.seeds == [0, 1, 2] and spec.baseline_arm == "scratch"
    assert spec.data.source.kind == "mnist5k"
    assert not (tmp_path / "demo").exists()


def test_demo_refuses_to_replace_a_folder_that_is_not_a_run(tmp_path):
    keep = tmp_path / "demo" / "scratch" / "seed-0" / "thesis.tex"
    keep.parent.mkdir(parents=True)
    keep.write_text("precious")
    result = CliRunner().invoke(app, ["demo", "--quick", "--output", str(tmp_path / "demo")])
    assert result.exit_code == 2
    assert "is not a headstart run" in result.output
    assert keep.read_text() == "precious"


@pytest.mark.slow
def test_quick_demo_runs_the_five_arms_over_two_seeds_and_reports_them(tmp_path: Path):
    output = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--seeds", "2", "--output", str(output)])
    assert result.exit_code == 0, result.output
    for arm in ARMS:
        assert arm in result.output
        for seed in (0, 1):
            assert json.loads((output / arm / f"seed-{seed}" / "run.json").read_text())["status"] == "finished"
    table = json.loads((output / "comparison.json").read_text())
    budget = table["budgets"][0]
    assert [row["name"] for row in budget["arms"]] == ARMS
    rows = {row["name"]: row for row in budget["arms"]}
    for row in rows.values():
        assert row["test_accuracy"]["n"] == 2 and row["seconds"]["mean"] > 0
    # chance is 0.1: every arm is far above it after a fifth of the epochs (seeds 0 and 1 give
    # scratch 0.586/0.635, rotation 0.749/0.721, ImageNet 0.507/0.428 on this build)
    assert rows["scratch"]["test_accuracy"]["mean"] > 0.4
    assert rows["rotation"]["test_accuracy"]["mean"] > 0.5
    assert rows["imagenet"]["test_accuracy"]["mean"] > 0.35
    assert rows["rotation"]["head_start_seconds"]["mean"] > 0 and rows["scratch"]["head_start_seconds"]["mean"] == 0
    assert rows["imagenet"]["cached_steps_to_target"]["n"] == rows["imagenet"]["reached"]
    assert (
        "± " in result.stdout
        and "test accuracy" in result.stdout
        and "95% CI" in result.stdout
        and "report:" in result.stdout
    )
    assert rows["rotation+freematch"]["test_accuracy"]["mean"] > rows["rotation"]["test_accuracy"]["mean"]
    assert "freematch after rotation (rotation+freematch): " in result.stdout
    assert "freematch after scratch" not in result.stdout  # scratch is the baseline: judged in its family
    assert "rotation+freematch against scratch+freematch: " in result.stdout  # the pretraining's own contrast
    assert result.stderr.count("0-rotation, 1-task shared with rotation") == 2
    assert result.stderr.count("0-task shared with scratch") == 2
    assert "[10/10] imagenet, seed 1" in result.stderr
    assert (output / "report.html").stat().st_size > 100_000
    assert "Semi-supervised stages" in (output / "report.html").read_text()
    fixmatch = json.loads((output / "rotation+freematch" / "seed-0" / "2-freematch" / "stage.json").read_text())
    # two passes over the pool; FreeMatch's global threshold starts at 1/C and rises with the confidence
    threshold = [row["train_unlabelled_threshold"] for row in fixmatch["history"]]
    used = [row["train_unlabelled_used"] for row in fixmatch["history"]]
    assert len(threshold) == 2 and 0.1 < threshold[0] < threshold[1], threshold
    assert all(0.1 < share <= 1 for share in used), used
    assert fixmatch["data"]["unlabelled_images"] == 3750
    # a second demo reuses every finished run
    again = CliRunner().invoke(app, ["demo", "--quick", "--seeds", "2", "--output", str(output)])
    assert again.exit_code == 0 and again.stderr.count("finished before, reused") == 10
    # the trained ImageNet arm predicts real test digits, saved as grey PNGs, through the command
    # the test split is the same whatever the labelled draw
    splits = make_splits(load_mnist5k(), **{key: value for key, value in SPLITS.items() if key != "labelled_draw"})
    digits = tmp_path / "digits"
    digits.mkdir()
    paths, truth = [], []
    for index, position in enumerate(splits.test.positions[:30]):
        path = digits / f"{index:02d}.png"
        grey_image(splits.test.store.load(np.array([position]))[0, 0]).save(path)
        paths.append(str(path))
        truth.append(splits.test.class_names[splits.test.labels[index]])
    predicted = CliRunner().invoke(
        app, ["predict", *paths, "--checkpoint", str(output / "imagenet" / "seed-0"), "--json", "--top", "1"]
    )
    assert predicted.exit_code == 0, predicted.output
    labels = [entry["predictions"][0]["label"] for entry in json.loads(predicted.stdout)]
    assert set(labels) <= {str(digit) for digit in range(10)}
    assert np.mean([label == answer for label, answer in zip(labels, truth, strict=True)]) > 0.35
