"""JPEG files decoded on the training device: a batch read as bytes by the loader, decoded by nvJPEG.

With ``decode: device`` a streamed folder's loader workers no longer decode: they read each file's
bytes (:func:`read_encoded`) and the training process decodes the whole batch on the GPU with
``torchvision.io.decode_jpeg(list_of_files, device="cuda")`` (nvJPEG's batched decoder), then
resizes every image there to the store's square size (:func:`decode_encoded`). Workers then cost
a file read per image instead of a Huffman decode, inverse DCT and resize.

The one reading policy (:mod:`headstart.data.images`) still holds: a file goes to nvJPEG only when
its header says it is a plain JPEG — RGB or grey, no EXIF rotation, within
:data:`~headstart.data.images.MAX_PIXELS`. Anything else (PNG, CMYK JPEG, a rotated phone photo)
is decoded on the CPU in the worker exactly as without ``decode: device`` and travels as pixels.
A file nvJPEG refuses (a truncated JPEG) is decoded alone on the CPU, which raises the usual error
naming the file.

Pixels differ slightly from CPU decoding: nvJPEG's inverse DCT and upsampling are not
libjpeg-turbo's, and the resize runs on tensors (:func:`headstart.imageops.resize`, bilinear,
antialiased) rather than in Pillow; both stay within a few grey levels. The same function decodes
on the CPU (``device="cpu"``, libjpeg-turbo through torchvision), which is how the path is tested
on machines without a GPU.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from headstart import imageops
from headstart.data.dataset import FileStore, decode_file
from headstart.data.images import MAX_PIXELS

JPEG_START = b"\xff\xd8\xff"
EXIF_ORIENTATION = 0x0112


@dataclass
class EncodedImages:
    """A batch of images as the loader delivers them for device decoding (module docstring).

    ``data`` holds the bytes of every JPEG file end to end (one tensor, so a batch crosses from a
    worker process in one shared-memory block); file ``i`` is ``data[offsets[i]:offsets[i + 1]]``
    and fills row ``rows[i]`` of the batch. ``pixels`` are the rows ``pixel_rows`` decoded on the
    CPU already (uint8 ``[m, C, size, size]``).
    """

    count: int
    size: int
    channels: int
    resize: imageops.ResizeMode
    data: Tensor
    offsets: Tensor
    rows: Tensor
    pixels: Tensor
    pixel_rows: Tensor
    paths: list[str] = field(default_factory=list)
    """The JPEG files' paths, for messages about a file nvJPEG cannot decode."""

    def __len__(self) -> int:
        return self.count

    def pin_memory(self) -> EncodedImages:
        """Page-locked copies of the tensors (``DataLoader(pin_memory=True)`` calls this)."""
        return EncodedImages(
            self.count,
            self.size,
            self.channels,
            self.resize,
            self.data.pin_memory(),
            self.offsets,
            self.rows,
            self.pixels.pin_memory(),
            self.pixel_rows,
            self.paths,
        )


def _fits_the_device(data: bytes) -> bool:
    """Whether a file's bytes are a JPEG nvJPEG decodes as headstart's reader would: RGB or grey,
    no EXIF rotation, no more than MAX_PIXELS (header only; nothing is decoded)."""
    if not data.startswith(JPEG_START):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
                return image.mode in ("RGB", "L") and orientation == 1 and width * height <= MAX_PIXELS
    except Exception:  # noqa: BLE001 - an unreadable header goes to the CPU reader, which names the file
        return False


def read_encoded(store: FileStore, positions: np.ndarray) -> EncodedImages:
    """The files at ``positions`` as an :class:`EncodedImages` batch: JPEG bytes, or CPU-decoded
    pixels for anything nvJPEG should not decode (module docstring). Runs in loader workers."""
    size, channels = store.size[0], store.channels
    chunks: list[bytes] = []
    rows: list[int] = []
    paths: list[str] = []
    decoded: list[Tensor] = []
    decoded_rows: list[int] = []
    for row, position in enumerate(int(p) for p in positions):
        data = _read(store, position)
        if data and _fits_the_device(data):
            chunks.append(data)
            rows.append(row)
            paths.append(str(store.paths[position]))
        else:
            decoded.append(store.decode(position))
            decoded_rows.append(row)
    lengths = [len(chunk) for chunk in chunks]
    offsets = torch.zeros(len(chunks) + 1, dtype=torch.long)
    if chunks:
        offsets[1:] = torch.tensor(lengths, dtype=torch.long).cumsum(0)
    joined = (
        torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
        if chunks
        else torch.zeros(0, dtype=torch.uint8)
    )
    pixels = torch.stack(decoded) if decoded else torch.zeros((0, channels, size, size), dtype=torch.uint8)
    return EncodedImages(
        count=len(positions),
        size=size,
        channels=channels,
        resize=store.resize,
        data=joined,
        offsets=offsets,
        rows=torch.tensor(rows, dtype=torch.long),
        pixels=pixels,
        pixel_rows=torch.tensor(decoded_rows, dtype=torch.long),
        paths=paths,
    )


def _read(store: FileStore, position: int) -> bytes:
    path = store.paths[position]
    try:
        return path.read_bytes()
    except OSError:
        return b""  # the CPU reader raises the error that names the file


def decode_encoded(batch: EncodedImages, device: torch.device | str) -> Tensor:
    """Uint8 pixels ``[n, C, size, size]`` of ``batch`` on ``device``: its JPEGs decoded there in one
    batched call (nvJPEG on CUDA, libjpeg-turbo on the CPU), resized as the store resizes."""
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    out = torch.empty((batch.count, batch.channels, batch.size, batch.size), dtype=torch.uint8, device=device)
    if len(batch.pixel_rows):
        out[batch.pixel_rows.to(device)] = batch.pixels.to(device, non_blocking=True)
    if not len(batch.rows):
        return out
    bounds = batch.offsets.tolist()
    files = [batch.data[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]
    mode = ImageReadMode.GRAY if batch.channels == 1 else ImageReadMode.RGB
    try:
        with _torchvision_decoders():
            images = decode_jpeg(files, mode=mode, device=device)
    except RuntimeError:
        images = [_decode_one(file, path, batch, mode, device) for file, path in zip(files, batch.paths, strict=True)]
    for row, image in zip(batch.rows.tolist(), images, strict=True):
        out[row] = _fit(image, batch.size, batch.resize)
    return out


def _decode_one(file: Tensor, path: str, batch: EncodedImages, mode, device: torch.device) -> Tensor:
    """One file of a batch the batched decoder refused: on the device alone, else on the CPU
    through the usual reader (which raises the error naming the file)."""
    from torchvision.io import decode_jpeg

    try:
        with _torchvision_decoders():
            return decode_jpeg(file, mode=mode, device=device)
    except RuntimeError:
        return decode_file(path, batch.size, batch.channels, batch.resize).to(device)


@contextmanager
def _torchvision_decoders() -> Iterator[None]:
    """torchvision 0.29 deprecates its image decoders for TorchCodec's (a package headstart does not
    pin yet) and warns at every call; the decoders themselves are unchanged."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities of TorchVision")
        yield


def _fit(image: Tensor, size: int, resize: imageops.ResizeMode) -> Tensor:
    """A decoded ``[C, H, W]`` uint8 image resized to ``[C, size, size]`` (crop or stretch)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image
    scaled = imageops.resize(image[None].float(), size, resize)[0]
    return scaled.round_().clamp_(0, 255).to(torch.uint8)


__all__ = ["EncodedImages", "decode_encoded", "read_encoded"]
