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

import difflib
import re
from typing import Literal, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from headstart.errors import HeadstartError
from headstart.imageops import ResizeMode, convert_channels, normalize
from headstart.heads import GlobalPooling, HeadSpec, PoolingMode, build_head, head_spec_from_mapping, output_kind, to_probabilities
from headstart.preprocess import DecodeStyle, Preprocessing, decode_predictions, preprocess_input

BatchNormPolicy = Literal["frozen", "train"]
BN_POLICIES: tuple[str, ...] = ("frozen", "train")

_GROUP_KEYWORDS = ("all", "backbone", "head", "stem", "blocks", "stages")
_RANGE_SELECTOR = re.compile(r"^(blocks|stages)\[\s*(-?\d*)\s*(?:(:)\s*(-?\d*)\s*)?\]$")


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
        self.load_report = None
        self.pretext: str | None = None
        """Name of the pretext task whose head sits on top, or ``None`` for a task or no head."""
        self._bn_policy: BatchNormPolicy = "train"
        self._bn_selectors: tuple[str, ...] = ()
        self._frozen_batchnorm: list[str] = []
        self.num_features = self._measure_features()

    # ------------------------------------------------------------------ forward passes
    def _measure_features(self) -> int:
        if self.pooling != "flatten":
            return int(self.backbone.num_features)
        parameter = next(self.backbone.parameters())
        probe = torch.zeros((1, *self.preprocessing.input_size), device=parameter.device, dtype=parameter.dtype)
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            width = self.pooled(probe).shape[1]
        self.backbone.train(was_training)
        return int(width)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's unpooled features, ``[B, C, h, w]`` (``[B, N, D]`` for transformers)."""
        return self.backbone.forward_features(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Features after pooling: ``[B, num_features]`` (the 4-D map when ``pooling="none"``)."""
        return self.pool(self.backbone.forward_features(x))

    def head_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the head reads: the full classifier's outputs when ``include_top`` (the chapter's
        listing 2-21, a new layer on ``EfficientNetB4(classes=100)``), else :meth:`pooled`."""
        features = self.backbone.forward_features(x)
        if self.include_top:
            return self.backbone.forward_head(features)
        return self.pool(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for normalised input ``x`` (see :func:`headstart.preprocess.normalize`)."""
        return self.head(self.head_input(x))

    @property
    def head_in_features(self) -> int:
        """What a new head reads per example: the classifier's outputs when ``include_top``, else
        :attr:`num_features`."""
        return int(self.backbone.num_classes) if self.include_top else self.num_features

    @property
    def output_kind(self) -> str:
        """``softmax``, ``sigmoid`` or ``linear``: how :meth:`predict` turns logits into probabilities."""
        return output_kind(self.head)

    def check_input(self, x: torch.Tensor, caller: str = "predict") -> None:
        """Raise a :class:`HeadstartError` unless ``x`` is a float batch ``[B, in_chans, H, W]``."""
        name = f"{caller}: x of shape {tuple(x.shape)}"
        if x.ndim == 3 and x.shape[0] == self.in_chans:
            raise HeadstartError(f"{name} is one image; expected a batch [batch, {self.in_chans}, height, width]: "
                                 "pass x.unsqueeze(0), as Keras wants np.array([im])")
        if x.ndim != 4:
            raise HeadstartError(f"{name}: expected a batch [batch, {self.in_chans}, height, width] of normalised "
                                 "floats, or raw images as a numpy batch (batch, height, width, channels)")
        if not x.is_floating_point():
            raise HeadstartError(f"{name} has dtype {x.dtype}; a tensor must hold normalised floats. Pass raw "
                                 "uint8 pixels as a numpy array (batch, height, width, channels) and they are "
                                 "preprocessed first")
        if x.shape[1] != self.in_chans:
            hint = ("; it looks channels-last [batch, height, width, channels]: pass x.permute(0, 3, 1, 2), or the "
                    "raw pixels as a numpy array" if x.shape[-1] == self.in_chans else "")
            raise HeadstartError(f"{name} has {x.shape[1]} channels; {self.model_name} reads {self.in_chans} "
                                 f"(in_chans={self.in_chans}){hint}")
        if x.shape[0] == 0:
            raise HeadstartError(f"{name} holds no images; expected at least one")

    @torch.no_grad()
    def predict(self, x, *, batch_size: int = 32, resize: ResizeMode = "crop",
                float_scale: float = 1.0) -> torch.Tensor:
        """Probabilities ``[batch, outputs]``, computed in evaluation mode (mode restored).

        ``x`` is either a float tensor ``[B, C, H, W]`` already normalised (what
        :func:`~headstart.preprocess.preprocess_input` returns), or raw images, preprocessed here
        with :attr:`preprocessing`: a numpy batch ``(batch, height, width, channels)`` as the
        chapter's listing 2-4 passes it (``model.predict(np.array([im]))``), one image, or a list
        of paths, PIL images or arrays. ``resize`` and ``float_scale`` apply to raw images (see
        ``preprocess_input``). Like Keras' ``predict``, the batch runs in chunks of ``batch_size``
        on the network's device; the result stays on that device.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HeadstartError(f"predict: batch_size={batch_size!r}; expected a positive whole number")
        if not isinstance(x, torch.Tensor):
            x = preprocess_input(x, self.preprocessing, resize=resize, float_scale=float_scale)
        self.check_input(x)
        parameter = next(self.parameters(), None)
        device = parameter.device if parameter is not None else x.device
        dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else x.dtype
        was_training = self.training
        self.eval()
        try:
            outputs = [to_probabilities(self(chunk.to(device=device, dtype=dtype)), self.output_kind)
                       for chunk in x.split(batch_size)]
        except (RuntimeError, AssertionError) as error:
            height, width = (int(size) for size in x.shape[-2:])
            made_for = tuple(int(size) for size in self.preprocessing.input_size[-2:])
            if (height, width) == made_for:
                raise
            raise HeadstartError(f"predict: images of {height}×{width} pixels do not fit {self.model_name} (made for "
                                 f"{made_for[0]}×{made_for[1]}: {str(error).splitlines()[0] if str(error) else 'failed'}); "
                                 "pass raw images to have them resized, or resize the tensor") from None
        finally:
            self.train(was_training)
        return torch.cat(outputs)

    def decode(self, logits: torch.Tensor, top: int = 5, *, style: DecodeStyle = "pairs") -> list[list[tuple]]:
        """The ``top`` classes of each row of ``logits``, best first: ``(label, probability)`` pairs,
        or Keras' ``(class id, name, probability)`` with ``style="keras"`` (see ``decode_predictions``)."""
        return decode_predictions(to_probabilities(logits.detach(), self.output_kind), self.labels, top=top,
                                  style=style)

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
            raise HeadstartError(f"replace_head: head of type {type(head).__name__}: expected an nn.Module, a HeadSpec "
                                 "or a mapping such as {'hidden': [256], 'outputs': 10}")
        if labels is not None:
            if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
                raise HeadstartError(f"replace_head: labels={labels!r}; expected a list of class names, one per output")
            labels = [str(label) for label in labels]
        spec = getattr(head, "spec", None)
        if labels is not None and isinstance(spec, HeadSpec) and not spec.fits_labels(labels):
            raise HeadstartError(f"replace_head: {len(labels)} labels for a head of {spec.outputs} outputs, expected as "
                                 "many (or one sigmoid output for two labels)")
        if not isinstance(spec, HeadSpec) and (self.include_top or self.pooling != "none"):
            self._try_head(head, labels)
        return self._install_head(head, labels)

    def _try_head(self, head: nn.Module, labels: list[str] | None) -> None:
        """Run a custom ``head`` once on zeros ``[2, head_in_features]``; refuse it if that fails."""
        parameter = next(head.parameters(), None)
        probe = torch.zeros(2, self.head_in_features, device=parameter.device if parameter is not None else "cpu",
                            dtype=parameter.dtype if parameter is not None and parameter.is_floating_point() else None)
        was_training = head.training
        head.eval()
        try:
            with torch.no_grad():
                outputs = head(probe)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise HeadstartError(
                f"replace_head: the head cannot read this network's features, [batch, {self.head_in_features}] "
                f"({'the classifier outputs' if self.include_top else f'{self.pooling}-pooled features'}): "
                f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
        finally:
            head.train(was_training)
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
            shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise HeadstartError(f"replace_head: the head returns {shape} for [2, {self.head_in_features}] features; "
                                 "expected logits [batch, outputs]")
        count = outputs.shape[1]
        if labels is not None and not (count == len(labels) or (count == 1 and len(labels) == 2)):
            raise HeadstartError(f"replace_head: {len(labels)} labels for a head of {count} outputs, expected as many "
                                 "(or one sigmoid output for two labels)")

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
        return {"kind": kind, "labels": self.labels, "spec": spec.model_dump() if isinstance(spec, HeadSpec) else None,
                "pretext": self.pretext}

    # ------------------------------------------------------------------ input pipeline
    def set_training_size(self, image_size: int) -> None:
        """Record that this network was trained on whole images resized to ``image_size`` squares.

        Stages feed every image whole, resized (bilinear) to ``image_size`` — the data layer has
        already brought it to a square — and normalised with the pretrained statistics; from now
        on :attr:`preprocessing` describes that pipeline, so prediction prepares images as
        training did.
        """
        from dataclasses import replace

        self.preprocessing = replace(self.preprocessing, input_size=(self.in_chans, int(image_size), int(image_size)),
                                     interpolation="bilinear", crop_pct=1.0, crop_mode="squash")

    def encoder(self, image_size: int | None = None) -> "NetworkEncoder":
        """This network's backbone as pretext tasks and whole-set passes see it (0..1 images in)."""
        return NetworkEncoder(self, image_size)

    # ------------------------------------------------------------------ parameter groups
    def _classifier_names(self) -> list[str]:
        """Names of the backbone's own classifier parameters (only present when ``include_top``)."""
        if not self.include_top or not hasattr(self.backbone, "get_classifier"):
            return []
        classifier = self.backbone.get_classifier()
        if not isinstance(classifier, nn.Module):
            return []
        ids = {id(parameter) for parameter in classifier.parameters()}
        return [f"backbone.{name}" for name, parameter in self.backbone.named_parameters() if id(parameter) in ids]

    def _backbone_groups(self, coarse: bool) -> tuple[list[str], list[list[str]]]:
        """``(stem names, block groups)`` from timm's ``group_matcher``, classifier left out."""
        from timm.models import group_parameters

        classifier = set(self._classifier_names())
        names = [f"backbone.{name}" for name, _ in self.backbone.named_parameters()]
        if not hasattr(self.backbone, "group_matcher"):
            children = [f"backbone.{child}." for child, _ in self.backbone.named_children()]
            blocks = [[name for name in names if name.startswith(child) and name not in classifier] for child in children]
            return [], [block for block in blocks if block]
        matcher = self.backbone.group_matcher(coarse=coarse)
        layer_of = {f"backbone.{name}": layer for name, layer in group_parameters(self.backbone, matcher, reverse=True).items()}
        if isinstance(matcher, dict) and matcher.get("stem"):
            stem_spec = matcher["stem"]
            patterns = [stem_spec] if isinstance(stem_spec, str) else [entry[0] for entry in stem_spec]
            stem_layers = {
                layer_of[name]
                for name in names
                if any(re.match(pattern, name[len("backbone.") :]) for pattern in patterns)
            }
        else:
            stem_layers = {0}
        stem = [name for name in names if layer_of[name] in stem_layers and name not in classifier]
        by_layer: dict[int, list[str]] = {}
        for name in names:
            if name not in classifier and layer_of[name] not in stem_layers:
                by_layer.setdefault(layer_of[name], []).append(name)
        return stem, [by_layer[layer] for layer in sorted(by_layer)]

    def _head_names(self) -> list[str]:
        return self._classifier_names() + [f"head.{name}" for name, _ in self.head.named_parameters()]

    def param_groups(self) -> dict[str, list[str]]:
        """Group name → parameter names, in network order: ``stem``, ``blocks[0]``, …, ``head``.

        Blocks are timm's fine ``group_matcher`` groups (the layer ids of layer-wise learning-rate
        decay); every key is also a valid :meth:`freeze` selector.
        """
        stem, blocks = self._backbone_groups(coarse=False)
        groups: dict[str, list[str]] = {}
        if stem:
            groups["stem"] = stem
        for index, block in enumerate(blocks):
            groups[f"blocks[{index}]"] = block
        head = self._head_names()
        if head:
            groups["head"] = head
        return groups

    def _names_for(self, selector: str) -> list[str]:
        all_names = [name for name, _ in self.named_parameters()]
        if not isinstance(selector, str) or not selector.strip():
            raise HeadstartError(
                f"selector {selector!r} ({type(selector).__name__}): expected a name such as 'backbone', 'stem', "
                "'blocks[:3]', 'head', 'all' or 're:<regular expression>'"
            )
        selector = selector.strip()
        if selector.startswith("re:"):
            try:
                pattern = re.compile(selector[3:])
            except re.error as exc:
                raise HeadstartError(f"selector {selector!r}: invalid regular expression ({exc})") from None
            return [name for name in all_names if pattern.search(name)]
        if selector == "all":
            return all_names
        if selector == "head":
            return self._head_names()
        if selector == "backbone":
            classifier = set(self._classifier_names())
            return [name for name in all_names if name.startswith("backbone.") and name not in classifier]
        if selector == "stem":
            return self._backbone_groups(coarse=False)[0]
        if selector in ("blocks", "stages"):
            return [name for block in self._backbone_groups(coarse=selector == "stages")[1] for name in block]
        match = _RANGE_SELECTOR.match(selector)
        if match:
            kind, start, colon, stop = match.groups()
            blocks = self._backbone_groups(coarse=kind == "stages")[1]
            if colon:
                chosen = blocks[slice(int(start) if start else None, int(stop) if stop else None)]
            else:
                if not start:
                    raise HeadstartError(f"selector {selector!r}: expected an index or a range such as {kind}[:2]")
                index = int(start)
                if not -len(blocks) <= index < len(blocks):
                    raise HeadstartError(
                        f"selector {selector!r}: {self.model_name} has {len(blocks)} {kind} (indices 0..{len(blocks) - 1})"
                    )
                chosen = [blocks[index]]
            return [name for block in chosen for name in block]
        options = list(_GROUP_KEYWORDS) + list(self.param_groups())
        close = difflib.get_close_matches(selector, options, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise HeadstartError(
            f"unknown selector {selector!r}: expected all, backbone, head, stem, blocks, stages, "
            f"blocks[i] / blocks[a:b], stages[i] / stages[a:b] or re:<regular expression>{hint}"
        )

    def select(self, *selectors: str) -> list[str]:
        """Parameter names chosen by ``selectors`` (their union), in network order.

        A selector that chooses nothing is an error (usually a typo in a regular expression). A
        list of selectors counts as its items (``freeze(["stem", "blocks[:2]"])``, as a run file
        writes them).
        """
        selectors = tuple(item for selector in selectors
                          for item in (selector if isinstance(selector, (list, tuple)) else (selector,)))
        if not selectors:
            raise HeadstartError("no selector given: expected e.g. 'backbone', 'stem', 'blocks[:3]', 'head'")
        chosen: set[str] = set()
        for selector in selectors:
            names = self._names_for(selector)
            if not names:
                raise HeadstartError(f"selector {selector!r} selects no parameters of {self.model_name}")
            chosen.update(names)
        return [name for name, _ in self.named_parameters() if name in chosen]

    # ------------------------------------------------------------------ freezing
    def preview_freeze(self, *selectors: str) -> list[str]:
        """Names :meth:`freeze` would change (selected and now trainable); changes nothing."""
        parameters = dict(self.named_parameters())
        return [name for name in self.select(*selectors) if parameters[name].requires_grad]

    def freeze(self, *selectors: str) -> list[str]:
        """Stop gradients for the selected parameters; return the names that changed."""
        return self._set_trainable(selectors, trainable=False)

    def unfreeze(self, *selectors: str) -> list[str]:
        """Let the selected parameters train again; return the names that changed."""
        return self._set_trainable(selectors, trainable=True)

    def _set_trainable(self, selectors: Sequence[str], trainable: bool) -> list[str]:
        parameters = dict(self.named_parameters())
        changed = [name for name in self.select(*selectors) if parameters[name].requires_grad != trainable]
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

    def train(self, mode: bool = True) -> "Network":
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

    def diagram(self, path=None, depth: int = 2, input_size: int | Sequence[int] | None = None):
        """Draw the architecture as SVG, Keras' ``plot_model``: the backbone's blocks ``depth`` levels
        down and the head, with output shapes and frozen parts marked (:mod:`headstart.diagram`).
        Written to ``path`` when given; returns a :class:`~headstart.diagram.Diagram`."""
        from headstart.diagram import draw

        return draw(self, path, depth=depth, input_size=input_size)

    def summary(self, input_size: int | Sequence[int] | None = None, depth: int = 2) -> str:
        """A table like Keras' ``model.summary()``: layer, type, output shape, parameters, trainable.

        Rows are modules ``depth`` levels below the backbone and head (depth 2: the backbone's
        top-level modules, its stages split into blocks); output shapes come from forward hooks on
        one dummy batch of ``input_size`` (``(C, H, W)`` or ``H``; default the pretrained size).
        The footer gives Total / Trainable / Non-trainable parameters, the numbers the chapter
        compares before and after freezing.
        """
        if depth < 1:
            raise HeadstartError(f"summary depth={depth}: expected at least 1")
        if input_size is None:
            input_size = self.preprocessing.input_size
        elif isinstance(input_size, int):
            input_size = (self.in_chans, input_size, input_size)
        input_size = tuple(int(value) for value in input_size)

        rows: list[tuple[str, nn.Module]] = []

        def frontier(module: nn.Module, name: str, level: int) -> None:
            # A module holding parameters itself is one layer (a BatchNorm with its activation);
            # a container whose children hold none (a pooling wrapper) is one row too.
            children = list(module.named_children())
            own = any(True for _ in module.parameters(recurse=False))
            children_hold = any(True for _, child in children for _ in child.parameters())
            if level >= depth or own or not children_hold:
                rows.append((name, module))
                return
            for child_name, child in children:
                frontier(child, f"{name}.{child_name}", level + 1)

        for child_name, child in self.named_children():
            frontier(child, child_name, 0)

        shapes: dict[str, str] = {}

        def describe(output) -> str:
            if isinstance(output, torch.Tensor):
                return "(None, " + ", ".join(str(size) for size in output.shape[1:]) + ")"
            if isinstance(output, (tuple, list)):
                return " ".join(describe(item) for item in output)
            return "?"

        hooks = []
        for name, module in rows:
            def record(_module, _inputs, output, name=name):
                shapes.setdefault(name, describe(output))

            hooks.append(module.register_forward_hook(record))
        parameter = next(self.parameters())
        was_training = self.training
        try:
            self.eval()
            with torch.no_grad():
                self(torch.zeros((1, *input_size), device=parameter.device, dtype=parameter.dtype))
        finally:
            for hook in hooks:
                hook.remove()
            self.train(was_training)

        table = [("Layer (type)", "Output shape", "Param #", "Trainable")]
        for name, module in rows:
            parameters = list(module.parameters())
            count = sum(parameter.numel() for parameter in parameters)
            trainable = sum(parameter.numel() for parameter in parameters if parameter.requires_grad)
            flag = "-" if count == 0 else "yes" if trainable == count else "no" if trainable == 0 else "partly"
            label = f"{name} ({type(module).__name__})"
            table.append((label, shapes.get(name, "-"), f"{count:,}", flag))
        widths = [max(len(row[column]) for row in table) for column in range(4)]

        def line(row) -> str:
            return "  ".join(
                cell.ljust(width) if column in (0, 1) else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths))
            ).rstrip()

        total = sum(parameter.numel() for parameter in self.parameters())
        trainable_total = sum(parameter.numel() for parameter in self.parameters() if parameter.requires_grad)
        rule = "=" * len(line(table[0]))
        header = (
            f'Network "{self.model_name}": include_top={self.include_top}, pooling={self.pooling}, '
            f"input {input_size}, BatchNorm policy {self._bn_policy}"
        )
        body = [header, rule, line(table[0]), rule] + [line(row) for row in table[1:]] + [rule]
        body += [
            f"Total params: {total:,}",
            f"Trainable params: {trainable_total:,}",
            f"Non-trainable params: {total - trainable_total:,}",
        ]
        return "\n".join(body)


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
            was_training = self.network.training
            self.network.eval()
            with torch.no_grad():
                self._feature_channels = int(self.feature_map(probe).shape[1])
            self.network.train(was_training)
        return self._feature_channels
