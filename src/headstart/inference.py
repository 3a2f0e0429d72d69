"""The trained model in use: predictions over whole folders of images, streamed in batches.

:func:`load_model` turns a zoo name or a folder (a stage folder, a run folder — its last finished
stage — or a comparison's ``best/`` folder, which is a run folder with a ``MODEL_CARD.md``) into a
network, through :func:`headstart.checkpoint.load_network` and :func:`headstart.zoo.load`.
:class:`Predictor` holds that network on a device with its own input pipeline
(``network.preprocessing``, timm's evaluation transform, the one :func:`headstart.preprocess.preprocess_input`
applies) and the top-k decoding of :func:`headstart.preprocess.decode_predictions`; the HTTP server
(:mod:`headstart.serve`) uses the same object.

:func:`find_images` walks files, folders (recursively: image suffixes of
:data:`headstart.data.images.IMAGE_SUFFIXES` only, hidden names skipped, a folder reached twice
through symbolic links walked once) and glob patterns, lazily. :func:`predict_files` streams them
through a ``torch.utils.data.DataLoader``: worker processes read each file with
:func:`headstart.data.images.read_image` (EXIF orientation, every Pillow mode, the pixel cap that
refuses decompression bombs) and apply the resize and crop; the uint8 pixels cross to the model's
device, where they are scaled and normalised. Memory holds the batches in flight and the names of
the paths met (to take each once and to resume), never the images.

An unreadable file (missing, empty, truncated, not an image, permission denied, too many pixels)
becomes a :class:`Prediction` carrying the error, never an exception. Writing the predictions to a
``.csv`` or ``.jsonl`` file that an interrupted run continues is :mod:`headstart.prediction_files`.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import yaml
from PIL import Image

from headstart.checkpoint import load_network
from headstart.data.images import IMAGE_SUFFIXES, read_image, read_image_bytes
from headstart.errors import HeadstartError
from headstart.heads import to_probabilities
from headstart.imageops import normalize
from headstart.preprocess import Preprocessing, decode_predictions

__all__ = [
    "MODEL_CARD_FILE",
    "ImageDecoder",
    "Prediction",
    "Predictor",
    "batched",
    "check_inputs",
    "default_workers",
    "find_images",
    "load_model",
    "model_card",
    "predict_files",
    "resolve_device",
]

MODEL_CARD_FILE = "MODEL_CARD.md"
"""The model card a comparison writes beside its winner's run (``best/MODEL_CARD.md``)."""

Item = TypeVar("Item")


def resolve_device(device: str) -> torch.device:
    """``auto`` → the GPU when there is one, else the CPU; ``cuda`` without a GPU is refused."""
    if device in ("auto", "cpu"):
        return torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise HeadstartError(f"device={device!r}: no CUDA GPU is visible here; expected cpu or auto")
        return torch.device(device)
    raise HeadstartError(f"device={device!r}: expected cpu, cuda or auto")


def load_model(source: str | os.PathLike, *, weights: str | None = "imagenet"):
    """The network ``source`` names: a stage, run or ``best/`` folder (its trained head and labels,
    :func:`headstart.checkpoint.load_network`), else a zoo name loaded with ``weights``."""
    path = Path(source)
    if path.exists():
        return load_network(path)
    text = str(source)
    if os.sep in text or text.startswith(".") or (os.altsep and os.altsep in text):
        raise HeadstartError(f"{text}: no such checkpoint (expected a stage, run or best/ folder, or a zoo name)")
    from headstart.zoo import load

    return load(text, weights=weights)


def model_card(source: str | os.PathLike) -> dict[str, Any] | None:
    """The YAML front matter of the ``MODEL_CARD.md`` in ``source`` (or in the run folder above a
    stage folder), or ``None`` when there is none. A card without front matter gives ``{}``."""
    folder = Path(source)
    for candidate in (folder / MODEL_CARD_FILE, folder.parent / MODEL_CARD_FILE):
        if candidate.is_file():
            text = candidate.read_text(encoding="utf-8")
            if not text.startswith("---"):
                return {}
            end = text.find("\n---", 3)
            if end < 0:
                raise HeadstartError(f"{candidate}: front matter opened with --- is never closed")
            try:
                values = yaml.safe_load(text[3:end])
            except yaml.YAMLError as exc:
                raise HeadstartError(f"{candidate}: front matter is not valid YAML ({exc})") from None
            return values if isinstance(values, dict) else {}
    return None


# ------------------------------------------------------------------------------------ decoding


class ImageDecoder:
    """One image (a file, or an upload's bytes) → uint8 pixels ``[C, H, W]`` at the network's input size.

    timm's evaluation transform for ``preprocessing`` is split in two: its Pillow steps (resize,
    crop) run here, where the file is read; its ``ToTensor`` and ``Normalize`` run on the batch, on
    the model's device (:meth:`Predictor.normalise`), so a quarter of the bytes travel between
    processes. A transform of another shape is applied whole and gives floats instead.
    """

    def __init__(self, preprocessing: Preprocessing) -> None:
        if preprocessing.in_chans not in (1, 3):
            raise HeadstartError(
                f"the network reads {preprocessing.in_chans} channels; images are read as 1 (grey) or 3 (RGB)"
            )
        self.preprocessing = preprocessing
        self.mode = "L" if preprocessing.in_chans == 1 else "RGB"
        self._steps: Any = None

    def _pillow_steps(self):
        if self._steps is None:  # built in the process that decodes (a loader worker)
            from torchvision import transforms

            steps = list(self.preprocessing.transform().transforms)
            whole = len(steps) < 2 or not isinstance(steps[-1], transforms.Normalize)
            whole = whole or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor")
            self._steps = (transforms.Compose(steps), True) if whole else (transforms.Compose(steps[:-2]), False)
        return self._steps

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The transform's Pillow steps on a decoded image."""
        steps, whole = self._pillow_steps()
        if whole:
            return steps(image)
        array = np.asarray(steps(image), dtype=np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(array.transpose(2, 0, 1).copy())  # one copy: channels first, writable

    def file(self, path: str | os.PathLike) -> torch.Tensor:
        """Read ``path`` (:func:`headstart.data.images.read_image`); a :class:`HeadstartError` names it."""
        return self.pixels(read_image(path, mode=self.mode))

    def upload(self, data: bytes, name: str) -> torch.Tensor:
        """Decode an upload held in memory; ``name`` appears in messages only, never opened."""
        return self.pixels(read_image_bytes(data, name, mode=self.mode)[0])

    def __getstate__(self) -> dict:
        return {"preprocessing": self.preprocessing, "mode": self.mode, "_steps": None}


# ----------------------------------------------------------------------------------- predicting


@dataclass(frozen=True)
class Prediction:
    """The top-k labels of one image, best first, or why it could not be read."""

    path: str
    labels: tuple[str, ...] = ()
    probabilities: tuple[float, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"path", "predictions": [{"label", "probability"}], "error"}``."""
        pairs = zip(self.labels, self.probabilities, strict=True)
        return {
            "path": self.path,
            "predictions": [{"label": label, "probability": probability} for label, probability in pairs],
            "error": self.error,
        }


class Predictor:
    """A network in evaluation mode on ``device`` that answers top-``top`` labels for a batch of pixels."""

    def __init__(self, network, *, device: str = "auto", top: int = 5) -> None:
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise HeadstartError(f"top={top!r}: expected a whole number of at least 1")
        self.device = resolve_device(device)
        self.network = network.to(self.device).eval()
        self.decoder = ImageDecoder(network.preprocessing)
        self.labels: list[str] | None = network.labels
        self.top = top

    @property
    def preprocessing(self) -> Preprocessing:
        """The network's input pipeline (``network.preprocessing``)."""
        return self.network.preprocessing

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """A decoded batch as the network reads it: on its device, 0..1, normalised (or as it is,
        when the decoder already gave normalised floats)."""
        pixels = pixels.to(self.device, non_blocking=True)
        if pixels.dtype != torch.uint8:
            return pixels
        return normalize(pixels.float().div_(255), self.preprocessing.mean, self.preprocessing.std)

    @torch.inference_mode()
    def classify(self, pixels: torch.Tensor) -> list[list[tuple[str, float]]]:
        """``(label, probability)`` pairs, best first, for each image of a decoded batch ``[B, C, H, W]``."""
        probabilities = to_probabilities(self.network(self.normalise(pixels)), self.network.output_kind)
        return decode_predictions(probabilities, self.labels, top=self.top)


def _walk(folder: Path, seen: set[tuple[int, int]]) -> Iterator[tuple[Path, str | None]]:
    """Image files under ``folder``, sorted by name, hidden names skipped; each real folder once."""
    try:
        status = folder.stat()
        if (status.st_dev, status.st_ino) in seen:  # a symbolic link back up the tree, or a second way in
            return
        seen.add((status.st_dev, status.st_ino))
        with os.scandir(folder) as entries:
            children = sorted(entries, key=lambda entry: entry.name)
    except OSError as exc:
        yield folder, f"{folder}: cannot list the folder ({exc.strerror or exc})"
        return
    for entry in children:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_folder = entry.is_dir()  # follows links; a dangling link is a file that fails to read
        except OSError:
            is_folder = False
        if is_folder:
            yield from _walk(path, seen)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield path, None


def _glob(pattern: str) -> list[Path]:
    """Matches of ``pattern``, sorted, hidden names left out. pathlib's ``**`` does not descend into
    symbolic links to folders (``glob.glob`` does, and loops until the path is too long)."""
    parts = Path(pattern).parts
    first = next(index for index, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path()
    matches = (path for path in base.glob(str(Path(*parts[first:]))) if path != base)
    return sorted(path for path in matches if not any(part.startswith(".") for part in path.relative_to(base).parts))


def find_images(inputs: Sequence[str | os.PathLike]) -> Iterator[tuple[Path, str | None]]:
    """``(path, None)`` for every image ``inputs`` name, lazily, each path once; ``(folder, reason)``
    for a folder that cannot be listed.

    A file is taken whatever its suffix (reading decides); a folder is walked recursively for the
    image suffixes of :data:`headstart.data.images.IMAGE_SUFFIXES`, skipping names that start with
    a dot and any folder already walked (a symbolic-link loop ends there); a pattern with ``*``,
    ``?`` or ``[`` is expanded with :meth:`pathlib.Path.glob` (``**`` spans folders, not links to
    folders) and its matches are filtered and walked the same way. A name that is none of these is
    a :class:`HeadstartError`.
    """
    seen_folders: set[tuple[int, int]] = set()
    seen_files: set[str] = set()

    def once(pairs: Iterable[tuple[Path, str | None]]) -> Iterator[tuple[Path, str | None]]:
        for path, error in pairs:
            if str(path) not in seen_files:
                seen_files.add(str(path))
                yield path, error

    for given in inputs:
        text = os.fspath(given)
        path = Path(text)
        if path.is_dir():
            yield from once(_walk(path, seen_folders))
        elif path.exists() or path.is_symlink():
            yield from once([(path, None)])
        elif glob.has_magic(text):
            for found in _glob(text):
                if found.is_dir():
                    yield from once(_walk(found, seen_folders))
                elif found.suffix.lower() in IMAGE_SUFFIXES:
                    yield from once([(found, None)])
        else:
            raise HeadstartError(f"{text}: no such file or folder")


def check_inputs(inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse names that are neither a file, a folder nor a glob pattern matching something, before
    a network is loaded."""
    for given in inputs:
        text = os.fspath(given)
        if Path(text).exists() or Path(text).is_symlink():
            continue
        if not glob.has_magic(text):
            raise HeadstartError(f"{text}: no such file or folder")
        if not _glob(text):
            raise HeadstartError(f"{text}: the pattern matches no file")


class _Files(torch.utils.data.Dataset):
    """Loader items are ``(path, error)`` pairs; each becomes ``(path, pixels or None, error)``."""

    def __init__(self, decoder: ImageDecoder) -> None:
        self.decoder = decoder

    def __getitem__(self, item: tuple[str, str | None]) -> tuple[str, torch.Tensor | None, str | None]:
        path, error = item
        if error is not None:
            return path, None, error
        try:
            return path, self.decoder.file(path), None
        except (HeadstartError, OSError, ValueError, RuntimeError) as exc:  # read_image names the file
            return path, None, str(exc) if isinstance(exc, HeadstartError) else f"{path}: {exc}"


def _collate(items: list[tuple[str, torch.Tensor | None, str | None]]):
    """Paths, the stacked pixels of the readable ones (or ``None``), and each item's error."""
    readable = [pixels for _, pixels, _ in items if pixels is not None]
    return [path for path, _, _ in items], (torch.stack(readable) if readable else None), [e for *_, e in items]


def batched(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    """Lists of ``size`` consecutive items (the last one shorter), drawn lazily from ``items``."""
    source = iter(items)
    return iter(lambda: list(itertools.islice(source, size)), [])


def default_workers() -> int:
    """Loader processes by default: none on two cores or fewer (decoding between forward passes
    beats processes fighting the model for the cores, ``bench/bench_predict_folder.py``), else up
    to 8 leaving a core to the model."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 1)


def predict_files(
    predictor: Predictor,
    items: Iterable[tuple[str | os.PathLike, str | None]],
    *,
    batch_size: int = 32,
    workers: int | None = None,
) -> Iterator[Prediction]:
    """Stream ``(path, error)`` items (what :func:`find_images` yields) through a DataLoader and
    yield one :class:`Prediction` per item, in order. ``workers`` decoding processes (default:
    :func:`default_workers`); pinned memory on a GPU. Files are read as the batches are needed,
    ``2 × workers`` batches ahead at most."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HeadstartError(f"batch_size={batch_size!r}: expected a whole number of at least 1")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise HeadstartError(f"workers={workers!r}: expected 0 (decode in this process) or more")
    import multiprocessing

    loader = torch.utils.data.DataLoader(
        _Files(predictor.decoder),
        batch_sampler=batched(((os.fspath(path), error) for path, error in items), batch_size),
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=predictor.device.type == "cuda",
        prefetch_factor=2 if workers > 0 else None,
        multiprocessing_context=(
            multiprocessing.get_context("fork")
            if workers > 0 and "fork" in multiprocessing.get_all_start_methods()
            else None
        ),
    )
    for paths, pixels, errors in loader:
        answers = iter(predictor.classify(pixels) if pixels is not None else [])
        for path, error in zip(paths, errors, strict=True):
            if error is not None:
                yield Prediction(path, error=error)
            else:
                pairs = next(answers)
                yield Prediction(path, tuple(label for label, _ in pairs), tuple(p for _, p in pairs))
