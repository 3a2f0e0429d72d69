"""The input pipeline a pretrained model expects, and turning its outputs back into labels.

Keras gives every application its own ``preprocess_input`` and ``decode_predictions``; timm stores
the same facts in each model's ``pretrained_cfg`` and reads them with
``timm.data.resolve_model_data_config``. :class:`Preprocessing` holds those facts for one network so
that images are prepared exactly as during pretraining: resize the shorter side to
``size / crop_pct``, centre-crop ``size``, scale to 0..1, subtract ``mean`` and divide by ``std``
per channel. A mismatch here (wrong mean, no crop) costs accuracy silently, which is why the
pipeline comes from the model and not from the user.

Keras habits carry over: ``preprocess_input`` takes a numpy batch ``(batch, height, width,
channels)`` as the chapter's listing 2-4 builds it (``np.array([im])``); ``resize="stretch"``
squashes the whole image as Keras' ``Resizing(299, 299)`` does (listing 2-3); and
``decode_predictions(..., style="keras")`` returns Keras' ``(class id, name, probability)``
triples (listing 2-5). ``docs/guides/pretrained-models.md`` maps each of the chapter's calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from headstart.data.images import read_image, to_rgb
from headstart.errors import HeadstartError
from headstart.heads import OutputKind, to_probabilities
from headstart.imageops import RESIZE_MODES, ResizeMode
from headstart.modes import evaluating

ImageInput = Image.Image | str | os.PathLike | np.ndarray


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
    def from_model(cls, model: nn.Module, in_chans: int | None = None) -> Preprocessing:
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
    def from_dict(cls, values: dict) -> Preprocessing:
        """Inverse of :meth:`to_dict` (checkpoint metadata is JSON, so tuples arrive as lists)."""
        try:
            channels, height, width = (int(value) for value in values["input_size"])
            return cls(
                input_size=(channels, height, width),
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


_CHANNEL_COUNTS = (1, 3, 4)
_FLOAT_TOLERANCE = 0.01
"""Float pixels may overshoot ``0..float_scale`` by this fraction of it (resampling ringing) and are
clipped; beyond it the array is taken for another value range and refused."""


def _check_pixels(array: np.ndarray, where: str, float_scale: float) -> np.ndarray:
    """``array`` as uint8 0..255, or a :class:`HeadstartError` naming ``where`` and the expected values."""
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if array.size and not np.isfinite(array).all():
            raise HeadstartError(f"preprocess_input: {where} holds NaN or infinite values; expected finite pixels")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        margin = _FLOAT_TOLERANCE * float_scale
        if low < -margin or high > float_scale + margin:
            hint = (
                "; for Keras-style 0..255 floats pass float_scale=255"
                if float_scale == 1.0 and high <= 255 + margin
                else ""
            )
            raise HeadstartError(
                f"preprocess_input: {where} has float values from {low:.4g} to {high:.4g}; expected 0..{float_scale:g} "
                f"(float_scale={float_scale:g}){hint}"
            )
        return (np.clip(array / float_scale, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise HeadstartError(
                f"preprocess_input: {where} of dtype {array.dtype} has values from {low} to {high}; expected 0..255 "
                "(8-bit pixels) or floats"
            )
        return array.astype(np.uint8)
    raise HeadstartError(
        f"preprocess_input: {where} has dtype {array.dtype}; expected uint8 (0..255) or floating point (0..1)"
    )


def _check_shape(shape: tuple[int, ...], where: str) -> None:
    """Refuse an image array that is not ``(height, width)`` or ``(height, width, 1|3|4)``."""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in _CHANNEL_COUNTS):
        return
    hint = ""
    if len(shape) == 3 and shape[0] in (1, 3):
        hint = "; this looks channels-first (PyTorch's layout): pass array.transpose(1, 2, 0)"
    raise HeadstartError(
        f"preprocess_input: {where} is an image array of shape {shape}; expected (height, width) or "
        f"(height, width, 1, 3 or 4 channels){hint}"
    )


def _as_pil(image: ImageInput, grey: bool, where: str = "image", float_scale: float = 1.0) -> Image.Image:
    """Bring one input to a Pillow image in ``L`` or ``RGB`` with the policy of ``read_image``."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image), mode="L" if grey else "RGB")
    if isinstance(image, np.ndarray):
        _check_shape(tuple(image.shape), where)
        if min(image.shape[:2]) < 1:
            raise HeadstartError(
                f"preprocess_input: {where} has shape {tuple(image.shape)}; expected at least 1×1 pixels"
            )
        array = _check_pixels(image, where, float_scale)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        image = Image.fromarray(np.ascontiguousarray(array))
    if not isinstance(image, Image.Image):
        raise HeadstartError(
            f"preprocess_input: {where} is of type {type(image).__name__}; expected a file path, a PIL image or a "
            "numpy array"
        )
    rgb = to_rgb(image)
    return rgb.convert("L") if grey else rgb


def _image_list(images: Any) -> list[tuple[str, ImageInput]]:
    """``(name for messages, image)`` pairs from one image, a sequence, or a Keras-style NHWC batch."""
    if isinstance(images, torch.Tensor):
        raise HeadstartError(
            f"preprocess_input: images is a torch tensor of shape {tuple(images.shape)}; expected file paths, PIL "
            "images or numpy arrays (a [batch, height, width, channels] batch as Keras takes it). A tensor of 0..1 "
            "values laid out [batch, channels, height, width] only needs headstart.preprocess.normalize"
        )
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if images.shape[-1] not in _CHANNEL_COUNTS:
                hint = (
                    " (this looks channels-first: pass array.transpose(0, 2, 3, 1))"
                    if images.shape[1] in (1, 3)
                    else ""
                )
                raise HeadstartError(
                    f"preprocess_input: images is a batch of shape {tuple(images.shape)}; expected (batch, height, "
                    f"width, 1, 3 or 4 channels), Keras' layout{hint}"
                )
            return [(f"images[{index}]", image) for index, image in enumerate(images)]
        if images.ndim in (2, 3):
            return [("images", images)]
        raise HeadstartError(
            f"preprocess_input: images is an array of shape {tuple(images.shape)}; expected one image (height, width"
            "[, channels]) or a batch (batch, height, width, channels)"
        )
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [("images", images)]
    if not isinstance(images, (list, tuple)):
        raise HeadstartError(
            f"preprocess_input: images is of type {type(images).__name__}; expected a path, a PIL image, a numpy "
            "array, or a list of them"
        )
    items: list[tuple[str, ImageInput]] = []
    for index, image in enumerate(images):
        if isinstance(image, np.ndarray) and image.ndim == 4:  # a batch inside a list: its images in order
            items.extend(
                (f"images[{index}][{inner}]", name_image[1]) for inner, name_image in enumerate(_image_list(image))
            )
        else:
            items.append((f"images[{index}]", image))
    return items


def _preprocessing_of(preprocessing: Any) -> Preprocessing:
    """A :class:`Preprocessing`, or the one of a network passed in its place."""
    found = getattr(preprocessing, "preprocessing", preprocessing)
    if not isinstance(found, Preprocessing):
        raise HeadstartError(
            f"preprocess_input: preprocessing is of type {type(preprocessing).__name__}; expected a network's "
            "pipeline (network.preprocessing) or the network itself"
        )
    return found


def preprocess_input(
    images: Any, preprocessing: Any, *, resize: ResizeMode = "crop", float_scale: float = 1.0
) -> torch.Tensor:
    """Prepare ``images`` for a network: a float tensor ``[B, C, H, W]``, normalised.

    ``images`` is one image or a list of them, or a numpy batch ``(batch, height, width,
    channels)`` — Keras' layout, as the chapter's listing 2-4 passes ``np.array([im])``. Each image
    may be a path (read with :func:`headstart.data.images.read_image`, so a broken file fails
    naming it), a Pillow image in any mode, or a numpy array ``H×W`` or ``H×W×1|3|4`` of ``uint8``
    (0..255), other integers within 0..255, or floats within ``0..float_scale`` (1 by default;
    255 for the float arrays Keras' ``img_to_array`` makes). Modes are converted the way
    ``read_image`` documents (alpha onto white, palettes expanded), to grey when the network reads
    one channel.

    ``preprocessing`` is ``network.preprocessing`` or the network itself. ``resize="crop"``
    (default) applies timm's evaluation transform of the pretrained weights: resize the shorter
    side to ``size / crop_pct``, centre crop ``size``, normalise. ``resize="stretch"`` squashes the
    whole image to ``size × size`` instead (nothing cut, proportions changed), as Keras'
    ``Resizing(299, 299)`` does in the chapter's listing 2-3.
    """
    preprocessing = _preprocessing_of(preprocessing)
    if resize not in RESIZE_MODES:
        raise HeadstartError(f"preprocess_input: resize={resize!r}; expected 'crop' or 'stretch'")
    if isinstance(float_scale, bool) or not isinstance(float_scale, (int, float)) or not float_scale > 0:
        raise HeadstartError(f"preprocess_input: float_scale={float_scale!r}; expected 1.0 (0..1 floats) or 255.0")
    items = _image_list(images)
    if len(items) == 0:
        raise HeadstartError("preprocess_input: got no images, expected at least one")
    channels = preprocessing.in_chans
    if channels not in (1, 3):
        raise HeadstartError(
            f"preprocess_input reads images as 1 or 3 channels, the network expects {channels}; "
            "stack your own 0..1 tensors and call headstart.preprocess.normalize"
        )
    if resize == "stretch":
        preprocessing = replace(preprocessing, crop_pct=1.0, crop_mode="squash")
    transform = preprocessing.transform()
    return torch.stack(
        [
            transform(_as_pil(image, grey=channels == 1, where=where, float_scale=float(float_scale)))
            for where, image in items
        ]
    )


def check_batch(x: torch.Tensor, *, in_chans: int, model_name: str, caller: str = "predict") -> None:
    """Raise a :class:`HeadstartError` unless ``x`` is a float batch ``[B, in_chans, H, W]``, saying
    what to do in Keras' terms (one image → ``np.array([im])``, channels-last → permute)."""
    name = f"{caller}: x of shape {tuple(x.shape)}"
    if x.ndim == 3 and x.shape[0] == in_chans:
        raise HeadstartError(
            f"{name} is one image; expected a batch [batch, {in_chans}, height, width]: "
            "pass x.unsqueeze(0), as Keras wants np.array([im])"
        )
    if x.ndim != 4:
        raise HeadstartError(
            f"{name}: expected a batch [batch, {in_chans}, height, width] of normalised "
            "floats, or raw images as a numpy batch (batch, height, width, channels)"
        )
    if not x.is_floating_point():
        raise HeadstartError(
            f"{name} has dtype {x.dtype}; a tensor must hold normalised floats. Pass raw "
            "uint8 pixels as a numpy array (batch, height, width, channels) and they are "
            "preprocessed first"
        )
    if x.shape[1] != in_chans:
        hint = (
            "; it looks channels-last [batch, height, width, channels]: pass x.permute(0, 3, 1, 2), or the "
            "raw pixels as a numpy array"
            if x.shape[-1] == in_chans
            else ""
        )
        raise HeadstartError(
            f"{name} has {x.shape[1]} channels; {model_name} reads {in_chans} (in_chans={in_chans}){hint}"
        )
    if x.shape[0] == 0:
        raise HeadstartError(f"{name} holds no images; expected at least one")


def predict_batch(
    x: Any,
    preprocessing: Preprocessing,
    *,
    in_chans: int,
    model_name: str,
    resize: ResizeMode = "crop",
    float_scale: float = 1.0,
    caller: str = "predict",
) -> torch.Tensor:
    """What Keras' ``model.predict`` accepts, as a checked network batch: a normalised float tensor
    ``[B, C, H, W]`` is checked as it is; raw images (a numpy batch ``(batch, height, width,
    channels)``, one image, a list of paths, PIL images or arrays) are preprocessed first
    (:func:`preprocess_input` with ``resize`` and ``float_scale``)."""
    if not isinstance(x, torch.Tensor):
        x = preprocess_input(x, preprocessing, resize=resize, float_scale=float_scale)
    check_batch(x, in_chans=in_chans, model_name=model_name, caller=caller)
    return x


def predict_in_chunks(network: nn.Module, x: torch.Tensor, *, batch_size: int, output_kind: OutputKind) -> torch.Tensor:
    """Keras' ``predict`` loop: probabilities ``[batch, outputs]`` of a checked batch, computed in
    chunks of ``batch_size`` on the network's device and dtype, in evaluation mode (mode restored).
    A batch of another size than the network was made for that fails says so."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HeadstartError(f"predict: batch_size={batch_size!r}; expected a positive whole number")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else x.device
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else x.dtype
    try:
        with evaluating(network):
            outputs = [
                to_probabilities(network(chunk.to(device=device, dtype=dtype)), output_kind)
                for chunk in x.split(batch_size)
            ]
    except (RuntimeError, AssertionError) as error:
        height, width = (int(size) for size in x.shape[-2:])
        preprocessing = getattr(network, "preprocessing", None)
        made_for = tuple(int(size) for size in preprocessing.input_size[-2:]) if preprocessing else (height, width)
        if (height, width) == made_for:
            raise
        raise HeadstartError(
            f"predict: images of {height}×{width} pixels do not fit {getattr(network, 'model_name', 'the network')} "
            f"(made for {made_for[0]}×{made_for[1]}: {str(error).splitlines()[0] if str(error) else 'failed'}); "
            "pass raw images to have them resized, or resize the tensor"
        ) from None
    return torch.cat(outputs)


def normalize(images01: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Normalise a batch ``[B, C, H, W]`` of 0..1 values with the pipeline's mean and std.

    Works on any device and floating dtype (see :func:`headstart.imageops.normalize`), so a
    training loop can augment on the GPU and normalise last.
    """
    from headstart.imageops import normalize as normalize_values

    return normalize_values(images01, preprocessing.mean, preprocessing.std)


DecodeStyle = Literal["pairs", "keras"]
DECODE_STYLES: tuple[str, ...] = ("pairs", "keras")


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[tuple[str, str, str], ...]:
    """``(WordNet id, Keras name, description)`` of the 1000 ImageNet-1k classes, in output order.

    Ids and descriptions come from ``timm.data.ImageNetInfo`` (shipped with timm, no download).
    The Keras name is the description's first lemma with spaces as underscores, the form of
    Keras' ``imagenet_class_index.json``: ``n02129165`` → ``lion`` (the chapter's listing 2-5),
    ``n02123159`` → ``tiger_cat``.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    rows = []
    for index in range(info.num_classes()):
        description = info.index_to_description(index)
        rows.append((info.index_to_label_name(index), description.split(",")[0].strip().replace(" ", "_"), description))
    return tuple(rows)


def _keras_ids(names: list[str], classes: int, labels_given: bool) -> list[tuple[str, str]]:
    """``(class id, name)`` per output for the Keras form: WordNet ids for ImageNet-1k outputs,
    the output's index for any other head."""
    synsets = imagenet_synsets()
    if classes == len(synsets) and (not labels_given or names == [row[2] for row in synsets]):
        return [(wnid, name) for wnid, name, _ in synsets]
    return [(str(index), name) for index, name in enumerate(names)]


def decode_predictions(
    probabilities: torch.Tensor | np.ndarray,
    labels: Sequence[str] | None = None,
    top: int = 5,
    *,
    style: DecodeStyle = "pairs",
) -> list[list[tuple]]:
    """The ``top`` most probable classes of each row, best first.

    ``style="pairs"`` (default) gives ``(label, probability)`` pairs. ``style="keras"`` gives
    Keras' ``(class id, name, probability)`` triples, the form of the chapter's listing 2-5
    (``('n02129165', 'lion', 0.911)``): for the 1000 ImageNet-1k outputs the id is the WordNet
    synset and the name Keras' short one (:func:`imagenet_synsets`); for any other head the id is
    the output's index and the name its label.

    The label list comes from the network (ImageNet descriptions from ``timm.data.ImageNetInfo``
    for a pretrained classifier, the user's class names for a new head). Without labels the class
    index is used as the label (``style="keras"`` with 1000 outputs: ImageNet, as Keras assumes).
    """
    if style not in DECODE_STYLES:
        raise HeadstartError(f"decode_predictions: style={style!r}; expected 'pairs' or 'keras'")
    try:
        probabilities = (
            torch.as_tensor(np.asarray(probabilities) if isinstance(probabilities, (list, tuple)) else probabilities)
            .detach()
            .float()
            .cpu()
        )
    except (TypeError, ValueError, RuntimeError):
        raise HeadstartError(
            f"decode_predictions: probabilities of type {type(probabilities).__name__}; expected a tensor or numpy "
            "array [batch, classes] (what network.predict returns)"
        ) from None
    if probabilities.ndim == 1:
        probabilities = probabilities.unsqueeze(0)
    if probabilities.ndim != 2:
        raise HeadstartError(f"decode_predictions: got shape {tuple(probabilities.shape)}, expected [batch, classes]")
    classes = probabilities.shape[1]
    if isinstance(labels, str):
        raise HeadstartError(f"decode_predictions: labels={labels!r} is one string; expected a list of class names")
    if labels is not None and len(labels) != classes:
        raise HeadstartError(f"decode_predictions: {len(labels)} labels for {classes} outputs, expected as many")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise HeadstartError(f"decode_predictions: top={top!r}, expected a whole number of at least 1")
    values, indices = probabilities.topk(min(top, classes), dim=1)
    names = [str(label) for label in labels] if labels is not None else [str(index) for index in range(classes)]
    if style == "keras":
        ids = _keras_ids(names, classes, labels is not None)
        return [
            [(*ids[int(index)], float(value)) for value, index in zip(row_values, row_indices, strict=True)]
            for row_values, row_indices in zip(values, indices, strict=True)
        ]
    return [
        [(names[int(index)], float(value)) for value, index in zip(row_values, row_indices, strict=True)]
        for row_values, row_indices in zip(values, indices, strict=True)
    ]


__all__ = [
    "DECODE_STYLES",
    "DecodeStyle",
    "Preprocessing",
    "preprocess_input",
    "decode_predictions",
    "imagenet_synsets",
    "normalize",
]
