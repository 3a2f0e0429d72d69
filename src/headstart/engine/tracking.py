"""MLflow tracking of stages: one MLflow run per stage, in an experiment named after the run.

``loggers: [csv, mlflow]`` in a run file (or ``TrainerOptions(loggers=["csv", "mlflow"])``)
adds Lightning's ``MLFlowLogger`` to every stage that keeps a folder. Each stage becomes one
MLflow run named after its folder (``0-rotation``, ``1-head``), holding

* **params** — the stage's configuration as the run file states it (``stage/optimizer/lr``,
  ``stage/freeze``, …), the model, the seed, the input size and the configuration hash, plus the
  learning rate actually used when the stage said ``lr: find``;
* **metrics** — what the stage logs: ``train_loss`` every step, ``train_*`` and ``val_*`` every
  epoch (the ``epoch`` metric marks the boundaries), exactly the numbers of ``metrics.csv``;
* **artifacts** — the finished stage folder (``stage.json``, ``weights.safetensors``,
  ``metrics.csv``, the sweep plot, TensorBoard files), without ``last.ckpt``, whose optimizer
  and loop state only ``--resume`` needs.

The default store is a local folder, ``mlruns/`` beside the run's folder (``runs/mlruns`` for
``runs/mnist``): no server, every run of that folder in one place (``mlflow ui
--backend-store-uri runs/mlruns``). MLflow 3 keeps its folder store in maintenance mode and
refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; headstart sets that variable, when unset, for
a folder store it is asked to use. ``mlflow: {tracking_uri: sqlite:///mlflow.db}`` (or an
``http://`` tracking server) chooses another store. A stage resumed after an interruption goes on
logging to its own MLflow run (the run id is kept in ``mlflow.json`` in the stage folder).
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from headstart.config import MLflowSpec
from headstart.errors import HeadstartError
from headstart.files import RESUME_FILE, atomic_write_json, read_json

MLFLOW_FILE = "mlflow.json"
"""Where a stage folder records its MLflow run (tracking URI, experiment, run id)."""
NOT_LOGGED = (RESUME_FILE,)
"""Stage files left out of the artifacts: resume state, as large as the weights and optimizer together."""


def require_mlflow() -> None:
    """Fail with one line saying how to install MLflow when it is missing."""
    if find_spec("mlflow") is None:
        raise HeadstartError(
            'loggers: mlflow needs the mlflow package; pip install "headstart[mlflow]" or remove mlflow from loggers'
        )


def _is_folder(uri: str) -> bool:
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    return not scheme or len(scheme) == 1  # a plain path (a drive letter is not a scheme)


def tracking_uri(spec: MLflowSpec | None, default_folder: Path) -> str:
    """The tracking URI to log to: the spec's, or a folder store at ``default_folder``.

    Folders become absolute ``file:`` URIs, so a stage logs to the same store from any working
    folder; MLflow's refusal of folder stores is lifted for them (module docstring).
    """
    uri = spec.tracking_uri if spec is not None and spec.tracking_uri else None
    if uri is None or _is_folder(uri):
        uri = Path(uri or default_folder).resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def stage_logger(
    spec: MLflowSpec | None,
    folder: Path,
    *,
    default_store: Path,
    run_name: str,
    index: int,
    params: dict[str, Any],
    resume: bool,
):
    """Lightning's ``MLFlowLogger`` for the stage trained in ``folder``, its params already logged.

    ``default_store``: the folder store used when ``spec`` names none. ``resume``: continue the
    MLflow run recorded in the folder's ``mlflow.json``, if any, instead of starting another.
    """
    require_mlflow()
    from lightning.pytorch.loggers import MLFlowLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    uri = tracking_uri(spec, default_store)
    experiment = (spec.experiment if spec is not None and spec.experiment else None) or run_name or "headstart"
    previous = folder / MLFLOW_FILE
    run_id = None
    if resume and previous.is_file():
        recorded = read_json(previous)
        if recorded.get("tracking_uri") == uri:
            run_id = recorded.get("run_id")
    tags = {
        "headstart.run": run_name,
        "headstart.stage": folder.name,
        "headstart.stage_index": str(index),
        "headstart.folder": str(folder.resolve()),
    }
    try:
        logger = MLFlowLogger(
            experiment_name=experiment, run_name=folder.name, tracking_uri=uri, tags=tags, run_id=run_id
        )
        if run_id is None:
            logger.log_hyperparams(params)
        rank: int = rank_zero_only.rank  # type: ignore[attr-defined]  # set by Lightning at import, not in its stub
        if rank == 0:  # the logger acts on rank zero only, as Lightning's loggers do
            atomic_write_json(
                previous,
                {
                    "tracking_uri": uri,
                    "experiment": experiment,
                    "experiment_id": logger.experiment_id,
                    "run_id": logger.run_id,
                },
            )
    except HeadstartError:
        raise
    except Exception as error:  # MLflow's own errors: an unreachable server, a store it refuses
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HeadstartError(f"mlflow tracking at {uri}: {first}") from None
    return logger


def stage_params(
    stage: Any, model: Any, *, seed: int, image_size: int, config_hash: str | None, learning_rate: float | None
) -> dict[str, Any]:
    """The params of a stage's MLflow run: its configuration as stated, and what it resolved to."""
    params: dict[str, Any] = {
        "stage": stage.model_dump(mode="json"),
        "model": model.model_dump(mode="json"),
        "seed": seed,
        "image_size": image_size,
        "config_hash": config_hash or "",
    }
    if learning_rate is not None:
        params["lr_used"] = learning_rate
    return params


def log_stage_folder(logger, folder: Path) -> int:
    """Log the finished stage folder as the run's artifacts (module docstring); return the file count."""
    client, run_id = logger.experiment, logger.run_id
    count = 0
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name in NOT_LOGGED or path.name.startswith("."):
            continue
        parent = path.parent.relative_to(folder)
        client.log_artifact(run_id, str(path), artifact_path=None if parent == Path(".") else parent.as_posix())
        count += 1
    return count


class StageTracking:
    """The MLflow side of one stage, in one object: :meth:`start` before training (a logger, or
    nothing when the options do not ask for ``mlflow`` or the stage keeps no folder), its
    :attr:`loggers` for the trainer, :meth:`finish` once the stage's files are written."""

    def __init__(self, logger=None) -> None:
        self.logger = logger

    @staticmethod
    def check(options: Any) -> None:
        """Fail before any data is read when the options ask for MLflow and it is missing."""
        if "mlflow" in options.loggers:
            require_mlflow()

    @classmethod
    def start(
        cls,
        options: Any,
        folder: Path | None,
        *,
        run_name: str,
        index: int,
        resume: bool,
        stage: Any,
        model: Any,
        seed: int,
        image_size: int,
        config_hash: str | None,
        learning_rate: float | None,
    ) -> StageTracking:
        if folder is None or "mlflow" not in options.loggers:
            return cls()
        params = stage_params(
            stage, model, seed=seed, image_size=image_size, config_hash=config_hash, learning_rate=learning_rate
        )
        return cls(
            stage_logger(
                options.mlflow,
                folder,
                default_store=folder.parent / "mlruns",
                run_name=run_name,
                index=index,
                resume=resume,
                params=params,
            )
        )

    @property
    def loggers(self) -> list:
        """The loggers to add to the stage's trainer."""
        return [self.logger] if self.logger is not None else []

    def finish(self, folder: Path) -> None:
        """Log the finished stage folder as the MLflow run's artifacts."""
        if self.logger is not None:
            log_stage_folder(self.logger, folder)
