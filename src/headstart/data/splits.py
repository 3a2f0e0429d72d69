"""Train / unlabelled / validation / test splits: stratified, seeded, and with a held-out test set.

How :func:`make_splits` divides a dataset
-----------------------------------------
1. Images labelled -1 go straight to the unlabelled pool: they cannot be evaluated.
2. Each class's images are shuffled with ``numpy.random.default_rng(seed)`` (classes in label
   order, so the result depends only on the labels and the seed). The first
   ``round(test_fraction × n)`` go to test, the next ``round(val_fraction × n)`` to validation,
   at least one each when the fraction is above zero; the rest form the class's training pool.
   A given ``test`` or ``val`` set replaces the fraction.
3. ``labels_per_class=k`` keeps the first k of each class's training pool labelled;
   ``labelled_fraction=p`` keeps ``max(1, round(p × pool))``. The rest of the pool moves to
   ``unlabelled`` with labels hidden, for self-supervised stages.
4. Each split lists its images in dataset order.

Which images of the pool carry the labels (the *labelled draw*)
    ``draw_seed=None`` (``labelled_draw: fixed``): the first k of the pool in the order of step 2,
    one draw for every run whatever its seed. ``draw_seed=d`` (``labelled_draw: per_seed``, ``d``
    the run's seed): each class's pool is shuffled again with its own generator,
    ``numpy.random.default_rng(headstart.seeds.derive(d, "labelled", seed, label))``, and the
    first k (or ``max(1, round(p × pool))``) of that order are labelled. Test, validation and the
    pool itself are those of step 2 whatever ``d``, so runs of different seeds are scored on the
    same test images; only which pool images are labelled changes. At one ``d`` a larger budget
    keeps the images of a smaller one, as with a fixed draw.

Groups of copies (``groups``)
    ``groups`` gives each image a group id (equal ids: copies of one picture, found by the data
    check, :mod:`headstart.data.datacheck`); a whole group then lands in one split, so no copy of a
    test image is trained on. Step 2 shuffles and counts *groups* instead of images: each group is
    represented by its first image and belongs to that image's class; the first
    ``round(test_fraction × groups)`` of a class go to test with every copy, and so on. The label
    budget of step 3 still counts images: the class's own images of its training groups, in the
    order of the pool (a labelled copy and an unlabelled copy of one picture both stay on the
    training side). Copies carrying another class's label follow their group (into the training
    images with their own label when every image keeps its label, else into ``unlabelled``). A
    group holding an unlabelled image (label -1: it may be pretrained on) never goes to test or
    validation: its labelled images join their class's training pool. A class none of whose
    images leads a group (all are copies of another class's images) raises HeadstartError, as
    does a class with too few groups. With ``groups=None``, or no group of two images or more,
    the splits are exactly those of the steps above.

The test split never shares an image with any other split, so no pretraining stage sees it.
Classes with no images and labels beyond ``class_names`` (split like any class) are left for
:func:`~headstart.data.checks.check_dataset` to report; a class with some images but too few for
the request raises HeadstartError naming it and its counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from headstart.data.dataset import ImageSet
from headstart.errors import HeadstartError
from headstart.seeds import derive

LabelledDraw = Literal["fixed", "per_seed"]
DIGEST_CHARS = 16
"""Hex characters kept of a SHA-256 digest of image ids (:func:`ids_digest`)."""


@dataclass
class Splits:
    """The four datasets of one task; ``test`` is never seen by any pretraining stage."""

    train: ImageSet
    """Labelled training images."""
    unlabelled: ImageSet
    """The rest of the training pool with labels hidden (-1), for self-supervised stages."""
    val: ImageSet
    test: ImageSet
    seed: int = 0
    """The seed of the test/validation split and of the pool (``make_splits``' ``seed``)."""
    draw_seed: int | None = None
    """The seed of the labelled draw (``make_splits``' ``draw_seed``); ``None``: the fixed draw."""

    def draw_record(self) -> dict:
        """What ``run.json`` keeps of these splits (its ``splits`` field), so a reader can check that
        draws differ by seed and test images do not: the draw (``labelled_draw``, ``draw_seed``,
        ``split_seed``), the labelled images (``labelled_ids``: their positions in the source as loaded,
        :attr:`~headstart.data.dataset.ImageSet.positions`, sorted; ``labelled_digest``) and the count
        and digest of the validation and test images. Digests are :func:`ids_digest`."""
        labelled = sorted(int(position) for position in self.train.positions)
        return {
            "labelled_draw": "fixed" if self.draw_seed is None else "per_seed",
            "draw_seed": self.draw_seed,
            "split_seed": self.seed,
            "ids": "positions",
            "labelled": len(labelled),
            "labelled_ids": labelled,
            "labelled_digest": ids_digest(labelled),
            "val": len(self.val),
            "val_digest": ids_digest(self.val.positions),
            "test": len(self.test),
            "test_digest": ids_digest(self.test.positions),
        }

    def pool(self) -> ImageSet:
        """Every training image (train and unlabelled) with labels hidden: all a self-supervised
        stage may use without touching validation or test images."""
        if self.train.store is not self.unlabelled.store:
            raise HeadstartError("train and unlabelled come from different sources; they cannot be pooled")
        positions = np.sort(np.concatenate([self.train.positions, self.unlabelled.positions]))
        return ImageSet(
            self.train.store,
            np.full(positions.shape[0], -1, dtype=np.int64),
            self.train.class_names,
            f"{self.train.name} + {self.unlabelled.name}",
            positions=positions,
            skipped=self.train.skipped,
        )

    def summary(self) -> dict:
        """Image counts per split and per class, plus the number of files skipped at load.

        ``{"train": {"images": 80, "per_class": {"cat": 40, "dog": 40}, "unlabelled": 0}, ...,
        "skipped_files": 0}``; ``unlabelled`` counts images labelled -1 within each split.
        """
        out: dict = {}
        for split_name in ("train", "unlabelled", "val", "test"):
            data: ImageSet = getattr(self, split_name)
            out[split_name] = {
                "images": len(data),
                "per_class": data.class_counts(),
                "unlabelled": int((data.labels == -1).sum()),
            }
        out["skipped_files"] = len(
            {path for split_name in ("train", "val", "test") for path, _ in getattr(self, split_name).skipped}
        )
        return out


def ids_digest(ids) -> str:
    """The first :data:`DIGEST_CHARS` hex characters of the SHA-256 of image ids (sorted, written in
    decimal and joined by commas: ``"3,17,42"``); the same set of ids gives the same digest."""
    text = ",".join(str(int(value)) for value in sorted(int(value) for value in ids))
    return hashlib.sha256(text.encode()).hexdigest()[:DIGEST_CHARS]


def _count(fraction: float, total: int) -> int:
    """Images a fraction of ``total`` asks for: rounded half up, at least 1 when fraction > 0."""
    if fraction <= 0.0 or total == 0:
        return 0
    return max(1, int(np.floor(fraction * total + 0.5)))


def _check_fraction(name: str, value: float, *, held_out: bool) -> None:
    """Held-out fractions (test, val) lie in [0, 1); a labelled fraction lies in (0, 1]."""
    if held_out and not 0.0 <= value < 1.0:
        raise HeadstartError(f"{name}={value}; expected a fraction from 0 up to (not including) 1")
    if not held_out and not 0.0 < value <= 1.0:
        raise HeadstartError(f"{name}={value}; expected a fraction above 0 and at most 1")


def make_splits(
    data: ImageSet,
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    labels_per_class: int | None = None,
    labelled_fraction: float | None = None,
    test: ImageSet | None = None,
    val: ImageSet | None = None,
    draw_seed: int | None = None,
    groups: np.ndarray | None = None,
) -> Splits:
    """Divide ``data`` into train, unlabelled, val and test (method in the module docstring).

    ``draw_seed``: ``None`` labels the first images of each class's pool (the same for every run);
    an int draws them anew from the same pool (the module docstring's "labelled draw").
    ``groups``: one group id per image of ``data``; each group of copies lands in one split (the
    module docstring's "groups of copies"); ``None``: every image on its own.
    Deterministic: the same data, arguments and seeds give the same splits on every machine.
    """
    _check_fraction("test_fraction", test_fraction, held_out=True)
    _check_fraction("val_fraction", val_fraction, held_out=True)
    if test is not None:
        test_fraction = 0.0
    if val is not None:
        val_fraction = 0.0
    if test_fraction + val_fraction >= 1.0:
        raise HeadstartError(
            f"test_fraction={test_fraction} + val_fraction={val_fraction} leaves no training images; "
            f"expected a sum below 1"
        )
    if labels_per_class is not None and labelled_fraction is not None:
        raise HeadstartError("give labels_per_class or labelled_fraction, not both")
    if labels_per_class is not None and labels_per_class < 1:
        raise HeadstartError(f"labels_per_class={labels_per_class}; expected 1 or more")
    if labelled_fraction is not None:
        _check_fraction("labelled_fraction", labelled_fraction, held_out=False)

    rng = np.random.default_rng(seed)
    labels = data.labels
    parts: dict[str, list[np.ndarray]] = {
        "train": [],
        "unlabelled": [np.flatnonzero(labels == -1)],
        "val": [],
        "test": [],
    }
    shortages: list[str] = []
    grouped = _group_layout(groups, labels)
    if grouped is not None:  # whole groups of copies; without any, the loop below, as it always was
        fractions, budget = (test_fraction, val_fraction), (labels_per_class, labelled_fraction)
        _split_groups(data, grouped, parts, shortages, rng, fractions, budget, draw_seed, seed)
    ungrouped = np.unique(labels[labels >= 0]).tolist() if grouped is None else []
    for label in ungrouped:
        class_name = data.class_names[label] if label < len(data.class_names) else f"label {label}"
        members = np.flatnonzero(labels == label)
        members = rng.permutation(members)
        n_test = _count(test_fraction, members.size)
        n_val = _count(val_fraction, members.size)
        pool = members[n_test + n_val :]
        if draw_seed is not None:  # its own generator: the split's stream above is left as it was
            pool = np.random.default_rng(derive(draw_seed, "labelled", seed, label)).permutation(pool)
        if labels_per_class is not None:
            n_labelled = labels_per_class
        elif labelled_fraction is not None:
            n_labelled = _count(labelled_fraction, pool.size)
        else:
            n_labelled = pool.size
        if pool.size < max(1, n_labelled):
            wanted = f"{labels_per_class} labelled training image(s)" if labels_per_class else "1 training image"
            shortages.append(
                f"class {class_name!r} has {members.size} image(s): {n_test} for test and {n_val} for "
                f"validation leave {pool.size} for training, fewer than the {wanted} requested"
            )
            continue
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(pool[:n_labelled])
        parts["unlabelled"].append(pool[n_labelled:])
    if shortages:
        raise HeadstartError(f"{data.name}: too few images for the requested splits:\n  " + "\n  ".join(shortages))

    def chosen(split_name: str) -> np.ndarray:
        found = parts[split_name]
        return np.sort(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)

    train = data.subset(chosen("train"), name=f"{data.name}/train")
    unlabelled = data.subset(chosen("unlabelled"), name=f"{data.name}/unlabelled").without_labels()
    val_set = val if val is not None else data.subset(chosen("val"), name=f"{data.name}/val")
    test_set = test if test is not None else data.subset(chosen("test"), name=f"{data.name}/test")
    return Splits(train=train, unlabelled=unlabelled, val=val_set, test=test_set, seed=seed, draw_seed=draw_seed)


@dataclass
class _Groups:
    """Where each image's group of copies starts and who belongs to it (``make_splits``' ``groups``)."""

    leader: np.ndarray
    """Per image, the position of its group's first image."""
    order: np.ndarray
    """Positions sorted by leader (then position): a group's images are contiguous."""
    starts: np.ndarray
    """Per position p, where the images of the group that p leads begin in ``order`` (``ends`` too)."""
    ends: np.ndarray
    forced: np.ndarray
    """Per image, whether its group holds an unlabelled image (it stays on the training side)."""

    def members(self, leaders: np.ndarray) -> np.ndarray:
        """Every image of the groups ``leaders`` leads, group after group, each in position order."""
        if not leaders.size:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.order[self.starts[p] : self.ends[p]] for p in leaders.tolist()])


def _group_layout(groups: np.ndarray | None, labels: np.ndarray) -> _Groups | None:
    """The layout of ``groups``; ``None`` when there is none or every group holds one image."""
    if groups is None:
        return None
    groups = np.asarray(groups).reshape(-1)
    if groups.shape[0] != labels.shape[0]:
        raise HeadstartError(f"groups has {groups.shape[0]} ids for {labels.shape[0]} images; expected one per image")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if first.size == groups.size:
        return None
    leader = first[inverse].astype(np.int64)
    order = np.lexsort((np.arange(leader.size), leader))
    starts = np.zeros(leader.size, dtype=np.int64)
    ends = np.zeros(leader.size, dtype=np.int64)
    sorted_leaders = leader[order]
    heads = np.flatnonzero(np.r_[True, sorted_leaders[1:] != sorted_leaders[:-1]])
    starts[sorted_leaders[heads]] = heads
    ends[sorted_leaders[heads]] = np.r_[heads[1:], leader.size]
    forced = np.isin(leader, leader[labels == -1])
    return _Groups(leader, order, starts, ends, forced)


def _split_groups(
    data: ImageSet,
    grouped: _Groups,
    parts: dict[str, list[np.ndarray]],
    shortages: list[str],
    rng: np.random.Generator,
    fractions: tuple[float, float],
    budget: tuple[int | None, float | None],
    draw_seed: int | None,
    seed: int,
) -> None:
    """Steps 2 and 3 of ``make_splits`` with whole groups of copies (the module docstring):
    ``fractions`` = (test, val), ``budget`` = (labels_per_class, labelled_fraction)."""
    (test_fraction, val_fraction), (labels_per_class, labelled_fraction) = fractions, budget
    labels = data.labels
    positions = np.arange(labels.size)
    hides_labels = labels_per_class is not None or labelled_fraction is not None
    for label in np.unique(labels[labels >= 0]).tolist():
        class_name = data.class_names[label] if label < len(data.class_names) else f"label {label}"
        mine = labels == label
        leaders = np.flatnonzero(mine & (grouped.leader == positions) & ~grouped.forced)
        members = rng.permutation(leaders)
        n_test = _count(test_fraction, members.size)
        n_val = _count(val_fraction, members.size)
        pool = np.concatenate([grouped.members(members[n_test + n_val :]), np.flatnonzero(mine & grouped.forced)])
        if draw_seed is not None:  # its own generator: the split's stream above is left as it was
            pool = np.random.default_rng(derive(draw_seed, "labelled", seed, label)).permutation(pool)
        own, others = pool[labels[pool] == label], pool[labels[pool] != label]
        if labels_per_class is not None:
            n_labelled = labels_per_class
        elif labelled_fraction is not None:
            n_labelled = _count(labelled_fraction, own.size)
        else:
            n_labelled = own.size
        if not members.size and not own.size:
            shortages.append(
                f"class {class_name!r} has {int(mine.sum())} image(s), every one a copy of an image of another "
                "class (the same picture under two labels; `headstart check-data` lists them): fix the labels "
                "or remove the copies"
            )
            continue
        if own.size < max(1, n_labelled):
            wanted = f"{labels_per_class} labelled training image(s)" if labels_per_class else "1 training image"
            shortages.append(
                f"class {class_name!r} has {int(mine.sum())} image(s) in {members.size} group(s) of copies: "
                f"{n_test} group(s) for test and {n_val} for validation leave {own.size} image(s) for training, "
                f"fewer than the {wanted} requested (copies stay in one split: `headstart check-data` lists them)"
            )
            continue
        parts["test"].append(grouped.members(members[:n_test]))
        parts["val"].append(grouped.members(members[n_test : n_test + n_val]))
        parts["train"].append(own[:n_labelled])
        parts["unlabelled"].append(own[n_labelled:])
        parts["unlabelled" if hides_labels else "train"].append(others)


class SplitSpec(BaseModel):
    """How the task data is divided (a run file's ``data.splits``). The test split is never seen by any
    pretraining stage."""

    model_config = ConfigDict(extra="forbid")

    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    labels_per_class: int | None = Field(None, gt=0, description="keep this many labelled images per class")
    labelled_fraction: float | None = Field(None, gt=0, le=1, description="keep this fraction labelled")
    seed: int = 0
    labelled_draw: LabelledDraw = Field(
        "fixed",
        description="which training-pool images carry the labels: fixed = one draw for every run whatever "
        "its seed (right when the folder already has its labels); per_seed = each run's seed draws its own "
        "labelled images from the same training pool (a general claim at a few labels per class); test, "
        "validation and the pool are the same either way",
    )

    def draw_seed(self, run_seed: int | None) -> int | None:
        """The ``draw_seed`` of :func:`make_splits` for a run of seed ``run_seed``: ``None`` for the fixed
        draw, the run's seed for ``per_seed`` (which needs one)."""
        if self.labelled_draw == "fixed":
            return None
        if run_seed is None:
            raise HeadstartError(
                "splits.labelled_draw is per_seed: each run's seed draws its labelled images, but no run seed "
                "was given; pass the run's seed (TaskData.load(..., run_seed=SEED)) or use labelled_draw: fixed"
            )
        return int(run_seed)
