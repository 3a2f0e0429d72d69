"""Where images come from: a folder of class folders, a CSV file, numpy arrays, or a built-in set.

:class:`SourceSpec` is the configuration block; :func:`load_source` turns it into an
:class:`~headstart.data.dataset.ImageSet`; :func:`from_arrays` does the same for arrays in memory.

Folder source
    ``root/<class name>/<image files>``. Class names are the sorted sub-folder names; a class
    folder with no images stays in ``class_names`` (the dataset check reports it as empty). Images
    in nested folders belong to their top-level class folder. Names starting with "." are
    ignored (``.ipynb_checkpoints`` is not a class), as are files whose suffix is not in
    :data:`~headstart.data.images.IMAGE_SUFFIXES`. A root holding only image files and no
    sub-folders is an unlabelled set.
Unlabelled folder (``unlabelled``, folder and CSV sources)
    A second folder whose image files (every one under it, at any depth, hidden ones skipped;
    sub-folder names are ignored) join the dataset labelled -1: the splits put them in the
    unlabelled pool, never in test or validation, so self-supervised and semi-supervised stages
    learn from them and no evaluation counts them. A file that is also one of the labelled images
    is refused (a test image would leak into pretraining), as is a folder with no image files.
CSV source
    A header row naming at least the path column (``path``) and, optionally, the label column
    (``label``); other columns are ignored. Relative paths are relative to the CSV file's folder.
    Labels are class names; class names are sorted (numerically when every one is an integer);
    an empty label cell means unlabelled. Problems are reported with the line number of the file
    (the header is line 1).
Arrays source
    A ``.npz`` file with ``images`` and optionally ``labels`` and ``class_names``; read with
    ``allow_pickle=False`` so a file can never run code.

Corrupt files (``on_corrupt``)
    Every file is checked when the source is loaded, before any training. With
    ``verify="decode"`` (default) each file is fully decoded once, so truncated files are caught;
    with ``cache=True`` that decode also fills the cache. ``verify="header"`` only reads headers
    (``PIL.Image.verify``): much faster on large folders, but a truncated JPEG then fails only when
    it is first read during training. ``verify="checked"`` opens no file at listing: the data check
    that :meth:`TaskData.load <headstart.data.task.TaskData.load>` runs on every folder and CSV
    source decodes each file once anyway, remembers the ones that decode by path, size and
    modification time, and applies ``on_corrupt`` to the others; at 50,000 files this saves one
    pass over the folder per run. ``"fail"`` raises one HeadstartError listing every unreadable
    file, the first one first; ``"skip"`` leaves them out and records ``(path, reason)`` in
    ``ImageSet.skipped``.
"""

from __future__ import annotations

import csv
import difflib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydantic
import torch

from headstart.data.arrays import from_arrays
from headstart.data.dataset import FileStore, ImageSet, decode_file
from headstart.data.images import IMAGE_SUFFIXES, probe_image
from headstart.errors import HeadstartError

FILE_KINDS = ("folder", "csv")
BUILTIN_KINDS = ("digits", "mnist5k", "lfw")
MAX_LISTED = 10
"""How many bad files an error message lists before summarising the rest as a count."""


class SourceSpec(pydantic.BaseModel, extra="forbid", use_attribute_docstrings=True):
    """Where a dataset comes from and how its images are brought to one size and channel count."""

    kind: Literal["folder", "csv", "arrays", "digits", "mnist5k", "lfw"]
    """Folder of class folders, CSV of path and label, .npz arrays, or a built-in dataset."""
    path: str | None = None
    """Folder root (folder), CSV file (csv) or ``.npz`` file (arrays); unused by built-ins."""
    image_size: int | None = pydantic.Field(default=None, ge=1)
    """Side in pixels that every image is resized to. Required for folder and CSV sources, whose
    files differ in size; arrays and built-ins keep their native size unless it is given."""
    channels: Literal[1, 3] | None = None
    """Convert to this many channels (grey → 3 by replication, colour → 1 by luminance). Files
    default to 3, arrays and built-ins to their own count."""
    on_corrupt: Literal["fail", "skip"] = "fail"
    """Unreadable files: "fail" raises listing them all; "skip" leaves them out and records them
    in ImageSet.skipped."""
    resize: Literal["crop", "stretch"] = "crop"
    """"crop": shorter side to image_size, then the centre square. "stretch": both sides to
    image_size, proportions change."""
    cache: bool = False
    """Keep decoded, resized file images in memory (N × channels × image_size² bytes)."""
    verify: Literal["decode", "header", "checked"] = "decode"
    """How files are checked at load: full decode (catches truncation), header only (faster), or left
    to the data check that loading a task runs on folder and CSV sources (no file opened here)."""
    unlabelled: str | None = None
    """Folder of images without labels, added to the unlabelled pool (folder and CSV sources; see
    the module docstring)."""
    path_column: str = "path"
    """CSV column holding image paths."""
    label_column: str | None = "label"
    """CSV column holding class names; None for an unlabelled CSV."""

    @pydantic.model_validator(mode="after")
    def _path_matches_kind(self) -> SourceSpec:
        if self.kind in BUILTIN_KINDS and self.path is not None:
            raise ValueError(f"kind {self.kind!r} is a built-in dataset and takes no path (got {self.path!r})")
        if self.kind not in BUILTIN_KINDS and not self.path:
            raise ValueError(f"kind {self.kind!r} needs a path")
        if self.unlabelled is not None and self.kind not in FILE_KINDS:
            raise ValueError(f"unlabelled (a folder of images) is read by folder and csv sources, not {self.kind!r}")
        if self.kind in FILE_KINDS and self.image_size is None:
            raise ValueError(
                f"kind {self.kind!r} needs image_size: files differ in size and are resized to one "
                f"square size so that they stack into batches"
            )
        return self


def load_source(spec: SourceSpec) -> ImageSet:
    """Load the dataset ``spec`` describes. Raises HeadstartError naming the file at fault."""
    if spec.kind == "folder":
        return _load_folder(spec)
    if spec.kind == "csv":
        return _load_csv(spec)
    if spec.kind == "arrays":
        return _load_npz(spec)
    from headstart.data.builtin import load_builtin

    return load_builtin(spec.kind, image_size=spec.image_size, channels=spec.channels, resize=spec.resize)


def _path_of(spec: SourceSpec) -> Path:
    """``spec.path`` of a folder, CSV or arrays source (the validator requires one for these kinds)."""
    assert spec.path is not None, f"kind {spec.kind!r} has no path"
    return Path(spec.path)


# ----------------------------------------------------------------------------------- arrays


def _load_npz(spec: SourceSpec) -> ImageSet:
    path = _path_of(spec)
    if not path.is_file():
        raise HeadstartError(f"{path}: no such file (expected a .npz with arrays 'images' and 'labels')")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise HeadstartError(f"{path}: not a readable .npz file ({exc})") from None
    if "images" not in contents:
        raise HeadstartError(
            f"{path}: has arrays {sorted(contents)}; expected 'images' (and optionally 'labels', 'class_names')"
        )
    names = contents.get("class_names")
    return from_arrays(
        contents["images"],
        contents.get("labels"),
        class_names=None if names is None else [str(n) for n in names.tolist()],
        name=path.stem,
        image_size=spec.image_size,
        channels=spec.channels,
        resize=spec.resize,
    )


# ------------------------------------------------------------------------------------ files


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted, skipping hidden files and folders."""
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            found.append(path)
    return sorted(found)


@dataclass(frozen=True)
class FileList:
    """The files a folder or CSV source names, listed and labelled but not opened
    (:func:`list_files`)."""

    paths: list[Path]
    labels: np.ndarray
    """One per path: the class index, or -1 for an unlabelled image."""
    class_names: list[str]
    name: str
    where: list[str | None]
    """Per path: where it is named (a CSV line), or None; for messages."""


def list_files(spec: SourceSpec) -> FileList:
    """The image files of a folder or CSV source (and its ``unlabelled`` folder) with their labels,
    listed as :func:`load_source` lists them, without opening any (the data check reads them)."""
    if spec.kind == "folder":
        entries, class_names, name = _folder_entries(spec)
    elif spec.kind == "csv":
        entries, class_names, name = _csv_entries(spec)
    else:
        raise HeadstartError(f"kind {spec.kind!r}: only folder and csv sources list files")
    return FileList(
        [path for path, _, _ in entries],
        np.array([label for _, label, _ in entries], dtype=np.int64),
        class_names,
        name,
        [where for _, _, where in entries],
    )


def _load_folder(spec: SourceSpec) -> ImageSet:
    entries, class_names, name = _folder_entries(spec)
    return _file_set(spec, entries, class_names, name=name)


def _folder_entries(spec: SourceSpec) -> tuple[list[tuple[Path, int, str | None]], list[str], str]:
    root = _path_of(spec)
    if not root.is_dir():
        raise HeadstartError(f"{root}: no such folder (expected a folder with one sub-folder per class)")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not _is_hidden(p)), key=lambda p: p.name)
    loose = sorted(
        p for p in root.iterdir() if p.is_file() and not _is_hidden(p) and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if class_dirs and loose:
        listed = ", ".join(p.name for p in loose[:MAX_LISTED])
        raise HeadstartError(
            f"{root}: {len(loose)} image file(s) lie outside the class folders ({listed}); "
            f"move each into the folder of its class"
        )
    entries: list[tuple[Path, int, str | None]] = []
    if class_dirs:
        class_names = [d.name for d in class_dirs]
        for label, folder in enumerate(class_dirs):
            entries += [(path, label, None) for path in _image_files(folder)]
    else:
        if not loose:
            raise HeadstartError(f"{root}: holds no class folders and no image files ({', '.join(IMAGE_SUFFIXES)})")
        class_names = []
        entries = [(path, -1, None) for path in loose]
    return entries + _unlabelled_entries(spec, entries), class_names, root.name or str(root)


def _unlabelled_entries(
    spec: SourceSpec, labelled: Sequence[tuple[Path, int, str | None]]
) -> list[tuple[Path, int, str | None]]:
    """The images of ``spec.unlabelled``, labelled -1 (module docstring); none without one."""
    if spec.unlabelled is None:
        return []
    folder = Path(spec.unlabelled)
    if not folder.is_dir():
        raise HeadstartError(f"{folder}: no such folder (expected a folder of unlabelled images)")
    found = _image_files(folder)
    if not found:
        raise HeadstartError(
            f"{folder}: holds no image files ({', '.join(IMAGE_SUFFIXES)}); expected unlabelled images"
        )
    known = {path.resolve() for path, _, _ in labelled}
    shared = [path for path in found if path.resolve() in known]
    if shared:
        listed = ", ".join(str(path) for path in shared[:MAX_LISTED])
        raise HeadstartError(
            f"{folder}: {len(shared)} of its images are also labelled images of the dataset ({listed}); "
            f"keep the unlabelled folder apart, or a test image would be seen by pretraining"
        )
    return [(path, -1, None) for path in found]


def _sorted_class_names(names: set[str]) -> list[str]:
    """Class names in numeric order when every one is an integer, else in text order."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _load_csv(spec: SourceSpec) -> ImageSet:
    entries, class_names, name = _csv_entries(spec)
    return _file_set(spec, entries, class_names, name=name)


def _csv_entries(spec: SourceSpec) -> tuple[list[tuple[Path, int, str | None]], list[str], str]:
    table = _path_of(spec)
    if not table.is_file():
        raise HeadstartError(
            f"{table}: no such file (expected a CSV with columns {spec.path_column!r}, {spec.label_column!r})"
        )
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise HeadstartError(
                    f"{table}: file is empty; expected a header row naming columns "
                    f"{spec.path_column!r}, {spec.label_column!r}"
                )
            header = [h.strip() for h in header]
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise HeadstartError(f"{table}: not UTF-8 text ({exc}); expected a CSV file") from None
    except csv.Error as exc:
        raise HeadstartError(f"{table}: not a valid CSV file ({exc})") from None

    def column(wanted: str) -> int:
        if wanted in header:
            return header.index(wanted)
        close = difflib.get_close_matches(wanted, header, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HeadstartError(f"{table}: has no column {wanted!r} (columns are {header}){hint}")

    path_at = column(spec.path_column)
    label_at = column(spec.label_column) if spec.label_column is not None else None
    problems: list[str] = []
    entries: list[tuple[Path, str | None, str]] = []
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        width = max(path_at, label_at if label_at is not None else 0) + 1
        if len(row) < width:
            problems.append(f"{table}: line {line} has {len(row)} cell(s); expected at least {width}")
            continue
        cell = row[path_at].strip()
        if not cell:
            problems.append(f"{table}: line {line} has an empty {spec.path_column!r} cell")
            continue
        path = Path(cell)
        if not path.is_absolute():
            path = table.parent / path
        label = row[label_at].strip() if label_at is not None else ""
        entries.append((path, label or None, f"line {line} of {table}"))
    if problems:
        raise HeadstartError(_listing(f"{table}: {len(problems)} malformed row(s)", problems))
    class_names = _sorted_class_names({label for _, label, _ in entries if label is not None})
    lookup = {n: k for k, n in enumerate(class_names)}
    indexed: list[tuple[Path, int, str | None]] = [
        (path, -1 if label is None else lookup[label], where) for path, label, where in entries
    ]
    return indexed + _unlabelled_entries(spec, indexed), class_names, table.stem


def _listing(title: str, lines: list[str]) -> str:
    shown = lines[:MAX_LISTED]
    more = f"\n  ... and {len(lines) - len(shown)} more" if len(lines) > len(shown) else ""
    return title + ":\n  " + "\n  ".join(shown) + more


def _strip_path(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _file_set(
    spec: SourceSpec,
    entries: Sequence[tuple[Path, int, str | None]],
    class_names: list[str],
    name: str,
) -> ImageSet:
    """Check every file (policy in the module docstring) and build the file-backed ImageSet.

    ``entries`` holds (path, label, where) with ``where`` naming the CSV line, if any, in messages.
    """
    channels = spec.channels or 3
    assert spec.image_size is not None, f"kind {spec.kind!r} has no image_size"
    size = int(spec.image_size)
    bad: list[tuple[str, str]] = []
    kept: list[tuple[Path, int]] = []
    cached: dict[int, torch.Tensor] = {}

    def check(entry: tuple[Path, int, str | None]) -> torch.Tensor | HeadstartError | None:
        try:
            if spec.verify == "decode":
                pixels = decode_file(entry[0], size, channels, spec.resize)
                return pixels if spec.cache else None
            if spec.verify == "header":
                probe_image(entry[0])
            return None
        except HeadstartError as exc:
            return exc

    # Pillow releases the GIL while it decodes: threads check files on every core, in order.
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        outcomes = pool.map(check, entries) if spec.verify != "checked" else iter([None] * len(entries))
        for (path, label, where), outcome in zip(entries, outcomes, strict=True):
            if isinstance(outcome, HeadstartError):
                reason = _strip_path(str(outcome), path)
                bad.append((str(path), reason if where is None else f"{where}: {reason}"))
                continue
            if outcome is not None:
                cached[len(kept)] = outcome
            kept.append((path, label))
    if bad and spec.on_corrupt == "fail":
        lines = [f"{path}: {reason}" for path, reason in bad]
        raise HeadstartError(
            _listing(
                f"{name}: {len(bad)} unreadable image file(s) "
                f"(on_corrupt='fail'; set on_corrupt='skip' to leave them out)",
                lines,
            )
        )
    store = FileStore(
        [p for p, _ in kept], size, channels, spec.resize, spec.cache, cached, verified=spec.verify == "decode"
    )
    labels = np.array([label for _, label in kept], dtype=np.int64)
    return ImageSet(store, labels, class_names, name, skipped=bad)
