"""ImageSet: the one dataset type every stage consumes, and the two stores behind it.

An :class:`ImageSet` is a list of positions into a *store* plus one integer label per position
(-1 = unlabelled). Subsets and label-hidden copies share the store, so splitting a dataset costs
no image memory and a file cache filled through one split serves every other split.

Stores
------
* :class:`ArrayStore` holds every image in memory as one ``[N, C, H, W]`` tensor (uint8 0..255 or
  float32 0..1). Built-in sets and numpy arrays use it.
* :class:`FileStore` holds file paths and decodes them on demand with
  :func:`~headstart.data.images.read_image`, then resizes each to one fixed square size so that
  batches stack. With ``cache=True`` the decoded, resized uint8 pixels are kept in memory
  (``N × C × size × size`` bytes; each DataLoader worker process keeps its own copy).

Resizing and channels (both stores) follow :mod:`headstart.imageops`: ``"crop"`` (default) keeps
proportions and cuts the centre square, ``"stretch"`` scales both sides; grey → colour
replicates, colour → grey takes the BT.601 luminance.

Streaming
---------
``store.pixels(positions)`` returns the stored pixels of a batch (uint8 for files: a quarter of
the bytes of float32 to move between processes); stages turn them into 0..1 floats on the
training device. A :class:`FileStore` without cache holds only paths, so a set of any size costs
the same memory; ``store.in_memory`` tells whether every image is already decoded in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from headstart import imageops
from headstart.data.images import read_image
from headstart.errors import HeadstartError
from headstart.imageops import ResizeMode

# The conversions live in headstart.imageops; these names are kept for the data layer's callers.
convert_channels = imageops.convert_channels
resize_tensor = imageops.resize
resize_pil = imageops.resize_pil


def decode_file(path: str | os.PathLike, size: int, channels: int, resize: ResizeMode = "crop") -> torch.Tensor:
    """Decode one image file into a uint8 tensor ``[channels, size, size]``.

    Raises HeadstartError naming the file when it cannot be read (see ``read_image``).
    """
    image = read_image(path, mode="L" if channels == 1 else "RGB", min_side=size)
    pixels = np.asarray(resize_pil(image, size, resize), dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


class ArrayStore:
    """Images held in memory as one tensor ``[N, C, H, W]``: uint8 0..255 or float32 0..1."""

    def __init__(self, images: torch.Tensor):
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise HeadstartError(f"image tensor of shape {tuple(images.shape)}; expected [N, 1 or 3, H, W]")
        if images.dtype not in (torch.uint8, torch.float32):
            raise HeadstartError(f"image tensor of dtype {images.dtype}; expected uint8 or float32")
        self.images = images.contiguous()

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.images.shape[2]), int(self.images.shape[3])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def pixels(self, positions: np.ndarray) -> torch.Tensor:
        """Stored pixels ``[n, C, H, W]`` at ``positions``: uint8 0..255 or float32 0..1."""
        return self.images[torch.as_tensor(positions, dtype=torch.long)]

    def load(self, positions: np.ndarray) -> torch.Tensor:
        """Float32 0..1 images ``[n, C, H, W]`` at ``positions``."""
        return imageops.to_unit_range(self.pixels(positions)).clone()

    @property
    def in_memory(self) -> bool:
        """Every image is already decoded in this process's memory."""
        return True

    def describe(self, position: int) -> str:
        """How messages name one image: its position in the arrays."""
        return f"image {position}"


class FileStore:
    """Image files decoded on demand and resized to ``size × size``; decoded pixels optionally cached."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        size: int,
        channels: int,
        resize: ResizeMode = "crop",
        cache: bool = False,
        cached: dict[int, torch.Tensor] | None = None,
        verified: bool = False,
    ):
        """``cached``: pixels already decoded, by position. ``verified``: every file was decoded
        once without error when the store was built, so later reads cannot meet a corrupt file."""
        if channels not in (1, 3):
            raise HeadstartError(f"channels={channels}; expected 1 or 3")
        if size < 1:
            raise HeadstartError(f"image_size={size}; expected a positive number of pixels")
        self.paths = [Path(p) for p in paths]
        self._size = int(size)
        self._channels = int(channels)
        self.resize = resize
        self.cache = cache
        self._cached: dict[int, torch.Tensor] = dict(cached or {}) if cache else {}
        self.verified = verified

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels after resizing."""
        return self._size, self._size

    def __len__(self) -> int:
        return len(self.paths)

    def decode(self, position: int) -> torch.Tensor:
        """Uint8 pixels ``[C, size, size]`` of the file at ``position`` (from the cache when kept)."""
        pixels = self._cached.get(position)
        if pixels is None:
            pixels = decode_file(self.paths[position], self._size, self._channels, self.resize)
            if self.cache:
                self._cached[position] = pixels
        return pixels

    def pixels(self, positions: np.ndarray) -> torch.Tensor:
        """Uint8 pixels ``[n, C, size, size]`` at ``positions``, decoded now (or from the cache)."""
        out = torch.empty((len(positions), self._channels, self._size, self._size), dtype=torch.uint8)
        for row, position in enumerate(positions):
            out[row] = self.decode(int(position))
        return out

    def load(self, positions: np.ndarray) -> torch.Tensor:
        """Float32 0..1 images ``[n, C, size, size]`` at ``positions``."""
        return imageops.to_unit_range(self.pixels(positions))

    @property
    def in_memory(self) -> bool:
        """Every image is already decoded in this process's memory (``cache=True``, filled)."""
        return self.cache and len(self._cached) == len(self.paths)

    def describe(self, position: int) -> str:
        """How messages name one image: its file path."""
        return str(self.paths[position])


Store = ArrayStore | FileStore


class ImageSet(torch.utils.data.Dataset):
    """Images as float32 tensors ``[C, H, W]`` in 0..1 with integer labels (-1 = unlabelled).

    Attributes
    ----------
    class_names: names of the label indices; ``labels[i] == k`` means ``class_names[k]``.
    labels: int64 array ``[N]``, -1 for unlabelled images.
    channels: 1 or 3.
    name: shown in messages and summaries.
    positions: int64 array ``[N]``, where each image sits in the store it was loaded into; two
        sets loaded together (for example the splits of one source) share an image exactly when
        they share a position.
    skipped: ``(path, reason)`` of every file left out when the source was loaded with
        ``on_corrupt="skip"``; carried by subsets so reports can count them.
    """

    def __init__(
        self,
        store: Store,
        labels: np.ndarray,
        class_names: Sequence[str],
        name: str,
        positions: np.ndarray | None = None,
        skipped: Sequence[tuple[str, str]] = (),
    ):
        self.store = store
        self.positions = (
            np.arange(len(store), dtype=np.int64) if positions is None else np.asarray(positions, dtype=np.int64)
        )
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if self.labels.shape[0] != self.positions.shape[0]:
            raise HeadstartError(
                f"{name}: {self.labels.shape[0]} labels for {self.positions.shape[0]} images; "
                "expected one label per image"
            )
        if self.labels.size and self.labels.min() < -1:
            raise HeadstartError(
                f"{name}: label {int(self.labels.min())} is negative; expected -1 (unlabelled) or 0 and up"
            )
        self.class_names = [str(c) for c in class_names]
        self.name = name
        self.skipped = list(skipped)

    @property
    def channels(self) -> int:
        return self.store.channels

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"{self.name}: index {index} out of range for {count} images")
        position = self.positions[index]
        return self.store.load(np.array([position]))[0], int(self.labels[index])

    def image_size(self) -> tuple[int, int]:
        """(height, width) in pixels of every image of the set."""
        return self.store.size

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image stacked ``[N, C, H, W]`` float32 0..1, and the labels as int64 ``[N]``."""
        return self.store.load(self.positions), torch.from_numpy(self.labels.copy())

    def describe(self, index: int) -> str:
        """How messages name the image at ``index``: its file, or its position in the arrays."""
        return self.store.describe(int(self.positions[index]))

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> ImageSet:
        """The images at ``indices`` (integers or a boolean mask), sharing this set's store."""
        chosen = np.asarray(indices)
        if chosen.dtype == bool:
            if chosen.shape != (len(self),):
                raise HeadstartError(f"{self.name}: boolean mask of shape {chosen.shape}; expected ({len(self)},)")
            chosen = np.flatnonzero(chosen)
        chosen = chosen.astype(np.int64).reshape(-1)
        if chosen.size and (chosen.min() < -len(self) or chosen.max() >= len(self)):
            raise HeadstartError(f"{self.name}: subset indices outside 0..{len(self) - 1}")
        return ImageSet(
            self.store,
            self.labels[chosen],
            self.class_names,
            name if name is not None else self.name,
            positions=self.positions[chosen],
            skipped=self.skipped,
        )

    def without_labels(self, name: str | None = None) -> ImageSet:
        """The same images with every label set to -1, for self-supervised stages."""
        return ImageSet(
            self.store,
            np.full(len(self), -1, dtype=np.int64),
            self.class_names,
            name if name is not None else self.name,
            positions=self.positions,
            skipped=self.skipped,
        )

    def class_counts(self) -> dict[str, int]:
        """Number of labelled images per class name (classes with none included as 0)."""
        counts = np.bincount(
            self.labels[(self.labels >= 0) & (self.labels < len(self.class_names))], minlength=len(self.class_names)
        )
        return {name: int(counts[k]) for k, name in enumerate(self.class_names)}

    def __repr__(self) -> str:
        height, width = self.image_size()
        return (
            f"ImageSet(name={self.name!r}, images={len(self)}, classes={len(self.class_names)}, "
            f"size={height}x{width}, channels={self.channels})"
        )
