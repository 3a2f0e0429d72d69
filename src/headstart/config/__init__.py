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

from headstart.config.data import DataSpec, resolve_data_paths
from headstart.config.model import ModelSpec
from headstart.config.run import (
    LoggerKind,
    MLflowSpec,
    RunSpec,
    default_loggers,
    describe_validation_error,
    load_run_file,
    parse_run,
    read_yaml_file,
)
from headstart.config.stage import (
    DataChoice,
    EarlyStoppingSpec,
    OptimizerSpec,
    PretextSpec,
    SemiSupervisedSpec,
    StageSpec,
)

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
