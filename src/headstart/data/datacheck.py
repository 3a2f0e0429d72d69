"""The data check: what a folder or CSV of images really holds, before anything trains.

Real folders are not clean: the same photo saved twice, a resized or re-encoded copy, near-equal
burst frames. A copy on each side of the train/test line makes test accuracy measure memory, and
the same picture under two labels is the cheapest label error to find. :func:`check_source`
(``headstart check-data PATH``) reads every file once (:mod:`headstart.data.fingerprints`, cached
next to the data) and finds, with the thresholds of
:class:`~headstart.data.findings.DataCheckSpec`:

* copies: exact (same bytes) and near (same picture resized, re-encoded, a little brighter:
  :mod:`headstart.data.duplicates`, whose docstring gives the measured recall and false copies),
  joined into groups of copies;
* groups whose images carry two or more labels: the same or a near-same picture under two labels
  (listed; which label is right is the user's call);
* images per class and the imbalance ratio (largest class / smallest);
* unreadable files (worded as the source words them), folders that cannot be read and symbolic
  links that the listing does not follow (a loop, a broken link, a linked folder inside a class);
* tiny images (shorter side below ``min_side``) and extreme aspect ratios (longer side over
  shorter side above ``max_aspect``).

Findings are not errors: the check reports, the user decides. What the splits do with them:
:meth:`TaskData.load <headstart.data.task.TaskData.load>` runs the check on folder and CSV sources
and hands the groups to :func:`~headstart.data.splits.make_splits`, which keeps each group of
copies in one split (built-in sets are split as before). ``headstart demo --data``, ``run`` and
``compare`` on folder and CSV sources write the result (:class:`~headstart.data.findings.DataCheck`)
as ``data-check.json`` in their output folder and print its summary line; the HTML report shows it
with thumbnails.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from headstart.data.dataset import FileStore, ImageSet
from headstart.data.duplicates import copy_groups, exact_pairs, near_pairs
from headstart.data.findings import DataCheck, DataCheckSpec
from headstart.data.fingerprints import fingerprint_files
from headstart.data.images import IMAGE_SUFFIXES
from headstart.data.sources import FILE_KINDS, MAX_LISTED, SourceSpec, list_files
from headstart.errors import HeadstartError
from headstart.validation import validate

PAIRS_PER_IMAGE = 4
"""Near pairs held per image before they are folded into one edge per image (the same groups and
largest distances, :func:`headstart.data.duplicates.compact_pairs`): the check's memory stays in
proportion to the folder when copies come in large families. 50,000 crops of 20 photographs hold
1.4 million near pairs: the check's peak memory grew by 4.1 KB per file from 10,000 to 50,000 files
(605 → 763 MiB) with every pair kept, by 1.7 KB folded (606 → 673 MiB)."""
CACHE_NAME = ".headstart-fingerprints.npz"
"""The fingerprint cache in a folder source's root (``.<csv stem>.headstart-fingerprints.npz``
beside a CSV file): :mod:`headstart.data.fingerprints`."""


# -------------------------------------------------------------------------------- checking


def check_files(
    paths: list[Path],
    labels: np.ndarray,
    class_names: list[str],
    *,
    name: str,
    source: dict[str, Any] | None = None,
    options: DataCheckSpec | dict | None = None,
    cache_file: Path | None = None,
    not_followed: list[tuple[str, str]] | None = None,
    progress: bool | None = None,
) -> DataCheck:
    """Check the image files ``paths`` labelled ``labels`` (-1: unlabelled); module docstring."""
    spec = validate(DataCheckSpec, options or {}, "data check")
    prints = fingerprint_files(paths, cache_file=cache_file if spec.cache else None, progress=progress)
    usable = prints.readable
    first, second = exact_pairs(prints.digests, usable)
    distances = np.zeros(first.size, dtype=np.int64)
    if spec.near_distance is not None:
        near_first, near_second, near = near_pairs(
            prints.hashes,
            prints.thumbs,
            usable,
            max_distance=spec.near_distance,
            min_correlation=spec.near_correlation,
            limit=PAIRS_PER_IMAGE * len(paths),
        )
        first, second = np.concatenate([first, near_first]), np.concatenate([second, near_second])
        distances = np.concatenate([distances, near])
    groups = copy_groups(len(paths), first, second)
    farthest = np.zeros(len(paths), dtype=np.int64)
    np.maximum.at(farthest, groups[first], distances)
    copies = []
    order = np.argsort(groups, kind="stable")  # each group's images together, in position order
    bounds = np.flatnonzero(np.r_[True, groups[order][1:] != groups[order][:-1], True])
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if end - start < 2:
            continue
        members = order[start:end]
        distinct = len({prints.digests[i].tobytes() for i in members.tolist()})
        copies.append(
            {
                "members": members.tolist(),
                "kind": "exact" if distinct == 1 else "near",
                "exact_copies": members.size - distinct,
                "distance": int(farthest[groups[members[0]]]),
            }
        )
    unreadable = [(str(path), error) for path, error in zip(prints.paths, prints.errors, strict=True) if error]
    return DataCheck(
        name=name,
        source=source or {},
        options=spec,
        paths=list(prints.paths),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=list(class_names),
        groups=groups,
        copies=copies,
        widths=prints.widths,
        heights=prints.heights,
        colours=prints.colours,
        unreadable=unreadable,
        not_followed=list(not_followed or []),
        decoded=prints.decoded,
        seconds=prints.seconds,
    )


def unread_folders(folder: Path, *, top_level_links: bool = False) -> list[tuple[str, str]]:
    """What the listing of ``folder`` leaves out without a word: sub-folders that cannot be read,
    symbolic links it does not follow (linked folders below the class folders, loops, broken
    links). Hidden names are skipped, as the listing skips them. ``top_level_links``: links in
    ``folder`` itself are followed (class folders), so only broken ones and loops count there."""
    found: list[tuple[str, str]] = []

    def refused(error: OSError) -> None:
        where = error.filename or folder
        found.append((str(where), f"cannot be read ({error.strerror or error}); its images are not listed"))

    for current, folders, files in os.walk(folder, onerror=refused):
        here = Path(current)
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in [*folders, *files]:
            if name.startswith("."):
                continue
            path = here / name
            if not path.is_symlink():
                continue
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError) as error:  # 3.11 raises RuntimeError on a loop, later ones OSError
                loop = isinstance(error, RuntimeError) or getattr(error, "errno", None) == errno.ELOOP
                found.append((str(path), "symbolic link loop, not followed" if loop else "broken symbolic link"))
                continue
            if not target.is_dir():
                continue
            above = here.resolve() == target or target in here.resolve().parents
            followed = top_level_links and here == folder  # a class folder: the listing follows it
            if above and followed:
                found.append((str(path), "class folder linked to a folder above it: its images are listed again"))
            elif above:
                found.append((str(path), "symbolic link to a folder above it (a loop), not followed"))
            elif not followed:
                found.append((str(path), "symbolic link to a folder, not followed (its images are not listed)"))
        if here == folder:  # followed links to folders: class folders; their own walk is theirs
            folders[:] = [name for name in folders if not (here / name).is_symlink()]
    return found


def cache_file_for(source: SourceSpec) -> Path | None:
    """Where the fingerprints of ``source``'s files are kept (:data:`CACHE_NAME`)."""
    if source.kind == "folder" and source.path:
        return Path(source.path) / CACHE_NAME
    if source.kind == "csv" and source.path:
        table = Path(source.path)
        return table.parent / f".{table.stem}{CACHE_NAME}"
    return None


def _folder_problems(source: SourceSpec) -> list[tuple[str, str]]:
    problems = []
    if source.kind == "folder" and source.path and Path(source.path).is_dir():
        problems += unread_folders(Path(source.path), top_level_links=True)
    if source.unlabelled and Path(source.unlabelled).is_dir():
        problems += unread_folders(Path(source.unlabelled))
    return problems


def _described(source: SourceSpec) -> dict[str, Any]:
    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).absolute())

    return {"kind": source.kind, "path": absolute(source.path), "unlabelled": absolute(source.unlabelled)}


def source_for(
    path: str | os.PathLike,
    unlabelled: str | os.PathLike | None = None,
    *,
    path_column: str = "path",
    label_column: str | None = "label",
) -> SourceSpec:
    """The source ``headstart check-data PATH`` checks: a folder of class folders, or a CSV file
    (read with ``path_column`` and ``label_column``)."""
    path = Path(path)
    if path.is_dir():
        kind = "folder"
    elif path.is_file() and path.suffix.lower() == ".csv":
        kind = "csv"
    elif path.is_file():
        raise HeadstartError(
            f"{path}: expected a folder with one sub-folder per class or a .csv file listing images, "
            f"not a {path.suffix or 'suffix-less'} file"
            + (" (one image is not a dataset)" if path.suffix.lower() in IMAGE_SUFFIXES else "")
        )
    else:
        raise HeadstartError(f"{path}: no such folder or file (expected a folder of class folders or a CSV file)")
    fields: dict[str, Any] = {"kind": kind, "path": str(path), "image_size": 1}
    if unlabelled is not None:
        fields["unlabelled"] = str(unlabelled)
    if kind == "csv":
        fields.update(path_column=path_column, label_column=label_column)
    return validate(SourceSpec, fields, "source")


def check_source(
    source: SourceSpec | dict, options: DataCheckSpec | dict | None = None, *, progress: bool | None = None
) -> DataCheck:
    """List a folder or CSV source's files as :func:`~headstart.data.sources.load_source` does and check
    them (module docstring). Raises HeadstartError only when the source itself cannot be listed."""
    spec = validate(SourceSpec, source, "source")
    if spec.kind not in FILE_KINDS:
        raise HeadstartError(f"kind {spec.kind!r}: the data check reads folder and csv sources")
    listing = list_files(spec)
    return check_files(
        listing.paths,
        listing.labels,
        listing.class_names,
        name=listing.name,
        source=_described(spec),
        options=options,
        cache_file=cache_file_for(spec),
        not_followed=_folder_problems(spec),
        progress=progress,
    )


def _unread(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The folders among ``problems`` that could not be read (links not followed are not refused)."""
    return [(path, reason) for path, reason in problems if reason.startswith("cannot be read")]


def _refuse_unreadable(name: str, rows: list[tuple[str, str]]) -> None:
    """The error of ``on_corrupt="fail"`` listing unreadable folders and files; nothing when none."""
    if rows:
        lines = [f"{path}: {reason}" for path, reason in rows]
        raise HeadstartError(
            f"{name}: {len(lines)} unreadable folder(s) or image file(s) "
            f"(on_corrupt='fail'; set on_corrupt='skip' to leave them out):\n  "
            + "\n  ".join(lines[:MAX_LISTED])
            + (f"\n  ... and {len(lines) - MAX_LISTED} more" if len(lines) > MAX_LISTED else "")
        )


def check_loaded(
    images: ImageSet,
    source: SourceSpec,
    options: DataCheckSpec | dict | None = None,
    *,
    progress: bool | None = None,
) -> tuple[ImageSet, DataCheck]:
    """The check of a folder or CSV source just loaded (``images``, as :func:`load_source` returned it),
    for :meth:`TaskData.load <headstart.data.task.TaskData.load>`, with the source's ``on_corrupt``
    policy applied to what only the check saw: a sub-folder that cannot be read, or a file whose
    header read but whose pixels do not (``verify="header"``), fails with ``"fail"``; with ``"skip"``
    such a file is left out and counted in ``ImageSet.skipped``. Returns the images to split
    (positions unchanged) and the check, whose ``groups`` follow the store's positions."""
    store = images.store
    if not isinstance(store, FileStore):
        raise HeadstartError(f"{images.name}: the data check reads file sources (folder, csv)")
    problems = _folder_problems(source)
    check = check_files(
        list(store.paths),
        images.labels,
        images.class_names,
        name=images.name,
        source=_described(source),
        options=options,
        cache_file=cache_file_for(source),
        not_followed=problems,
        progress=progress,
    )
    undecodable = list(check.unreadable)  # the source kept them: their headers read (verify="header")
    keep = check.readable
    check.unreadable = list(images.skipped) + undecodable
    if source.on_corrupt == "fail":
        _refuse_unreadable(images.name, _unread(problems) + undecodable)
    if undecodable:
        images = ImageSet(
            store,
            images.labels[keep],
            images.class_names,
            images.name,
            positions=images.positions[keep],
            skipped=list(images.skipped) + undecodable,
        )
    return images, check


def check_before_training(
    source: SourceSpec | dict,
    splits: Iterable[tuple[Any, int | None]] = ((None, None),),
    *,
    options: DataCheckSpec | dict | None = None,
    progress: bool | None = None,
) -> DataCheck | None:
    """What ``headstart run``, ``compare`` and ``demo --data`` do before writing anything: check a
    folder or CSV source (None for the other kinds) and split it as each ``(splits, run_seed)`` will
    be split (:meth:`DataCheck.try_splits`), so that copies which leave a class too few groups, a
    class made only of another's copies, or (``on_corrupt: fail``) an unreadable file or folder fail
    now with one error rather than in the first run."""
    spec = validate(SourceSpec, source, "source")
    if spec.kind not in FILE_KINDS:
        return None
    checked = check_source(spec, options, progress=progress)
    if spec.on_corrupt == "fail":  # what loading the source would refuse, refused before anything is written
        _refuse_unreadable(checked.name, _unread(checked.not_followed) + checked.unreadable)
    tried = set()
    for split_spec, run_seed in splits:
        key = repr(split_spec.model_dump(mode="json") if isinstance(split_spec, BaseModel) else split_spec)
        if key not in tried:  # the seed changes which images carry labels, never how many
            tried.add(key)
            checked.try_splits(split_spec, run_seed)
    return checked


__all__ = [
    "cache_file_for",
    "check_files",
    "check_before_training",
    "check_loaded",
    "check_source",
    "source_for",
    "unread_folders",
]
