"""What every move between frameworks shares: the report of an export, the real images of every
parity check, the metadata written into a file, and turning a name or path into a network."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

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
        return (
            f"{self.path}: {self.format} via {self.converter}, dynamic {', '.join(self.dynamic_axes) or 'none'}; "
            f"max |PyTorch − {self.format}| = {self.max_abs_difference:.3g} on real images {shapes} "
            f"(tolerance {self.tolerance:g}); {self.seconds:.1f} s"
        )


# ----------------------------------------------------------------------------------------- inputs


def as_network(model: Network | str | os.PathLike, weights: str | None = "imagenet") -> Network:
    """A :class:`Network` from a network, a stage or run folder (its trained head and labels), or a
    zoo name (loaded with ``weights``)."""
    if isinstance(model, Network):
        return model
    if isinstance(model, nn.Module):
        raise HeadstartError(
            f"model of type {type(model).__name__}: expected a headstart Network, a stage folder or a zoo name"
        )
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
        images.append(
            torch.nn.functional.interpolate(
                image, size=(height, width), mode="bilinear", antialias=True, align_corners=False
            )[0]
        )
    batch = convert_channels(torch.stack(images).clamp(0, 1), channels)
    return normalize(batch, preprocessing.mean, preprocessing.std)


def other_size(preprocessing: Preprocessing) -> tuple[int, int]:
    _, height, width = preprocessing.input_size
    return height + max(32, height // 4), max(32, width - 32)


def metadata_props(network: Network, dynamic_axes: Sequence[str]) -> dict[str, str]:
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
            key = prop.key[len(METADATA_PREFIX) :]
            try:
                values[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                values[key] = prop.value
    return values
