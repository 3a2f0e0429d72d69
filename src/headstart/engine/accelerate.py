"""Driving an accelerator: batches that arrive on the device ahead of time, compiled and channels-last
networks, and one-pixel convolutions computed as matrix products on the CPU.

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

And always on the CPU, no option: :class:`OnePixelConv2d`, convolutions whose output is a single
pixel computed as a matrix product (the same numbers; small images reach it in a ResNet's last stage).

:func:`accelerated` applies the last three around a stage's fit and restores the network afterwards
(contiguous weights, as ``safetensors`` stores them; no compiled call left behind; plain ``Conv2d``
modules again).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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


class OnePixelConv2d(nn.Conv2d):
    """A ``Conv2d`` that computes as a matrix product when its output is one pixel.

    With a one-pixel output, the kernel's taps that fall on the image see each input pixel once and
    the rest see padding, so the convolution is ``F.linear`` of the flattened input with those taps'
    weights: the same outputs, and the same gradients (the taps on the padding get zero, as in the
    convolution). Small images reach this in a ResNet's last stage: resnet10t at 32 px has 1×1 maps
    in ``layer4``, where oneDNN's backward pass of the 512→512 3×3 convolution took 130 ms of a
    435 ms training step (batch 200, 2-core CPU); as matrix products the step took 293 ms (1.49×,
    the loss equal to 1e-5). Any other shape (an output of more than one pixel, or an image reaching
    past the kernel), and grouped, dilated, non-zero-padded or ``padding="same"`` convolutions, run
    the plain convolution. :func:`accelerated` swaps the class
    of every plain ``nn.Conv2d`` for the stage's fit on the CPU (weights and their names unchanged)."""

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 (nn.Conv2d's own argument name)
        taps = self._taps_on_image(input)
        if taps is None:
            return super().forward(input)
        rows, columns = taps
        top, left = cast(tuple[int, int], self.padding)  # a tuple once _taps_on_image accepted it
        weight = self.weight[:, :, top : top + rows, left : left + columns].reshape(self.out_channels, -1)
        return F.linear(input.reshape(input.shape[0], -1), weight, self.bias)[:, :, None, None]

    def _taps_on_image(self, input: Tensor) -> tuple[int, int] | None:
        """The kernel's rows and columns that land on the image when the output is one pixel, else ``None``."""
        if input.dim() != 4 or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str):
            return None
        if tuple(self.dilation) != (1, 1):
            return None
        rows, columns = input.shape[-2:]
        (kernel_rows, kernel_columns), (top, left) = self.kernel_size, self.padding
        if rows + top > kernel_rows or columns + left > kernel_columns:
            return None  # part of the image lies outside the kernel (or the output is larger)
        spare_rows, spare_columns = rows + 2 * top - kernel_rows, columns + 2 * left - kernel_columns
        if not (0 <= spare_rows < self.stride[0] and 0 <= spare_columns < self.stride[1]):
            return None  # more than one output pixel, or none (the convolution's own error)
        return rows, columns


def use_one_pixel_matmul(network: nn.Module) -> list[nn.Module]:
    """Swap every plain ``nn.Conv2d`` of ``network`` to :class:`OnePixelConv2d`; the swapped modules."""
    swapped: list[nn.Module] = [module for module in network.modules() if type(module) is nn.Conv2d]
    for module in swapped:
        module.__class__ = OnePixelConv2d
    return swapped


@contextmanager
def accelerated(
    network: nn.Module, *, compile: bool = False, channels_last: bool = False, one_pixel_matmul: bool = False
) -> Iterator[None]:
    """``network`` with its backbone's features compiled, in channels-last order and/or with
    :class:`OnePixelConv2d` convolutions while the block runs (module docstring); restored
    afterwards, also after an exception."""
    backbone = getattr(network, "backbone", network)
    swapped: list[nn.Module] = []
    try:
        if one_pixel_matmul:
            swapped = use_one_pixel_matmul(network)
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
        for module in swapped:
            module.__class__ = nn.Conv2d


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


__all__ = [
    "DeviceFeed",
    "FedLoader",
    "OnePixelConv2d",
    "accelerated",
    "compile_features",
    "is_compiled",
    "uncompile",
    "use_one_pixel_matmul",
]
