"""Lightning plumbing of a stage: trainer options → ``pl.Trainer``, loggers, progress, quiet output.

:class:`TrainerOptions` says how stages run, not what they learn (device, processes, precision,
data loading, loggers); :func:`build_trainer` turns options and a stage into a ``pl.Trainer``
whose checkpoint writes are atomic and whose loads never run pickled code
(:class:`AtomicCheckpointIO`).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import CSVLogger
from pydantic import BaseModel, ConfigDict, Field

from headstart.config import LoggerKind, MLflowSpec, StageSpec, default_loggers
from headstart.data.dataset import ImageSet
from headstart.engine.batches import ImagePlan, ResidencyChoice, plan_images
from headstart.errors import HeadstartError
from headstart.files import atomic_write
from headstart.validation import validate


class TrainerOptions(BaseModel):
    """How stages run (not what they learn): device, processes, precision, data loading, output.

    None of these change the result beyond floating-point round-off, so none enters the config hash.
    """

    model_config = ConfigDict(extra="forbid")
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int = Field(1, gt=0)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    """Processes decoding streamed images; auto: one per CPU core, at most 8, none on 2 cores or fewer."""
    residency: ResidencyChoice = "auto"
    """auto: stream files, gather in-memory sets; memory: decode once and hold; stream: always stream."""
    progress: bool | None = None
    """Progress bars; default: when standard error is a terminal."""
    loggers: list[LoggerKind] = Field(default_factory=default_loggers)
    mlflow: MLflowSpec | None = None
    """Store and experiment of the ``mlflow`` logger; default: ``mlruns/`` beside the stage folder
    (a run's stages: beside the run folder), experiment named after the run
    (:mod:`headstart.engine.tracking`)."""

    @classmethod
    def from_run(cls, spec: Any, progress: bool | None = None) -> TrainerOptions:
        """The options a :class:`~headstart.config.RunSpec` sets."""
        mlflow = None
        if "mlflow" in spec.loggers:
            chosen = spec.mlflow or MLflowSpec()
            mlflow = MLflowSpec(
                tracking_uri=chosen.tracking_uri or str(spec.output_dir().parent / "mlruns"),
                experiment=chosen.experiment or spec.name,
            )
        return cls(
            accelerator=spec.accelerator,
            devices=spec.devices,
            strategy=spec.strategy,
            precision=spec.precision,
            num_workers=spec.num_workers,
            residency=spec.data.residency,
            progress=spec.progress if progress is None else progress,
            loggers=list(spec.loggers),
            mlflow=mlflow,
        )

    @classmethod
    def coerce(cls, options: TrainerOptions | dict | None, caller: str = "fit_stage") -> TrainerOptions:
        """``options`` as TrainerOptions (``None``: the defaults; a mapping is validated)."""
        if options is None:
            return cls()
        if not isinstance(options, (cls, dict)):
            raise HeadstartError(
                f"{caller}: options is a {type(options).__name__}; expected TrainerOptions or a mapping"
            )
        return validate(cls, options, "options")

    @property
    def device(self) -> str:
        """Where whole-set passes (feature caching, evaluation) run."""
        return "cuda" if self.accelerator in ("gpu", "auto") and torch.cuda.is_available() else "cpu"

    @property
    def workers(self) -> int | None:
        return None if self.num_workers == "auto" else int(self.num_workers)

    @property
    def show_progress(self) -> bool:
        """Progress bars: as asked, else when standard error is a terminal."""
        return self.progress if self.progress is not None else sys.stderr.isatty()

    def plan(self, images: ImageSet) -> ImagePlan:
        """How ``images`` reach the training step under these options (held or streamed, workers)."""
        return plan_images(images, prefer=self.residency, workers=self.workers)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose saves are atomic and whose loads never run pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - reported with the file name
            raise HeadstartError(f"{path}: cannot resume from this checkpoint ({str(error).splitlines()[0]})") from None


def is_rank_zero() -> bool:
    """Whether this process is the first of its job (it alone writes run files)."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def stage_loggers(options: TrainerOptions, folder: Path) -> list:
    """The file loggers the options ask for, writing into the stage folder."""
    loggers: list = []
    if "csv" in options.loggers:
        loggers.append(CSVLogger(save_dir=folder, name="", version=""))
    if "tensorboard" in options.loggers:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=folder, name="tensorboard", version="", default_hp_metric=False))
    return loggers


def lightning_trainer(options: TrainerOptions, folder: str | Path, **settings: Any) -> pl.Trainer:
    """A ``pl.Trainer`` as headstart runs them: the options' device and precision, atomic
    checkpoints (:class:`AtomicCheckpointIO`), no model summary, no sanity validation, batches
    split across processes by headstart's own samplers; ``settings`` add or override the rest."""
    defaults: dict[str, Any] = {
        "default_root_dir": folder,
        "accelerator": options.accelerator,
        "precision": options.precision,
        "plugins": [AtomicCheckpointIO()],
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "use_distributed_sampler": False,
        "deterministic": False,
        "benchmark": False,
    }
    return pl.Trainer(**{**defaults, **settings})


def build_trainer(
    options: TrainerOptions, stage: StageSpec, folder: Path, callbacks: list, extra_loggers: list | None = None
) -> pl.Trainer:
    """The ``pl.Trainer`` of one stage: its epochs and step cap, the options' processes, the given
    callbacks, file loggers in ``folder`` and any ``extra_loggers``."""
    return lightning_trainer(
        options,
        folder,
        max_epochs=stage.epochs,
        limit_train_batches=stage.steps_per_epoch,
        devices=options.devices,
        strategy=options.strategy,
        logger=stage_loggers(options, folder) + list(extra_loggers or []),
        callbacks=callbacks,
        enable_progress_bar=options.show_progress,
        log_every_n_steps=1,
    )


def restore_best(network, path: Path) -> int | None:
    """Load the network weights of Lightning's best-validation checkpoint; return its epoch."""
    state = AtomicCheckpointIO().load_checkpoint(path)
    weights = {
        key.removeprefix("network."): value for key, value in state["state_dict"].items() if key.startswith("network.")
    }
    network.load_state_dict(weights, strict=True)
    return int(state.get("epoch", 0))


def quiet_lightning() -> None:
    """Keep Lightning's informational chatter and warnings about intended behaviour off the terminal."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists and is not empty.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    # BatchNorm layers held in eval mode are the `frozen` policy at work, not a mistake.
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
