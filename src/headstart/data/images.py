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
  I;16, I  16/32-bit integers scaled linearly to 0..255 by the type's range
  F        float values clipped to 0..1 and scaled to 0..255
  CMYK     Pillow's CMYK→RGB conversion
  ======== ==============================================================

* An image whose declared size exceeds :data:`MAX_PIXELS` is refused *before* decoding (a
  decompression bomb costs nothing).
* A missing, empty, truncated or non-image file raises :class:`~headstart.errors.HeadstartError`
  naming the file. Dataset code decides whether to fail or to skip and count (see ``data.checks``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from headstart.errors import HeadstartError

MAX_PIXELS = 16_000 * 16_000
"""Largest width × height decoded (256 megapixels). A declared 20000×20000 PNG is refused."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") else max(float(arr.max()), 1.0)
        grey = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
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


def read_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """Open ``path`` and return a fully decoded Pillow image in ``mode`` ("RGB" or "L").

    Raises HeadstartError naming the file when it is missing, empty, not an image, truncated or
    larger than :data:`MAX_PIXELS`.
    """
    path = Path(path)
    if not path.exists():
        raise HeadstartError(f"{path}: no such file")
    if path.is_dir():
        raise HeadstartError(f"{path}: is a folder, expected an image file")
    if path.stat().st_size == 0:
        raise HeadstartError(f"{path}: file is empty (0 bytes), expected an image")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise HeadstartError(
                    f"{path}: declares {width}x{height} pixels, more than the limit of "
                    f"{MAX_PIXELS:,} (headstart.data.images.MAX_PIXELS)"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img.load()
            img = ImageOps.exif_transpose(img)
            rgb = _to_rgb(img)
    except HeadstartError:
        raise
    except Image.UnidentifiedImageError:
        raise HeadstartError(f"{path}: not a readable image (expected JPEG, PNG, BMP, GIF, TIFF or WebP)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise HeadstartError(f"{path}: corrupt or truncated image ({exc})") from None
    return rgb.convert("L") if mode == "L" else rgb
