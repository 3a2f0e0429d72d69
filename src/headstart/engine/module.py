"""The Lightning module that trains one stage: task head, pretext task, or head on cached features.

Batches arrive as stored pixels (uint8 0..255 for files) and become the network's input on the
training device, per batch and without a Python loop over images: 0..1 floats, resized to the
stage's image size, augmented (training only) or altered by the pretext task, channels adapted
and normalised by the network's encoder.

Reproducibility: the batch order of epoch ``e`` depends only on ``(seed, e)`` and the random
number generators are re-seeded at the start of every epoch and batch, so a run resumed from the
checkpoint written at the end of epoch ``e`` repeats exactly what an uninterrupted run does next.

Accuracy of task heads is a ``torchmetrics`` metric, so under DDP it is synchronised across
processes exactly (counts, not averages of averages).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torchmetrics.classification import MulticlassAccuracy

from headstart import seeds
from headstart.config import StageSpec
from headstart.engine.augment import augment, strong_augment
from headstart.engine.batches import Batchable, ImagePlan, StreamBatches, count_of, make_loader
from headstart.engine.callbacks import NonFiniteLoss
from headstart.engine.fixmatch import DistributionAlignment, pseudo_labels, unlabelled_loss
from headstart.engine.freematch import SelfAdaptiveThreshold, fairness_loss
from headstart.engine.losses import (
    ScheduleFromArray,
    build_optimizer,
    class_weights,
    learning_rate_factors,
    resolved_lr,
    task_loss,
)
from headstart.heads import accuracy, class_logits, predicted_classes
from headstart.imageops import resize, to_unit_range

if TYPE_CHECKING:
    from headstart.network import Network


@dataclass
class StageData:
    """What a stage trains and validates on: planned image splits, or cached ``(features, labels)``."""

    train: Batchable | ImagePlan
    val: Batchable | ImagePlan | None
    unlabelled: ImagePlan | None = None
    """Images a semi-supervised stage reads without labels (``semi_supervised``)."""


def _labels_of(data: Batchable | ImagePlan) -> Tensor:
    """The class labels of a stage's training split, whatever carries it."""
    if isinstance(data, ImagePlan):
        data = data.images
    if isinstance(data, tuple):
        return torch.as_tensor(data[1])
    return torch.as_tensor(np.asarray(data.labels))


class StageModule(pl.LightningModule):
    """Trains ``network`` for one stage (see the module docstring)."""

    def __init__(
        self,
        network: Network,
        stage: StageSpec,
        stage_index: int,
        data: StageData,
        *,
        seed: int,
        image_size: int | None,
        pretext: Any = None,
        cached: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.network = network
        self.stage = stage
        self.stage_index = stage_index
        self.data = data
        self.seed = seed
        self.image_size = image_size
        self.pretext = pretext
        self.cached = cached
        self.pin_memory = pin_memory
        self.encoder = network.encoder(image_size)
        self.generator: torch.Generator | None = None
        self.schedule: list[float] = []
        self.planned_steps = 0
        self.unlabelled_batches: Any = None
        if pretext is None:
            # predictions are class indices (heads.predicted_classes), so one metric serves one-sigmoid heads too
            classes = max(2, len(network.labels or ()))
            self.train_accuracy = MulticlassAccuracy(classes, average="micro")
            self.val_accuracy = MulticlassAccuracy(classes, average="micro")
        self.class_weights: list[float] | None = None
        """The task loss's weight of each class (``stage.class_weights`` resolved over the labelled
        training split; ``None``: unweighted), as stage.json records it."""
        if stage.class_weights is not None and pretext is None:
            names = list(network.labels or ())
            labels = _labels_of(data.train).long()
            counts = torch.bincount(labels[labels >= 0], minlength=len(names))[: len(names)].tolist()
            self.class_weights = class_weights(
                stage.class_weights, counts, names, f"stages[{stage_index}].class_weights (stage '{stage.name}')"
            )
        # not persistent: the weights follow from the stage and its data, so checkpoints stay as they were
        self.loss_weights: Tensor | None
        self.register_buffer(
            "loss_weights",
            torch.tensor(self.class_weights, dtype=torch.float32) if self.class_weights is not None else None,
            persistent=False,
        )
        self.averaged: AveragedModel | None = None
        if stage.ema is not None:
            # Polyak averaging of the weights (and BatchNorm statistics) after every optimizer step; a
            # submodule, so the average travels in the checkpoint and a resumed stage ends the same
            self.averaged = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(stage.ema), use_buffers=True)
            self.averaged.requires_grad_(False)
        semi = stage.semi_supervised
        self.alignment: DistributionAlignment | None = None
        if semi is not None and semi.distribution_alignment and pretext is None:
            labels = _labels_of(data.train).long()
            self.alignment = DistributionAlignment(
                torch.bincount(labels[labels >= 0], minlength=classes).float(), reduce=self._mean_over_processes
            )
        self.adaptive_threshold: SelfAdaptiveThreshold | None = None
        if semi is not None and semi.method == "freematch" and pretext is None:
            self.adaptive_threshold = SelfAdaptiveThreshold(classes, semi.momentum, reduce=self._mean_over_processes)

    # data -------------------------------------------------------------------------------------
    def _rank(self) -> tuple[int, int]:
        trainer = self._trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        rank, world = self._rank()
        return make_loader(
            self.data.train,
            self.stage.batch_size,
            seed=seeds.derive(self.seed, "order", self.stage_index),
            shuffle=True,
            rank=rank,
            world_size=world,
            pin_memory=self.pin_memory,
            steps=self.unlabelled_epoch_steps(),
        )

    def unlabelled_epoch_steps(self) -> int | None:
        """Steps of one pass over the unlabelled images, for a semi-supervised stage whose epochs count
        them (``semi_supervised.epoch: unlabelled``): ``ceil(images / (ratio × batch_size × ranks))``.
        The labelled batches cycle to fill those steps, so the stage's budget does not shrink with the
        number of labels (the FixMatch paper counts its budget in steps, 2^20, driven by the unlabelled
        data); capped by the stage's ``steps_per_epoch``, so the labelled stream continues where the
        last epoch stopped. ``None`` for other stages: an epoch is a pass over the training split."""
        semi = self.stage.semi_supervised
        if semi is None or semi.epoch != "unlabelled" or self.data.unlabelled is None:
            return None
        _, world = self._rank()
        steps = max(1, math.ceil(count_of(self.data.unlabelled) / (semi.ratio * self.stage.batch_size * world)))
        return min(steps, self.stage.steps_per_epoch) if self.stage.steps_per_epoch else steps

    def val_dataloader(self):
        if self.data.val is None or count_of(self.data.val) == 0:
            return []
        rank, world = self._rank()
        return make_loader(
            self.data.val,
            max(self.stage.batch_size, 256),
            seed=0,
            shuffle=False,
            rank=rank,
            world_size=world,
            pin_memory=self.pin_memory,
        )

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch: the loader's batches, capped by the stage's ``steps_per_epoch``."""
        batches = len(self.train_dataloader())
        return min(batches, self.stage.steps_per_epoch) if self.stage.steps_per_epoch else batches

    # randomness -------------------------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        rank, world = self._rank()
        torch.manual_seed(seeds.epoch(self.seed, self.stage_index, self.current_epoch, rank))
        semi = self.stage.semi_supervised
        if semi is not None and self.data.unlabelled is not None:
            # this epoch's unlabelled batches, fixed by the seed and the global step (resumes exactly)
            sampler = StreamBatches(
                count_of(self.data.unlabelled),
                semi.ratio * self.stage.batch_size,
                seed=seeds.derive(self.seed, "unlabelled", self.stage_index),
                start_step=self.global_step,
                steps=self.steps_per_epoch(),
                rank=rank,
                world_size=world,
            )
            self.unlabelled_batches = iter(
                make_loader(
                    self.data.unlabelled,
                    sampler.batch_size,
                    seed=0,
                    shuffle=True,
                    pin_memory=self.pin_memory,
                    sampler=sampler,
                )
            )

    def _batch_generator(self, batch_index: int) -> torch.Generator:
        rank, _ = self._rank()
        if self.generator is None or self.generator.device != self.device:
            self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seeds.step(self.seed, self.stage_index, self.current_epoch, rank, batch_index + 1))
        return self.generator

    # steps ------------------------------------------------------------------------------------
    def _step(self, batch: tuple[Tensor, Tensor], batch_index: int, training: bool) -> tuple[Tensor, dict[str, Any]]:
        inputs, labels = batch
        if self.cached:
            return self._task_step(self.network.head(inputs), labels, training)
        images = self._unit_images(inputs)
        generator = self._batch_generator(batch_index if training else 10_000_000 + batch_index)
        if training:
            images = augment(images, self.stage.augment, generator)
        if self.pretext is not None:
            altered, targets = self.pretext.alter(images, generator)
            outputs = self.pretext.forward(self.encoder, self.network.head, altered)
            loss = self.pretext.loss(outputs, targets)
            metrics: dict[str, Any] = {} if training else self.pretext.metrics(outputs.detach(), targets)
            if training and self.pretext.kind == "classification":
                metrics = {"accuracy": accuracy(outputs.detach(), targets)}
            return loss, metrics
        if training and self.unlabelled_batches is not None:
            return self._semi_supervised_step(images, labels, generator)
        return self._task_step(self.network(self.encoder.prepare(images)), labels, training)

    def _unit_images(self, pixels: Tensor) -> Tensor:
        """Stored pixels as 0..1 floats at the stage's image size."""
        return resize(to_unit_range(pixels), self.image_size, "stretch")

    def _semi_supervised_step(
        self, images: Tensor, labels: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Any]]:
        """FixMatch (:mod:`headstart.engine.fixmatch`): labelled loss + weight × pseudo-label loss;
        FreeMatch (:mod:`headstart.engine.freematch`) with self-adaptive thresholds and its fairness term."""
        semi = self.stage.semi_supervised
        assert semi is not None  # unlabelled batches are drawn only for a semi-supervised stage
        pixels, _ = next(self.unlabelled_batches)
        unlabelled = self._unit_images(pixels.to(self.device, non_blocking=True))
        weak = augment(unlabelled, self.stage.augment, generator)
        strong = strong_augment(unlabelled, generator, ops=semi.strong_ops, cutout_fraction=semi.cutout)
        with torch.no_grad():
            weak_logits = class_logits(self.network(self.encoder.prepare(weak)))
            if self.adaptive_threshold is not None:
                pseudo = self.adaptive_threshold(weak_logits)
            else:
                pseudo = pseudo_labels(weak_logits, semi.threshold, self.alignment)
        logits = self.network(self.encoder.prepare(torch.cat([images, strong])))
        labelled_logits, strong_logits = logits[: len(images)], class_logits(logits[len(images) :])
        loss, metrics = self._task_step(labelled_logits, labels, training=True)
        loss = loss + semi.weight * unlabelled_loss(strong_logits, pseudo)
        metrics = {**metrics, "unlabelled_used": pseudo.used}
        if self.adaptive_threshold is not None:
            loss = loss + semi.fairness_weight * fairness_loss(strong_logits, pseudo, self.adaptive_threshold)
            metrics["unlabelled_threshold"] = self.adaptive_threshold.confidence.detach().clone()
        return loss, metrics

    def on_train_end(self) -> None:
        """With ``ema``, the stage ends with the averaged weights (the per-epoch validation read the
        weights as trained)."""
        if self.averaged is not None:
            self.network.load_state_dict(self.averaged.module.state_dict())

    def _mean_over_processes(self, value: Tensor) -> Tensor:
        """``value`` averaged over every process of a multi-GPU or multi-machine run (itself on one)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return value
        return trainer.strategy.reduce(value, reduce_op="mean")

    def _task_step(self, logits: Tensor, labels: Tensor, training: bool) -> tuple[Tensor, dict[str, Any]]:
        loss = task_loss(self.stage.loss, logits, labels, self.loss_weights)
        metric = self.train_accuracy if training else self.val_accuracy
        metric(predicted_classes(logits.detach()), labels)
        return loss, {"accuracy": metric}

    def training_step(self, batch, batch_index):
        loss, metrics = self._step(batch, batch_index, training=True)
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"stage '{self.stage.name}': loss became {loss.item()} at epoch {self.current_epoch}, "
                f"step {batch_index}; the last good checkpoint is kept"
            )
        size = len(batch[0])
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=False)
        for name, value in metrics.items():
            self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_index) -> None:
        if self.pretext is not None:
            planned = max(1, self.planned_steps)
            self.pretext.after_step(self.network.head, self.encoder, min(1.0, self.global_step / planned))
        if self.averaged is not None:
            self.averaged.update_parameters(self.network)

    def validation_step(self, batch, batch_index):
        loss, metrics = self._step(batch, batch_index, training=False)
        size = len(batch[0])
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=size, sync_dist=True)
        for name, value in metrics.items():
            self.log(f"val_{name}", value, on_epoch=True, prog_bar=name == "accuracy", batch_size=size, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self.unlabelled_batches = None  # ends this epoch's loader (and its workers)

    # optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        spec = self.stage.optimizer
        optimizer = build_optimizer(self.network, spec, self.stage.name)
        steps = self.steps_per_epoch()
        self.planned_steps = self.stage.epochs * steps
        factors = learning_rate_factors(spec, self.stage.epochs, steps)
        lr = resolved_lr(spec)
        self.schedule = [float(value) * lr for value in factors[:-1]]
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": ScheduleFromArray(optimizer, factors), "interval": "step"},
        }
