"""Interop: ONNX export with parity on real images, import as a trainable backbone, Keras export."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart import interop
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.stage import fit_stage
from headstart.zoo import load
from helpers import TINY_EFFICIENTNET as TINY
from helpers import digit_data


@pytest.mark.slow
def test_onnx_round_trip_of_real_efficientnet_lite0_within_1e4(tmp_path):
    import onnxruntime

    network = load("EfficientNetLite0", weights="imagenet")
    report = interop.export_onnx(network, tmp_path / "lite0.onnx")
    assert report.max_abs_difference < 1e-4
    assert report.dynamic_axes == ["batch", "height", "width"]
    assert [check.input_shape for check in report.checks] == [[3, 3, 224, 224], [2, 3, 280, 192]]
    assert os.listdir(tmp_path) == ["lite0.onnx"]  # one file, weights inside
    metadata = interop.read_metadata(tmp_path / "lite0.onnx")
    assert metadata["model_name"] == "EfficientNetLite0" and metadata["output_kind"] == "softmax"
    assert metadata["labels"][285] == network.labels[285] and metadata["preprocessing"]["input_size"] == [3, 224, 224]
    # an independent run: four real photographs, the cat still an Egyptian cat
    session = onnxruntime.InferenceSession(str(tmp_path / "lite0.onnx"), providers=["CPUExecutionProvider"])
    batch = interop.sample_batch(network.preprocessing, count=4)
    logits = session.run(None, {"input": batch.numpy()})[0]
    with torch.no_grad():
        assert np.abs(logits - network(batch).numpy()).max() < 1e-4
    assert "Egyptian cat" in metadata["labels"][int(logits[0].argmax())]


def test_a_failed_export_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(HeadstartError, match=r"model.onnx: not written, the onnx model differs from PyTorch"):
        interop.export_onnx(load(TINY, weights=None), path, tolerance=-1.0)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["model.onnx"]


def test_fixed_size_export_refuses_another_size(tmp_path):
    report = interop.export_onnx(load(TINY, weights=None), tmp_path / "fixed.onnx", dynamic_size=False)
    assert report.dynamic_axes == ["batch"] and len(report.checks) == 1


def test_imported_onnx_backbone_trains_in_a_stage_with_freezing_by_name(tmp_path):
    torch.manual_seed(0)
    source = load(TINY, weights=None, in_chans=1)
    interop.export_onnx(source, tmp_path / "foreign.onnx")
    network = interop.import_onnx(tmp_path / "foreign.onnx")
    assert network.preprocessing == source.preprocessing  # read from the file's metadata
    batch = interop.sample_batch(network.preprocessing, size=(32, 32))
    source.eval()
    with torch.no_grad():
        extractor = load(TINY, weights=None, include_top=False, in_chans=1)
        extractor.load_state_dict(
            {key: value for key, value in source.state_dict().items() if key in extractor.state_dict()}
        )
        assert torch.allclose(network.pooled(batch), extractor.eval().pooled(batch), atol=1e-5)
    groups = network.param_groups()
    assert "stem" in groups and "blocks[0]" in groups
    data = digit_data(40)
    record = fit_stage(
        network,
        {"name": "task", "freeze": ["stem", "blocks[:2]"], "epochs": 3, "optimizer": {"lr": 0.01}},
        data,
        folder=tmp_path / "0-task",
        image_size=32,
    )
    frozen = set(network.select("stem", "blocks[:2]"))
    assert set(record.frozen) == frozen and frozen
    assert record.last_metrics["val_accuracy"] > 0.3  # chance is 0.1
    again = interop.load_imported_stage(tmp_path / "foreign.onnx", tmp_path / "0-task")
    with torch.no_grad():
        assert torch.equal(again.predict(batch), network.predict(batch))


def test_import_errors_name_the_file_and_tensor(tmp_path):
    with pytest.raises(HeadstartError, match="absent.onnx: no such ONNX file"):
        interop.import_onnx(tmp_path / "absent.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(HeadstartError, match="junk.onnx: not a readable ONNX model"):
        interop.import_onnx(tmp_path / "junk.onnx")
    interop.export_onnx(load(TINY, weights=None), tmp_path / "tiny.onnx")
    with pytest.raises(HeadstartError, match="features='nowhere': no tensor of that name"):
        interop.import_onnx(tmp_path / "tiny.onnx", features="nowhere")


def test_cli_export_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["export", TINY, "--weights", "none", "-o", str(tmp_path / "m.onnx"), "--format", "tflite"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--format 'tflite': expected one of onnx, keras" in result.output
    result = runner.invoke(
        app, ["export", TINY, "--weights", "none", "-o", str(tmp_path / "m.txt"), "--format", "keras"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output and "m.txt" in result.output


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("onnx2tf") is None, reason='needs the keras extra: pip install "headstart[keras]"'
)
def test_keras_export_parity_within_1e4(tmp_path):
    # its own process: TensorFlow and torch share the process badly when torchvision is imported after TensorFlow
    path = tmp_path / "tiny.keras"
    completed = subprocess.run(
        [sys.executable, "-m", "headstart", "export", TINY, "--weights", "none", "-o", str(path), "--format", "keras"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "max |PyTorch − keras|" in completed.stdout
    difference = float(completed.stdout.split("max |PyTorch − keras| = ")[1].split()[0])
    assert difference < 1e-4
    sidecar = json.loads((tmp_path / "tiny.keras.json").read_text())
    assert sidecar["input"].startswith("float32 [batch, height, width, channels]") and path.stat().st_size > 0
