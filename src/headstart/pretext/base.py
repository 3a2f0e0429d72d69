"""What every pretext task is: a batch alteration, a head, a loss, metrics and a decoder of outputs.

A pretext task (the chapter's "altered task dataset") turns a batch of unlabelled images into
inputs and labels made by construction: rotate and ask for the angle, add noise and ask how much,
hide patches and ask for them back. Nothing is written to disk: :meth:`PretextTask.alter` runs on
the batch as it arrives, on the training device, seeded by a :class:`torch.Generator` on that
same device, with no Python loop over images.

The loop a user writes with these parts is short::

    task = headstart.pretext.get("rotation")
    head = task.build_head(encoder, image_size=(32, 32))
    generator = torch.Generator(device=images.device).manual_seed(0)
    inputs, targets = task.alter(images, generator)
    outputs = task.forward(encoder, head, inputs)
    task.loss(outputs, targets).backward()

The ``encoder`` is anything that follows :class:`Encoder`; :class:`SimpleEncoder` wraps any
module that maps images to a feature map.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headstart.errors import HeadstartError
from headstart.heads import accuracy
from headstart.imageops import convert_channels

TaskKind = Literal["classification", "regression", "reconstruction", "embedding"]


@runtime_checkable
class Encoder(Protocol):
    """The backbone as a pretext task sees it.

    ``pooled`` and ``feature_map`` take images in 0..1 (``[B, C, H, W]``, C = 1 or 3); the encoder
    applies its own normalisation and channel adaptation.
    """

    num_features: int
    """Width of :meth:`pooled`'s output."""
    feature_channels: int
    """Channels of :meth:`feature_map`'s output (the backbone's last feature map)."""

    def pooled(self, images01: Tensor) -> Tensor:
        """``[B, num_features]`` pooled features."""
        ...

    def feature_map(self, images01: Tensor) -> Tensor:
        """``[B, feature_channels, h, w]`` last feature map."""
        ...


class SimpleEncoder(nn.Module):
    """An :class:`Encoder` around any module mapping images to a feature map ``[B, C', h, w]``.

    ``pooled`` averages the feature map over space. ``in_channels`` (when given) adapts the input
    as :func:`headstart.imageops.convert_channels` does: grey images are replicated, colour
    images become their BT.601 luminance. ``mean`` and
    ``std`` (per channel, in 0..1 units) normalise the images before the backbone; leave them unset
    to feed 0..1 values unchanged. ``reduction`` is the backbone's total stride (read from timm's
    ``feature_info`` when not given); image-to-image heads size their upsampling by it.

    With timm::

        backbone = timm.create_model("resnet18", num_classes=0, global_pool="")
        encoder = SimpleEncoder(backbone, backbone.num_features, backbone.num_features, in_channels=3)
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        feature_channels: int,
        *,
        in_channels: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        reduction: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        if reduction is None and getattr(backbone, "feature_info", None):
            reduction = _timm_reduction(backbone.feature_info)
        self.reduction = reduction
        self.num_features = int(num_features)
        self.feature_channels = int(feature_channels)
        self.in_channels = in_channels
        if (mean is None) != (std is None):
            raise HeadstartError("SimpleEncoder: give both mean and std, or neither")
        if mean is not None and std is not None:
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))
        else:
            self.mean = None
            self.std = None

    def _prepare(self, images01: Tensor) -> Tensor:
        channels = images01.shape[1]
        if self.in_channels is not None and channels != self.in_channels:
            if channels != 1 and self.in_channels != 1:
                raise HeadstartError(
                    f"SimpleEncoder: images have {channels} channels, the backbone takes {self.in_channels}"
                )
            images01 = convert_channels(images01, self.in_channels)
        if self.mean is not None:
            images01 = (images01 - self.mean) / self.std
        return images01

    def feature_map(self, images01: Tensor) -> Tensor:
        return self.backbone(self._prepare(images01))

    def pooled(self, images01: Tensor) -> Tensor:
        return self.feature_map(images01).mean(dim=(-2, -1))

    def forward(self, images01: Tensor) -> Tensor:
        return self.pooled(images01)


def _timm_reduction(feature_info) -> int | None:
    """The last stage's stride from a timm model's ``feature_info`` (a list of dicts or a helper)."""
    try:
        last = feature_info[-1]
        return int(last["reduction"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def require(condition: bool, message: str) -> None:
    """Raise :class:`HeadstartError` with ``message`` when ``condition`` is false (config checks)."""
    if not condition:
        raise HeadstartError(message)


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for images in 0..``peak``; infinite for a perfect match."""
    return math.inf if mse <= 0 else 10.0 * math.log10(peak * peak / mse)


class PretextTask(ABC):
    """A pretext task: alteration of a batch + head + loss + metrics + decoding of outputs.

    Subclasses are dataclasses whose fields are the task's options with the paper's defaults;
    they set ``name`` and ``kind`` and implement :meth:`alter`, :meth:`build_head` and
    :meth:`decode`. The defaults here cover the rest by ``kind``:

    ================ ============================ ==================== ========================
    kind             loss                         metrics              chance level
    ================ ============================ ==================== ========================
    classification   cross-entropy on logits      ``accuracy``         1 / number of classes
    regression       mean squared error           ``mae``              task-specific
    reconstruction   mean squared error on pixels ``mse``, ``psnr``    none (depends on data)
    embedding        the task's own (no labels)   the task's own       none
    ================ ============================ ==================== ========================

    Embedding tasks (SimCLR, BYOL, DINO) have no targets worth the name: their loss compares the
    embeddings of two views of each image, so they define :meth:`loss` and :meth:`metrics`; their
    headline metric is the loss itself (lower is better).
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]

    min_batch_size: ClassVar[int] = 1
    """Fewest images per training batch the task learns anything from; fewer are refused
    (:meth:`check_batch_size`). The tasks that compare the images of a batch (SimCLR, BYOL, DINO) need 2."""
    min_batch_reason: ClassVar[str] = ""
    """Why: the rest of the refusal's sentence."""
    useful_batch_size: ClassVar[int] = 1
    """Images per batch below which a stage logs a warning (not a refusal): the method's literature
    reports weaker features as the batch shrinks. Each subclass cites its source and says how it
    chose the threshold."""
    useful_batch_reason: ClassVar[str] = ""

    @classmethod
    def check_batch_size(cls, batch_size: int, where: str = "") -> str | None:
        """Refuse ``batch_size`` below :attr:`min_batch_size` (:class:`HeadstartError`); return a
        warning below :attr:`useful_batch_size`, ``None`` otherwise. ``where`` (``"stage 'simclr'"``)
        begins both messages."""
        prefix = f"{where}: " if where else ""
        if batch_size < cls.min_batch_size:
            raise HeadstartError(
                f"{prefix}pretext {cls.name} needs batch_size >= {cls.min_batch_size}, got {batch_size}: "
                f"{cls.min_batch_reason}"
            )
        if batch_size < cls.useful_batch_size:
            return (
                f"{prefix}batch_size {batch_size} is below {cls.useful_batch_size} for pretext {cls.name}: expect "
                f"weaker features ({cls.useful_batch_reason}); raise batch_size if memory allows"
            )
        return None

    # ------------------------------------------------------------------ the four task-specific parts
    @abstractmethod
    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Return ``(inputs, targets)`` made from ``images`` (``[B, C, H, W]`` in 0..1).

        Runs on ``images.device`` and draws every random number from ``generator`` (which must
        live on that device), so the same seed gives the same batch.
        """

    @abstractmethod
    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        """The module on top of the encoder for this task (dropped after pretraining)."""

    @abstractmethod
    def decode(self, outputs: Tensor) -> list[str]:
        """One readable label per sample, such as ``"rot=90"`` or ``"σ≈0.21"``."""

    # ------------------------------------------------------------------ defaults by kind
    @property
    def num_outputs(self) -> int:
        """Width of the head's output (classes for classification, values for regression)."""
        raise NotImplementedError(f"{type(self).__name__} defines no num_outputs")

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        """Outputs of the network on altered ``inputs``: ``head(encoder.pooled(inputs))``."""
        return head(encoder.pooled(inputs))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.kind == "classification":
            return F.cross_entropy(outputs, targets)
        return F.mse_loss(outputs, targets.to(outputs.dtype))

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        with torch.no_grad():
            if self.kind == "classification":
                return {"accuracy": accuracy(outputs, targets).item()}
            if self.kind == "regression":
                return {"mae": (outputs - targets).abs().mean().item()}
            mse = F.mse_loss(outputs, targets.to(outputs.dtype)).item()
            return {"mse": mse, "psnr": psnr(mse)}

    def chance_level(self) -> dict[str, float]:
        """Metric values of a network that has learned nothing (1/K accuracy; mae of the mean)."""
        if self.kind == "classification":
            return {"accuracy": 1.0 / self.num_outputs}
        return {}

    def after_step(self, head: nn.Module, encoder: Encoder, progress: float) -> None:  # noqa: B027 - optional hook
        """Called after every optimizer step of a training stage, ``progress`` = steps done / steps
        planned (0..1]. A no-op here; tasks with state outside the gradient (a momentum teacher,
        BYOL/DINO) update it here."""

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Height and width of what the encoder sees for images of ``image_size``."""
        return (int(image_size[0]), int(image_size[1]))

    @property
    def metric(self) -> str:
        """The headline metric: ``accuracy``, ``mae`` or ``mse``."""
        return {"classification": "accuracy", "regression": "mae", "reconstruction": "mse", "embedding": "loss"}[
            self.kind
        ]

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "classification"


def check_images(images: Tensor, task: str) -> None:
    """Refuse anything but a float ``[B, C, H, W]`` batch with one or three channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or not images.is_floating_point():
        raise HeadstartError(
            f"pretext task {task!r}: expected float images [B, C, H, W] with C = 1 or 3 in 0..1, "
            f"got {tuple(images.shape)} {images.dtype}"
        )


def check_generator(generator: torch.Generator, images: Tensor, task: str) -> None:
    """The generator must live where the images live, or the draws would not be reproducible there."""
    if torch.device(generator.device).type != images.device.type:
        raise HeadstartError(
            f"pretext task {task!r}: the generator is on {generator.device} but the images are on "
            f"{images.device}; create it with torch.Generator(device=images.device)"
        )
