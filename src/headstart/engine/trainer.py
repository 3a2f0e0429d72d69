"""Lightning plumbing of a stage: trainer options → ``pl.Trainer``, loggers, progress, quiet output.

:class:`TrainerOptions` says how stages run, not what they learn (device, processes, precision,
data loading, loggers); :func:`build_trainer` turns options and a stage into a ``pl.Trainer``
whose checkpoint writes are atomic and whose loads never run pickled code
(:class:`AtomicCheckpointIO`). Each epoch's ``last.ckpt`` is written behind the training
(Lightning's ``AsyncCheckpointIO``: the state is copied at the epoch's end, then written, synced
and moved into place by one writer thread while the next epoch trains); the trainer's teardown,
after the last epoch, a failure or Ctrl+C, waits for the writes, so a stage's files are whole
before anything reads them.
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
from lightning.pytorch.plugins.io import AsyncCheckpointIO
from pydantic import BaseModel, ConfigDict, Field

from headstart.config import LoggerKind, MLflowSpec, StageSpec, default_loggers
from headstart.data.dataset import FileStore, ImageSet
from headstart.engine.accelerate import DeviceFeed
from headstart.engine.batches import ImagePlan, ResidencyChoice, plan_images
from headstart.errors import HeadstartError
from headstart.files import atomic_write, hardware
from headstart.ranks import slurm_launched
from headstart.validation import validate


class TrainerOptions(BaseModel):
    """How stages run (not what they learn): device, processes, precision, data loading, output.

    None of these change the result beyond floating-point round-off, so none enters the config hash.
    """

    model_config = ConfigDict(extra="forbid")
    accelerator: Literal["cpu", "gpu", "auto"] = "auto"
    """auto: the GPU when there is one (CUDA, or Apple's MPS), else the CPU."""
    devices: int = Field(1, gt=0)
    """Processes on each machine (one per GPU)."""
    num_nodes: int = Field(1, gt=0)
    """Machines; a launcher (torchrun, SLURM's srun) starts ``devices`` processes on each."""
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    precision: Literal["32-true", "bf16-mixed", "16-mixed"] = "32-true"
    compile: bool = False
    """``torch.compile`` the backbone of every stage (a stage's own ``compile`` overrides)."""
    channels_last: bool | Literal["auto"] = "auto"
    """Train in channels-last memory format; auto: where it is faster (:meth:`uses_channels_last`)."""
    decode: Literal["cpu", "device"] = "cpu"
    """Where streamed JPEG files are decoded: in the loader's CPU workers, or on the CUDA device (nvJPEG)."""
    prefetch: bool = False
    """Copy (and decode) the next batch on a side CUDA stream while the current step runs."""
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
            num_nodes=spec.num_nodes,
            strategy=spec.strategy,
            precision=spec.precision,
            compile=spec.compile,
            channels_last=spec.channels_last,
            decode=spec.decode,
            prefetch=spec.prefetch,
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
        """Where stages train and whole-set passes (feature caching, evaluation) run: ``cuda``,
        ``mps`` or ``cpu`` (Lightning's choice for the same accelerator)."""
        if self.accelerator == "cpu":
            return "cpu"
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        if self.accelerator == "gpu":
            raise HeadstartError(
                "accelerator: gpu, but this machine has no GPU that PyTorch can use "
                "(torch.cuda.is_available() is False); use accelerator: auto (the GPU when there is one) or cpu"
            )
        return "cpu"

    def uses_channels_last(self, device_type: str) -> bool:
        """Whether a stage on ``device_type`` (``cpu``, ``cuda``, ``mps``) trains in channels-last order.

        ``auto`` turns it on where convolutions run faster in NHWC: on the CPU, whose oneDNN
        convolutions are NHWC-native (resnet10t on two cores, the demo's stages at 32 px, three
        runs of ``bench/bench_channels_last.py``: rotation 1.02-1.13x, FreeMatch 1.17-1.33x), and
        on GPUs with tensor cores (compute capability 7.0 or later; NVIDIA's Deep Learning
        Performance guide); off on older GPUs and on Apple's MPS, where NHWC kernels are not the
        fast path."""
        if self.channels_last != "auto":
            return self.channels_last
        if device_type == "cpu":
            return True
        if device_type == "cuda":
            return torch.cuda.get_device_capability() >= (7, 0)
        return False

    def checked(self) -> TrainerOptions:
        """These options as this machine can run them, checked before any data is read.

        Refuses ``accelerator: gpu`` without a GPU and a ``num_nodes`` or ``devices`` that disagree
        with the launcher (:func:`check_launch`). ``decode: device`` needs CUDA: without it a warning
        names the key and JPEGs are decoded on the CPU; ``prefetch`` does nothing without CUDA.
        """
        device = self.device
        check_launch(self.devices, self.num_nodes)
        if self.decode == "device" and device != "cuda":
            _warn(
                f"decode: device decodes JPEGs with nvJPEG on a CUDA GPU; this process trains on {device}, "
                "so files are decoded on the CPU by the loader (set decode: cpu to silence this)"
            )
            return self.model_copy(update={"decode": "cpu"})
        return self

    @property
    def workers(self) -> int | None:
        return None if self.num_workers == "auto" else int(self.num_workers)

    @property
    def show_progress(self) -> bool:
        """Progress bars: as asked, else when standard error is a terminal."""
        return self.progress if self.progress is not None else sys.stderr.isatty()

    def plan(self, images: ImageSet) -> ImagePlan:
        """How ``images`` reach the training step under these options (held or streamed, workers,
        decoded and copied ahead on the accelerator)."""
        plan = plan_images(images, prefer=self.residency, workers=self.workers)
        cuda = self.device == "cuda"
        decode = cuda and self.decode == "device" and plan.residency == "stream" and isinstance(images.store, FileStore)
        if decode or (cuda and self.prefetch):
            plan.feed = DeviceFeed("cuda", decode=decode, prefetch=self.prefetch)
        return plan


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose saves are atomic and whose loads never run pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - reported with the file name
            raise HeadstartError(f"{path}: cannot resume from this checkpoint ({str(error).splitlines()[0]})") from None


def launcher() -> tuple[str, int] | None:
    """The launcher that started this process and the number of processes it started:
    ``("torchrun", WORLD_SIZE)``, ``("srun", SLURM_NTASKS)``, or ``None``."""
    if os.environ.get("TORCHELASTIC_RUN_ID") and "WORLD_SIZE" in os.environ:
        return "torchrun", int(os.environ["WORLD_SIZE"])
    if slurm_launched():
        return "srun", int(os.environ["SLURM_NTASKS"])
    return None


def check_launch(devices: int, num_nodes: int) -> None:
    """Refuse, naming the keys, a ``devices`` × ``num_nodes`` that cannot match how this process
    was started: a launcher that started a different number of processes, or several machines
    with no launcher (Lightning would wait for the others forever)."""
    started = launcher()
    wanted = devices * num_nodes
    if started is not None:
        name, processes = started
        if processes != wanted:
            per_node = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("SLURM_NTASKS_PER_NODE") or "?"
            raise HeadstartError(
                f"{name} started {processes} processes ({per_node} per machine), but the run asks for "
                f"devices × num_nodes = {devices} × {num_nodes} = {wanted}; set devices to the processes per "
                f"machine and num_nodes to the machines (e.g. --nproc-per-node {devices} --nnodes {num_nodes})"
            )
        return
    if num_nodes > 1 and not ("MASTER_ADDR" in os.environ and "NODE_RANK" in os.environ):
        raise HeadstartError(
            f"num_nodes: {num_nodes}, but no launcher started this process: start `headstart run FILE` on "
            "every machine with torchrun (--nnodes, --node-rank, --master-addr) or SLURM's srun, or set "
            "MASTER_ADDR, MASTER_PORT and NODE_RANK on each (docs/guides/accelerators.md)"
        )


def memory_and_kernels(options: TrainerOptions, device_type: str) -> dict[str, bool]:
    """How a network trains on a device of ``device_type``: channels-last order where the options
    and the device want it (:meth:`TrainerOptions.uses_channels_last`), one-pixel convolutions as
    matrix products on the CPU (:class:`~headstart.engine.accelerate.OnePixelConv2d`). The keyword
    arguments of :func:`~headstart.engine.accelerate.accelerated`, for a stage and its sweep alike."""
    return {"channels_last": options.uses_channels_last(device_type), "one_pixel_matmul": device_type == "cpu"}


def device_description(trainer: pl.Trainer, options: TrainerOptions, *, compiled: bool) -> dict[str, Any]:
    """What a stage actually trains on, from the built trainer: device type and name, processes
    and machines, precision, and how the accelerator is driven."""
    root = trainer.strategy.root_device
    if root.type == "cuda":
        name = torch.cuda.get_device_name(root)
    elif root.type == "mps":
        name = "Apple GPU (MPS)"
    else:
        name = str(hardware()["cpu"])
    return {
        "type": root.type,
        "name": str(name),
        "processes": int(trainer.world_size),
        "num_nodes": int(trainer.num_nodes),
        "precision": str(trainer.precision),
        "compiled": compiled,
        **memory_and_kernels(options, root.type),
        "decode": options.decode,
        "prefetch": options.prefetch and root.type == "cuda",
    }


def _warn(message: str) -> None:
    logging.getLogger("headstart").warning("%s", message)


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
    checkpoints (:class:`AtomicCheckpointIO`) written behind the training (module docstring), no
    model summary, no sanity validation, batches
    split across processes by headstart's own samplers; ``settings`` add or override the rest."""
    defaults: dict[str, Any] = {
        "default_root_dir": folder,
        "accelerator": options.accelerator,
        "num_nodes": options.num_nodes,
        "precision": options.precision,
        "plugins": [AsyncCheckpointIO(AtomicCheckpointIO())],
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
