"""The run file: a typed, validated description of a multi-stage run.

A run is a list of *stages* applied in order to one network. Each stage names its data, its head
and loss (or a pretext task, whose head and loss come with it), what is frozen, the BatchNorm
policy, the optimizer and learning rates, and for how long it trains. Weights flow from one stage
to the next; heads are swapped between stages when the task changes.

The YAML form mirrors these classes field for field (``headstart run FILE``)::

    name: mnist-rotation
    seed: 0
    data:
      source: {kind: mnist5k}
      splits: {labels_per_class: 10}
    model: {name: resnet10t, weights: none, image_size: 32}
    stages:
      - name: rotation
        data: unlabelled
        pretext: {name: rotation}
        epochs: 5
      - name: task
        data: train
        epochs: 30
        optimizer: {lr: 0.001}

Relative data paths in a file are read from the file's own folder; ``output`` from the current one.
Files are read with ``yaml.safe_load`` (a ``!!python/object`` tag is refused) and every key is
checked: an unknown or mistyped key fails with its path (``stages[1].freeze``) and a suggestion.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from headstart import validation
from headstart.data.sources import SourceSpec
from headstart.data.splits import SplitSpec
from headstart.errors import HeadstartError
from headstart.heads import HeadSpec
from headstart.validation import validate


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    """The task dataset and, optionally, a general dataset for transfer stages."""

    source: SourceSpec
    splits: SplitSpec = SplitSpec()
    general: SourceSpec | None = None
    residency: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="auto: stream files from disk, gather in-memory sets; memory: decode every split once "
        "and hold it (uint8); stream: decode lazily in worker processes every epoch",
    )


class ModelSpec(_Strict):
    """The network every stage trains: a zoo name (Keras alias or timm name) and its weights."""

    name: str
    weights: str | None = Field(None, description='"imagenet", a .safetensors/.pth file, or none')
    image_size: int | None = Field(
        None, gt=0, description="side in pixels fed to the network; default: the model's own"
    )
    in_chans: int = Field(3, gt=0)
    pooling: Literal["avg", "max", "flatten", "none"] = Field(
        "avg", description="none keeps the 4-D feature map: only pretext heads that read it can sit on top"
    )
    include_top: bool = Field(
        False,
        description="true: keep the full classifier and put each stage's head on its outputs (the chapter's "
        "listing 2-21, Dense(4) on EfficientNetB4(classes=100)); false: heads read pooled features",
    )
    classes: int | None = Field(
        None,
        gt=0,
        description="outputs of the full classifier with include_top (Keras' classes=); default: the "
        "pretrained count, 1000 for ImageNet",
    )

    @model_validator(mode="before")
    @classmethod
    def _none_weights(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("weights"), str) and values["weights"].lower() == "none":
            values = {**values, "weights": None}
        return values

    @model_validator(mode="after")
    def _classes_need_the_top(self) -> ModelSpec:
        if self.classes is not None and not self.include_top:
            raise ValueError(
                "classes sizes the full classifier; set include_top: true, or remove classes "
                "(a stage's head follows the data's classes)"
            )
        return self


class OptimizerSpec(_Strict):
    """Optimizer and learning rates. ``group_lr`` gives discriminative rates per layer group.

    ``group_lr`` maps a selector (a group name such as ``stem``, ``blocks[:3]``, ``head``, or
    ``re:<regex>`` on parameter names) to its learning rate; parameters not matched use ``lr``.
    fastai's ``fine_tune`` uses ``slice(lr/100, lr)``: e.g. ``{stem: 1e-5, "blocks[:3]": 1e-4}``
    with ``lr: 1e-3``.

    ``lr: find`` sweeps the rate first with this stage's freezing, BatchNorm policy, data and head
    (the LR range test of :mod:`headstart.lrfind`), records the sweep in the stage folder and trains
    with its suggestion.

    Adam and AdamW run PyTorch's fused kernel (one pass over every tensor of a step) wherever every
    trainable parameter is on the CPU or a CUDA device (:func:`headstart.engine.losses.fusable`).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] | Literal["find"] = Field(
        1e-3, description='learning rate, or "find": sweep first and train with the suggestion (headstart.lrfind)'
    )
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    group_lr: dict[str, float] = Field(default_factory=dict)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0)


class EarlyStoppingSpec(_Strict):
    """Stop when the validation metric has not improved for ``patience`` epochs (Keras' EarlyStopping)."""

    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(3, gt=0)
    min_delta: float = Field(0.0, ge=0)
    restore_best_weights: bool = True


class PretextSpec(BaseModel):
    """A pretext task by name, with its options (see ``headstart.pretext``)."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SemiSupervisedSpec(_Strict):
    """FixMatch (Sohn et al., NeurIPS 2020): a task stage that also learns from unlabelled images.

    Each step reads a labelled batch (``batch_size``, the stage's ``augment``) and ``ratio`` times as
    many unlabelled images. The network's prediction on a weakly augmented copy (the stage's
    ``augment``) becomes the target for a strongly augmented copy (RandAugment + Cutout,
    :func:`headstart.engine.augment.strong_augment`) when its confidence reaches ``threshold``;
    the loss is ``labelled cross-entropy + weight × mean over unlabelled images of the masked
    cross-entropy``. The share of unlabelled images above the threshold is logged every epoch
    (``unlabelled_used``). The paper's defaults: ratio (μ) 7, threshold (τ) 0.95, weight (λu) 1;
    CIFAR-10 with 25 labels per class 94.93% (250 labels: 94.93 ± 0.65), 4 labels per class 88.61%.

    The paper counts its budget in steps (2^20) with the unlabelled data driving them; here an epoch
    is one pass over the unlabelled images (``epoch: unlabelled``, ``ceil(images / (ratio ×
    batch_size))`` steps) and the labelled batches cycle, so 30 epochs are 30 passes whether the
    stage has 10 labels or 1,000. ``epoch: labelled`` counts passes over the labelled split instead
    (at 10 labels and a batch of 25, one step per epoch).

    ``method: freematch`` (Wang et al., ICLR 2023) replaces the fixed threshold by self-adaptive
    ones (:mod:`headstart.engine.freematch`): a global threshold that follows the network's mean
    confidence on unlabelled images, scaled per class by its mean prediction, plus a fairness term
    (weight ``fairness_weight``) that keeps the pseudo-labels spread over the classes; ``momentum``
    is the memory of those running averages. ``threshold`` and ``distribution_alignment`` belong to
    FixMatch only.
    """

    method: Literal["fixmatch", "freematch"] = "fixmatch"
    unlabelled: Literal["all", "unlabelled"] = Field(
        "all",
        description="images used without labels: all of the training pool (FixMatch's choice, the labelled "
        "images included) or only the unlabelled rest",
    )
    epoch: Literal["unlabelled", "labelled"] = Field(
        "unlabelled",
        description="what one of the stage's epochs passes over: the unlabelled images (the labelled batches "
        "cycle, so the budget does not shrink with the number of labels) or the labelled split",
    )
    ratio: int = Field(7, gt=0, description="unlabelled images per labelled image in a step (μ)")
    threshold: float = Field(0.95, gt=0, le=1, description="confidence a pseudo-label needs (τ)")
    weight: float = Field(1.0, ge=0, description="weight of the unlabelled loss (λu)")
    strong_ops: int = Field(2, ge=0, le=4, description="RandAugment operations per strongly augmented image")
    cutout: float = Field(0.5, ge=0, lt=1, description="side of the Cutout square, as a fraction of the image's side")
    distribution_alignment: bool = Field(
        False,
        description="align the pseudo-labels' class marginal with the labelled split's (ReMixMatch): helps with "
        "very few labels per class, where the first confident pseudo-labels crowd into a few classes",
    )
    momentum: float = Field(
        0.999,
        ge=0,
        lt=1,
        description="freematch: momentum of the running confidence, class prediction and class histogram "
        "(the paper's 0.999 remembers ~1,000 steps; a stage of a few hundred steps wants ~0.99)",
    )
    fairness_weight: float = Field(
        0.01, ge=0, description="freematch: weight of the self-adaptive fairness term (the paper's w_f)"
    )

    @model_validator(mode="after")
    def _check_method(self) -> SemiSupervisedSpec:
        # a setting of the other method is refused when it differs from its default (a spec dumped with
        # every field, defaults included, validates again)
        other = (
            ("threshold", "distribution_alignment") if self.method == "freematch" else ("momentum", "fairness_weight")
        )
        changed = [name for name in other if getattr(self, name) != type(self).model_fields[name].default]
        if changed and self.method == "freematch":
            raise ValueError(
                f"semi_supervised.{changed[0]} is FixMatch's; freematch adapts its thresholds itself "
                "(its options: momentum, fairness_weight)"
            )
        if changed:
            raise ValueError(f"semi_supervised.{changed[0]} belongs to method: freematch, not {self.method}")
        return self


DataChoice = Literal["train", "unlabelled", "all", "general"]
"""``train``: the labelled training split; ``unlabelled``: the rest of the training pool (labels
hidden); ``all``: both, labels hidden (for pretext stages); ``general``: the general dataset."""

LABEL_FREE_DATA = ("all", "general")
"""Stage data that is the same whichever images of the training pool are labelled: the whole pool
with labels hidden, or the general dataset (``unlabelled`` is the pool *minus* the labelled images)."""

LoggerKind = Literal["csv", "tensorboard", "mlflow"]
"""Metric logs a stage writes: csv (``metrics.csv``), tensorboard, mlflow (one MLflow run per stage)."""


def default_loggers() -> list[LoggerKind]:
    """The loggers used when none are named: ``["csv"]``."""
    return ["csv"]


class StageSpec(_Strict):
    """One stage of a run. See the module docstring for the YAML form."""

    name: str
    data: DataChoice = "train"
    pretext: PretextSpec | None = None
    head: HeadSpec | Literal["keep", "new"] | None = Field(
        None, description='"keep" the previous head, "new" default head, or a head spec; default: keep when compatible'
    )
    loss: Literal["cross_entropy", "binary_cross_entropy", "mse", "huber"] = "cross_entropy"
    class_weights: Literal["none", "balanced"] | list[Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="weigh each class in the task loss: balanced = labelled images / (classes × images of the "
        "class) over the stage's labelled training split (scikit-learn's compute_class_weight), so a class of 40 "
        "images beside one of 900 counts as much; or one positive weight per class, in class order; default none",
    )
    freeze: list[str] = Field(default_factory=list, description="selectors frozen for this stage (others trainable)")
    bn_policy: Literal["frozen", "train"] | None = Field(
        None, description="default: frozen when anything is frozen, else train"
    )
    optimizer: OptimizerSpec = OptimizerSpec()
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    augment: Literal["none", "crop", "flip", "crop_flip"] = "none"
    early_stopping: EarlyStoppingSpec | None = None
    steps_per_epoch: int | None = Field(
        None, gt=0, description="cap on optimizer steps per epoch (Keras' steps_per_epoch); default: the whole split"
    )
    cache_features: bool | None = Field(
        None, description="default: on when the whole backbone is frozen, BN frozen and no augmentation"
    )
    semi_supervised: SemiSupervisedSpec | None = Field(
        None, description="also learn from the unlabelled images: {method: fixmatch, ratio: 7, threshold: 0.95}"
    )
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="end the stage with an exponential moving average of its weights, this decay per step "
        "(FixMatch evaluates with 0.999; short stages want about 1 − 10/steps); default: the last step's weights",
    )
    compile: bool | None = Field(
        None, description="torch.compile the backbone for this stage; default: the run's compile"
    )

    @field_validator("class_weights")
    @classmethod
    def _no_weights(cls, value: str | list[float] | None) -> str | list[float] | None:
        if isinstance(value, list) and not value:
            raise ValueError("give one weight per class, or balanced, or none")
        return None if value == "none" else value

    @model_validator(mode="after")
    def _check(self) -> StageSpec:
        if self.pretext is not None and self.class_weights is not None:
            raise ValueError("class_weights weigh the task's classes; a pretext stage has none: remove one of them")
        if self.pretext is not None and isinstance(self.head, HeadSpec):
            raise ValueError("a pretext stage brings its own head; remove `head` or `pretext`")
        if self.pretext is not None:
            from headstart.pretext import check_batch_size

            try:  # a batch too small for the task fails with the file, not after the earlier stages trained
                check_batch_size(self.pretext.name, self.batch_size, f"stage {self.name!r}")
            except HeadstartError as error:
                raise ValueError(str(error)) from None
        if self.ema is not None and self.early_stopping is not None and self.early_stopping.restore_best_weights:
            raise ValueError(
                "ema and early_stopping.restore_best_weights both choose the weights the stage ends with: keep one"
            )
        if self.semi_supervised is not None:
            if self.pretext is not None:
                raise ValueError(
                    "semi_supervised trains the task's head on pseudo-labels; a pretext stage has no "
                    "task labels: remove `semi_supervised` or `pretext`"
                )
            if self.data != "train":
                raise ValueError(
                    f"semi_supervised needs data: train (the labelled split; the unlabelled images are "
                    f"chosen by semi_supervised.unlabelled), not {self.data!r}"
                )
            if self.cache_features:
                raise ValueError("semi_supervised augments every image; it cannot train on cached features")
        return self


class MLflowSpec(_Strict):
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


class RunSpec(_Strict):
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


def resolve_data_paths(data: DataSpec, folder: Path) -> None:
    """Read relative source paths from ``folder`` (the folder of the file that names them)."""
    for source in (data.source, data.general):
        if source is not None and source.path is not None and not Path(source.path).is_absolute():
            source.path = str((folder / source.path).resolve())
        if source is not None and source.unlabelled is not None and not Path(source.unlabelled).is_absolute():
            source.unlabelled = str((folder / source.unlabelled).resolve())


def load_run_file(path: str | Path) -> RunSpec:
    """Read and validate a YAML run file."""
    path = Path(path)
    spec = parse_run(read_yaml_file(path), str(path))
    resolve_data_paths(spec.data, path.parent)
    return spec


__all__ = [
    "DataSpec",
    "ModelSpec",
    "OptimizerSpec",
    "EarlyStoppingSpec",
    "PretextSpec",
    "SemiSupervisedSpec",
    "DataChoice",
    "LoggerKind",
    "default_loggers",
    "StageSpec",
    "MLflowSpec",
    "RunSpec",
    "describe_validation_error",
    "parse_run",
    "read_yaml_file",
    "resolve_data_paths",
    "load_run_file",
]
