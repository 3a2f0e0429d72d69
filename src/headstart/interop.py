"""Moving networks between frameworks, each move checked by running both sides on real images.

The chapter converts a PyTorch SqueezeNet to Keras with ``pytorch2keras`` (listings 2-15 and 2-16,
``pytorch_to_keras(model, input_var, [(3, None, None)])``) and says the path goes through ONNX.
``pytorch2keras`` has had no release since 2020; here the same three moves use maintained tools:

* :func:`export_onnx` — ``torch.onnx.export`` (the ``torch.export``-based exporter, which needs
  ``onnxscript``), batch dynamic and, where the model allows, height and width too (listing 2-16's
  ``(3, None, None)``). The file carries the network's preprocessing, labels and output kind as
  ONNX ``metadata_props`` (keys ``headstart.*``), so whoever runs it knows how to prepare images
  and read the outputs.
* :func:`import_onnx` — an ONNX model from any framework becomes a headstart backbone through
  ``onnx2torch``: cut before its classifier (or at a named tensor), with a new head on top it trains
  in a stage like a zoo model, and freezing works by parameter name.
* :func:`export_keras` — ONNX → Keras through ``onnx2tf`` (a ``tf_keras`` functional model saved as
  ``.keras``; channels-last input as Keras users expect, or channels-first on request).
  ``onnx2tf`` was chosen over ``nobuco`` (direct PyTorch → Keras) by measurement: nobuco 0.17
  needs Keras 2 inside TensorFlow ≤ 2.15, hence numpy < 2, which conflicts with this project's
  numpy 2 stack, and even there it stops on timm's fused ``BatchNormAct2d`` (EfficientNet-Lite0),
  while onnx2tf converts EfficientNet-Lite0 with ImageNet weights within 1.6e-5 of PyTorch.

Every export runs the original network and the exported file on the same real photographs
(scikit-image's sample images, preprocessed by the network's own pipeline) and reports the largest
absolute difference of the outputs; beyond ``tolerance`` (default 1e-4) it fails and writes nothing.
Files are written atomically (:mod:`headstart.files`: a temporary name, ``fsync``, ``os.replace``), so a failed export
never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from headstart.files import WEIGHTS_FILE, atomic_move, atomic_write_bytes, atomic_write_json
from headstart.modes import evaluating
from headstart.weights import load_weights
from headstart.errors import HeadstartError
from headstart.network import Network
from headstart.preprocess import Preprocessing

TOLERANCE = 1e-4
"""Largest absolute output difference an export may show against PyTorch (logits, float32)."""

METADATA_PREFIX = "headstart."
INPUT_NAME = "input"
OUTPUT_NAME = "output"
IMPORT_OPSET = 17
"""onnx2torch converts operator sets up to 17 reliably; newer files are converted down first."""

SAMPLE_IMAGES = ("chelsea", "coffee", "rocket", "astronaut")
"""scikit-image photographs used as the real inputs of every parity check."""

FORMATS = ("onnx", "keras")


@dataclass
class ParityCheck:
    """One comparison of the exported file against PyTorch."""

    input_shape: list[int]
    max_abs_difference: float


@dataclass
class ExportReport:
    """What an export wrote and how closely the file reproduces the PyTorch network."""

    path: str
    format: str
    model_name: str
    dynamic_axes: list[str]
    checks: list[ParityCheck] = field(default_factory=list)
    tolerance: float = TOLERANCE
    seconds: float = 0.0
    converter: str = ""

    @property
    def max_abs_difference(self) -> float:
        return max((check.max_abs_difference for check in self.checks), default=float("nan"))

    def to_dict(self) -> dict:
        return {**asdict(self), "max_abs_difference": self.max_abs_difference}

    def describe(self) -> str:
        shapes = ", ".join("×".join(str(size) for size in check.input_shape) for check in self.checks)
        return (f"{self.path}: {self.format} via {self.converter}, dynamic {', '.join(self.dynamic_axes) or 'none'}; "
                f"max |PyTorch − {self.format}| = {self.max_abs_difference:.3g} on real images {shapes} "
                f"(tolerance {self.tolerance:g}); {self.seconds:.1f} s")


# ----------------------------------------------------------------------------------------- inputs


def as_network(model: Network | str | os.PathLike, weights: str | None = "imagenet") -> Network:
    """A :class:`Network` from a network, a stage or run folder (its trained head and labels), or a
    zoo name (loaded with ``weights``)."""
    if isinstance(model, Network):
        return model
    if isinstance(model, nn.Module):
        raise HeadstartError(f"model of type {type(model).__name__}: expected a headstart Network, a stage folder "
                             "or a zoo name")
    if isinstance(model, os.PathLike) or (isinstance(model, str) and Path(model).exists()):
        from headstart.checkpoint import load_network

        return load_network(model)
    if isinstance(model, str) and model.lower().endswith(".onnx"):
        raise HeadstartError(f"{model}: no such file")
    from headstart.zoo import load

    return load(str(model), weights=weights)


def sample_batch(preprocessing: Preprocessing, size: tuple[int, int] | None = None, count: int = 3) -> torch.Tensor:
    """Real photographs prepared for a network: ``[count, C, H, W]``, normalised as the network expects.

    scikit-image's sample photographs (cat, coffee, rocket, astronaut) resized to ``size`` (default
    the network's input size), converted to its channel count and normalised with its mean and std.
    """
    from skimage import data

    from headstart.imageops import convert_channels, normalize

    channels, height, width = preprocessing.input_size
    height, width = size or (height, width)
    images = []
    for index in range(count):
        pixels = torch.from_numpy(getattr(data, SAMPLE_IMAGES[index % len(SAMPLE_IMAGES)])()).float() / 255.0
        if index >= len(SAMPLE_IMAGES):
            pixels = pixels.flip(1)
        image = pixels.permute(2, 0, 1)[None]
        images.append(torch.nn.functional.interpolate(image, size=(height, width), mode="bilinear",
                                                      antialias=True, align_corners=False)[0])
    batch = convert_channels(torch.stack(images).clamp(0, 1), channels)
    return normalize(batch, preprocessing.mean, preprocessing.std)


def _other_size(preprocessing: Preprocessing) -> tuple[int, int]:
    _, height, width = preprocessing.input_size
    return height + max(32, height // 4), max(32, width - 32)


def _metadata(network: Network, dynamic_axes: Sequence[str]) -> dict[str, str]:
    import headstart

    return {
        f"{METADATA_PREFIX}model_name": network.model_name,
        f"{METADATA_PREFIX}preprocessing": json.dumps(network.preprocessing.to_dict()),
        f"{METADATA_PREFIX}labels": json.dumps(network.labels),
        f"{METADATA_PREFIX}output_kind": network.output_kind,
        f"{METADATA_PREFIX}input": "float32 [batch, channels, height, width]: pixels scaled to 0..1, minus mean, "
                                   "divided by std (see headstart.preprocessing)",
        f"{METADATA_PREFIX}dynamic_axes": json.dumps(list(dynamic_axes)),
        f"{METADATA_PREFIX}version": headstart.__version__,
    }


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``headstart.*`` metadata of an ONNX file, JSON values decoded (empty for foreign files)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    values: dict = {}
    for prop in model.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            key = prop.key[len(METADATA_PREFIX):]
            try:
                values[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                values[key] = prop.value
    return values


# ------------------------------------------------------------------------------------------ ONNX


def _export_program(network: Network, example: torch.Tensor, dynamic_size: bool):
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: dict[int, object] = {0: batch}
    if dynamic_size:
        shapes[2] = torch.export.Dim("height", min=32, max=4096)
        shapes[3] = torch.export.Dim("width", min=32, max=4096)
    return torch.onnx.export(network, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                             dynamo=True, external_data=False, dynamic_shapes=(shapes,), verbose=False)


def _onnx_session(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _torch_outputs(network: Network, batch: torch.Tensor) -> np.ndarray:
    parameter = next(network.parameters())
    with torch.no_grad():
        return network(batch.to(parameter.device, parameter.dtype)).float().cpu().numpy()


def _onnx_checks(network: Network, data: bytes, batches: Sequence[torch.Tensor]) -> list[ParityCheck]:
    session = _onnx_session(data)
    checks = []
    for batch in batches:
        exported = session.run(None, {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
        reference = _torch_outputs(network, batch)
        checks.append(ParityCheck(list(batch.shape), float(np.abs(exported - reference).max())))
    return checks


def _onnx_bytes(network: Network, dynamic_size: bool | None) -> tuple[bytes, list[str], list[ParityCheck]]:
    """Export ``network`` (in eval mode) and check it; dynamic height/width when the model allows."""
    import onnx

    example = sample_batch(network.preprocessing, count=2)
    fixed_size = network.pooling == "flatten" and not network.include_top
    attempts = [False] if dynamic_size is False or fixed_size else [True, False]
    failure = ""
    for dynamic in attempts:
        try:
            program = _export_program(network, example, dynamic)
        except Exception as error:  # noqa: BLE001 - the exporter raises many types; retried with fixed size
            failure = str(error).splitlines()[0] if str(error) else type(error).__name__
            if dynamic and dynamic_size is None:
                continue
            raise HeadstartError(f"{network.model_name}: ONNX export failed ({failure})") from None
        axes = ["batch", "height", "width"] if dynamic else ["batch"]
        proto = program.model_proto
        for key, value in _metadata(network, axes).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        data = proto.SerializeToString()
        batches = [sample_batch(network.preprocessing, count=3)]
        if dynamic:
            batches.append(sample_batch(network.preprocessing, size=_other_size(network.preprocessing), count=2))
        try:
            checks = _onnx_checks(network, data, batches)
        except Exception as error:  # noqa: BLE001 - onnxruntime refuses a shape the graph fixed
            if dynamic and dynamic_size is None:
                failure = str(error).splitlines()[0]
                continue
            raise HeadstartError(f"{network.model_name}: onnxruntime cannot run the exported model ({error})") from None
        onnx.checker.check_model(proto)
        return data, axes, checks
    raise HeadstartError(f"{network.model_name}: ONNX export failed ({failure})")


def _check_tolerance(report: ExportReport) -> None:
    if not report.max_abs_difference <= report.tolerance:
        raise HeadstartError(
            f"{report.path}: not written, the {report.format} model differs from PyTorch by up to "
            f"{report.max_abs_difference:.3g} on real images (tolerance {report.tolerance:g})")


def export_onnx(model: Network | str | os.PathLike, path: str | os.PathLike, *, weights: str | None = "imagenet",
                dynamic_size: bool | None = None, tolerance: float = TOLERANCE) -> ExportReport:
    """Write ``model`` as one ONNX file at ``path``, checked against PyTorch with onnxruntime.

    Args:
        model: a :class:`Network`, a stage or run folder (its trained head and labels) or a zoo name.
        path: the ``.onnx`` file to write (weights inside, no external data file).
        weights: for a zoo name, which weights (``imagenet``, ``none`` or a file).
        dynamic_size: ``None`` (default) makes height and width dynamic when the model allows it
            (checked by running a second image size) and fixed otherwise; ``False`` fixes them.
            The batch is always dynamic.
        tolerance: largest accepted ``max |PyTorch − onnxruntime|`` on the real images.

    The input is the normalised image batch ``[batch, C, H, W]`` (``input``); the output is the
    network's logits (``output``). The preprocessing, labels and output kind are stored as
    metadata (:func:`read_metadata`). Raises :class:`HeadstartError` and writes nothing when the
    export fails or the outputs differ by more than ``tolerance``.
    """
    started = time.perf_counter()
    path = Path(path)
    network = as_network(model, weights)
    with evaluating(network):
        data, axes, checks = _onnx_bytes(network, dynamic_size)
    report = ExportReport(path=str(path), format="onnx", model_name=network.model_name, dynamic_axes=axes,
                          checks=checks, tolerance=tolerance, converter=f"torch.onnx {torch.__version__}")
    _check_tolerance(report)
    atomic_write_bytes(path, data)
    report.seconds = time.perf_counter() - started
    return report


# ----------------------------------------------------------------------------------------- Keras


KERAS_INSTALL = 'pip install "headstart[keras]"'


def _import_onnx2tf():
    import timm.models  # noqa: F401 - torchvision imported after TensorFlow crashes the process (segfault)
    import torchvision.models  # noqa: F401

    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import onnx2tf  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError as error:
        raise HeadstartError(f"--format keras needs onnx2tf, TensorFlow and tf-keras ({error.name} is missing); "
                             f"install them with: {KERAS_INSTALL}") from None
    import onnx2tf

    return onnx2tf


def export_keras(model: Network | str | os.PathLike, path: str | os.PathLike, *, weights: str | None = "imagenet",
                 channels_last: bool = True, tolerance: float = TOLERANCE) -> ExportReport:
    """Write ``model`` as a Keras model (``.keras`` or ``.h5``) through ONNX and onnx2tf.

    The chapter's listing 2-16 in today's tools: PyTorch → ONNX (:func:`export_onnx`'s exporter,
    fixed height and width, dynamic batch) → ``onnx2tf`` → a ``tf_keras`` functional model. Input
    is ``[batch, H, W, C]`` (``channels_last=True``, the Keras habit) or ``[batch, C, H, W]``;
    pixels are normalised as :attr:`Network.preprocessing` says, which is also written next to
    the model as ``<path>.json`` with the labels. Parity against PyTorch is checked on the same
    real images as the ONNX export; beyond ``tolerance`` nothing is written. Needs the ``keras``
    extra (``pip install "headstart[keras]"``).
    """
    started = time.perf_counter()
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise HeadstartError(f"{path}: a Keras model file ends with .keras or .h5")
    onnx2tf = _import_onnx2tf()
    network = as_network(model, weights)
    with evaluating(network):
        data, _, _ = _onnx_bytes(network, dynamic_size=False)
        batches = [sample_batch(network.preprocessing, count=3)]
        references = [_torch_outputs(network, batch) for batch in batches]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".headstart-keras-", dir=path.parent) as scratch:
        onnx_file = Path(scratch) / "model.onnx"
        onnx_file.write_bytes(data)
        try:
            keras_model = onnx2tf.convert(
                input_onnx_file_path=str(onnx_file), output_folder_path=str(Path(scratch) / "saved"),
                non_verbose=True, verbosity="error", not_use_onnxsim=True, disable_model_save=True,
                keep_ncw_or_nchw_or_ncdhw_input_names=None if channels_last else [INPUT_NAME])
        except Exception as error:  # noqa: BLE001 - onnx2tf raises many types
            raise HeadstartError(f"{network.model_name}: onnx2tf could not convert the model "
                                 f"({str(error).splitlines()[0] if str(error) else type(error).__name__})") from None
        checks = []
        for batch, reference in zip(batches, references):
            keras_input = batch.permute(0, 2, 3, 1) if channels_last else batch
            output = keras_model(keras_input.numpy().astype(np.float32))
            output = np.asarray(output[0] if isinstance(output, (list, tuple)) else output)
            checks.append(ParityCheck(list(keras_input.shape), float(np.abs(output - reference).max())))
        report = ExportReport(path=str(path), format="keras", model_name=network.model_name, dynamic_axes=["batch"],
                              checks=checks, tolerance=tolerance, converter=f"onnx2tf {onnx2tf.__version__}")
        _check_tolerance(report)
        temporary = Path(scratch) / f"model{path.suffix}"
        keras_model.save(str(temporary))
        atomic_move(temporary, path)
    sidecar = {**{key.removeprefix(METADATA_PREFIX): value for key, value in _metadata(network, ["batch"]).items()},
               "input": "float32 [batch, height, width, channels]" if channels_last else
               "float32 [batch, channels, height, width]"}
    sidecar["preprocessing"] = json.loads(sidecar["preprocessing"])
    sidecar["labels"] = json.loads(sidecar["labels"])
    atomic_write_json(path.with_name(path.name + ".json"), sidecar)
    report.seconds = time.perf_counter() - started
    return report


def export(model: Network | str | os.PathLike, path: str | os.PathLike, format: str = "onnx", **options) -> ExportReport:
    """:func:`export_onnx` or :func:`export_keras` by ``format``."""
    if format == "onnx":
        return export_onnx(model, path, **options)
    if format == "keras":
        return export_keras(model, path, **options)
    raise HeadstartError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------- import


class OnnxBackbone(nn.Module):
    """An ONNX graph converted by onnx2torch, answering the backbone interface of a timm model.

    ``forward_features`` returns ``[B, C, h, w]`` (a graph that ends in ``[B, C]`` gives
    ``[B, C, 1, 1]``, so average pooling leaves it unchanged); ``num_features`` is ``C``.
    Parameter names come from the ONNX initializers (``backbone.conv_stem.weight`` becomes
    ``model.backbone/conv_stem.weight``), so ``freeze("re:conv_stem")`` selects by name; without
    a ``group_matcher`` every converted layer is one block (``blocks[:5]`` = the first five).
    """

    def __init__(self, graph: nn.Module, pretrained_cfg: dict, name: str) -> None:
        super().__init__()
        self.model = graph
        self.pretrained_cfg = dict(pretrained_cfg)
        self.default_cfg = self.pretrained_cfg
        self.num_classes = 0
        self.source_name = name
        _, height, width = self.pretrained_cfg["input_size"]
        with torch.no_grad():
            probe = self.forward_features(torch.zeros(1, self.pretrained_cfg["input_size"][0], height, width))
        self.num_features = int(probe.shape[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model(x)
        if isinstance(features, (list, tuple)):
            features = features[0]
        if features.ndim == 2:
            return features[:, :, None, None]
        return features

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features.mean(dim=(2, 3)) if features.ndim == 4 else features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False):
        """timm's layer grouping for freezing by group: group 0 (``stem``) is the first layer with
        parameters; a name with a numbered part (``backbone/blocks/3/1/conv_pw``) groups with its
        siblings up to that number (``blocks[i]`` = ``backbone/blocks/3``, or ``…/3/1`` when not
        ``coarse``); any other layer is its own group, in graph order."""
        order: dict[str, int] = {}
        for name, _ in self.model.named_parameters():
            layer = name.rsplit(".", 1)[0]
            parts = layer.split("/")
            numbered = [index for index, part in enumerate(parts) if part.isdigit()]
            if numbered:
                depth = numbered[0] if coarse or len(numbered) == 1 else numbered[1]
                layer = "/".join(parts[: depth + 1])
            order.setdefault(layer, len(order))

        def matcher(name: str) -> int:
            layer = name.removeprefix("model.").rsplit(".", 1)[0]
            for key in (layer, *("/".join(layer.split("/")[: end]) for end in range(len(layer.split("/")), 0, -1))):
                if key in order:
                    return order[key]
            return len(order)

        return matcher

    def get_classifier(self) -> nn.Module:
        return nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if num_classes:
            raise HeadstartError("an imported ONNX backbone has no classifier of its own; put a head on the Network")


_CLASSIFIER_OPS = ("Gemm", "MatMul")


def _feature_tensor(model, features: str) -> str:
    """The tensor an imported backbone ends at: before the classifier (``auto``), the graph's output, or a name."""
    graph = model.graph
    outputs = [output.name for output in graph.output]
    if features == "output":
        return outputs[0]
    if features != "auto":
        produced = {name for node in graph.node for name in node.output}
        if features not in produced:
            close = [name for name in produced if features.lower() in name.lower()][:5]
            raise HeadstartError(f"features={features!r}: no tensor of that name in the ONNX graph"
                                 + (f"; similar: {', '.join(close)}" if close else ""))
        return features
    producer = {name: node for node in graph.node for name in node.output}
    initializers = {initializer.name for initializer in graph.initializer}
    node = producer.get(outputs[0])
    while node is not None and node.op_type in ("Softmax", "Sigmoid", "Identity", "Flatten", "Reshape"):
        node = producer.get(node.input[0])
    if node is not None and node.op_type == "Add":  # MatMul + Add
        node = next((producer[name] for name in node.input if name in producer), None)
    if node is None or node.op_type not in _CLASSIFIER_OPS:
        return outputs[0]
    data = next((name for name in node.input if name not in initializers), node.input[0])
    return data


def _prepare_for_onnx2torch(model):
    """Rename layers after their weights, turn allowzero Reshapes with constant shapes into plain
    ones, and convert the operator set down to what onnx2torch reads."""
    import onnx
    from onnx import numpy_helper, version_converter

    constants = {initializer.name: initializer for initializer in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    constants[node.output[0]] = attribute.t
    used: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            shape = numpy_helper.to_array(constants[node.input[1]])
            for attribute in node.attribute:
                if attribute.name == "allowzero" and attribute.i == 1 and not (shape == 0).any():
                    attribute.i = 0
        weight = next((name for name in node.input[1:] if name in constants and name.endswith(".weight")), None)
        if weight is not None:
            name = weight.removesuffix(".weight").replace(".", "/")
            while name in used:
                name += "_"
            used.add(name)
            node.name = name
    version = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), IMPORT_OPSET)
    if version > IMPORT_OPSET:
        try:
            model = version_converter.convert_version(model, IMPORT_OPSET)
        except Exception as error:  # noqa: BLE001 - the converter raises RuntimeError and others
            raise HeadstartError(f"cannot convert the ONNX graph from opset {version} to {IMPORT_OPSET} for "
                                 f"onnx2torch ({str(error).splitlines()[0]})") from None
        for node in model.graph.node:  # an opset-18 attribute the down-conversion leaves behind
            if node.op_type.startswith("Reduce"):
                kept = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(kept)
    onnx.checker.check_model(model)
    return model


def import_onnx(path: str | os.PathLike, *, features: str = "auto", preprocessing: Preprocessing | dict | None = None,
                pooling: str = "avg", name: str | None = None) -> Network:
    """An ONNX model (from any framework) as the backbone of a headstart :class:`Network`.

    Args:
        path: the ``.onnx`` file.
        features: where the backbone ends: ``auto`` cuts before the final classifier (a ``Gemm`` or
            ``MatMul`` [+ ``Add``], after skipping a ``Softmax``/``Flatten``), ``output`` keeps the
            whole graph (its outputs become the features, like ``include_top=True`` with a new
            head), or the name of any tensor in the graph.
        preprocessing: the input pipeline; default: the ``headstart.preprocessing`` metadata of a
            file written by :func:`export_onnx`, else the graph's input size with ImageNet mean and
            std (say otherwise when the model was trained differently).
        pooling: how the feature map is reduced for a head (``avg`` or ``max``).
        name: the network's model name (default ``onnx:<file name>``).

    The network has no head (``replace_head`` or a stage adds one); parameters are trainable
    and freezable by name. The graph is converted with ``onnx2torch`` after cutting it with
    ``onnx.utils.Extractor``; inference-time folding done by the exporter (BatchNorm folded into
    convolutions) stays folded.
    """
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as error:
        raise HeadstartError(f"importing ONNX needs onnx and onnx2torch ({error.name} is missing); "
                             'install them with: pip install "headstart[interop]"') from None
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf decode errors
        raise HeadstartError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
    if len(model.graph.input) != 1 and len([i for i in model.graph.input
                                            if i.name not in {t.name for t in model.graph.initializer}]) != 1:
        raise HeadstartError(f"{path}: {len(model.graph.input)} inputs; a backbone reads one image tensor")
    metadata = read_metadata(path)
    end = _feature_tensor(model, features)
    input_name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    if end not in [output.name for output in model.graph.output] or len(model.graph.output) > 1:
        from onnx.utils import Extractor

        model = Extractor(onnx.shape_inference.infer_shapes(model)).extract_model([input_name], [end])
    model = _prepare_for_onnx2torch(model)
    try:
        graph = convert(model)
    except NotImplementedError as error:
        raise HeadstartError(f"{path}: onnx2torch cannot convert this graph ({error})") from None

    if isinstance(preprocessing, dict):
        preprocessing = Preprocessing.from_dict(preprocessing)
    if preprocessing is None and isinstance(metadata.get("preprocessing"), dict):
        preprocessing = Preprocessing.from_dict(metadata["preprocessing"])
    if preprocessing is None:
        dims = [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim]
        channels, height, width = (dims[1:] + [0, 0, 0])[:3] if len(dims) == 4 else (3, 224, 224)
        channels = channels or 3
        height, width = height or 224, width or 224
        preprocessing = Preprocessing(input_size=(channels, height, width), interpolation="bilinear", crop_pct=1.0,
                                      crop_mode="squash", mean=(0.485, 0.456, 0.406)[:channels] if channels == 3
                                      else (0.45,) * channels, std=(0.229, 0.224, 0.225)[:channels]
                                      if channels == 3 else (0.226,) * channels)
    config = {"input_size": preprocessing.input_size, "mean": preprocessing.mean, "std": preprocessing.std,
              "interpolation": preprocessing.interpolation, "crop_pct": preprocessing.crop_pct,
              "crop_mode": preprocessing.crop_mode, "num_classes": 0, "architecture": f"onnx:{path.name}"}
    backbone = OnnxBackbone(graph, config, path.name)
    network = Network(backbone, model_name=name or f"onnx:{path.name}", preprocessing=preprocessing,
                      include_top=False, pooling=pooling, in_chans=preprocessing.in_chans)
    return network.eval()


def load_imported_stage(onnx_path: str | os.PathLike, stage_folder: str | os.PathLike) -> Network:
    """Rebuild a stage trained on an imported ONNX backbone: :func:`import_onnx` + the stage's head and weights.

    (``headstart.checkpoint.load_network`` rebuilds zoo models by name; an imported backbone is
    rebuilt from its ONNX file.)
    """
    from headstart.checkpoint import StageRecord, find_stage_folder, load_checked
    from headstart.heads import build_head

    folder = find_stage_folder(stage_folder)
    record = StageRecord.read(folder)
    network = import_onnx(onnx_path, pooling=record.model.pooling, name=record.model.name)
    if record.head.spec is not None:
        network.replace_head(build_head(record.head.spec, network.num_features), labels=record.head.labels)
    load_checked(network, load_weights(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE, f"the network of {onnx_path}")
    network.set_training_size(record.model.image_size)
    return network.eval()
