"""The input pipeline a pretrained model expects, and turning its outputs back into labels.

Keras gives every application its own ``preprocess_input`` and ``decode_predictions``; timm stores
the same facts in each model's ``pretrained_cfg`` and reads them with
``timm.data.resolve_model_data_config``. :class:`Preprocessing` holds those facts for one network so
that images are prepared exactly as during pretraining: resize the shorter side to
``size / crop_pct``, centre-crop ``size``, scale to 0..1, subtract ``mean`` and divide by ``std``
per channel. A mismatch here (wrong mean, no crop) costs accuracy silently, which is why the
pipeline comes from the model and not from the user.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart.data.images import to_rgb, read_image
from headstart.errors import HeadstartError

ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray]


def _adapt_channel_values(values: Sequence[float], in_chans: int) -> tuple[float, ...]:
    """Per-channel mean or std for ``in_chans`` channels from the pretrained RGB values.

    One channel takes the average of the three (a grey image's statistics); other counts repeat
    the RGB values cyclically, matching how :func:`headstart.weights.adapt_first_conv` tiles the
    first convolution's kernels.
    """
    values = tuple(float(value) for value in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[index % len(values)] for index in range(in_chans))


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation-time input pipeline of one pretrained network (timm's data config)."""

    input_size: tuple[int, int, int]
    """``(channels, height, width)`` the network was pretrained at."""
    interpolation: str
    """Resampling used to resize, e.g. ``bicubic`` (EfficientNet) or ``bilinear`` (torchvision ResNet)."""
    crop_pct: float
    """Fraction of the resized image kept by the centre crop; 0.875 = resize to 256, crop 224."""
    crop_mode: str
    """timm's crop mode: ``center``, ``squash`` (resize to size, no crop) or ``border``."""
    mean: tuple[float, ...]
    """Per-channel mean subtracted from 0..1 pixel values."""
    std: tuple[float, ...]
    """Per-channel standard deviation the centred values are divided by."""

    @classmethod
    def from_model(cls, model: nn.Module, in_chans: int | None = None) -> "Preprocessing":
        """Read the pipeline from a timm model's pretrained config (``resolve_model_data_config``).

        ``in_chans`` (default: the model's) adapts ``input_size``, ``mean`` and ``std`` to a first
        convolution that reads other than three channels.
        """
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(model)
        channels = in_chans if in_chans is not None else int(config["input_size"][0])
        _, height, width = config["input_size"]
        return cls(
            input_size=(channels, int(height), int(width)),
            interpolation=str(config["interpolation"]),
            crop_pct=float(config["crop_pct"]),
            crop_mode=str(config.get("crop_mode", "center")),
            mean=_adapt_channel_values(config["mean"], channels),
            std=_adapt_channel_values(config["std"], channels),
        )

    @classmethod
    def from_dict(cls, values: dict) -> "Preprocessing":
        """Inverse of :meth:`to_dict` (checkpoint metadata is JSON, so tuples arrive as lists)."""
        try:
            return cls(
                input_size=tuple(int(value) for value in values["input_size"]),
                interpolation=str(values["interpolation"]),
                crop_pct=float(values["crop_pct"]),
                crop_mode=str(values["crop_mode"]),
                mean=tuple(float(value) for value in values["mean"]),
                std=tuple(float(value) for value in values["std"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HeadstartError(
                f"preprocessing metadata {values!r}: expected keys input_size, interpolation, crop_pct, "
                f"crop_mode, mean, std ({exc})"
            ) from None

    def to_dict(self) -> dict:
        """JSON-ready mapping of every field."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def transform(self):
        """timm's evaluation transform (``create_transform(is_training=False)``) for this pipeline."""
        from timm.data import create_transform

        return create_transform(
            input_size=self.input_size,
            is_training=False,
            interpolation=self.interpolation,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            crop_mode=self.crop_mode,
        )


def _as_pil(image: ImageInput, grey: bool) -> Image.Image:
    """Bring one input to a Pillow image in ``L`` or ``RGB`` with the policy of ``read_image``."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image), mode="L" if grey else "RGB")
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.floating):
                raise HeadstartError(
                    f"image array of dtype {array.dtype}: expected uint8 (0..255) or floating point (0..1)"
                )
            array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise HeadstartError(
                f"image array of shape {image.shape}: expected (height, width) or (height, width, 3 or 4)"
            )
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        raise HeadstartError(
            f"image of type {type(image).__name__}: expected a file path, a PIL image or a numpy array"
        )
    rgb = to_rgb(image)
    return rgb.convert("L") if grey else rgb


def preprocess_input(images: Sequence[ImageInput], preprocessing: Preprocessing) -> torch.Tensor:
    """Prepare ``images`` for a network: a float tensor ``[B, C, H, W]``, normalised.

    Each image may be a path (read with :func:`headstart.data.images.read_image`, so a broken
    file fails naming it), a Pillow image in any mode, or a numpy array (``uint8`` 0..255 or float
    0..1, ``H×W`` or ``H×W×3|4``). Modes are converted the way ``read_image`` documents (alpha onto
    white, palettes expanded), to grey when the network reads one channel. Then timm's evaluation
    transform applies: resize the shorter side to ``size / crop_pct``, centre crop, normalise.
    """
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    if len(images) == 0:
        raise HeadstartError("preprocess_input: got no images, expected at least one")
    channels = preprocessing.in_chans
    if channels not in (1, 3):
        raise HeadstartError(
            f"preprocess_input reads images as 1 or 3 channels, the network expects {channels}; "
            "stack your own 0..1 tensors and call headstart.preprocess.normalize"
        )
    transform = preprocessing.transform()
    return torch.stack([transform(_as_pil(image, grey=channels == 1)) for image in images])


def normalize(images01: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Normalise a batch ``[B, C, H, W]`` of 0..1 values with the pipeline's mean and std.

    Works on any device and floating dtype (see :func:`headstart.imageops.normalize`), so a
    training loop can augment on the GPU and normalise last.
    """
    from headstart.imageops import normalize as normalize_values

    return normalize_values(images01, preprocessing.mean, preprocessing.std)


def decode_predictions(
    probabilities: torch.Tensor | np.ndarray, labels: Sequence[str] | None, top: int = 5
) -> list[list[tuple[str, float]]]:
    """The ``top`` most probable ``(label, probability)`` pairs of each row, best first.

    Keras' ``decode_predictions`` returns ``(class_id, name, score)`` triples for ImageNet; here the
    label list comes from the network (ImageNet descriptions from ``timm.data.ImageNetInfo`` for a
    pretrained classifier, the user's class names for a new head). Without labels the class index
    is used as the label.
    """
    probabilities = torch.as_tensor(probabilities).detach().float().cpu()
    if probabilities.ndim == 1:
        probabilities = probabilities.unsqueeze(0)
    if probabilities.ndim != 2:
        raise HeadstartError(
            f"decode_predictions: got shape {tuple(probabilities.shape)}, expected [batch, classes]"
        )
    classes = probabilities.shape[1]
    if labels is not None and len(labels) != classes:
        raise HeadstartError(f"decode_predictions: {len(labels)} labels for {classes} outputs, expected as many")
    if top < 1:
        raise HeadstartError(f"decode_predictions: top={top}, expected at least 1")
    values, indices = probabilities.topk(min(top, classes), dim=1)
    names = list(labels) if labels is not None else [str(index) for index in range(classes)]
    return [
        [(names[int(index)], float(value)) for value, index in zip(row_values, row_indices)]
        for row_values, row_indices in zip(values, indices)
    ]
