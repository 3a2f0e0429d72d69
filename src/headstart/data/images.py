"""Reading image files: one policy for every mode, format and kind of broken file.

Policy
------
* Every file is decoded with Pillow, EXIF orientation is applied, and the result is converted to
  ``RGB`` (or ``L`` when ``mode="L"``) the documented way:

  ======== ==============================================================
  mode     conversion
  ======== ==============================================================
  RGB      unchanged
  L, 1     grey replicated to three channels
  LA, RGBA alpha composited onto a white background (what a viewer shows)
  P, PA    palette expanded (with its transparency) then as RGBA
  I;16, I  16-bit samples scaled linearly from 0..65535 to 0..255; mode "I" images
           with values outside 0..65535 scaled by their own maximum
  F        float values clipped to 0..1 and scaled to 0..255
  CMYK     Pillow's CMYK→RGB conversion
  ======== ==============================================================

* An image whose declared size exceeds :data:`MAX_PIXELS` is refused *before* decoding (a
  decompression bomb costs nothing). :func:`probe_image` checks a file's header without decoding.
* A missing, empty, truncated or non-image file raises :class:`~headstart.errors.HeadstartError`
  naming the file. Dataset code decides whether to fail or to skip and count (see
  ``data.sources``, field ``on_corrupt``).
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from headstart.errors import HeadstartError

MAX_PIXELS = 12_000 * 12_000
"""Largest width × height decoded (144 megapixels, about 430 MB as RGB). A declared 20000×20000
PNG is refused. Kept below Pillow's own refusal threshold (twice ``Image.MAX_IMAGE_PIXELS``, about
179 megapixels by default) so that this limit, not Pillow's, is the one users meet."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB following the table in the module docstring."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif arr.min() >= 0 and arr.max() <= 65535:
            # Mode "I" holding 16-bit samples (how older Pillow versions open 16-bit PNGs): the
            # 16-bit range keeps a dark image dark instead of stretching it to full brightness.
            top = 65535.0
        else:
            top = max(float(arr.max()), 1.0)
        grey = np.clip(arr / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)
        return Image.fromarray((arr * 255.0).round().astype(np.uint8), "L").convert("RGB")
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _too_large(path: Path, width: int, height: int) -> HeadstartError:
    return HeadstartError(
        f"{path}: declares {width}x{height} pixels, more than the limit of {MAX_PIXELS:,} "
        f"(headstart.data.images.MAX_PIXELS); refused before decoding"
    )


def _check_file(path: Path) -> None:
    """Refuse paths that are not a non-empty regular file, naming the file."""
    if not path.exists():
        raise HeadstartError(f"{path}: no such file")
    if path.is_dir():
        raise HeadstartError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise HeadstartError(f"{path}: file is empty (0 bytes), expected an image")


def _open(path: Path, source: io.BytesIO | None = None) -> Image.Image:
    """Open ``path`` (or ``source``, its bytes already read, named ``path`` in messages) lazily
    (header only) and refuse it when it declares more than MAX_PIXELS.

    Pillow runs its own decompression-bomb check inside ``Image.open`` (a warning above
    ``Image.MAX_IMAGE_PIXELS``, an error above twice that); the warning is silenced because the
    check below is the one that decides, and the error is reported with the same message.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path if source is None else source)
    except Image.DecompressionBombError as exc:
        raise HeadstartError(
            f"{path}: declares more pixels than the limit of {MAX_PIXELS:,} "
            f"(headstart.data.images.MAX_PIXELS); refused before decoding ({exc})"
        ) from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        img.close()
        raise _too_large(path, width, height)
    return img


def _translate(path: Path, exc: BaseException) -> HeadstartError:
    """Turn Pillow's and the operating system's exceptions into one message naming the file."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return HeadstartError(f"{path}: not a readable image (expected JPEG, PNG, BMP, GIF, TIFF or WebP)")
    if isinstance(exc, PermissionError):
        return HeadstartError(f"{path}: cannot be read (permission denied)")
    return HeadstartError(f"{path}: corrupt or truncated image ({exc})")


_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombWarning)


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """Check ``path`` without decoding its pixels and return its stored ``(width, height)``.

    Reads the header and runs Pillow's ``verify()`` (checksums where the format has them, such
    as PNG chunks). This catches missing, empty, non-image and oversized files in microseconds,
    but not every truncated file: a JPEG cut short passes and fails only when decoded by
    :func:`read_image`. The size is the stored one, before EXIF orientation is applied.
    """
    path = Path(path)
    _check_file(path)
    try:
        img = _open(path)
        with img:
            size = img.size
            img.verify()
    except HeadstartError:
        raise
    except _READ_ERRORS as exc:
        raise _translate(path, exc) from None
    return size


def read_image(path: str | os.PathLike, mode: str = "RGB", *, min_side: int | None = None) -> Image.Image:
    """Open ``path`` and return a fully decoded Pillow image in ``mode`` ("RGB" or "L").

    Raises HeadstartError naming the file when it is missing, empty, not an image, truncated or
    larger than :data:`MAX_PIXELS`. ``mode="L"`` converts the RGB result by luminance
    (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B), which leaves grey images exactly unchanged.

    ``min_side``: the caller will shrink the image until its shorter side is ``min_side``. A JPEG
    whose shorter side is at least twice that is then decoded at 1/2, 1/4 or 1/8 scale (Pillow's
    ``draft``: the inverse DCT does the shrinking), keeping the shorter side ≥ ``min_side``. A
    4000×3000 JPEG read for a 224-pixel network decodes in 11 ms instead of 101 ms, and once resized
    its pixels differ from a full decode's by 0.6 grey levels on average.
    """
    if mode not in ("RGB", "L"):
        raise HeadstartError(f"read_image mode {mode!r} is not supported; expected 'RGB' or 'L'")
    path = Path(path)
    _check_file(path)
    return _decode(path, None, mode, min_side)[0]


def read_image_bytes(
    data: bytes, path: str | os.PathLike, mode: str = "RGB", *, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`read_image` on the bytes of ``path`` already read (so a caller that also hashes them
    reads the file once); also returns the image's full ``(width, height)`` after EXIF orientation,
    before any reduced-scale decoding. Same policy, same errors, naming ``path``."""
    if mode not in ("RGB", "L"):
        raise HeadstartError(f"read_image_bytes mode {mode!r} is not supported; expected 'RGB' or 'L'")
    path = Path(path)
    if not data:
        raise HeadstartError(f"{path}: file is empty (0 bytes), expected an image")
    return _decode(path, io.BytesIO(data), mode, min_side)


def _decode(
    path: Path, source: io.BytesIO | None, mode: str, min_side: int | None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode (module policy) and return the image in ``mode`` with its full oriented size."""
    try:
        img = _open(path, source)
        with img:
            width, height = img.size
            if min_side is not None and img.format == "JPEG" and min(img.size) >= 2 * min_side:
                scale = min_side / min(img.size)
                img.draft(img.mode, (math.ceil(img.size[0] * scale), math.ceil(img.size[1] * scale)))
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
            oriented = ImageOps.exif_transpose(img)
            if oriented.size != img.size:  # EXIF turned it by a quarter
                width, height = height, width
            rgb = to_rgb(oriented)
    except HeadstartError:
        raise
    except _READ_ERRORS as exc:
        raise _translate(path, exc) from None
    return (rgb.convert("L") if mode == "L" else rgb), (width, height)
