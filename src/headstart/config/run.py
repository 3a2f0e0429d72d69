"""A whole run file: data, model, stages, seed, loggers and outputs; reading and validating it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from headstart import validation
from headstart.config.data import DataSpec, resolve_data_paths
from headstart.config.model import ModelSpec
from headstart.config.stage import LABEL_FREE_DATA, StageSpec
from headstart.config.strict import Strict
from headstart.errors import HeadstartError
from headstart.validation import validate

LoggerKind = Literal["csv", "tensorboard", "mlflow"]
"""Metric logs a stage writes: csv (``metrics.csv``), tensorboard, mlflow (one MLflow run per stage)."""


def default_loggers() -> list[LoggerKind]:
    """The loggers used when none are named: ``["csv"]``."""
    return ["csv"]


class MLflowSpec(Strict):
    """Where the ``mlflow`` logger writes: one MLflow run per stage, in an experiment named after the run.

    ``tracking_uri``: a folder (a local file store, no server), a ``file:``, ``sqlite:///``,
    ``http(s)://`` or ``databricks`` URI; default: ``mlruns/`` beside the run's folder.
    """

    tracking_uri: str | None = Field(None, description="default: a file store in mlruns/ beside the run folder")
    experiment: str | None = Field(None, description="MLflow experiment; default: the run's name")

    @model_validator(mode="after")
    def _check_uri(self) -> MLflowSpec:
        uri = self.tracking_uri
        if uri is not None:
            scheme = uri.split(":", 1)[0].lower() if ":" in uri and not (len(uri) > 1 and uri[1] == ":") else ""
            known = ("file", "sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")
            if not uri.strip():
                raise ValueError("tracking_uri is empty; give a folder or a URI such as sqlite:///mlflow.db")
            if scheme and scheme.split("+")[0] not in known:
                raise ValueError(
                    f"tracking_uri {uri!r}: unknown scheme {scheme!r}; expected a folder or a "
                    "file:, sqlite:///, http(s)://, databricks or database URI"
                )
        return self


class RunSpec(Strict):
    """A whole run: data, model, stages, seed and where outputs go."""

    name: str = "run"
    seed: int = 0
    output: str | None = Field(None, description="folder for checkpoints and metrics; default runs/<name>")
    data: DataSpec
    model: ModelSpec
    stages: list[StageSpec] = Field(min_length=1)
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = Field(
        "32-true", description="bf16-mixed: bfloat16 autocast (GPUs from Ampere on, and CPUs); 16-mixed: CUDA only"
    )
    devices: int = Field(1, gt=0, description="processes per machine (one per GPU; on the CPU, processes)")
    accelerator: Literal["cpu", "gpu", "auto"] = Field(
        "auto", description="auto: the GPU when there is one, else the CPU; the device used is in stage.json"
    )
    strategy: Literal["auto", "ddp", "ddp_spawn"] = Field(
        "auto", description="auto: one process, or DDP when devices × num_nodes > 1 (Lightning's choice)"
    )
    num_nodes: int = Field(
        1,
        gt=0,
        description="machines taking part; the launcher (torchrun, SLURM's srun) starts devices processes on each. "
        "Each process reads batch_size images a step, so the global batch is batch_size × devices × num_nodes",
    )
    compile: bool = Field(
        False, description="torch.compile the backbone of every stage (a stage's own compile: overrides)"
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description="train in channels-last (NHWC) memory format; auto: on the CPU (oneDNN's convolutions) and "
        "on tensor-core GPUs (compute capability 7.0 or later), off on older GPUs and Apple's MPS",
    )
    decode: Literal["cpu", "device"] = Field(
        "cpu",
        description="where streamed JPEG files are decoded: cpu (Pillow, in loader workers) or device "
        "(nvJPEG on the training GPU, a batch at a time; needs CUDA)",
    )
    prefetch: bool = Field(
        False,
        description="copy (and decode) the next batch on a side CUDA stream while the current step runs; "
        "nothing to do on the CPU",
    )
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="processes decoding streamed images; auto: one per CPU core, at most 8, none on 2 cores or fewer",
    )
    progress: bool = True
    loggers: list[LoggerKind] = Field(
        default_factory=default_loggers,
        description="metric logs written in each stage folder: csv (metrics.csv) and/or tensorboard "
        "(needs tensorboardX); mlflow: one MLflow run per stage (needs headstart[mlflow])",
    )
    mlflow: MLflowSpec | None = Field(None, description="settings of the mlflow logger (tracking_uri, experiment)")

    @model_validator(mode="after")
    def _check_general(self) -> RunSpec:
        for index, stage in enumerate(self.stages):
            if stage.data == "general" and self.data.general is None:
                raise ValueError(f"stages[{index}] uses data: general but data.general is not set")
        names = [stage.name for stage in self.stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(duplicates)}")
        return self

    @field_validator("mlflow")
    @classmethod
    def _mlflow_needs_its_logger(cls, value: MLflowSpec | None, info: ValidationInfo) -> MLflowSpec | None:
        if value is not None and "mlflow" not in info.data.get("loggers", ()):
            raise ValueError(
                "mlflow settings are given but loggers does not include mlflow; add it: loggers: [csv, mlflow]"
            )
        return value

    def results_payload(self) -> dict[str, Any]:
        """Everything in this run that changes its results, as canonical JSON data: the one place
        that says which settings do not (where outputs go, progress bars, loggers, decoding
        workers, whether images are held in memory or streamed: the same pixels either way; the
        accelerator and how it is driven — compile, channels_last, decode, prefetch — which change
        results by floating-point round-off and decoder rounding only).

        ``accelerator`` stays in the payload at ``cpu``, the one value every run hashed before
        ``auto`` became the default, so those runs keep their hash; ``num_nodes`` (it sets the
        global batch) is left out at 1 for the same reason."""
        payload = self.model_dump(
            mode="json",
            exclude={
                "output": True,
                "progress": True,
                "num_workers": True,
                "loggers": True,
                "mlflow": True,
                "data": {"residency"},
                "compile": True,
                "channels_last": True,
                "decode": True,
                "prefetch": True,
            },
        )
        payload["accelerator"] = "cpu"
        if payload.get("num_nodes") == 1:
            payload.pop("num_nodes")
        for key, default in (("include_top", False), ("classes", None)):  # runs from before these keys keep their hash
            if payload["model"].get(key, default) == default:
                payload["model"].pop(key, None)
        if payload["data"]["splits"].get("labelled_draw") == "fixed":  # runs from before the choice keep their hash
            payload["data"]["splits"].pop("labelled_draw")
        for source in (payload["data"]["source"], payload["data"].get("general") or {}):
            if source.get("unlabelled") is None:  # sources without an unlabelled folder keep their hash
                source.pop("unlabelled", None)
        for stage in payload["stages"]:
            if stage.get("semi_supervised") is None:
                stage.pop("semi_supervised", None)
            else:
                semi = stage["semi_supervised"]
                if not semi.get("distribution_alignment"):  # stages from before it keep their hash
                    semi.pop("distribution_alignment", None)
                if semi.get("method") == "fixmatch":  # FreeMatch's options do not change a FixMatch stage
                    semi.pop("momentum", None)
                    semi.pop("fairness_weight", None)
            stage.pop("compile", None)
            for key in ("ema", "class_weights"):  # stages from before these options keep their hash
                if stage.get(key) is None:
                    stage.pop(key, None)
        return payload

    def config_hash(self) -> str:
        """SHA-256 of the canonical JSON of everything that changes results (:meth:`results_payload`)."""
        return hashlib.sha256(json.dumps(self.results_payload(), sort_keys=True).encode()).hexdigest()[:16]

    def prefix_key(self, stages: int) -> str:
        """What fixes the weights after the first ``stages`` stages: :meth:`results_payload` without
        the run's name and later stages, and without the label budget and the labelled draw when those
        stages read the task without its labels (:data:`LABEL_FREE_DATA`). Two runs with the same key end
        those stages with the same weights on a deterministic device."""
        payload = self.results_payload()
        payload.pop("name", None)
        payload["stages"] = payload["stages"][:stages]
        if all(stage.data in LABEL_FREE_DATA for stage in self.stages[:stages]):
            # the whole training pool with labels hidden is the same at every label budget and every draw
            for key in ("labels_per_class", "labelled_fraction", "labelled_draw"):
                payload["data"]["splits"].pop(key, None)
        return json.dumps(payload, sort_keys=True)

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name


def describe_validation_error(error: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem (:func:`headstart.validation.describe_validation_error`); suggestions
    for unknown keys come from ``model`` (default: a whole run file)."""
    return validation.describe_validation_error(error, source, model or RunSpec)


def parse_run(data: Any, source: str = "<run>") -> RunSpec:
    """Validate a mapping (from YAML or Python) into a :class:`RunSpec`."""
    if not isinstance(data, dict):
        raise HeadstartError(f"{source}: expected a mapping with keys data, model, stages; got {type(data).__name__}")
    return validate(RunSpec, data, source)


def read_yaml_file(path: str | Path, what: str = "run file") -> Any:
    """Plain YAML from ``path`` (``yaml.safe_load``: a tag that would run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"{path}: no such {what}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.constructor.ConstructorError as error:
        raise HeadstartError(
            f"{path}: refused tag {error.problem} (only plain YAML is read, nothing that runs code)"
        ) from None
    except yaml.YAMLError as error:
        raise HeadstartError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise HeadstartError(f"{path}: not a UTF-8 text file") from None


def load_run_file(path: str | Path) -> RunSpec:
    """Read and validate a YAML run file."""
    path = Path(path)
    spec = parse_run(read_yaml_file(path), str(path))
    resolve_data_paths(spec.data, path.parent)
    return spec


__all__ = [
    "LoggerKind",
    "MLflowSpec",
    "RunSpec",
    "default_loggers",
    "describe_validation_error",
    "load_run_file",
    "parse_run",
    "read_yaml_file",
]
