"""A pretext task from your own function: any batch → (altered inputs, labels).

The chapter's advice is to design the altered task around what the final task needs (predict the
noise when faces must be told apart, the colour when colour matters). ``CustomTask`` takes that
design as plain functions and supplies the rest of the machinery::

    def upside_down(images, generator):
        labels = torch.randint(0, 2, (images.shape[0],), generator=generator, device=images.device)
        flipped = torch.where(labels.view(-1, 1, 1, 1).bool(), images.flip(-2), images)
        return flipped, labels

    task = CustomTask(alter=upside_down, head=HeadSpec(outputs=2, kind="classification"),
                      decode=lambda outputs: ["flipped" if i else "upright" for i in outputs.argmax(1).tolist()])

``head`` is either a :class:`HeadSpec` — a linear layer on pooled features for classification and
regression, or the reconstruction decoder with ``outputs`` channels on the feature map — or a
function ``(encoder, image_size) -> nn.Module`` (then say ``kind``, or let ``loss`` imply it).
``loss`` is ``"cross_entropy"``, ``"mse"``, ``"l1"`` or a function ``(outputs, targets) -> scalar``.
The alter function should draw its random numbers from the generator it is given, on the images'
device, so that runs repeat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headstart.errors import HeadstartError
from headstart.heads import predicted_classes
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_images, require
from headstart.pretext.decoder import Decoder, stages_for

NAMED_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": F.cross_entropy,
    "mse": lambda outputs, targets: F.mse_loss(outputs, targets.to(outputs.dtype)),
    "l1": lambda outputs, targets: F.l1_loss(outputs, targets.to(outputs.dtype)),
}
KIND_OF_LOSS: dict[str, TaskKind] = {"cross_entropy": "classification", "mse": "regression", "l1": "regression"}


@dataclass(frozen=True)
class HeadSpec:
    """What the head produces: ``outputs`` classes, values, or image channels, and of which ``kind``."""

    outputs: int
    kind: Literal["classification", "regression", "reconstruction"] = "classification"

    def __post_init__(self) -> None:
        require(self.outputs >= 1, f"HeadSpec: outputs must be >= 1, got {self.outputs}")
        require(
            self.kind in ("classification", "regression", "reconstruction"),
            f"HeadSpec: kind must be classification, regression or reconstruction, got {self.kind!r}",
        )


class CustomTask(PretextTask):
    """A pretext task made of a user's alteration function, head, loss and decoder."""

    name: ClassVar[str] = "custom"

    def __init__(
        self,
        *,
        alter: Callable[[Tensor, torch.Generator], tuple[Tensor, Tensor]],
        head: HeadSpec | Callable[[Encoder, tuple[int, int]], nn.Module],
        loss: str | Callable[[Tensor, Tensor], Tensor] = "cross_entropy",
        decode: Callable[[Tensor], list[str]] | None = None,
        kind: TaskKind | None = None,
    ) -> None:
        if not callable(alter):
            raise HeadstartError(
                f"custom task: alter must be a function (images, generator) -> (inputs, targets), got {alter!r}"
            )
        if not (isinstance(head, HeadSpec) or callable(head)):
            raise HeadstartError(
                f"custom task: head must be a HeadSpec or a function (encoder, image_size) -> module, got {head!r}"
            )
        if isinstance(loss, str) and loss not in NAMED_LOSSES:
            raise HeadstartError(f"custom task: unknown loss {loss!r}; use one of {sorted(NAMED_LOSSES)} or a function")
        if kind is None:
            kind = (
                head.kind if isinstance(head, HeadSpec) else KIND_OF_LOSS.get(loss) if isinstance(loss, str) else None
            )
        if kind not in ("classification", "regression", "reconstruction"):
            raise HeadstartError(
                "custom task: say kind= classification, regression or reconstruction "
                "(a loss function alone does not tell)"
            )
        self.alter_function = alter
        self.head_spec = head
        self.loss_function = NAMED_LOSSES[loss] if isinstance(loss, str) else loss
        self.decode_function = decode
        self.kind = kind

    @property
    def kind(self) -> TaskKind:
        """Per instance here: the kind follows the head or loss a user gives."""
        return self._kind

    @kind.setter
    def kind(self, value: TaskKind) -> None:
        self._kind = value

    def __repr__(self) -> str:
        return f"CustomTask(kind={self.kind!r}, head={self.head_spec!r})"

    @property
    def num_outputs(self) -> int:
        if isinstance(self.head_spec, HeadSpec):
            return self.head_spec.outputs
        raise HeadstartError("custom task: the number of outputs is known only with a HeadSpec head")

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        check_images(images, self.name)
        return self.alter_function(images, generator)

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        if not isinstance(self.head_spec, HeadSpec):
            return self.head_spec(encoder, image_size)
        if self.kind == "reconstruction":
            return Decoder(encoder.feature_channels, self.head_spec.outputs, stages=stages_for(encoder, image_size))
        return nn.Linear(encoder.num_features, self.head_spec.outputs)

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        if self.kind == "reconstruction" and isinstance(self.head_spec, HeadSpec):
            return head(encoder.feature_map(inputs), inputs.shape[-2:])
        return head(encoder.pooled(inputs))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss_function(outputs, targets)

    def chance_level(self) -> dict[str, float]:
        if self.kind == "classification" and isinstance(self.head_spec, HeadSpec):
            return {"accuracy": 1.0 / self.head_spec.outputs}
        return {}

    def decode(self, outputs: Tensor) -> list[str]:
        if self.decode_function is not None:
            return list(self.decode_function(outputs))
        if self.kind == "classification":
            return [f"class={i}" for i in predicted_classes(outputs).tolist()]
        if self.kind == "regression":
            rows = outputs.reshape(outputs.shape[0], -1).tolist()
            return ["value=" + ",".join(f"{value:.2f}" for value in row) for row in rows]
        return [f"mean={value:.2f}" for value in outputs.mean(dim=tuple(range(1, outputs.dim()))).tolist()]
