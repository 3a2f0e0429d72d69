"""ONNX models from any framework as headstart backbones, through ``onnx2torch``.

See :mod:`headstart.interop`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.files import (
    WEIGHTS_FILE,
)
from headstart.heads import PoolingMode
from headstart.interop.common import IMPORT_OPSET, read_metadata
from headstart.network import Network
from headstart.preprocess import Preprocessing
from headstart.weights import load_weights

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
            for key in (layer, *("/".join(layer.split("/")[:end]) for end in range(len(layer.split("/")), 0, -1))):
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
            raise HeadstartError(
                f"features={features!r}: no tensor of that name in the ONNX graph"
                + (f"; similar: {', '.join(close)}" if close else "")
            )
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
            raise HeadstartError(
                f"cannot convert the ONNX graph from opset {version} to {IMPORT_OPSET} for "
                f"onnx2torch ({str(error).splitlines()[0]})"
            ) from None
        for node in model.graph.node:  # an opset-18 attribute the down-conversion leaves behind
            if node.op_type.startswith("Reduce"):
                kept = [a for a in node.attribute if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(kept)
    onnx.checker.check_model(model)
    return model


def import_onnx(
    path: str | os.PathLike,
    *,
    features: str = "auto",
    preprocessing: Preprocessing | dict | None = None,
    pooling: PoolingMode = "avg",
    name: str | None = None,
) -> Network:
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
        raise HeadstartError(
            f"importing ONNX needs onnx and onnx2torch ({error.name} is missing); "
            'install them with: pip install "headstart[interop]"'
        ) from None
    path = Path(path)
    if not path.is_file():
        raise HeadstartError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf decode errors
        raise HeadstartError(f"{path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
    if (
        len(model.graph.input) != 1
        and len([i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]) != 1
    ):
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
        preprocessing = Preprocessing(
            input_size=(channels, height, width),
            interpolation="bilinear",
            crop_pct=1.0,
            crop_mode="squash",
            mean=(0.485, 0.456, 0.406)[:channels] if channels == 3 else (0.45,) * channels,
            std=(0.229, 0.224, 0.225)[:channels] if channels == 3 else (0.226,) * channels,
        )
    config = {
        "input_size": preprocessing.input_size,
        "mean": preprocessing.mean,
        "std": preprocessing.std,
        "interpolation": preprocessing.interpolation,
        "crop_pct": preprocessing.crop_pct,
        "crop_mode": preprocessing.crop_mode,
        "num_classes": 0,
        "architecture": f"onnx:{path.name}",
    }
    backbone = OnnxBackbone(graph, config, path.name)
    network = Network(
        backbone,
        model_name=name or f"onnx:{path.name}",
        preprocessing=preprocessing,
        include_top=False,
        pooling=pooling,
        in_chans=preprocessing.in_chans,
    )
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
