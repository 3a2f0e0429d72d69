"""Checks a dataset before any training, so that a problem costs seconds rather than a run.

:func:`check_dataset` collects every problem first and then raises one HeadstartError listing
them all, so a user fixes a dataset in one pass instead of one error per attempt.

Problems (raise)
    duplicate class names; classes with no training images; classes present in validation or
    test but absent from train, or class-name lists that differ between splits; labels beyond
    ``class_names``; unlabelled images in train, validation or test; no labelled training images;
    images smaller than the network's minimum; different channel counts between splits; an
    image shared by test and any other split, or by validation and train; unreadable files not
    yet decoded (sources loaded with ``verify="header"``).
Warnings (returned)
    files skipped at load (``on_corrupt="skip"``); classes without validation or test images;
    splits of different image sizes; class names equal apart from case or surrounding spaces; a
    dataset with no class names at all (usable only by self-supervised stages).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from headstart.data.dataset import FileStore, ImageSet
from headstart.data.splits import Splits
from headstart.errors import HeadstartError

SPLIT_NAMES = ("train", "unlabelled", "val", "test")
EVALUATED = ("val", "test")
MAX_LISTED = 5
"""How many examples (files, labels) one problem line names before giving a count."""


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def _class_problems(splits: Splits, problems: list[str], warnings: list[str]) -> None:
    train_names = splits.train.class_names
    seen_lists: list[list[str]] = []
    for split_name in SPLIT_NAMES:
        names = getattr(splits, split_name).class_names
        if names in seen_lists:
            continue
        seen_lists.append(names)
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            problems.append(f"{split_name}: duplicate class names {duplicates}; each class needs a distinct name")
        folded = Counter(name.strip().casefold() for name in names)
        near = sorted({name for name in names if folded[name.strip().casefold()] > 1} - set(duplicates))
        if near:
            warnings.append(f"{split_name}: class names {near} differ only in case or spaces")
    if not train_names:
        warnings.append("the dataset has no class names: only self-supervised stages can use it")
        return
    for split_name in EVALUATED:
        names = getattr(splits, split_name).class_names
        if names != train_names and len(getattr(splits, split_name)):
            if sorted(names) == sorted(train_names):
                problems.append(
                    f"{split_name}: class names {names} are train's {train_names} in another order; "
                    f"a label would mean different classes"
                )
            else:
                problems.append(f"{split_name}: class names {names} differ from train's {train_names}")

    train_counts = splits.train.class_counts()
    totals = Counter(train_counts)
    for split_name in ("unlabelled", *EVALUATED):
        data = getattr(splits, split_name)
        if data.store is splits.train.store and data.class_names == train_names:
            totals.update(data.class_counts())
    for name in dict.fromkeys(train_names):
        if train_counts.get(name, 0) == 0:
            detail = "no images at all (an empty class)" if totals.get(name, 0) == 0 else "no training images"
            problems.append(f"class {name!r} has {detail}; add images or remove the class")

    for split_name in EVALUATED:
        data = getattr(splits, split_name)
        counts = data.class_counts()
        absent = [f"{name!r} ({count})" for name, count in counts.items() if count and train_counts.get(name, 0) == 0]
        if absent:
            problems.append(
                f"{split_name}: classes {_examples(absent)} have {split_name} images but no training images "
                f"(class mismatch)"
            )
        if len(data):
            missing = [name for name, count in train_counts.items() if count and counts.get(name, 0) == 0]
            if missing:
                warnings.append(
                    f"{split_name}: classes {_examples([repr(m) for m in missing])} have no {split_name} images"
                )


def _label_problems(splits: Splits, problems: list[str]) -> None:
    for split_name in SPLIT_NAMES:
        data: ImageSet = getattr(splits, split_name)
        known = len(data.class_names)
        beyond = np.flatnonzero(data.labels >= known)
        if beyond.size:
            values = sorted(set(data.labels[beyond].tolist()))
            problems.append(
                f"{split_name}: {beyond.size} image(s) have unknown labels {values[:MAX_LISTED]} "
                f"(only {known} class names, so labels run 0..{known - 1}); first: {data.describe(int(beyond[0]))}"
            )
        if split_name != "unlabelled":
            hidden = np.flatnonzero(data.labels == -1)
            if hidden.size:
                problems.append(
                    f"{split_name}: {hidden.size} image(s) are unlabelled (-1), first: "
                    f"{data.describe(int(hidden[0]))}; {split_name} images need labels"
                )
    if splits.train.class_names and not (splits.train.labels >= 0).any():
        problems.append("train: holds no labelled images")


def _shape_problems(
    splits: Splits, min_image_size: int | None, model_name: str | None, problems: list[str], warnings: list[str]
) -> None:
    filled = [(name, getattr(splits, name)) for name in SPLIT_NAMES if len(getattr(splits, name))]
    channels = {name: data.channels for name, data in filled}
    if len(set(channels.values())) > 1:
        problems.append(f"splits have different channel counts {channels}; give every source the same channels")
    sizes = {name: data.image_size() for name, data in filled}
    if len(set(sizes.values())) > 1:
        listed = {name: f"{h}×{w}" for name, (h, w) in sizes.items()}
        warnings.append(f"splits have different image sizes {listed}")
    if min_image_size is None:
        return
    network = model_name or "the network"
    reported = set()
    for name, (height, width) in sizes.items():
        if min(height, width) < min_image_size and (height, width) not in reported:
            reported.add((height, width))
            problems.append(
                f"{name}: image {height}×{width} is smaller than the {min_image_size}×{min_image_size} "
                f"minimum that {network} accepts; load the data with image_size={min_image_size} or larger"
            )


def _file_identity(path: Path) -> tuple[int, int] | str:
    """The file behind ``path`` (device and inode: the same file under two names, through a symbolic
    or hard link, is one), or its resolved path when it cannot be stat'ed. One ``stat`` per file
    (``Path.resolve`` walks every component: 2.6 s instead of 0.3 s at 50,000 files)."""
    try:
        status = os.stat(path)
    except OSError:
        return str(path.resolve())
    return (status.st_dev, status.st_ino)


def _keys(data: ImageSet) -> set:
    """Identities of a set's images: the files for files, (store, position) for arrays."""
    if isinstance(data.store, FileStore):
        return {_file_identity(data.store.paths[p]) for p in data.positions.tolist()}
    return {(id(data.store), p) for p in data.positions.tolist()}


def _overlap_problems(splits: Splits, problems: list[str]) -> None:
    keys = {name: _keys(getattr(splits, name)) for name in SPLIT_NAMES}
    pairs = [("test", "train"), ("test", "unlabelled"), ("test", "val"), ("val", "train")]
    for first, second in pairs:
        shared = keys[first] & keys[second]
        if shared:
            problems.append(
                f"{first} shares {len(shared)} image(s) with {second}; {first} images must stay unseen during training"
            )


def _file_problems(splits: Splits, verify_files: bool, problems: list[str], warnings: list[str]) -> None:
    skipped: dict[str, str] = {}
    for split_name in SPLIT_NAMES:
        skipped.update(dict(getattr(splits, split_name).skipped))
    if skipped:
        listed = [f"{path} ({reason})" for path, reason in skipped.items()]
        warnings.append(f"{len(skipped)} unreadable file(s) were skipped at load: {_examples(listed)}")
    if not verify_files:
        return
    for split_name in SPLIT_NAMES:
        data: ImageSet = getattr(splits, split_name)
        if not isinstance(data.store, FileStore) or data.store.verified:
            continue
        unreadable = []
        for position in data.positions.tolist():
            try:
                data.store.decode(position)
            except HeadstartError as exc:
                unreadable.append(str(exc))
        if unreadable:
            problems.append(
                f"{split_name}: {len(unreadable)} unreadable file(s): {_examples(unreadable)}; "
                f"load with verify='decode' and on_corrupt='skip' to leave them out"
            )


def check_dataset(
    splits: Splits,
    *,
    min_image_size: int | None = None,
    model_name: str | None = None,
    verify_files: bool = True,
) -> list[str]:
    """Check ``splits`` before training; return warnings, raise HeadstartError listing all problems.

    ``min_image_size``: the smallest side in pixels the network accepts (for example 16, or 32
    for networks that downsample five times); ``model_name`` names it in the message.
    ``verify_files``: decode every file not already decoded at load (sources loaded with
    ``verify="header"``), so corrupt files surface now rather than mid-training.
    """
    problems: list[str] = []
    warnings: list[str] = []
    _class_problems(splits, problems, warnings)
    _label_problems(splits, problems)
    _shape_problems(splits, min_image_size, model_name, problems, warnings)
    _overlap_problems(splits, problems)
    _file_problems(splits, verify_files, problems, warnings)
    if problems:
        raise HeadstartError(f"dataset check found {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return warnings
