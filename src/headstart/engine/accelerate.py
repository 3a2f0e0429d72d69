"""Driving an accelerator: batches that arrive on the device ahead of time, compiled and channels-last networks.

Options of a run (and of :class:`~headstart.engine.trainer.TrainerOptions`), off by default but
``channels_last``, whose ``auto`` turns it on where NHWC convolutions are faster
(:meth:`~headstart.engine.trainer.TrainerOptions.uses_channels_last`):

``prefetch``
    :class:`DeviceFeed` copies batch ``n + 1`` to the GPU on a side CUDA stream while step ``n``
    computes (the loader's tensors are pinned, so the copy is asynchronous), and hands each batch
    to Lightning already on the device. The training stream waits for the side stream before it
    reads a batch and each tensor is recorded on the stream that uses it, so memory is never
    reused early (the pattern of NVIDIA's Apex ImageNet example, ``data_prefetcher``).
``decode: device``
    The loader reads JPEG bytes instead of decoding them (:mod:`headstart.data.encoded`);
    :class:`DeviceFeed` decodes each batch on the GPU with nvJPEG, on the side stream when
    prefetching.
``channels_last``
    The network's 4-D weights in channels-last (NHWC) order for the stage: tensor-core
    convolutions read NHWC directly (NVIDIA's Deep Learning Performance guide: "channels-last
    memory format … avoids the transpositions"), as do oneDNN's CPU convolutions, and convolution
    outputs follow their weights.
``compile``
    ``torch.compile`` on the backbone's ``forward_features`` for the stage — the one function every
    path calls (task head, pretext tasks, feature maps) — set on the instance, so weight names and
    checkpoints are unchanged, and removed afterwards. The first steps pay the compilation.

:func:`accelerated` applies the last two around a stage's fit and restores the network afterwards
(contiguous weights, as ``safetensors`` stores them; no compiled call left behind).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from headstart.data.encoded import EncodedImages, decode_encoded


@dataclass(frozen=True)
class DeviceFeed:
    """How batches reach the training device: decoded there (``decode``), copied a batch ahead
    (``prefetch``, CUDA only). ``device`` is ``"cuda"`` (the current CUDA device of the process,
    which Lightning sets per rank) or ``"cpu"``."""

    device: str = "cuda"
    decode: bool = False
    prefetch: bool = False

    def target(self) -> torch.device:
        if self.device == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(self.device)

    def arrive(self, batch: Any, device: torch.device) -> Any:
        """``batch`` (a tuple of tensors, encoded images among them) on ``device``, images decoded."""
        if isinstance(batch, EncodedImages):
            return decode_encoded(batch, device)
        if isinstance(batch, Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.arrive(part, device) for part in batch)
        return batch

    def wrap(self, loader: torch.utils.data.DataLoader) -> FedLoader:
        return FedLoader(loader, self)


class FedLoader:
    """A ``DataLoader`` whose batches arrive on the device (:class:`DeviceFeed`). Length, sampler and
    the rest are the loader's, so Lightning counts batches and sets sampler epochs as before."""

    def __init__(self, loader: torch.utils.data.DataLoader, feed: DeviceFeed) -> None:
        self.loader = loader
        self.feed = feed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        device = self.feed.target()
        if not (self.feed.prefetch and device.type == "cuda"):
            for batch in self.loader:
                yield self.feed.arrive(batch, device)
            return
        yield from self._ahead(device)

    def _ahead(self, device: torch.device) -> Iterator[Any]:
        """Batch ``n + 1`` copied (and decoded) on a side stream while the caller computes on batch ``n``."""
        side = torch.cuda.Stream(device)
        batches = iter(self.loader)

        def fetch() -> Any:
            try:
                batch = next(batches)
            except StopIteration:
                return None
            with torch.cuda.stream(side):
                return self.feed.arrive(batch, device)

        upcoming = fetch()
        while upcoming is not None:
            current = torch.cuda.current_stream(device)
            current.wait_stream(side)
            for tensor in _tensors(upcoming):
                tensor.record_stream(current)
            ready, upcoming = upcoming, fetch()
            yield ready


def _tensors(batch: Any) -> Iterator[Tensor]:
    if isinstance(batch, Tensor):
        yield batch
    elif isinstance(batch, (tuple, list)):
        for part in batch:
            yield from _tensors(part)


@contextmanager
def accelerated(network: nn.Module, *, compile: bool = False, channels_last: bool = False) -> Iterator[None]:
    """``network`` with its backbone's features compiled and/or in channels-last order while the
    block runs (module docstring); restored afterwards, also after an exception."""
    backbone = getattr(network, "backbone", network)
    try:
        if channels_last:
            network.to(memory_format=torch.channels_last)
        if compile:
            compile_features(backbone)
        yield
    finally:
        if compile:
            uncompile(backbone)
        if channels_last:
            network.to(memory_format=torch.contiguous_format)


def compile_features(backbone: nn.Module) -> None:
    """``torch.compile`` the backbone's ``forward_features`` (timm's interface), as an attribute of
    this instance that shadows the class's method; a module without it is compiled whole."""
    features = getattr(backbone, "forward_features", None)
    if callable(features):
        backbone.__dict__["forward_features"] = torch.compile(features)
    else:
        backbone.compile()


def uncompile(backbone: nn.Module) -> None:
    """Undo :func:`compile_features`: the class's ``forward_features`` (or the module's eager call) again."""
    backbone.__dict__.pop("forward_features", None)
    if getattr(backbone, "_compiled_call_impl", None) is not None:
        backbone._compiled_call_impl = None  # what nn.Module.compile() sets; None before compiling


def is_compiled(backbone: nn.Module) -> bool:
    return "forward_features" in backbone.__dict__ or getattr(backbone, "_compiled_call_impl", None) is not None


__all__ = ["DeviceFeed", "FedLoader", "accelerated", "compile_features", "is_compiled", "uncompile"]
