"""Multi-stage runs end to end on real digits: head swaps, freezing, caching, resume, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from headstart.checkpoint import load_network, load_weights
from headstart.config import load_run_file, parse_run
from headstart.errors import HeadstartError
from headstart.structure import run
from helpers import digit_run

THREE_STAGES = """
name: three-stages
seed: 3
output: {output}
progress: false
data:
  source: {{kind: digits}}
  splits: {{test_fraction: 0.2, val_fraction: 0.1, labels_per_class: 20}}
model: {{name: test_resnet, weights: none, image_size: 16}}
stages:
  - name: rotation
    data: all
    pretext: {{name: rotation}}
    epochs: 2
    batch_size: 64
  - name: head
    freeze: [backbone]
    epochs: 3
    batch_size: 32
    optimizer: {{lr: 0.01}}
  - name: fine-tune
    epochs: 2
    batch_size: 32
    bn_policy: train
    optimizer: {{lr: 0.001, group_lr: {{stem: 0.0001}}}}
    early_stopping: {{monitor: val_accuracy, patience: 5}}
"""


def _write(tmp_path: Path, text: str, **values) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(text).format(**values))
    return path


def test_three_stage_yaml_run_end_to_end(tmp_path):
    spec = load_run_file(_write(tmp_path, THREE_STAGES, output=tmp_path / "out"))
    result = run(spec)
    assert [stage.stage_name for stage in result.stages] == ["rotation", "head", "fine-tune"]
    rotation, head, fine_tune = result.stages
    # the pretext head is replaced by a 10-class head; only the head is re-initialised
    assert rotation.handover.head == "new rotation pretext head"
    assert head.handover.head == "new task head"
    assert head.handover.reinitialised and all(name.startswith("head.") for name in head.handover.reinitialised)
    assert fine_tune.handover.head == "kept"
    # whole backbone frozen + BN frozen + no augmentation → features computed once
    assert head.cached_features and not fine_tune.cached_features
    assert len(rotation.history) == 2 and "val_loss" in rotation.history[-1]
    metadata = json.loads((result.folder / "1-head" / "stage.json").read_text())
    assert metadata["bn_policy"] == "frozen"
    assert metadata["head"]["labels"] == [str(digit) for digit in range(10)]
    assert all(name.startswith("backbone.") for name in metadata["frozen"]) and metadata["frozen"]
    assert metadata["config_hash"] == spec.config_hash()
    assert {"torch", "timm", "lightning", "headstart"} <= set(metadata["versions"])
    # ten classes (chance 0.1), 200 labelled digits, seven short epochs: seed 3 reaches 0.70
    assert result.test["accuracy"] > 0.5 and result.test["count"] > 300
    # the trained network predicts from its checkpoint
    network = load_network(result.folder)
    saved = load_weights(result.folder / "2-fine-tune" / "weights.safetensors")
    loaded = network.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert network.labels == [str(digit) for digit in range(10)]


def test_frozen_parameters_and_bn_statistics_stay_fixed_through_a_lightning_stage(tmp_path):
    spec = parse_run(
        digit_run(
            tmp_path / "frozen",
            [
                {"name": "warm", "epochs": 1, "batch_size": 32},
                # augmentation stops feature caching, so the backbone really runs in every step
                {
                    "name": "frozen",
                    "freeze": ["backbone"],
                    "bn_policy": "frozen",
                    "augment": "flip",
                    "epochs": 2,
                    "batch_size": 32,
                    "optimizer": {"lr": 0.05},
                },
            ],
            seed=1,
        )
    )
    before: dict[str, torch.Tensor] = {}

    def remember(stage_result):
        if stage_result.stage_name == "warm":
            before.update({k: v.clone() for k, v in load_weights(stage_result.folder / "weights.safetensors").items()})

    result = run(spec, on_stage_end=remember)
    assert not result.stages[1].cached_features
    after = load_weights(result.folder / "1-frozen" / "weights.safetensors")
    backbone = [k for k in after if k.startswith("backbone.")]
    running = [k for k in backbone if "running_" in k]
    assert running, "test_resnet has BatchNorm layers"
    for key in backbone:
        assert torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("head."))


def test_cached_head_stage_matches_uncached(tmp_path):
    def head_weights(cache: bool) -> dict[str, torch.Tensor]:
        spec = parse_run(
            digit_run(
                tmp_path / f"cache-{cache}",
                [{"name": "head", "freeze": ["backbone"], "epochs": 3, "batch_size": 30, "cache_features": cache}],
                labels_per_class=15,
                seed=2,
            )
        )
        result = run(spec)
        assert result.stages[0].cached_features is cache
        return {k: v for k, v in result.network.state_dict().items() if k.startswith("head.")}

    cached, uncached = head_weights(True), head_weights(False)
    for key in cached:
        torch.testing.assert_close(cached[key], uncached[key], atol=1e-5, rtol=1e-4)


def test_metrics_go_to_csv_and_tensorboard_logs(tmp_path):
    spec = parse_run(
        digit_run(tmp_path / "logs", [{"name": "task", "epochs": 2, "batch_size": 25}], loggers=["csv", "tensorboard"])
    )
    result = run(spec)
    folder = result.folder / "0-task"
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert "val_accuracy" in rows[0] and len(rows) > 2
    events = list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    recorded = events[0].read_bytes()
    assert b"val_accuracy" in recorded and b"train_loss" in recorded
    # the choice of loggers does not change what is trained
    assert spec.config_hash() == parse_run({**spec.model_dump(), "loggers": ["csv"]}).config_hash()


def test_tensorboard_without_its_package_fails_before_writing(tmp_path, monkeypatch):
    for package in ("tensorboard", "tensorboardX"):  # as if not installed: importlib finds no spec, import fails
        monkeypatch.setitem(sys.modules, package, None)
    spec = parse_run(
        {
            "output": str(tmp_path / "nolog"),
            "progress": False,
            "loggers": ["tensorboard"],
            "data": {"source": {"kind": "digits"}},
            "model": {"name": "test_resnet", "image_size": 16},
            "stages": [{"name": "task", "epochs": 1}],
        }
    )
    with pytest.raises(HeadstartError, match="loggers: tensorboard needs the tensorboardX package"):
        run(spec, overwrite=True)
    assert not (tmp_path / "nolog").exists()


def test_unlabelled_data_needs_a_pretext(tmp_path):
    spec = parse_run(
        {
            "output": str(tmp_path / "bad"),
            "progress": False,
            "data": {"source": {"kind": "digits"}},
            "model": {"name": "test_resnet", "image_size": 16},
            "stages": [{"name": "task", "data": "unlabelled", "epochs": 1}],
        }
    )
    with pytest.raises(HeadstartError, match="has no labels"):
        run(spec)


def test_existing_output_is_not_overwritten(tmp_path):
    spec = parse_run(
        {
            "output": str(tmp_path / "once"),
            "progress": False,
            "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 5}},
            "model": {"name": "test_resnet", "image_size": 16},
            "stages": [{"name": "task", "epochs": 1}],
        }
    )
    run(spec)
    with pytest.raises(HeadstartError, match="--resume"):
        run(spec)


RESUMABLE = """
name: resumable
seed: 5
output: {output}
progress: false
data:
  source: {{kind: digits}}
  splits: {{labels_per_class: 60}}
model: {{name: test_resnet, weights: none, image_size: 16}}
stages:
  - name: rotation
    data: all
    pretext: {{name: rotation}}
    epochs: 2
    batch_size: 64
  - name: task
    epochs: 12
    batch_size: 20
    augment: crop_flip
    optimizer: {{lr: 0.003, schedule: cosine}}
"""


def _headstart(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "headstart", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "sigterm"])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, how):
    (tmp_path / "ref").mkdir()
    reference = _headstart("run", str(_write(tmp_path / "ref", RESUMABLE, output=tmp_path / "ref" / "out")))
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err

    (tmp_path / "cut").mkdir()
    config = _write(tmp_path / "cut", RESUMABLE, output=tmp_path / "cut" / "out")
    interrupted = _headstart("run", str(config))
    checkpoint = tmp_path / "cut" / "out" / "1-task" / "last.ckpt"
    _wait_for(checkpoint, interrupted)
    time.sleep(0.3)  # land somewhere inside a later epoch (or a save)
    interrupted.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
    out, err = interrupted.communicate(timeout=120)
    if how == "sigterm":
        assert interrupted.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
    else:
        assert interrupted.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "out" / "1-task" / "stage.json").exists()

    resumed = _headstart("run", str(config), "--resume")
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err

    expected = load_weights(tmp_path / "ref" / "out" / "1-task" / "weights.safetensors")
    actual = load_weights(tmp_path / "cut" / "out" / "1-task" / "weights.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:  # same build, CPU: identical up to float round-off
        torch.testing.assert_close(actual[key], expected[key], atol=1e-6, rtol=1e-5, msg=key)
    reference = json.loads((tmp_path / "ref" / "out" / "1-task" / "stage.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "out" / "1-task" / "stage.json").read_text())
    assert len(resumed["step_losses"]) == len(reference["step_losses"]) > 0
    torch.testing.assert_close(
        torch.tensor(resumed["step_losses"]), torch.tensor(reference["step_losses"]), atol=1e-5, rtol=1e-5
    )
    assert [e["epoch"] for e in resumed["history"]] == [e["epoch"] for e in reference["history"]]


DDP = """
name: ddp
seed: 7
output: {output}
progress: false
devices: {devices}
strategy: {strategy}
data:
  source: {{kind: digits}}
  splits: {{labels_per_class: 40}}
model: {{name: test_resnet, weights: none, image_size: 16}}
stages:
  - name: task
    epochs: 2
    batch_size: {batch}
    bn_policy: frozen
    optimizer: {{name: sgd, lr: 0.05}}
"""


@pytest.mark.slow
def test_two_process_cpu_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    weights = {}
    for devices, strategy, batch in ((1, "auto", 40), (2, "ddp", 20)):
        folder = tmp_path / f"d{devices}"
        folder.mkdir()
        config = _write(folder, DDP, output=folder / "out", devices=devices, strategy=strategy, batch=batch)
        process = _headstart("run", str(config), cwd=folder)
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
        weights[devices] = load_weights(folder / "out" / "0-task" / "weights.safetensors")
    for key in weights[1]:
        torch.testing.assert_close(weights[2][key], weights[1][key], atol=2e-5, rtol=1e-4, msg=key)
    assert any(not torch.equal(weights[1][k], torch.zeros_like(weights[1][k])) for k in weights[1])


def test_run_json_records_the_labelled_draw_and_every_test_prediction(tmp_path):
    from headstart.checkpoint import RunRecord
    from headstart.data.splits import ids_digest
    from headstart.probe import probe_stage, run_data

    records = {}
    for seed in (0, 1):
        document = digit_run(tmp_path / f"seed-{seed}", [{"name": "task", "epochs": 1, "batch_size": 32}], seed=seed)
        document["data"]["splits"].update(labels_per_class=5, labelled_draw="per_seed")
        result = run(parse_run(document))
        records[seed] = record = RunRecord.read(result.folder)
        draw = record.splits
        assert draw is not None and draw["labelled_draw"] == "per_seed" and draw["draw_seed"] == seed
        assert draw["labelled"] == 50 and draw["labelled_digest"] == ids_digest(draw["labelled_ids"])
        # the run's data, read back for its probes, is this seed's draw: the k-NN bank is its labelled images
        data, _ = run_data(result.folder)
        assert data.split("train").positions.tolist() == draw["labelled_ids"]
        assert probe_stage(result.folder / "0-task", write=False).bank_size == 50
        # one prediction and one target per test image, in the test split's order
        test = data.split("test")
        predictions, targets = record.test_predictions, record.test_targets
        assert predictions is not None and targets is not None
        assert targets == test.labels.tolist() and len(predictions) == draw["test"] == record.test["count"]
        correct = sum(p == t for p, t in zip(predictions, targets, strict=True))
        assert correct / len(targets) == pytest.approx(record.test["accuracy"])
        confusion = [[0] * 10 for _ in range(10)]
        for predicted, target in zip(predictions, targets, strict=True):
            confusion[target][predicted] += 1
        assert confusion == record.test_confusion
    first, second = records[0].splits, records[1].splits
    assert first is not None and second is not None
    assert first["labelled_digest"] != second["labelled_digest"]  # each seed labels its own digits
    assert (first["test_digest"], first["val_digest"]) == (second["test_digest"], second["val_digest"])
    # a run.json written before these fields still reads
    old = RunRecord.model_validate({"name": "old", "config_hash": "0" * 16, "config": {}})
    assert old.splits is None and old.test_predictions is None and old.test_targets is None
