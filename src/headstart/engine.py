"""The Lightning glue: one :class:`StageModule` trains one stage of a run.

Images travel as float tensors in 0..1 from the data sets to the training device. On the device,
per batch and without a Python loop over images, the module resizes them to the stage's image
size, adapts their channels to the network's input, applies the stage's augmentation or pretext
alteration, normalises them with the network's own mean and standard deviation, and trains.

Reproducibility: the batch order of epoch ``e`` depends only on ``(seed, e)`` and the random
number generators are re-seeded at the start of every epoch, so a run resumed from the checkpoint
written at the end of epoch ``e`` repeats exactly what an uninterrupted run does next.

Feature caching: when a stage freezes the whole backbone, keeps its BatchNorm statistics fixed
and uses no augmentation, every epoch would compute the same backbone features again. The stage
then computes them once (:func:`compute_features`) and trains only the head on them.
"""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from typing import Any, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from headstart.config import OptimizerSpec, StageSpec
from headstart.errors import HeadstartError

# ----------------------------------------------------------------------------------------- inputs


def fit_channels(images: Tensor, channels: int) -> Tensor:
    """Grey → colour by replication; colour → grey by ITU-R BT.601 luminance."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1)
    if have == 3 and channels == 1:
        weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * weights).sum(1, keepdim=True)
    raise HeadstartError(f"cannot feed {have}-channel images to a network built for {channels} channels")


def fit_size(images: Tensor, size: int | None) -> Tensor:
    """Resize a batch to ``size``×``size`` (bilinear, antialiased when shrinking)."""
    if size is None or images.shape[-2:] == (size, size):
        return images
    shrinking = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def augment(images: Tensor, mode: str, generator: torch.Generator) -> Tensor:
    """Batched random augmentation on the device.

    ``crop``: a random crop after reflect-padding by 1/8 of the side (a shift of up to ±1/8);
    ``flip``: random horizontal flip; ``crop_flip``: both. Digits and text should not be flipped.
    """
    if mode == "none":
        return images
    batch, _, height, width = images.shape
    if mode in ("crop", "crop_flip"):
        pad = max(1, height // 8)
        padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=images.device)
        rows = offsets[:, 0, None] + torch.arange(height, device=images.device)
        cols = offsets[:, 1, None] + torch.arange(width, device=images.device)
        index = torch.arange(batch, device=images.device)[:, None, None]
        images = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if mode == "crop":
        return images
    flip = torch.rand(batch, generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


class EpochBatches:
    """Index batches for one epoch: order fixed by ``(seed, epoch)``, split across ranks.

    With ``world_size`` processes, global batch ``k`` is ``permutation[k*B : (k+1)*B]`` for
    ``B = batch_size * world_size`` and rank ``r`` takes every ``world_size``-th index of it, so
    ``N`` processes see together exactly the batches that one process with batch ``B`` sees.
    """

    def __init__(self, count: int, batch_size: int, *, seed: int, shuffle: bool, drop_last: bool,
                 rank: int = 0, world_size: int = 1) -> None:
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.count, generator=generator)
        else:
            order = torch.arange(self.count)
        step = self.batch_size * self.world_size
        batches = list(order.split(step))
        if self.drop_last and batches and len(batches[-1]) < step and len(batches) > 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[Tensor]:
        for batch in self._global_batches():
            mine = batch[self.rank :: self.world_size]
            if len(mine):
                yield mine

    def __len__(self) -> int:
        return len(self._global_batches())


class TensorBatches(torch.utils.data.Dataset):
    """Indexing with a whole batch of indices returns the stacked batch (no per-item collate)."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: Tensor) -> tuple[Tensor, ...]:
        return tuple(tensor[indices] for tensor in self.tensors)


def batch_loader(tensors: tuple[Tensor, ...], batch_size: int, *, seed: int, shuffle: bool, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0) -> torch.utils.data.DataLoader:
    sampler = EpochBatches(len(tensors[0]), batch_size, seed=seed, shuffle=shuffle, drop_last=shuffle,
                           rank=rank, world_size=world_size)
    return torch.utils.data.DataLoader(TensorBatches(*tensors), batch_size=None, sampler=sampler,
                                       num_workers=num_workers)


# --------------------------------------------------------------------------------------- encoder


class NetworkEncoder:
    """The network's backbone as a pretext task sees it: 0..1 images in, features out.

    A plain object (not a module) so the backbone's parameters are registered once, by the network.
    """

    def __init__(self, network: nn.Module, image_size: int | None) -> None:
        self.network = network
        self.image_size = image_size
        self.num_features = network.num_features
        feature_info = getattr(network.backbone, "feature_info", None)
        self.reduction = int(feature_info[-1]["reduction"]) if feature_info else 32
        """Total stride of the backbone (decoder heads upsample by it)."""
        self._feature_channels: int | None = None

    def prepare(self, images01: Tensor) -> Tensor:
        from headstart.preprocess import normalize

        images = fit_channels(images01, self.network.in_chans)
        return normalize(images, self.network.preprocessing)

    def pooled(self, images01: Tensor) -> Tensor:
        return self.network.pooled(self.prepare(images01))

    def feature_map(self, images01: Tensor) -> Tensor:
        return self.network.forward_features(self.prepare(images01))

    @property
    def feature_channels(self) -> int:
        if self._feature_channels is None:
            size = self.image_size or 64
            parameter = next(self.network.parameters())
            probe = torch.zeros(1, self.network.in_chans, size, size, device=parameter.device)
            was_training = self.network.training
            self.network.eval()
            with torch.no_grad():
                self._feature_channels = int(self.feature_map(probe).shape[1])
            self.network.train(was_training)
        return self._feature_channels


# ----------------------------------------------------------------------------------------- losses


def task_loss(kind: str, logits: Tensor, labels: Tensor) -> Tensor:
    """Loss of a task head's logits against integer class labels.

    ``cross_entropy``: softmax over classes. ``binary_cross_entropy``: one logit per class
    (sigmoid), targets one-hot — with a single output the label itself (two classes).
    ``mse`` / ``huber``: on softmax probabilities against one-hot targets.
    """
    if kind == "cross_entropy":
        return F.cross_entropy(logits, labels)
    if logits.shape[1] == 1:
        targets = labels.float().unsqueeze(1)
    else:
        targets = F.one_hot(labels, logits.shape[1]).float()
    if kind == "binary_cross_entropy":
        return F.binary_cross_entropy_with_logits(logits, targets)
    probabilities = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(1)
    if kind == "mse":
        return F.mse_loss(probabilities, targets)
    if kind == "huber":
        return F.huber_loss(probabilities, targets)
    raise HeadstartError(f"unknown loss '{kind}'")


def task_predictions(logits: Tensor) -> Tensor:
    return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)


# -------------------------------------------------------------------------------------- schedules


def learning_rate_factors(spec: OptimizerSpec, epochs: int, steps_per_epoch: int) -> np.ndarray:
    """Per-step learning-rate multipliers, computed up front (linear warm-up, then constant or cosine)."""
    total = max(1, epochs * steps_per_epoch)
    warmup = min(total, spec.warmup_epochs * steps_per_epoch)
    factors = np.ones(total)
    if warmup:
        factors[:warmup] = np.arange(1, warmup + 1) / warmup
    if spec.schedule == "cosine":
        remaining = total - warmup
        factors[warmup:] = 0.5 * (1 + np.cos(np.pi * np.arange(remaining) / max(1, remaining)))
    assert len(factors) == total
    return factors


# -------------------------------------------------------------------------------------- the module


@dataclass
class StageData:
    """Tensors a stage trains and validates on (images 0..1, or cached features)."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor] | None


def stage_seed(seed: int, stage_index: int, epoch: int, rank: int = 0, step: int = 0) -> int:
    return (seed * 1_000_003 + stage_index * 10_007 + epoch * 101 + rank) * 1_000_033 + step


class StageModule(pl.LightningModule):
    """Trains ``network`` for one stage: task head, pretext task, or head-only on cached features."""

    def __init__(self, network: nn.Module, stage: StageSpec, stage_index: int, data: StageData, *,
                 seed: int, image_size: int | None, pretext: Any = None, cached: bool = False,
                 num_workers: int = 0) -> None:
        super().__init__()
        self.network = network
        self.stage = stage
        self.stage_index = stage_index
        self.data = data
        self.seed = seed
        self.image_size = image_size
        self.pretext = pretext
        self.cached = cached
        self.num_workers = num_workers
        self.encoder = NetworkEncoder(network, image_size)
        self.generator: torch.Generator | None = None

    # data -------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._rank()
        return batch_loader(self.data.train, self.stage.batch_size, seed=stage_seed(self.seed, self.stage_index, 0),
                            shuffle=True, rank=rank, world_size=world, num_workers=self.num_workers)

    def val_dataloader(self):
        if self.data.val is None or len(self.data.val[0]) == 0:
            return []
        rank, world = self._rank()
        return batch_loader(self.data.val, max(self.stage.batch_size, 256), seed=0, shuffle=False,
                            rank=rank, world_size=world, num_workers=self.num_workers)

    # randomness -------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        rank, _ = self._rank()
        torch.manual_seed(stage_seed(self.seed, self.stage_index, self.current_epoch, rank))
        if self.generator is None or self.generator.device != self.device:
            self.generator = torch.Generator(device=self.device)

    def _batch_generator(self, batch_index: int) -> torch.Generator:
        rank, _ = self._rank()
        if self.generator is None or self.generator.device != self.device:
            self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(stage_seed(self.seed, self.stage_index, self.current_epoch, rank, batch_index + 1))
        return self.generator

    # steps ------------------------------------------------------------------------------------
    def _images(self, images: Tensor) -> Tensor:
        return fit_size(images.float(), self.image_size)

    def _step(self, batch: tuple[Tensor, Tensor], batch_index: int, training: bool) -> tuple[Tensor, dict[str, float]]:
        inputs, labels = batch
        if self.cached:
            logits = self.network.head(inputs)
            loss = task_loss(self.stage.loss, logits, labels)
            accuracy = (task_predictions(logits) == labels).float().mean()
            return loss, {"accuracy": accuracy}
        images = self._images(inputs)
        generator = self._batch_generator(batch_index if training else 10_000_000 + batch_index)
        if training:
            images = augment(images, self.stage.augment, generator)
        if self.pretext is not None:
            altered, targets = self.pretext.alter(images, generator)
            outputs = self.pretext.forward(self.encoder, self.network.head, altered)
            loss = self.pretext.loss(outputs, targets)
            metrics = {} if training else self.pretext.metrics(outputs.detach(), targets)
            if training and self.pretext.kind == "classification":
                metrics = {"accuracy": (outputs.detach().argmax(1) == targets).float().mean()}
            return loss, metrics
        logits = self.network(self.encoder.prepare(images))
        loss = task_loss(self.stage.loss, logits, labels)
        accuracy = (task_predictions(logits) == labels).float().mean()
        return loss, {"accuracy": accuracy}

    def training_step(self, batch, batch_index):
        loss, metrics = self._step(batch, batch_index, training=True)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(f"stage '{self.stage.name}': loss became {loss.item()} at epoch {self.current_epoch}, "
                                f"step {batch_index}; the last good checkpoint is kept")
        size = len(batch[0])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=False)
        for name, value in metrics.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def validation_step(self, batch, batch_index):
        loss, metrics = self._step(batch, batch_index, training=False)
        size = len(batch[0])
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"val_{name}", float(value) if not isinstance(value, Tensor) else value, on_epoch=True,
                     prog_bar=name == "accuracy", batch_size=size, sync_dist=True)

    # optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        spec = self.stage.optimizer
        groups = parameter_groups(self.network, spec)
        if not groups:
            raise HeadstartError(f"stage '{self.stage.name}': every parameter is frozen; nothing to train")
        if spec.name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        elif spec.name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=spec.lr, weight_decay=spec.weight_decay)
        else:
            optimizer = torch.optim.Adam(groups, lr=spec.lr, weight_decay=spec.weight_decay)
        steps = len(self.train_dataloader())
        factors = learning_rate_factors(spec, self.stage.epochs, steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: float(factors[min(step, len(factors) - 1)])
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def parameter_groups(network: nn.Module, spec: OptimizerSpec) -> list[dict[str, Any]]:
    """Optimizer groups holding exactly the trainable parameters, with per-group learning rates.

    ``spec.group_lr`` selectors are resolved by the network (group names or ``re:`` patterns);
    the first selector that matches a parameter gives its rate.
    """
    trainable = dict(network.trainable_parameters())
    assigned: dict[str, float] = {}
    for selector, rate in spec.group_lr.items():
        for name in network.select(selector):
            if name in trainable and name not in assigned:
                assigned[name] = rate
    by_rate: dict[float, list[Tensor]] = {}
    for name, parameter in trainable.items():
        by_rate.setdefault(assigned.get(name, spec.lr), []).append(parameter)
    return [{"params": params, "lr": rate} for rate, params in by_rate.items()]


# ------------------------------------------------------------------------------------- callbacks


class NonFiniteLoss(HeadstartError):
    """Training produced NaN or infinity; the stage stops and the last good checkpoint stays."""


class RunInterrupted(Exception):
    """Ctrl+C or SIGTERM arrived; the epoch in progress is abandoned, earlier checkpoints stay."""


class InterruptOnSignal(Callback):
    """Turns SIGINT/SIGTERM into a clean stop after the current optimizer step.

    The partly trained epoch is abandoned rather than saved, so the checkpoint on disk is always
    an epoch boundary and a resumed run repeats exactly what an uninterrupted run would do.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.signal_name = signal.Signals(signum).name

    def on_fit_start(self, trainer, pl_module) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread
                pass

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signal_name is not None:
            raise RunInterrupted(self.signal_name)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()


class BestWeights(Callback):
    """Keeps the weights of the best validation epoch (Keras' ``restore_best_weights``)."""

    def __init__(self, monitor: str, mode: str, path) -> None:
        self.monitor, self.mode, self.path = monitor, mode, path
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better and math.isfinite(value):
            self.best, self.best_epoch = value, trainer.current_epoch
            if trainer.is_global_zero:
                from headstart.checkpoint import save_weights

                save_weights(self.path, pl_module.network.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_epoch = state_dict["best"], state_dict["best_epoch"]


class EpochHistory(Callback):
    """Per-epoch metrics, per-step training losses and cumulative seconds, kept in the checkpoint.

    Recorded at the end of each training epoch (validation has run by then) and saved with the
    epoch's checkpoint, so a resumed stage reports the same history as an uninterrupted one.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.step_losses: list[float] = []
        self.seconds_before = 0.0
        self._started: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = time.perf_counter()
        self.seconds_before = self.epochs[-1]["seconds"] if self.epochs else 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.step_losses.append(float(loss))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        entry: dict[str, float] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            entry[key.removesuffix("_epoch")] = float(value)
        entry["seconds"] = self.seconds_before + time.perf_counter() - (self._started or time.perf_counter())
        self.epochs.append(entry)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "step_losses": self.step_losses}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epochs, self.step_losses = list(state_dict["epochs"]), list(state_dict["step_losses"])


# ---------------------------------------------------------------------------------- whole passes


INFERENCE_BATCH = 64
"""Batch of the whole-set passes: larger batches are slower per image on CPU for mobile networks
(EfficientNet-Lite0 at 96 px: 4.9 ms/image at 32, 6.1 ms at 256)."""


def _inference_input(encoder: "NetworkEncoder", images01: Tensor) -> Tensor:
    """The network's input for a batch, laid out channels-last: about 1.5× faster convolutions on
    CPU (EfficientNet-Lite0 at 96 px: 3.1 against 4.9 ms/image), the same values."""
    return encoder.prepare(fit_size(images01.float(), encoder.image_size)).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def compute_features(network: nn.Module, images: Tensor, *, image_size: int | None, batch_size: int = INFERENCE_BATCH,
                     device: torch.device | str = "cpu") -> Tensor:
    """Pooled backbone features of every image, computed once in eval mode (for cached head stages)."""
    encoder = NetworkEncoder(network, image_size)
    was_training = network.training
    network.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = _inference_input(encoder, images[start : start + batch_size].to(device))
        outputs.append(network.pooled(batch).float().cpu())
    network.train(was_training)
    return torch.cat(outputs) if outputs else torch.zeros(0, network.num_features)


@torch.no_grad()
def evaluate(network: nn.Module, images: Tensor, labels: Tensor, *, image_size: int | None, loss: str = "cross_entropy",
             batch_size: int = INFERENCE_BATCH, device: torch.device | str = "cpu") -> dict[str, float]:
    """Loss and accuracy of the network's task head on a labelled set."""
    encoder = NetworkEncoder(network, image_size)
    was_training = network.training
    network.eval()
    network.to(device)
    total_loss, correct = 0.0, 0
    for start in range(0, len(images), batch_size):
        batch = _inference_input(encoder, images[start : start + batch_size].to(device))
        target = labels[start : start + batch_size].to(device)
        logits = network(batch)
        total_loss += float(task_loss(loss, logits, target)) * len(batch)
        correct += int((task_predictions(logits) == target).sum())
    network.train(was_training)
    count = max(1, len(images))
    return {"loss": total_loss / count, "accuracy": correct / count, "count": len(images)}
