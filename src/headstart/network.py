"""Network = pretrained backbone + head, with freezing by name, BatchNorm policy and a summary.

The three ways the chapter uses a pretrained model are three shapes of one class:

=============================== ===================================== ===========================
use                             ``forward(x)``                         built by
=============================== ===================================== ===========================
full pretrained classifier      the timm model's logits               ``load(name)``
feature extractor (+ new head)  ``head(pool(forward_features(x)))``   ``load(name, include_top=False, head=...)``
full model + new dense layers   ``head(timm_logits(x))``               ``load(name, head=...)``
=============================== ===================================== ===========================

Freezing selects parameters **by name** (STYLE rule 2): group names come from timm's
``group_matcher`` (``stem``, ``blocks[3]``, ``stages[:2]``), plus ``backbone``, ``head``, ``all``
and regular expressions (``re:^backbone\\.blocks\\.6``). Never by position in ``children()``.

BatchNorm policy is explicit: ``frozen`` keeps the chosen BatchNorm layers in evaluation mode —
running mean and variance fixed, the batch normalised with them — as Keras does for a layer with
``trainable=False`` (Keras 2.1.3+; see the Keras transfer-learning guide's "BatchNormalization
layer" note). It survives every ``network.train()`` call. Freezing weights and freezing BatchNorm
statistics are separate decisions: ``freeze("backbone")`` stops gradients, ``set_bn_policy("frozen")``
stops the statistics from drifting; a fine-tuning stage usually wants both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Literal, Protocol, cast

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart import selectors
from headstart.diagram import Diagram, draw
from headstart.errors import HeadstartError
from headstart.heads import (
    GlobalPooling,
    HeadSpec,
    OutputKind,
    PoolingMode,
    build_head,
    check_head_module,
    head_spec_from_mapping,
    output_kind,
    to_probabilities,
)
from headstart.imageops import ResizeMode, convert_channels, normalize
from headstart.modes import evaluating
from headstart.preprocess import (
    DecodeStyle,
    Preprocessing,
    check_batch,
    decode_predictions,
    predict_batch,
    predict_in_chunks,
)
from headstart.summary import summary as summary_table
from headstart.weights import LoadReport

BatchNormPolicy = Literal["frozen", "train"]
BN_POLICIES: tuple[str, ...] = ("frozen", "train")


class TimmInterface(Protocol):
    """What :class:`Network` reads from its backbone beyond ``nn.Module``: timm's feature interface."""

    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor) -> torch.Tensor: ...


class Network(nn.Module):
    """A pretrained backbone and the head on top of it; what every stage trains.

    Attributes:
        backbone: the timm model (or one answering its interface). Whole, classifier included,
            when ``include_top``; otherwise created with ``num_classes=0, global_pool=''`` and
            without the pre-logits layers ``forward_features`` does not use.
        pool: :class:`~headstart.heads.GlobalPooling` in the ``pooling`` mode.
        head: module applied last; ``nn.Identity`` for an unchanged classifier or a bare extractor.
        labels: class names the head's outputs decode to, or ``None``.
        preprocessing: the input pipeline of the pretrained weights.
        model_name: the zoo name the network was built from.
        in_chans: input channels.
        num_features: width of :meth:`pooled` per example (channels for ``avg``/``max``/``none``,
            channels × h × w at the pretrained input size for ``flatten``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        model_name: str,
        preprocessing: Preprocessing,
        include_top: bool = False,
        pooling: PoolingMode = "avg",
        head: nn.Module | None = None,
        labels: Sequence[str] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GlobalPooling(pooling, prefix_tokens=int(getattr(backbone, "num_prefix_tokens", 0) or 0))
        self.head: nn.Module = head if head is not None else nn.Identity()
        self.labels: list[str] | None = list(labels) if labels is not None else None
        self.preprocessing = preprocessing
        self.model_name = model_name
        self.in_chans = in_chans
        self.include_top = include_top
        self.pooling: PoolingMode = pooling
        self.load_report: LoadReport | None = None
        self.pretext: str | None = None
        """Name of the pretext task whose head sits on top, or ``None`` for a task or no head."""
        self._bn_policy: BatchNormPolicy = "train"
        self._bn_selectors: tuple[str, ...] = ()
        self._frozen_batchnorm: list[str] = []
        self.num_features = self._measure_features()

    # ------------------------------------------------------------------ forward passes
    @property
    def _timm(self) -> TimmInterface:
        """:attr:`backbone` through timm's interface (``nn.Module.__getattr__`` cannot type its attributes)."""
        return cast(TimmInterface, self.backbone)

    def _measure_features(self) -> int:
        if self.pooling != "flatten":
            return int(self._timm.num_features)
        parameter = next(self.backbone.parameters())
        probe = torch.zeros((1, *self.preprocessing.input_size), device=parameter.device, dtype=parameter.dtype)
        with evaluating(self.backbone):
            return int(self.pooled(probe).shape[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's unpooled features, ``[B, C, h, w]`` (``[B, N, D]`` for transformers)."""
        return self._timm.forward_features(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Features after pooling: ``[B, num_features]`` (the 4-D map when ``pooling="none"``)."""
        return self.pool(self._timm.forward_features(x))

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads: the full classifier's outputs when ``include_top`` (the chapter's
        listing 2-21, a new layer on ``EfficientNetB4(classes=100)``), else :meth:`pooled`."""
        features = self._timm.forward_features(x)
        if self.include_top:
            return self._timm.forward_head(features)
        return self.pool(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised input ``x`` (see :func:`headstart.preprocess.normalize`)."""
        return self.head(self.head_input(x))

    @property
    def head_in_features(self) -> int:
        """What a new head reads per example: the classifier's outputs when ``include_top``, else
        :attr:`num_features`."""
        return int(self._timm.num_classes) if self.include_top else self.num_features

    @property
    def output_kind(self) -> OutputKind:
        """``softmax``, ``sigmoid`` or ``linear``: how :meth:`predict` turns logits into probabilities."""
        return output_kind(self.head)

    def check_input(self, x: torch.Tensor, caller: str = "predict") -> None:
        """Raise a :class:`HeadstartError` unless ``x`` is a float batch ``[B, in_chans, H, W]``
        (:func:`headstart.preprocess.check_batch`)."""
        check_batch(x, in_chans=self.in_chans, model_name=self.model_name, caller=caller)

    @torch.no_grad()
    def predict(
        self, x, *, batch_size: int = 32, resize: ResizeMode = "crop", float_scale: float = 1.0
    ) -> torch.Tensor:
        """Probabilities ``[batch, outputs]``, computed in evaluation mode (mode restored).

        ``x`` is either a float tensor ``[B, C, H, W]`` already normalised (what
        :func:`~headstart.preprocess.preprocess_input` returns), or raw images, preprocessed here
        with :attr:`preprocessing`: a numpy batch ``(batch, height, width, channels)`` as the
        chapter's listing 2-4 passes it (``model.predict(np.array([im]))``), one image, or a list
        of paths, PIL images or arrays. ``resize`` and ``float_scale`` apply to raw images (see
        ``preprocess_input``). Like Keras' ``predict``, the batch runs in chunks of ``batch_size``
        on the network's device; the result stays on that device.
        """
        x = predict_batch(
            x,
            self.preprocessing,
            in_chans=self.in_chans,
            model_name=self.model_name,
            resize=resize,
            float_scale=float_scale,
        )
        return predict_in_chunks(self, x, batch_size=batch_size, output_kind=self.output_kind)

    def decode(self, logits: torch.Tensor, top: int = 5, *, style: DecodeStyle = "pairs") -> list[list[tuple]]:
        """The ``top`` classes of each row of ``logits``, best first: ``(label, probability)`` pairs,
        or Keras' ``(class id, name, probability)`` with ``style="keras"`` (see ``decode_predictions``)."""
        return decode_predictions(
            to_probabilities(logits.detach(), self.output_kind), self.labels, top=top, style=style
        )

    def replace_head(self, head: nn.Module | HeadSpec | dict, labels: Sequence[str] | None = None) -> nn.Module:
        """Put ``head`` on top (a module, or a spec built on :attr:`head_in_features`) and return it.

        ``labels`` name the new head's outputs. The new head is trainable; the BatchNorm policy is
        re-applied to the new module set. A module without a spec is tried once on zeros of the
        width it will read (``[2, head_in_features]``), so a head that cannot read the features, or
        whose output count disagrees with ``labels``, is refused here rather than at the first batch.
        """
        if isinstance(head, dict):
            head = head_spec_from_mapping(head)
        if isinstance(head, HeadSpec):
            if self.pooling == "none" and not self.include_top:
                raise HeadstartError(
                    "replace_head: a dense head reads [batch, features]; pooling='none' keeps the 4-D feature map, "
                    "use pooling='avg', 'max' or 'flatten'"
                )
            head = build_head(head, self.head_in_features)
        if not isinstance(head, nn.Module):
            raise HeadstartError(
                f"replace_head: head of type {type(head).__name__}: expected an nn.Module, a HeadSpec "
                "or a mapping such as {'hidden': [256], 'outputs': 10}"
            )
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
                raise HeadstartError(f"replace_head: labels={labels!r}; expected a list of class names, one per output")
            labels = [str(label) for label in labels]
        spec = getattr(head, "spec", None)
        if labels is not None and isinstance(spec, HeadSpec) and not spec.fits_labels(labels):
            raise HeadstartError(
                f"replace_head: {len(labels)} labels for a head of {spec.outputs} outputs, expected as "
                "many (or one sigmoid output for two labels)"
            )
        if not isinstance(spec, HeadSpec) and (self.include_top or self.pooling != "none"):
            reads = "the classifier outputs" if self.include_top else f"{self.pooling}-pooled features"
            check_head_module(head, self.head_in_features, labels, reads=reads)
        return self._install_head(head, labels)

    def _install_head(self, head: nn.Module, labels: list[str] | None) -> nn.Module:
        self.head = head
        self.labels = list(labels) if labels is not None else None
        self.pretext = None
        if self._bn_policy == "frozen":
            self.set_bn_policy("frozen", self._bn_selectors)
        return head

    def use_pretext_head(self, head: nn.Module, task: str) -> nn.Module:
        """Put a pretext task's head on top (no labels: its outputs are decoded by the task)."""
        self._install_head(head, labels=None)
        self.pretext = task
        return head

    def head_description(self) -> dict:
        """What the head predicts: ``kind`` (task, pretext or none), labels, spec and pretext name."""
        spec = getattr(self.head, "spec", None)
        if self.pretext is not None:
            kind = "pretext"
        elif isinstance(spec, HeadSpec) or self.labels is not None:
            kind = "task"
        else:
            kind = "none"
        return {
            "kind": kind,
            "labels": self.labels,
            "spec": spec.model_dump() if isinstance(spec, HeadSpec) else None,
            "pretext": self.pretext,
        }

    # ------------------------------------------------------------------ input pipeline
    def set_training_size(self, image_size: int) -> None:
        """Record that this network was trained on whole images resized to ``image_size`` squares.

        Stages feed every image whole, resized (bilinear) to ``image_size`` — the data layer has
        already brought it to a square — and normalised with the pretrained statistics; from now
        on :attr:`preprocessing` describes that pipeline, so prediction prepares images as
        training did.
        """
        self.preprocessing = replace(
            self.preprocessing,
            input_size=(self.in_chans, int(image_size), int(image_size)),
            interpolation="bilinear",
            crop_pct=1.0,
            crop_mode="squash",
        )

    def encoder(self, image_size: int | None = None) -> NetworkEncoder:
        """This network's backbone as pretext tasks and whole-set passes see it (0..1 images in)."""
        return NetworkEncoder(self, image_size)

    # ------------------------------------------------------------------ parameter groups
    def param_groups(self) -> dict[str, list[str]]:
        """Group name → parameter names, in network order: ``stem``, ``blocks[0]``, …, ``head``.

        Blocks are timm's fine ``group_matcher`` groups (the layer ids of layer-wise learning-rate
        decay); every key is also a valid :meth:`freeze` selector (:mod:`headstart.selectors`).
        """
        return selectors.param_groups(self)

    def select(self, *chosen: str) -> list[str]:
        """Parameter names chosen by selectors (their union), in network order; the language is
        :mod:`headstart.selectors` (``backbone``, ``stem``, ``blocks[:3]``, ``re:…``). A selector that
        chooses nothing is an error; a list counts as its items."""
        return selectors.select(self, chosen)

    # ------------------------------------------------------------------ freezing
    def preview_freeze(self, *chosen: str) -> list[str]:
        """Names :meth:`freeze` would change (selected and now trainable); changes nothing."""
        parameters = dict(self.named_parameters())
        return [name for name in self.select(*chosen) if parameters[name].requires_grad]

    def freeze(self, *chosen: str) -> list[str]:
        """Stop gradients for the selected parameters; return the names that changed."""
        return self._set_trainable(chosen, trainable=False)

    def unfreeze(self, *chosen: str) -> list[str]:
        """Let the selected parameters train again; return the names that changed."""
        return self._set_trainable(chosen, trainable=True)

    def _set_trainable(self, chosen: Sequence[str], trainable: bool) -> list[str]:
        parameters = dict(self.named_parameters())
        changed = [name for name in self.select(*chosen) if parameters[name].requires_grad != trainable]
        for name in changed:
            parameters[name].requires_grad_(trainable)
        return changed

    def frozen_parameter_names(self) -> list[str]:
        """Names of parameters that receive no gradient."""
        return [name for name, parameter in self.named_parameters() if not parameter.requires_grad]

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """``(name, parameter)`` pairs that train; build the optimizer from exactly these."""
        return [(name, parameter) for name, parameter in self.named_parameters() if parameter.requires_grad]

    @property
    def trainable(self) -> bool:
        """Whether any parameter trains. Setting it is Keras' ``model.trainable = ...`` for the whole
        network (the chapter's listing 2-13): ``False`` freezes every parameter and keeps every
        BatchNorm layer in inference mode; ``True`` undoes both. To freeze only the pretrained part,
        as the chapter's ``inception_model.trainable = False`` does, use ``freeze("backbone")`` and
        ``set_bn_policy("frozen")``."""
        return any(parameter.requires_grad for parameter in self.parameters())

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise HeadstartError(f"trainable={value!r}: expected True or False")
        if value:
            self.unfreeze("all")
            self.set_bn_policy("train")
        else:
            self.freeze("all")
            self.set_bn_policy("frozen", ("all",))

    # ------------------------------------------------------------------ BatchNorm policy
    def set_bn_policy(self, policy: BatchNormPolicy, selectors: Sequence[str] = ("backbone",)) -> list[str]:
        """Choose how the BatchNorm layers of ``selectors`` behave in training mode.

        ``frozen``: those layers stay in evaluation mode (running statistics neither used from the
        batch nor updated), also after ``train()``. ``train``: every BatchNorm layer follows the
        network's mode, PyTorch's default. Returns the names of the frozen BatchNorm modules.
        """
        if policy not in BN_POLICIES:
            raise HeadstartError(f"BatchNorm policy {policy!r}: expected one of {', '.join(BN_POLICIES)}")
        if isinstance(selectors, str):
            selectors = (selectors,)
        frozen: list[str] = []
        if policy == "frozen":
            chosen = set(self.select(*selectors))
            for module_name, module in self.named_modules():
                if isinstance(module, _BatchNorm) and any(
                    f"{module_name}.{name}" in chosen for name, _ in module.named_parameters(recurse=False)
                ):
                    frozen.append(module_name)
        self._bn_policy = policy
        self._bn_selectors = tuple(selectors) if policy == "frozen" else ()
        self._frozen_batchnorm = frozen
        self.train(self.training)
        return list(frozen)

    @property
    def bn_policy(self) -> BatchNormPolicy:
        """The BatchNorm policy in force: ``frozen`` or ``train``."""
        return self._bn_policy

    @property
    def bn_selectors(self) -> tuple[str, ...]:
        """The selectors the ``frozen`` policy applies to (empty under ``train``)."""
        return self._bn_selectors

    def frozen_batchnorm_names(self) -> list[str]:
        """Module names of the BatchNorm layers kept in evaluation mode."""
        return list(self._frozen_batchnorm)

    def train(self, mode: bool = True) -> Network:
        """Set training mode, then put the BatchNorm layers the ``frozen`` policy names back in eval."""
        super().train(mode)
        if self._bn_policy == "frozen":
            modules = dict(self.named_modules())
            for name in self._frozen_batchnorm:
                if name in modules:  # a head assigned directly, not through replace_head, drops out
                    modules[name].eval()
        return self

    # ------------------------------------------------------------------ description
    def metadata(self) -> dict:
        """JSON-ready facts a checkpoint stores to rebuild and explain this network."""
        spec = getattr(self.head, "spec", None)
        return {
            "model_name": self.model_name,
            "include_top": self.include_top,
            "pooling": self.pooling,
            "in_chans": self.in_chans,
            "num_features": self.num_features,
            "labels": self.labels,
            "head": spec.model_dump() if isinstance(spec, HeadSpec) else None,
            "head_type": type(self.head).__name__,
            "preprocessing": self.preprocessing.to_dict(),
            "bn_policy": self._bn_policy,
            "bn_selectors": list(self._bn_selectors),
            "frozen_parameters": self.frozen_parameter_names(),
        }

    def diagram(self, path=None, depth: int = 2, input_size: int | Sequence[int] | None = None) -> Diagram:
        """Draw the architecture as SVG, Keras' ``plot_model``: the backbone's blocks ``depth`` levels
        down and the head, with output shapes and frozen parts marked (:mod:`headstart.diagram`).
        Written to ``path`` when given; returns a :class:`~headstart.diagram.Diagram`."""
        return draw(self, path, depth=depth, input_size=input_size)

    def summary(self, input_size: int | Sequence[int] | None = None, depth: int = 2) -> str:
        """A table like Keras' ``model.summary()`` (:func:`headstart.summary.summary`): layer, type,
        output shape, parameters, trainable, and Total / Trainable / Non-trainable parameters, the
        numbers the chapter compares before and after freezing. ``input_size``: ``(C, H, W)`` or
        ``H``, default the pretrained size; ``depth``: levels below the backbone and head."""
        return summary_table(self, input_size, depth)


class NetworkEncoder:
    """A network's backbone as a pretext task sees it: 0..1 images in, features out.

    Follows :class:`headstart.pretext.Encoder`: channels are adapted and values normalised here
    (:mod:`headstart.imageops`), so a task never needs to know the network's input pipeline. A
    plain object (not a module) so the backbone's parameters are registered once, by the network.
    ``pooled`` is what the network's head reads (:meth:`Network.head_input`): with ``include_top``
    the full classifier's outputs, so a pretext head sits on top of them as in the chapter's
    listing 2-21.
    """

    def __init__(self, network: Network, image_size: int | None) -> None:
        self.network = network
        self.image_size = image_size
        self.num_features = network.head_in_features
        feature_info = getattr(network.backbone, "feature_info", None)
        self.reduction = int(feature_info[-1]["reduction"]) if feature_info else 32
        """Total stride of the backbone (decoder heads upsample by it)."""
        self._feature_channels: int | None = None

    def prepare(self, images01: torch.Tensor) -> torch.Tensor:
        """0..1 images with any channel count the network accepts → the network's normalised input."""
        preprocessing = self.network.preprocessing
        return normalize(convert_channels(images01, self.network.in_chans), preprocessing.mean, preprocessing.std)

    def pooled(self, images01: torch.Tensor) -> torch.Tensor:
        return self.network.head_input(self.prepare(images01))

    def feature_map(self, images01: torch.Tensor) -> torch.Tensor:
        return self.network.forward_features(self.prepare(images01))

    @property
    def feature_channels(self) -> int:
        if self._feature_channels is None:
            size = self.image_size or 64
            parameter = next(self.network.parameters())
            probe = torch.zeros(1, self.network.in_chans, size, size, device=parameter.device)
            with evaluating(self.network):
                self._feature_channels = int(self.feature_map(probe).shape[1])
        return self._feature_channels


__all__ = ["BN_POLICIES", "BatchNormPolicy", "Network", "NetworkEncoder"]
