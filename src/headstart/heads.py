"""Heads: what sits on top of a pretrained feature extractor.

A head is the part of a network that a transfer-learning stage replaces: the chapter's "remove the
classifier of the pretrained model and put new dense layers on the extracted features". Two pieces
live here:

* :class:`GlobalPooling` turns a feature map ``[B, C, h, w]`` into what a dense head reads. Its modes
  are those of the ``pooling`` argument of Keras applications (``avg`` → GlobalAveragePooling2D,
  ``max`` → GlobalMaxPooling2D, ``none`` → the 4-D map itself) plus ``flatten`` (Keras ``Flatten``,
  which ties the head to one input size).
* :class:`HeadSpec` / :func:`build_head` describe and build a dense stack, in the spirit of lightly's
  heads built from ``(in, out, norm, act)`` tuples.

Logits, not probabilities
-------------------------
Every head module returns **logits**. The ``output`` field of :class:`HeadSpec` only says how logits
become probabilities at prediction time (:func:`to_probabilities`) and which loss they pair with:

========== ======================================= =============================================
output     probabilities at predict time           training loss on the logits
========== ======================================= =============================================
softmax    ``softmax`` over classes (one label)     ``nn.CrossEntropyLoss`` (log-softmax inside)
sigmoid    ``sigmoid`` per output (many labels)     ``nn.BCEWithLogitsLoss``
linear     the raw values (regression)              ``nn.MSELoss`` / ``nn.SmoothL1Loss``
========== ======================================= =============================================

Keras puts ``activation="softmax"`` in the last Dense layer and pairs it with
``categorical_crossentropy``; PyTorch's losses take logits because ``log_softmax`` of logits is
numerically stable where ``log(softmax)`` is not.

Binary means one sigmoid output
-------------------------------
Two classes trained with binary cross-entropy get **one** output (Keras' ``Dense(1,
activation="sigmoid")``): its logit ``z`` is the log-odds of the second class. This module is the
one place that knows it. :func:`is_single_sigmoid` says whether logits are of that kind,
:func:`outputs_fit_labels` whether a head's outputs decode to its labels, :func:`class_targets`
and :func:`class_probabilities` give a loss its targets and probabilities in the logits' layout,
:func:`class_logits` turns ``z`` into the two-class logits ``[0, z]``, and
:func:`predicted_classes` / :func:`accuracy` read class indices off any logits (``z > 0`` for one
output, ``argmax`` otherwise). Every accuracy headstart reports is :func:`accuracy`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from headstart.errors import HeadstartError
from headstart.modes import evaluating
from headstart.validation import validate

PoolingMode = Literal["avg", "max", "flatten", "none"]
POOLING_MODES: tuple[str, ...] = ("avg", "max", "flatten", "none")

OutputKind = Literal["softmax", "sigmoid", "linear"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
}


class HeadSpec(BaseModel):
    """A dense head: ``hidden`` layers, then one output layer of ``outputs`` units.

    Each hidden layer is ``[Dropout] → Linear → [BatchNorm1d] → activation``; the output layer is
    ``[Dropout] → Linear``. Dropout thus precedes every Linear, as in the Keras EfficientNet top
    (``Dropout(0.2) → Dense``). The chapter's classic head is ``HeadSpec(hidden=[1024],
    outputs=classes)`` — "a fully connected layer of 1024 units, then a softmax classifier".
    """

    model_config = ConfigDict(extra="forbid")

    hidden: list[PositiveInt] = Field(default_factory=list, description="Units of each hidden Linear layer, in order.")
    activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="Non-linearity after each hidden layer."
    )
    dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Drop probability before each Linear; 0.2–0.5 is the usual range for small data.",
    )
    batch_norm: bool = Field(False, description="BatchNorm1d after each hidden Linear (before the activation).")
    outputs: PositiveInt = Field(description="Units of the output layer: classes, or regression targets.")
    output: OutputKind = Field(
        "softmax", description="How logits become probabilities at predict time; the module itself returns logits."
    )

    @classmethod
    def for_classes(cls, count: int, loss: str = "cross_entropy", **fields) -> HeadSpec:
        """The default head for ``count`` classes trained with ``loss`` (the one place this is decided).

        Two classes with binary cross-entropy get **one sigmoid output**, the probability of the
        second class (Keras' ``Dense(1, activation="sigmoid")`` with ``binary_crossentropy``);
        otherwise one output per class, sigmoid for binary cross-entropy (many labels), softmax else.
        """
        outputs = 1 if loss == "binary_cross_entropy" and count == 2 else count
        output = "sigmoid" if loss == "binary_cross_entropy" else "softmax"
        return cls(outputs=outputs, output=output, **fields)

    def fits_labels(self, labels: list[str] | tuple[str, ...]) -> bool:
        """Whether this head's outputs decode to ``labels``: one per label, or one sigmoid for two."""
        return outputs_fit_labels(self.outputs, labels)


class DenseHead(nn.Sequential):
    """The module :func:`build_head` returns: an ``nn.Sequential`` that remembers its spec.

    Layer names are whole words (``dense0``, ``norm0``, ``activation0``, ``dropout0``, …,
    ``output``) so parameter names such as ``head.output.weight`` read well in freezing selectors
    and summaries.
    """

    def __init__(self, spec: HeadSpec, in_features: int) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        width = in_features
        for index, units in enumerate(spec.hidden):
            if spec.dropout > 0:
                layers[f"dropout{index}"] = nn.Dropout(spec.dropout)
            layers[f"dense{index}"] = nn.Linear(width, units)
            if spec.batch_norm:
                layers[f"norm{index}"] = nn.BatchNorm1d(units)
            layers[f"activation{index}"] = _ACTIVATIONS[spec.activation]()
            width = units
        if spec.dropout > 0:
            layers["output_dropout"] = nn.Dropout(spec.dropout)
        layers["output"] = nn.Linear(width, spec.outputs)
        super().__init__(layers)
        self.spec = spec
        self.in_features = in_features
        self.output_kind: OutputKind = spec.output


def build_head(spec: HeadSpec | dict, in_features: int) -> DenseHead:
    """Build the dense head ``spec`` describes, reading ``in_features`` values per example.

    ``spec`` may be a :class:`HeadSpec` or a plain mapping (as read from a YAML config); unknown
    keys are refused with their name.
    """
    if isinstance(spec, dict):
        spec = head_spec_from_mapping(spec)
    if in_features < 1:
        raise HeadstartError(f"head input: in_features={in_features}, expected a positive number of features")
    return DenseHead(spec, in_features)


def head_spec_from_mapping(mapping: dict) -> HeadSpec:
    """Validate a mapping into a :class:`HeadSpec`; a problem raises :class:`HeadstartError` in the
    format of :func:`headstart.validation.validate`, one line per problem, such as
    ``head: outputs: Input should be greater than 0 (got 0)``."""
    return validate(HeadSpec, mapping, "head")


def output_kind(head: nn.Module) -> OutputKind:
    """How ``head``'s logits become probabilities: its ``output_kind`` attribute, else ``softmax``."""
    return getattr(head, "output_kind", "softmax")


def outputs_fit_labels(outputs: int, labels: list[str] | tuple[str, ...]) -> bool:
    """Whether a head of ``outputs`` outputs decodes to ``labels``: one output per label, or one
    sigmoid output for two labels (module docstring)."""
    return outputs == len(labels) or (outputs == 1 and len(labels) == 2)


def is_single_sigmoid(logits: torch.Tensor) -> bool:
    """Whether ``logits`` ``[B, K]`` come from a one-output head: ``K == 1``, the log-odds of the
    second of two classes (module docstring)."""
    return logits.shape[-1] == 1


def class_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits with one column per class: a one-sigmoid head's ``z`` becomes ``[0, z]`` (whose softmax
    is ``[1 − σ(z), σ(z)]``); other logits are returned unchanged."""
    return torch.cat([torch.zeros_like(logits), logits], dim=-1) if is_single_sigmoid(logits) else logits


def class_targets(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Integer class ``labels`` ``[B]`` as targets in the layout of ``logits``: one-hot ``[B, K]``, or
    the label itself ``[B, 1]`` (0 or 1) for a one-sigmoid head; in the logits' dtype."""
    if is_single_sigmoid(logits):
        return labels.to(logits.dtype).unsqueeze(-1)
    return torch.nn.functional.one_hot(labels.long(), logits.shape[-1]).to(logits.dtype)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities in the layout of ``logits``: the sigmoid of a one-sigmoid head's ``z``, the
    softmax over classes otherwise."""
    return logits.sigmoid() if is_single_sigmoid(logits) else logits.softmax(dim=-1)


def predicted_classes(logits: torch.Tensor) -> torch.Tensor:
    """Class index of every row of ``logits`` ``[B, K]`` (any scores per class): ``argmax``, or
    ``z > 0`` (probability above one half) for a one-sigmoid head."""
    if is_single_sigmoid(logits):
        return (logits[..., 0] > 0).long()
    return logits.argmax(dim=-1)


def accuracy(
    logits: torch.Tensor, targets: torch.Tensor, *, reduction: Literal["mean", "sum"] = "mean"
) -> torch.Tensor:
    """Share (``mean``) or number (``sum``) of rows whose :func:`predicted_classes` equal ``targets``,
    as a 0-d float tensor on the logits' device (no synchronisation with the host). An empty batch
    has accuracy 0."""
    correct = (predicted_classes(logits) == targets.to(logits.device)).float()
    if reduction == "sum":
        return correct.sum()
    if reduction == "mean":
        return correct.mean() if correct.numel() else correct.sum()
    raise HeadstartError(f"accuracy: reduction={reduction!r}; expected 'mean' or 'sum'")


def to_probabilities(logits: torch.Tensor, output: OutputKind) -> torch.Tensor:
    """Apply the prediction-time activation of ``output`` to ``logits`` (``[B, K]``)."""
    if output == "softmax":
        return logits.softmax(dim=-1)
    if output == "sigmoid":
        return logits.sigmoid()
    if output == "linear":
        return logits
    raise HeadstartError(f"output={output!r}: expected one of softmax, sigmoid, linear")


class GlobalPooling(nn.Module):
    """Reduce a backbone's feature output to what a head reads (Keras' ``pooling`` argument).

    ========= ================================ ==========================================
    mode      feature map ``[B, C, h, w]``      token sequence ``[B, N, D]`` (transformers)
    ========= ================================ ==========================================
    avg       mean over ``h, w`` → ``[B, C]``   mean over the patch tokens → ``[B, D]``
    max       max over ``h, w`` → ``[B, C]``    max over the patch tokens → ``[B, D]``
    flatten   ``[B, C·h·w]``                    ``[B, N·D]``
    none      unchanged (Keras ``pooling=None``) unchanged
    ========= ================================ ==========================================

    ``prefix_tokens`` (a vision transformer's class / register tokens, timm's
    ``num_prefix_tokens``) are left out of ``avg`` and ``max``, as timm's ``global_pool="avg"`` does.
    """

    def __init__(self, mode: PoolingMode = "avg", prefix_tokens: int = 0) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise HeadstartError(f"pooling={mode!r}: expected one of {', '.join(POOLING_MODES)}")
        self.mode = mode
        self.prefix_tokens = prefix_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return features
        if self.mode == "flatten":
            return features.flatten(1)
        if features.ndim == 4:
            return features.mean(dim=(2, 3)) if self.mode == "avg" else features.amax(dim=(2, 3))
        if features.ndim == 3:
            tokens = features[:, self.prefix_tokens :]
            return tokens.mean(dim=1) if self.mode == "avg" else tokens.amax(dim=1)
        raise HeadstartError(
            f"pooling={self.mode!r}: backbone features have shape {tuple(features.shape)}, "
            "expected [B, C, h, w] or [B, N, D]"
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


def check_head_module(head: nn.Module, in_features: int, labels: list[str] | None, *, reads: str) -> None:
    """Run a custom ``head`` once on zeros ``[2, in_features]`` in evaluation mode and refuse it
    (a :class:`HeadstartError` saying what it ``reads``) when it fails, returns anything but logits
    ``[batch, outputs]``, or has an output count that does not fit ``labels`` (one per label, or one
    sigmoid output for two)."""
    parameter = next(head.parameters(), None)
    probe = torch.zeros(
        2,
        in_features,
        device=parameter.device if parameter is not None else "cpu",
        dtype=parameter.dtype if parameter is not None and parameter.is_floating_point() else None,
    )
    try:
        with evaluating(head):
            outputs = head(probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        raise HeadstartError(
            f"replace_head: the head cannot read this network's features, [batch, {in_features}] ({reads}): "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise HeadstartError(
            f"replace_head: the head returns {shape} for [2, {in_features}] features; expected logits [batch, outputs]"
        )
    count = outputs.shape[1]
    if labels is not None and not outputs_fit_labels(count, labels):
        raise HeadstartError(
            f"replace_head: {len(labels)} labels for a head of {count} outputs, expected as many "
            "(or one sigmoid output for two labels)"
        )


__all__ = [
    "POOLING_MODES",
    "PoolingMode",
    "OutputKind",
    "HeadSpec",
    "DenseHead",
    "GlobalPooling",
    "build_head",
    "head_spec_from_mapping",
    "output_kind",
    "outputs_fit_labels",
    "is_single_sigmoid",
    "class_logits",
    "class_targets",
    "class_probabilities",
    "predicted_classes",
    "accuracy",
    "to_probabilities",
]
