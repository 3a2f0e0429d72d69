"""Fingerprints of image files for the data check: a digest of the bytes, a perceptual hash, a
thumbnail and the image's size, each file read and decoded once, then kept for unchanged files.

What one fingerprint holds
    * ``digest``: BLAKE2b of the file's bytes (16 bytes): equal digests are exact copies.
    * ``phash``: the 64-bit perceptual hash of ``imagehash.phash`` (the DCT hash of pHash, Zauner
      2010): the grey image resized to 32 × 32 (Lanczos), its 2-D DCT, and the 8 × 8 lowest
      frequencies compared with their median, one bit each. Resizing, re-encoding and small
      changes of brightness move few bits; :mod:`headstart.data.duplicates` searches for close hashes.
    * ``thumb``: the same 32 × 32 grey image averaged to 8 × 8 (uint8, 64 bytes), which confirms that
      two close hashes are the same picture (:mod:`headstart.data.duplicates`).
    * ``width``, ``height``: the full size after EXIF orientation (the tiny and extreme-aspect checks).
    * ``colour``: whether the picture is in colour (:func:`is_colour` on the 32 × 32 image before it
      turns grey), so that the folder demo chooses one channel or three without decoding again.
    * ``error``: why the file could not be read ("" when it was), worded as
      :mod:`headstart.data.images` words it; an unreadable file has no other field.

Reading
    Each file is read once: its bytes are hashed, then decoded from those bytes with the policy of
    :mod:`headstart.data.images` (modes, EXIF orientation, the pixel cap refused before decoding).
    A JPEG is decoded at reduced scale (Pillow's ``draft``) down to :data:`DRAFT_SIDE` pixels on its
    shorter side, since the hash needs 32 × 32: a 4000 × 3000 photo decodes at 500 × 375. Threads
    decode files on every core (Pillow releases the GIL); only the fingerprints are kept, so memory
    holds 100 bytes per image whatever the images' size. A progress bar appears on a terminal when
    the work lasts more than :data:`PROGRESS_AFTER` seconds.

Cache (:class:`FingerprintCache`)
    Fingerprints of readable files are kept in one hidden file next to the data,
    ``.headstart-fingerprints.npz`` in a folder source's root (``.<name>.headstart-fingerprints.npz``
    beside a CSV file), keyed by the file's absolute path, size and modification time in
    nanoseconds: a file that changes in any of them is read again, a removed file is dropped from
    the cache, and a repeated check (every run of a comparison, ``headstart run`` after
    ``headstart check-data``) reads no image. The cache is plain arrays (``numpy.load`` with
    ``allow_pickle=False``); a damaged, foreign or older cache is ignored and rewritten, and a
    folder that cannot be written is simply checked anew each time. Unreadable files are not
    cached: a permission fixed without touching the file is seen at the next check.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.data.images import read_image_bytes
from headstart.errors import HeadstartError
from headstart.files import atomic_write

DRAFT_SIDE = 64
"""Shorter side (pixels) a JPEG is decoded down to at least: twice the hash's 32 × 32."""
HASH_SIDE = 32
"""Side of the grey image the perceptual hash and the thumbnail are computed from (imagehash's)."""
THUMB_SIDE = 8
"""Side of the thumbnail that confirms a near copy (64 grey values)."""
DIGEST_BYTES = 16
COLOUR_LEVELS = 16
COLOUR_SHARE = 0.01
"""An image is in colour when more than 1% of its pixels have channels more than 16 grey levels
apart (of 255): JPEG's chroma noise on a grey photograph stays below that."""
PROGRESS_AFTER = 2.0
"""Seconds of work after which a progress bar appears (standard error on a terminal)."""
CHUNK = 256
"""Files handed to the threads at a time: results are kept as they come, memory stays flat."""
CACHE_VERSION = 2
"""Bumped when the fingerprint changes (hash, thumbnail, decoding): older caches are ignored."""
LOG = logging.getLogger("headstart")


@dataclass
class Fingerprints:
    """Fingerprints of ``len(paths)`` files, row ``i`` for ``paths[i]`` (module docstring)."""

    paths: list[Path]
    digests: np.ndarray
    """``[n, 16]`` uint8; zeros for an unreadable file."""
    hashes: np.ndarray
    """``[n]`` uint64 perceptual hashes."""
    thumbs: np.ndarray
    """``[n, 64]`` uint8 thumbnails (8 × 8 grey, row-major)."""
    widths: np.ndarray
    heights: np.ndarray
    colours: np.ndarray
    """``[n]`` bool: the picture is in colour (:func:`is_colour`)."""
    errors: list[str]
    """Why each file could not be read, "" when it could."""
    decoded: int = 0
    """Files read and decoded by this call (the others came from the cache)."""
    seconds: float = 0.0

    @property
    def readable(self) -> np.ndarray:
        """Boolean ``[n]``: the file was read and decoded."""
        return np.array([not error for error in self.errors], dtype=bool)


def is_colour(pixels: np.ndarray) -> bool:
    """Whether RGB ``pixels`` (uint8, channels last) hold colour
    (:data:`COLOUR_SHARE`)."""
    values = np.asarray(pixels).astype(np.int16).reshape(-1, 3)
    spread = values.max(axis=1) - values.min(axis=1)
    return bool((spread > COLOUR_LEVELS).mean() > COLOUR_SHARE)


def fingerprint_file(path: Path) -> tuple[bytes, int, np.ndarray, int, int, bool]:
    """The digest, perceptual hash, thumbnail, width, height and colour of one file (module docstring).

    Raises HeadstartError naming the file when it cannot be read or decoded."""
    import imagehash

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HeadstartError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise HeadstartError(f"{path}: is a folder, expected an image file") from None
    except PermissionError:
        raise HeadstartError(f"{path}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise HeadstartError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    digest = hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()
    rgb, (width, height) = read_image_bytes(data, path, "RGB", min_side=DRAFT_SIDE)
    small_rgb = rgb.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    colour = is_colour(np.asarray(small_rgb))
    small = rgb.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    bits = int(str(imagehash.phash(small)), 16)  # phash resizes to 32 × 32: already that size
    thumb = np.asarray(small.resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BOX), dtype=np.uint8).reshape(-1)
    return digest, bits, thumb, width, height, colour


def _attempt(path: Path) -> tuple[bytes, int, np.ndarray, int, int, bool] | str:
    try:
        return fingerprint_file(path)
    except HeadstartError as exc:
        prefix = f"{path}: "
        message = str(exc)
        return message[len(prefix) :] if message.startswith(prefix) else message


class _Bar:
    """A rich progress bar on standard error that appears only once the work has lasted
    :data:`PROGRESS_AFTER` seconds, and only when ``show`` (``None``: standard error is a terminal)."""

    def __init__(self, total: int, show: bool | None):
        self.total = total
        self.show = sys.stderr.isatty() if show is None else show
        self.started = time.perf_counter()
        self.done = 0
        self.progress: Any = None  # a rich Progress once shown
        self.task: Any = None

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is None and self.show and time.perf_counter() - self.started > PROGRESS_AFTER:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("data check"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self.progress.start()
            self.task = self.progress.add_task("images", total=self.total, completed=self.done)
        elif self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=self.done)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


COLUMNS = ("sizes", "mtimes", "digests", "hashes", "thumbs", "widths", "heights", "colours")
"""The cache's arrays, one row per file, beside ``keys`` (absolute paths) and ``version``."""


class FingerprintCache:
    """Fingerprints of unchanged files kept in ``path`` (module docstring); ``path=None`` keeps none.

    Held as the archive's arrays plus one ``{path: row}`` index, so memory per file is the path and a
    hundred bytes of arrays, not Python objects per field."""

    def __init__(self, path: Path | None):
        self.path = path
        self.rows: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {}
        if path is not None and path.is_file():
            self._read(path)

    def _read(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as archive:
                if int(archive["version"]) != CACHE_VERSION:
                    return
                keys = archive["keys"].tolist()
                arrays = {name: archive[name] for name in COLUMNS}
        except (OSError, ValueError, KeyError, EOFError) as exc:
            LOG.debug("data check: ignoring the fingerprint cache %s (%s)", path, exc)
            return
        if not all(len(column) == len(keys) for column in arrays.values()) or arrays["thumbs"].shape[1:] != (
            THUMB_SIDE * THUMB_SIDE,
        ):
            return
        self.arrays = arrays
        self.rows = {key: row for row, key in enumerate(keys)}

    def row(self, key: str, stamp: tuple[int, int] | None) -> int | None:
        """The cached row of ``key`` when its size and modification time are ``stamp``, else ``None``."""
        row = self.rows.get(key)
        if row is None or stamp is None:
            return None
        if (int(self.arrays["sizes"][row]), int(self.arrays["mtimes"][row])) != stamp:
            return None
        return row

    def write(self, keys: list[str], arrays: dict[str, np.ndarray]) -> None:
        """Keep exactly ``keys`` (the readable files just checked) with their ``arrays`` (:data:`COLUMNS`)
        when they differ from what the file holds; a folder that cannot be written keeps no cache."""
        if self.path is None:
            return
        if len(keys) == len(self.rows) and all(self.rows.get(key) == row for row, key in enumerate(keys)):
            unchanged = all(np.array_equal(arrays[name], self.arrays[name]) for name in COLUMNS)
            if unchanged:
                return
        contents = {"version": np.array(CACHE_VERSION), "keys": np.array(keys, dtype=str), **arrays}
        try:
            atomic_write(self.path, lambda file: np.savez(file, **contents))  # type: ignore[arg-type]
        except OSError as exc:
            LOG.debug("data check: no fingerprint cache at %s (%s)", self.path, exc)


def fingerprint_files(
    paths: Sequence[str | os.PathLike], *, cache_file: str | os.PathLike | None = None, progress: bool | None = None
) -> Fingerprints:
    """Fingerprint every file of ``paths`` (module docstring), reusing and refreshing ``cache_file``.

    Never raises for a bad file: its row carries the reason in ``errors``."""
    started = time.perf_counter()
    files = [path if isinstance(path, Path) else Path(path) for path in paths]
    count = len(files)
    digests = np.zeros((count, DIGEST_BYTES), dtype=np.uint8)
    hashes = np.zeros(count, dtype=np.uint64)
    thumbs = np.zeros((count, THUMB_SIDE * THUMB_SIDE), dtype=np.uint8)
    widths = np.zeros(count, dtype=np.int64)
    heights = np.zeros(count, dtype=np.int64)
    colours = np.zeros(count, dtype=bool)
    sizes = np.full(count, -1, dtype=np.int64)  # -1: the file could not be stat'ed
    mtimes = np.zeros(count, dtype=np.int64)
    errors = [""] * count
    cache = FingerprintCache(None if cache_file is None else Path(cache_file))
    keys = [os.fspath(path.absolute()) for path in files]
    todo = []
    for row, (path, key) in enumerate(zip(files, keys, strict=True)):
        try:
            status = path.stat()
            sizes[row], mtimes[row] = status.st_size, status.st_mtime_ns
        except OSError:
            todo.append(row)  # read below, which names the problem
            continue
        known = cache.row(key, (int(sizes[row]), int(mtimes[row])))
        if known is None:
            todo.append(row)
            continue
        digests[row], hashes[row], thumbs[row] = (
            cache.arrays["digests"][known],
            cache.arrays["hashes"][known],
            cache.arrays["thumbs"][known],
        )
        widths[row], heights[row], colours[row] = (
            cache.arrays["widths"][known],
            cache.arrays["heights"][known],
            cache.arrays["colours"][known],
        )
    bar = _Bar(len(todo), progress)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            for start in range(0, len(todo), CHUNK):
                rows = todo[start : start + CHUNK]
                for row, outcome in zip(rows, pool.map(_attempt, [files[row] for row in rows]), strict=True):
                    if isinstance(outcome, str):
                        errors[row] = outcome
                        continue
                    digest, bits, thumb, width, height, colour = outcome
                    digests[row] = np.frombuffer(digest, dtype=np.uint8)
                    hashes[row], thumbs[row], widths[row], heights[row], colours[row] = (
                        bits,
                        thumb,
                        width,
                        height,
                        colour,
                    )
                bar.advance(len(rows))
    finally:
        bar.close()
    # unreadable files and files that could not be stat'ed are not cached (a fixed permission is seen next time)
    kept = np.array([not error for error in errors], dtype=bool) & (sizes >= 0)
    columns: dict[str, np.ndarray] = {
        "sizes": sizes,
        "mtimes": mtimes,
        "digests": digests,
        "hashes": hashes,
        "thumbs": thumbs,
        "widths": widths,
        "heights": heights,
        "colours": colours,
    }
    cache.write(
        [key for key, keep in zip(keys, kept.tolist(), strict=True) if keep],
        {name: column[kept] for name, column in columns.items()},
    )
    return Fingerprints(
        files, digests, hashes, thumbs, widths, heights, colours, errors, len(todo), time.perf_counter() - started
    )


__all__ = [
    "COLUMNS",
    "DRAFT_SIDE",
    "FingerprintCache",
    "Fingerprints",
    "fingerprint_file",
    "fingerprint_files",
    "is_colour",
]
