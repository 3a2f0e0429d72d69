"""Self-distillation with a momentum teacher: BYOL (Grill et al., NeurIPS 2020) and DINO (Caron et
al., ICCV 2021).

Both train a *student* (the network's backbone + a projection) to match, on one view of an image,
what a *teacher* outputs on another view. The teacher gets no gradient: after every optimizer step
its weights move towards the student's, ``teacher ← m·teacher + (1 − m)·student``, with ``m``
following a cosine from ``momentum`` to 1 over the stage (lightly's ``update_momentum`` and
``cosine_schedule``). No negative pairs are needed, so small batches work.

* **BYOL** — the student has one more layer, a predictor, and its output is pulled towards the
  teacher's projection by ``2 − 2·cos`` (lightly's ``NegativeCosineSimilarity`` = −cos), both
  ways round. ResNet-50: 74.3% ImageNet top-1 under linear evaluation (SimCLR 69.3%); robust to
  batch size 256 (−0.3 points against 4096; SimCLR loses more). Defaults: projection 256 wide
  (hidden 4096 in the paper; here 4× the feature width to keep a CPU stage light), m from 0.99
  (the paper 0.996 for 1000 epochs; a short stage needs a faster teacher).
* **DINO** — student and teacher end in a softmax over ``output_dim`` prototypes; the student's
  distribution on one view is trained towards the teacher's *centred* and *sharpened*
  (temperature 0.04 against the student's 0.1) distribution on the other view. Centring (a running
  mean of the teacher's outputs, momentum 0.9) and sharpening together prevent collapse. ViT-S/16:
  77.0% linear, 74.5% k-NN on ImageNet; ResNet-50: 75.3% linear. Defaults sized for small images
  on a CPU: hidden 512, bottleneck 64, 1024 prototypes (the paper's 2048/256/65536 are for
  ImageNet), two global views; DINO's teacher-temperature warm-up
  (``warmup_teacher_temperature``) and multi-crop (``local_crops``) are options (:class:`DINOTask`).

The teacher lives inside the pretext head (a copy of the backbone and of the projection), so it
is saved with the stage, restored when a stage resumes and dropped with the head when the task
stage begins. Its parameters never receive a gradient (it runs under ``torch.no_grad``), so the
optimizer never moves them; only :meth:`after_step` does. DINO's centre is a buffer of the head: an
evaluation pass (validation) computes the loss without moving it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from headstart.errors import HeadstartError
from headstart.pretext.base import Encoder, PretextTask, TaskKind, check_generator, check_images, require
from headstart.pretext.views import ViewOptions, area_range

if TYPE_CHECKING:
    from lightly.loss import DINOLoss


class _WrapsNetwork(Protocol):
    """An encoder around a headstart network (:class:`headstart.network.NetworkEncoder`)."""

    network: nn.Module

    def prepare(self, images01: Tensor) -> Tensor: ...


class _ReadsHeadInput(Protocol):
    """A headstart network as a teacher: what its head would read."""

    def head_input(self, x: Tensor) -> Tensor: ...


def teacher_copy(encoder: Encoder) -> nn.Module:
    """A copy of what computes the encoder's features: a headstart network without its head (its
    ``head_input`` gives the teacher what the head would read), or the encoder module itself."""
    network = getattr(encoder, "network", None)
    if network is None:
        if not isinstance(encoder, nn.Module):
            raise HeadstartError(
                f"a momentum teacher needs an encoder that is an nn.Module or wraps a headstart "
                f"Network; got {type(encoder).__name__}"
            )
        return copy.deepcopy(encoder)
    head, network.head = network.head, nn.Identity()  # the old head is not part of the teacher
    try:
        return copy.deepcopy(network)
    finally:
        network.head = head


def followed_pair(encoder: Encoder, teacher: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(student, teacher)`` modules whose weights the momentum update pairs."""
    network = getattr(encoder, "network", None)
    if network is not None:
        return network.backbone, cast(nn.Module, teacher.backbone)
    assert isinstance(encoder, nn.Module)  # teacher_copy refuses any other encoder without a network
    return encoder, teacher


def teacher_pooled(encoder: Encoder, teacher: nn.Module, images01: Tensor) -> Tensor:
    """What the head would read, computed by the teacher."""
    if getattr(encoder, "network", None) is not None:
        return cast(_ReadsHeadInput, teacher).head_input(cast(_WrapsNetwork, encoder).prepare(images01))
    return cast(Encoder, teacher).pooled(images01)  # a copy of the encoder


class MomentumHead(nn.Module):
    """Student projection (+ predictor) and the teacher: copies of the student module and projection."""

    def __init__(
        self, encoder: Encoder, make_projection: Callable[[], nn.Module], predictor: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.projection = make_projection()
        self.predictor = predictor
        self.teacher = teacher_copy(encoder)
        # built twice and copied (a weight-normalised layer, DINO's last, cannot be deep-copied)
        self.teacher_projection = make_projection()
        self.teacher_projection.load_state_dict(self.projection.state_dict())
        for parameter in [*self.teacher.parameters(), *self.teacher_projection.parameters()]:
            parameter.requires_grad_(False)

    def student(self, encoder: Encoder, images01: Tensor) -> Tensor:
        out = self.projection(encoder.pooled(images01))
        return self.predictor(out) if self.predictor is not None else out

    def target(self, encoder: Encoder, images01: Tensor) -> Tensor:
        with torch.no_grad():
            return self.teacher_projection(teacher_pooled(encoder, self.teacher, images01)).detach()

    @torch.no_grad()
    def follow(self, encoder: Encoder, momentum: float) -> None:
        """``teacher ← momentum·teacher + (1 − momentum)·student`` for backbone and projection."""
        from lightly.models.utils import update_momentum

        update_momentum(*followed_pair(encoder, self.teacher), momentum)
        update_momentum(self.projection, self.teacher_projection, momentum)


BATCHNORM_USEFUL_BATCH = 16
"""Images per batch below which a BYOL or DINO stage logs a warning.

Neither method needs negatives, so both tolerate smaller batches than SimCLR. Grill et al. 2020
(§5, fig. 3a) found BYOL stable from 4096 down to 256 images per batch and losing accuracy below,
which they attribute to the BatchNorm layers of the encoder; Wu & He 2018 (Group Normalization,
fig. 1) measured BatchNorm itself holding down to 16 images per batch and degrading quickly
below (8, 4, 2). Caron et al. 2021 train DINO with 64 images per GPU (1024 in all) and
their batch-size ablation goes down to 128 in all. headstart warns below 16, where the batch
statistics of a BatchNorm backbone turn noisy. Batches of one are refused: every batch statistic
(BatchNorm, BYOL's projector and predictor, DINO's centre) then comes from one image's two views."""


@dataclass(kw_only=True)
class _MomentumTask(ViewOptions, PretextTask):
    kind: ClassVar[TaskKind] = "embedding"
    min_batch_size: ClassVar[int] = 2
    min_batch_reason: ClassVar[str] = (
        "with one image per batch every batch statistic (BatchNorm in the backbone and heads, DINO's centre) "
        "comes from that image's two views alone"
    )
    useful_batch_size: ClassVar[int] = BATCHNORM_USEFUL_BATCH
    useful_batch_reason: ClassVar[str] = (
        "Grill et al. 2020, fig. 3a: BYOL holds from 4096 down to 256 and then drops through BatchNorm, which "
        "Wu & He 2018 found degrading below 16 images per batch"
    )

    momentum: float = 0.99
    """Teacher momentum at the start of the stage; it rises to 1 along a cosine (lightly's schedule)."""

    def _check_momentum(self) -> None:
        self.check(self.name)
        require(0 <= self.momentum < 1, f"{self.name}: momentum {self.momentum!r}: expected 0 <= momentum < 1")

    def alter(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Every view of :meth:`draw_views` stacked, ``[V·B, C, H, W]``; targets: each view's image index."""
        check_images(images, self.name)
        check_generator(generator, images, self.name)
        views = self.draw_views(images, generator)
        index = torch.arange(images.shape[0], device=images.device)
        return torch.cat(views), index.repeat(len(views))

    def draw_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """The views of every image, all at the image's size: two here."""
        return [*self.two_views(images, generator)]

    def momentum_at(self, progress: float) -> float:
        from lightly.utils.scheduler import cosine_schedule

        return float(cosine_schedule(int(round(progress * 10_000)), 10_000, self.momentum, 1.0))

    def after_step(self, head: nn.Module, encoder: Encoder, progress: float) -> None:
        cast(MomentumHead, head).follow(encoder, self.momentum_at(progress))  # built by build_head


@dataclass(kw_only=True)
class BYOLTask(_MomentumTask):
    """BYOL: the student's prediction on each view regresses the teacher's projection of the other."""

    name: ClassVar[str] = "byol"

    projection_dim: int = 256
    hidden_dim: int | None = None
    """Hidden width of projection and predictor; default: 4 × the backbone's feature width."""

    def __post_init__(self) -> None:
        self._check_momentum()
        require(self.projection_dim > 0, f"byol: projection_dim {self.projection_dim!r}: expected a positive width")

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

        width = encoder.num_features
        hidden = self.hidden_dim or 4 * width
        return MomentumHead(
            encoder,
            lambda: BYOLProjectionHead(width, hidden, self.projection_dim),
            BYOLPredictionHead(self.projection_dim, hidden, self.projection_dim),
        )

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        """``[2, 2B, D]``: the student's predictions and the teacher's projections of the views."""
        momentum_head = cast(MomentumHead, head)  # built by build_head
        return torch.stack([momentum_head.student(encoder, inputs), momentum_head.target(encoder, inputs)])

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        from lightly.loss import NegativeCosineSimilarity

        predictions, projections = outputs
        first, second = predictions.chunk(2)
        target_first, target_second = projections.chunk(2)
        criterion = NegativeCosineSimilarity()
        return 2 + criterion(first, target_second.detach()) + criterion(second, target_first.detach())

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """``view_similarity``: mean cosine between a view's prediction and the other view's target;
        ``embedding_spread`` of the predictions, about 1 when healthy and 0 when every image gets the
        same one — BYOL's collapse, which a high ``view_similarity`` alone does not rule out
        (:func:`headstart.pretext.diagnostics.embedding_spread`)."""
        from headstart.pretext.diagnostics import embedding_spread

        with torch.no_grad():
            return {
                "view_similarity": _cross_cosine(outputs).mean().item(),
                "embedding_spread": embedding_spread(outputs[0]),
            }

    def decode(self, outputs: Tensor) -> list[str]:
        return [f"cos={value:.2f}" for value in _cross_cosine(outputs).tolist()]


def _cross_cosine(outputs: Tensor) -> Tensor:
    """Per view: cosine between its prediction and the teacher's projection of the other view."""
    predictions, projections = outputs
    other = torch.cat(projections.chunk(2)[::-1])
    return F.cosine_similarity(predictions, other, dim=1)


class DINOHead(MomentumHead):
    """A momentum head whose loss (lightly's ``DINOLoss``), its running centre and the teacher's
    current temperature live in the head, so all three are saved with a stage and restored on resume."""

    teacher_temperature_now: Tensor

    def __init__(
        self, encoder: Encoder, make_projection: Callable[[], nn.Module], criterion: DINOLoss, temperature: float
    ) -> None:
        super().__init__(encoder, make_projection)
        self.criterion = criterion
        self.register_buffer("teacher_temperature_now", torch.tensor(float(temperature)))


@dataclass(kw_only=True)
class DINOTask(_MomentumTask):
    """DINO: the student's softmax over prototypes on each view matches the teacher's (centred,
    sharpened) on the other global view.

    Caron et al. 2021 keep the teacher from collapsing with two opposite forces — centring (a running
    mean of its outputs, subtracted) pushes towards uniform, sharpening (a low temperature) towards
    one prototype — and add two things that matter when training is short:

    * **teacher temperature warm-up** (§ 5.2 and appendix: τt linear from 0.04 to 0.07 over the first
      30 of 100+ epochs; "above 0.07 is unstable"): ``warmup_teacher_temperature`` →
      ``teacher_temperature`` over the first ``teacher_warmup`` share of the stage's steps;
    * **multi-crop** (§ 3.1, table 9 of the appendix: 2×224 + 10×96 crops raise ViT-S from 67.8% to
      74.6% k-NN on ImageNet, +6.8 points): ``local_crops`` small views (area ``local_crop_scale``,
      drawn at ``local_size`` of the side: 96/224 ≈ 0.43) that only the student sees; the teacher
      sees the two global views, so the student learns "local to global" correspondences. The local
      views run through the backbone at their own small size (cheap: a quarter of the pixels at half
      the side).
    """

    name: ClassVar[str] = "dino"
    useful_batch_reason: ClassVar[str] = (
        "Caron et al. 2021 train with 64 images per GPU, 1024 in all; a BatchNorm backbone's statistics "
        "degrade below 16 images per batch, Wu & He 2018"
    )

    momentum: float = 0.99
    hidden_dim: int = 512
    bottleneck_dim: int = 64
    output_dim: int = 1024
    teacher_temperature: float = 0.04
    """The teacher's temperature after the warm-up (the whole stage without one)."""
    warmup_teacher_temperature: float | None = None
    """The teacher's temperature at the first step; ``None``: no warm-up."""
    teacher_warmup: float = 0.3
    """Share of the stage's steps over which the temperature rises linearly (DINO: 30 epochs of 100)."""
    student_temperature: float = 0.1
    center_momentum: float = 0.9
    local_crops: int = 0
    """Small views per image that only the student sees (DINO: 10 on ImageNet; 0: two global views only)."""
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    """Area of a local crop, as a share of the image (DINO's ``local_crops_scale``)."""
    local_size: float = 0.5
    """Side of a local view as a share of the image's side (DINO: 96 / 224)."""

    def __post_init__(self) -> None:
        self._check_momentum()
        for name in ("hidden_dim", "bottleneck_dim", "output_dim"):
            require(getattr(self, name) > 0, f"dino: {name} {getattr(self, name)!r}: expected a positive width")
        for name in ("teacher_temperature", "student_temperature"):
            require(getattr(self, name) > 0, f"dino: {name} {getattr(self, name)!r}: expected a positive number")
        require(
            self.warmup_teacher_temperature is None or self.warmup_teacher_temperature > 0,
            f"dino: warmup_teacher_temperature {self.warmup_teacher_temperature!r}: expected a positive number or null",
        )
        require(0 <= self.teacher_warmup <= 1, f"dino: teacher_warmup {self.teacher_warmup!r}: expected 0..1")
        require(0 <= self.center_momentum < 1, f"dino: center_momentum {self.center_momentum!r}: expected 0..1")
        require(
            isinstance(self.local_crops, int) and self.local_crops >= 0,
            f"dino: local_crops {self.local_crops!r}: expected a whole number >= 0",
        )
        self.local_crop_scale = area_range(self.local_crop_scale, "local_crop_scale", "dino")
        require(0 < self.local_size <= 1, f"dino: local_size {self.local_size!r}: expected 0 < share <= 1")
        self._head: DINOHead | None = None

    @property
    def views(self) -> int:
        """Views per image the student sees: two global ones and the local ones."""
        return 2 + self.local_crops

    def temperature_at(self, progress: float) -> float:
        """The teacher's temperature after ``progress`` (0..1) of the stage's steps."""
        start = self.warmup_teacher_temperature
        if start is None or self.teacher_warmup == 0 or progress >= self.teacher_warmup:
            return self.teacher_temperature
        return start + (self.teacher_temperature - start) * progress / self.teacher_warmup

    def draw_views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """The two global views, then ``local_crops`` local ones, all at the image's size
        (:meth:`forward` shrinks the local ones to ``local_size``)."""
        views = [*self.two_views(images, generator)]
        return views + [self.view(images, generator, self.local_crop_scale) for _ in range(self.local_crops)]

    def build_head(self, encoder: Encoder, image_size: tuple[int, int]) -> nn.Module:
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        def projection() -> nn.Module:
            with warnings.catch_warnings():  # lightly's last layer uses torch's older weight_norm
                warnings.simplefilter("ignore", FutureWarning)
                return DINOProjectionHead(encoder.num_features, self.hidden_dim, self.bottleneck_dim, self.output_dim)

        criterion = DINOLoss(
            output_dim=self.output_dim,
            warmup_teacher_temp=self.teacher_temperature,
            teacher_temp=self.teacher_temperature,
            warmup_teacher_temp_epochs=0,
            student_temp=self.student_temperature,
            center_momentum=self.center_momentum,
        )
        self._head = DINOHead(encoder, projection, criterion, self.temperature_at(0.0))
        return self._head

    def forward(self, encoder: Encoder, head: nn.Module, inputs: Tensor) -> Tensor:
        """``[(2 + L)·B + 2·B, K]``: the student's logits over the prototypes for every view (global
        ones first), then the teacher's for the two global views."""
        self._head = cast(DINOHead, head)  # built by build_head
        count = len(inputs) // self.views
        global_views, local_views = inputs[: 2 * count], inputs[2 * count :]
        student = [self._head.student(encoder, global_views)]
        if self.local_crops:
            side = [max(1, round(self.local_size * size)) for size in inputs.shape[-2:]]
            local_views = F.interpolate(local_views, size=side, mode="bilinear", antialias=True, align_corners=False)
            student.append(self._head.student(encoder, local_views))
        return torch.cat([*student, self._head.target(encoder, global_views)])

    def _split(self, outputs: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """``(teacher views, student views)``: lists of ``[B, K]``."""
        count = len(outputs) // (self.views + 2)
        student, teacher = outputs[: self.views * count], outputs[self.views * count :]
        return list(teacher.chunk(2)), list(student.chunk(self.views))

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self._head is None:
            raise HeadstartError("dino: build_head (or forward) must run before loss: the centre lives in the head")
        teacher, student = self._split(outputs)
        criterion = self._head.criterion
        saved = None if self._head.training else criterion.center.clone()
        value = criterion(teacher, student, teacher_temp=float(self._head.teacher_temperature_now))
        if saved is not None:  # an evaluation pass must not move the centre
            criterion.center.copy_(saved)
        return value

    def after_step(self, head: nn.Module, encoder: Encoder, progress: float) -> None:
        super().after_step(head, encoder, progress)
        cast(DINOHead, head).teacher_temperature_now.fill_(self.temperature_at(progress))

    def metrics(self, outputs: Tensor, targets: Tensor) -> dict[str, float]:
        """``teacher_entropy``: mean entropy (nats) of the teacher's centred, sharpened distribution —
        near 0 is collapse to one prototype, near log K collapse to uniform."""
        with torch.no_grad():
            probabilities = self._teacher_probabilities(torch.cat(self._split(outputs)[0]))
            entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(1)
            return {"teacher_entropy": entropy.mean().item()}

    def _teacher_probabilities(self, teacher: Tensor) -> Tensor:
        if self._head is None:
            return F.softmax(teacher / self.teacher_temperature, dim=-1)
        center = self._head.criterion.center.reshape(1, -1)
        return F.softmax((teacher - center) / float(self._head.teacher_temperature_now), dim=-1)

    def decode(self, outputs: Tensor) -> list[str]:
        teacher = torch.cat(self._split(outputs)[0])
        return [f"prototype={int(index)}" for index in self._teacher_probabilities(teacher).argmax(1).tolist()]


__all__ = ["BYOLTask", "DINOHead", "DINOTask", "MomentumHead", "followed_pair", "teacher_copy", "teacher_pooled"]
