"""Batches for a stage: which images sit in memory and which stream from disk, and in what order.

One function, :func:`plan_images`, decides for every split a stage reads how its images reach the
training step, and says which it chose:

``memory``
    The split's pixels are already decoded in this process (numpy arrays, built-in sets, a file
    source loaded with ``cache: true``). A batch is one indexing operation on a tensor; no worker
    processes, since gathering is faster than sending pixels between processes.
``stream``
    Files are decoded lazily, a batch at a time, by ``DataLoader`` worker processes (uint8 pixels,
    pinned when the device is a GPU, workers kept alive between epochs). Memory holds the paths
    and a few batches in flight, whatever the number of images.

Either way the batch arrives as stored pixels (uint8 0..255, or float 0..1 for float arrays) and
the stage turns it into 0..1 floats, resizes, augments or alters it and normalises it on the
training device.

Order and distribution: :class:`EpochBatches` is the batch sampler of every loader. Its order for
epoch ``e`` depends only on ``(seed, e)``; under DDP, rank ``r`` of ``N`` takes every ``N``-th
index of each global batch, so ``N`` processes together see exactly the batches one process with
an ``N``-times larger batch sees (a distributed sampler that keeps resumed and DDP runs equal to
plain ones).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from headstart import seeds
from headstart.data.dataset import ArrayStore, FileStore, ImageSet
from headstart.data.encoded import EncodedImages, read_encoded
from headstart.engine.accelerate import DeviceFeed, FedLoader
from headstart.errors import HeadstartError

Residency = Literal["memory", "stream"]
ResidencyChoice = Literal["auto", "memory", "stream"]


class EpochBatches:
    """Index batches for one epoch: order fixed by ``(seed, epoch)``, split across ranks (module docstring).

    With ``steps``, an epoch is exactly ``steps`` batches drawn from an endless stream of shuffled
    passes (:class:`StreamBatches`; epoch ``e`` starts at step ``e × steps``), so a split smaller than
    ``steps`` batches is cycled: the labelled batches of a semi-supervised stage whose epoch is a pass
    over its unlabelled images.
    """

    def __init__(
        self,
        count: int,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        rank: int = 0,
        world_size: int = 1,
        steps: int | None = None,
    ) -> None:
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.steps = steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[Tensor]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(seeds.stream(self.seed, self.epoch))
            order = torch.randperm(self.count, generator=generator)
        else:
            order = torch.arange(self.count)
        step = self.batch_size * self.world_size
        batches = list(order.split(step))
        if self.drop_last and batches and len(batches[-1]) < step and len(batches) > 1:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator[Tensor]:
        if self.steps is not None:
            yield from StreamBatches(
                self.count,
                self.batch_size,
                seed=self.seed,
                start_step=self.epoch * self.steps,
                steps=self.steps,
                rank=self.rank,
                world_size=self.world_size,
            )
            return
        for batch in self._global_batches():
            mine = batch[self.rank :: self.world_size]
            if len(mine):
                yield mine

    def __len__(self) -> int:
        return self.steps if self.steps is not None else len(self._global_batches())


class StreamBatches:
    """``steps`` index batches of ``batch_size`` from an endless stream of shuffled passes, starting
    at optimizer step ``start_step``: the unlabelled batches of a semi-supervised stage.

    Pass ``p`` over the ``count`` images is ``randperm`` seeded by ``(seed, p)``, and step ``s`` takes
    the next ``batch_size`` indices after ``s × batch_size``, so the batch of any step is fixed by
    the seed alone (a resumed stage reads the same unlabelled images as an uninterrupted one).
    Under DDP rank ``r`` of ``N`` takes every ``N``-th index of a global batch ``N`` times larger.
    """

    def __init__(
        self, count: int, batch_size: int, *, seed: int, start_step: int, steps: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if count <= 0:
            raise HeadstartError("no unlabelled images to draw batches from")
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self.start_step, self.steps, self.rank, self.world_size = start_step, steps, rank, world_size
        self._pass, self._order = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, number: int) -> Tensor:
        if number != self._pass:
            generator = torch.Generator().manual_seed(seeds.stream(self.seed, number))
            self._pass, self._order = number, torch.randperm(self.count, generator=generator)
        return self._order

    def _indices(self, start: int, size: int) -> Tensor:
        chunks = []
        while size > 0:
            number, offset = divmod(start, self.count)
            take = min(size, self.count - offset)
            chunks.append(self._permutation(number)[offset : offset + take])
            start, size = start + take, size - take
        return torch.cat(chunks)

    def __iter__(self) -> Iterator[Tensor]:
        size = self.batch_size * self.world_size
        for step in range(self.start_step, self.start_step + self.steps):
            yield self._indices(step * size, size)[self.rank :: self.world_size]

    def __len__(self) -> int:
        return self.steps


class LoaderError(HeadstartError):
    """A file failed to decode inside a ``DataLoader`` worker.

    PyTorch re-raises a worker's exception in the main process as ``type(message=<traceback text>)``;
    this class keeps only the original one-line message, which names the file.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            lines = [line for line in message.strip().splitlines() if line.strip()]
            last = lines[-1] if lines else message
            message = (
                last.split(": ", 1)[1] if last.startswith(("headstart.", "LoaderError")) and ": " in last else last
            )
        super().__init__(message)


class SetBatches(torch.utils.data.Dataset):
    """An :class:`ImageSet` indexed by a whole batch of indices: ``(stored pixels, labels)``; with
    ``encoded``, the files' bytes for decoding on the device (:mod:`headstart.data.encoded`)."""

    def __init__(self, images: ImageSet, encoded: bool = False) -> None:
        self.store = images.store
        self.positions = images.positions
        self.labels = torch.from_numpy(images.labels.copy())
        self.encoded = encoded and isinstance(images.store, FileStore)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, indices: Tensor | np.ndarray) -> tuple[Tensor | EncodedImages, Tensor]:
        indices = torch.as_tensor(indices)
        try:
            positions = self.positions[indices.numpy()]
            if self.encoded:
                assert isinstance(self.store, FileStore)  # checked in __init__
                return read_encoded(self.store, positions), self.labels[indices]
            pixels = self.store.pixels(positions)
        except HeadstartError as error:
            raise LoaderError(str(error)) from None
        return pixels, self.labels[indices]


class TensorBatches(torch.utils.data.Dataset):
    """Tensors (for example cached features and labels) indexed by a whole batch of indices."""

    def __init__(self, *tensors: Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, indices: Tensor | np.ndarray) -> tuple[Tensor, ...]:
        indices = torch.as_tensor(indices)
        return tuple(tensor[indices] for tensor in self.tensors)


class IndexArrays:
    """An index sampler whose batches leave as numpy arrays: what is sent to loader workers.

    A tensor sent to a worker is first moved to shared memory by the queue's feeder thread, and
    that thread's PyTorch call starts a second OpenMP thread team in the training process. GNU
    OpenMP then counts more threads than cores and stops spinning at barriers (``do_spin`` uses its
    throttled count, 100 spins): every parallel loop of the training step ends in futex sleeps and
    wake-ups. Measured on two cores (EfficientNet-Lite0, 224 px, batch 32, two workers): 5,000
    context switches a second instead of 56, the training threads idle a quarter of the time, steps
    1.5× as long as without workers. An array is pickled as bytes, no PyTorch call, no second team.
    """

    def __init__(self, sampler: EpochBatches | StreamBatches) -> None:
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this on a loader's sampler at every epoch."""
        if isinstance(self.sampler, EpochBatches):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[np.ndarray]:
        return (batch.numpy() for batch in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


Batchable = ImageSet | tuple[Tensor, Tensor]
"""What a loader reads: a split of images, or ``(features, labels)`` tensors."""


@dataclass
class ImagePlan:
    """How one split's images reach the training step (see the module docstring)."""

    images: ImageSet
    residency: Residency
    workers: int
    reason: str
    feed: DeviceFeed | None = None
    """How batches reach the accelerator (decoded there, copied ahead); ``None``: as the loader yields them."""

    def describe(self) -> str:
        if self.residency == "memory":
            where = "held in memory"
        elif self.workers:
            where = f"streamed from disk by {self.workers} worker(s)"
        else:
            where = "streamed from disk, decoded in the training process"
        return f"{len(self.images):,} images {where} ({self.reason})"


def default_workers() -> int:
    """Decoding processes for a streamed split: one per CPU core, at most 8 — none on two cores or fewer.

    On a 2-core CPU, decoding in the training process is faster than in workers: an
    EfficientNet-Lite0 fine-tune step at 224 px, batch 32, took 2.45 s with none, 4.5 s with one or
    two (the training process then ran at one core, half of it in the kernel), while decoding
    the batch's 32 JPEGs takes about 0.06 s.
    """
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores)


def plan_images(images: ImageSet, *, prefer: ResidencyChoice = "auto", workers: int | None = None) -> ImagePlan:
    """Decide whether ``images`` are gathered from memory or streamed from disk (module docstring).

    ``prefer="memory"`` decodes a file split once, now, and holds its uint8 pixels
    (``images × channels × size²`` bytes); ``prefer="stream"`` streams even in-memory arrays
    through workers; ``auto`` keeps what the source already has. ``workers`` (default:
    :func:`default_workers`) applies to streamed splits only.
    """
    if prefer not in ("auto", "memory", "stream"):
        raise HeadstartError(f"data residency {prefer!r}: expected auto, memory or stream")
    in_memory = bool(getattr(images.store, "in_memory", False))
    if prefer == "memory" or (prefer == "auto" and in_memory):
        if not isinstance(images.store, ArrayStore):
            pixels = images.store.pixels(images.positions)
            images = ImageSet(
                ArrayStore(pixels), images.labels, images.class_names, images.name, skipped=images.skipped
            )
        reason = "decoded pixels already in memory" if in_memory else "residency: memory"
        return ImagePlan(images, "memory", 0, reason)
    count = default_workers() if workers is None else int(workers)
    reason = "files decoded lazily" if prefer == "auto" else "residency: stream"
    return ImagePlan(images, "stream", count, reason)


def make_loader(
    data: Batchable | ImagePlan,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
    sampler: EpochBatches | StreamBatches | None = None,
    steps: int | None = None,
) -> torch.utils.data.DataLoader | FedLoader:
    """A ``DataLoader`` yielding whole batches of ``data`` in :class:`EpochBatches` order (or the
    given index ``sampler``'s); with ``steps``, every epoch is that many batches, cycling ``data``.

    A streamed :class:`ImagePlan` decodes in its worker processes (kept alive between epochs, two
    batches prefetched each); in-memory images and tensors are gathered in the main process. A
    bare :class:`ImageSet` is planned with :func:`plan_images`' defaults. A plan with a
    :class:`~headstart.engine.accelerate.DeviceFeed` yields its batches on the accelerator.
    """
    workers = 0
    feed = None
    if isinstance(data, ImageSet):
        data = plan_images(data)
    if isinstance(data, ImagePlan):
        feed = data.feed
        dataset: SetBatches | TensorBatches = SetBatches(data.images, encoded=feed is not None and feed.decode)
        workers = data.workers if data.residency == "stream" else 0
    else:
        dataset = TensorBatches(*data)
    persistent = sampler is None and workers > 0
    if sampler is None:
        sampler = EpochBatches(
            len(dataset),
            batch_size,
            seed=seed,
            shuffle=shuffle,
            drop_last=shuffle,
            rank=rank,
            world_size=world_size,
            steps=steps,
        )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=IndexArrays(sampler) if workers > 0 else sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=persistent,
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context=_worker_context() if workers > 0 else None,
    )
    return feed.wrap(loader) if feed is not None else loader


def _worker_context():
    """``fork`` where the platform has it (workers start in milliseconds and share the read-only
    path list); PyTorch's default elsewhere."""
    import multiprocessing

    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def count_of(data: Batchable | ImagePlan) -> int:
    if isinstance(data, ImagePlan):
        return len(data.images)
    if isinstance(data, ImageSet):
        return len(data)
    return int(len(data[0]))


__all__ = [
    "Batchable",
    "EpochBatches",
    "ImagePlan",
    "IndexArrays",
    "LoaderError",
    "Residency",
    "ResidencyChoice",
    "SetBatches",
    "StreamBatches",
    "TensorBatches",
    "count_of",
    "default_workers",
    "make_loader",
    "plan_images",
]
