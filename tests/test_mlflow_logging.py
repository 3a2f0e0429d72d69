"""MLflow logging: one MLflow run per stage in a local file store, with params, per-epoch metrics, artifacts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from headstart.config import parse_run
from headstart.errors import HeadstartError
from headstart.structure import run
from helpers import digit_run

mlflow = pytest.importorskip("mlflow")


def _spec(output: Path, **extra) -> dict:
    return digit_run(
        output,
        [
            {
                "name": "rotation",
                "data": "all",
                "pretext": {"name": "rotation"},
                "epochs": 2,
                "batch_size": 64,
                "steps_per_epoch": 3,
            },
            {"name": "task", "epochs": 3, "batch_size": 25, "optimizer": {"lr": 0.003}},
        ],
        name="tracked",
        loggers=["csv", "mlflow"],
        **extra,
    )


def test_a_file_store_beside_the_run_holds_one_run_per_stage_with_metrics_params_and_artifacts(tmp_path):
    result = run(parse_run(_spec(tmp_path / "runs" / "tracked")))
    store = tmp_path / "runs" / "mlruns"  # beside the run folder, no server
    assert store.is_dir()
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("tracked")
    runs = {found.info.run_name: found for found in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0-rotation", "1-task"]
    for name, epochs in (("0-rotation", 2), ("1-task", 3)):
        found = runs[name]
        assert found.info.status == "FINISHED"
        # one value per epoch, the numbers of metrics.csv / stage.json
        history = client.get_metric_history(found.info.run_id, "val_loss")
        assert len(history) == epochs
        record = next(stage for stage in result.stages if f"{stage.stage_index}-{stage.stage_name}" == name)
        assert [point.value for point in history] == pytest.approx([row["val_loss"] for row in record.history])
        assert "train_loss_step" in found.data.metrics
        # params: the stage's configuration as the run file states it
        assert found.data.params["stage/name"] == name.split("-", 1)[1]
        assert found.data.params["config_hash"] == result.spec.config_hash()
        assert found.data.tags["headstart.run"] == "tracked"
        artifacts = {item.path for item in client.list_artifacts(found.info.run_id)}
        assert {"stage.json", "weights.safetensors", "metrics.csv"} <= artifacts
        assert "last.ckpt" not in artifacts
    assert runs["1-task"].data.params["stage/optimizer/lr"] == "0.003"
    assert "val_accuracy" in runs["1-task"].data.metrics


def test_a_tracking_uri_in_the_run_file_chooses_the_store(tmp_path):
    store = tmp_path / "elsewhere"
    spec = _spec(tmp_path / "out", mlflow={"tracking_uri": str(store), "experiment": "digits"})
    spec["stages"] = spec["stages"][1:]
    spec["stages"][0]["epochs"] = 1
    run(parse_run(spec))
    client = mlflow.tracking.MlflowClient(tracking_uri=store.resolve().as_uri())
    experiment = client.get_experiment_by_name("digits")
    assert [found.info.run_name for found in client.search_runs([experiment.experiment_id])] == ["0-task"]
    assert not (tmp_path / "mlruns").exists()


def test_mlflow_settings_are_checked(tmp_path):
    with pytest.raises(HeadstartError, match="mlflow.tracking_uri 'ftp://host/x': unknown scheme 'ftp'|unknown scheme"):
        parse_run(_spec(tmp_path, mlflow={"tracking_uri": "ftp://host/x"}))
    with pytest.raises(HeadstartError, match="loggers does not include mlflow"):
        parse_run({**_spec(tmp_path, mlflow={"tracking_uri": "runs"}), "loggers": ["csv"]})
    with pytest.raises(HeadstartError, match="mlflow.tracking_ur: unknown key; did you mean 'tracking_uri'"):
        parse_run(_spec(tmp_path, mlflow={"tracking_ur": "x"}))
    # where metrics go does not change what is trained
    assert (
        parse_run(_spec(tmp_path, mlflow={"experiment": "x"})).config_hash()
        == parse_run({**_spec(tmp_path), "loggers": ["csv"]}).config_hash()
    )


def test_without_mlflow_installed_the_run_says_how_to_install_it_before_writing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: importlib finds no spec, import fails
    with pytest.raises(HeadstartError) as caught:
        run(parse_run(_spec(tmp_path / "none")))
    assert 'pip install "headstart[mlflow]"' in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "none").exists()
