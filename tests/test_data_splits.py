"""make_splits: seeded, stratified, exact label budgets, a test split no other split touches."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.data import load_digits, make_splits
from headstart.errors import HeadstartError
from helpers import per_class_arrays


def labelled(counts: dict[str, int], unlabelled: int = 0):
    """A tiny in-memory set with ``counts[name]`` 2×2 images per class and some unlabelled ones."""
    return per_class_arrays(counts, size=2, extra_labels=[-1] * unlabelled)


def per_class(data) -> list[int]:
    return list(data.class_counts().values())


def positions(data) -> set[int]:
    return set(data.positions.tolist())


def test_same_seed_same_splits_other_seed_other_splits():
    data = labelled({"a": 20, "b": 20, "c": 20})
    first = make_splits(data, seed=3)
    second = make_splits(data, seed=3)
    other = make_splits(data, seed=4)
    for split_name in ("train", "unlabelled", "val", "test"):
        assert getattr(first, split_name).positions.tolist() == getattr(second, split_name).positions.tolist()
    assert first.test.positions.tolist() != other.test.positions.tolist()


def test_stratified_counts_per_class():
    data = labelled({"small": 10, "large": 30})
    splits = make_splits(data, test_fraction=0.2, val_fraction=0.1)
    assert per_class(splits.test) == [2, 6]
    assert per_class(splits.val) == [1, 3]
    assert per_class(splits.train) == [7, 21]
    assert len(splits.unlabelled) == 0


def test_stratified_on_real_digits():
    data = load_digits()
    splits = make_splits(data, test_fraction=0.2, val_fraction=0.1, seed=0)
    totals = np.bincount(data.labels)
    expected_test = np.floor(totals * 0.2 + 0.5).astype(int)
    assert per_class(splits.test) == expected_test.tolist()
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797


def test_test_split_disjoint_from_every_other_split():
    data = labelled({"a": 25, "b": 15}, unlabelled=7)
    splits = make_splits(data, labels_per_class=4, seed=1)
    test = positions(splits.test)
    others = [positions(splits.train), positions(splits.unlabelled), positions(splits.val)]
    for other in others:
        assert not test & other
    assert not positions(splits.val) & positions(splits.train)
    assert not positions(splits.train) & positions(splits.unlabelled)
    assert test.union(*others) == set(range(len(data)))  # nothing lost


def test_labels_per_class_exact_and_rest_unlabelled():
    data = labelled({"a": 20, "b": 30}, unlabelled=5)
    splits = make_splits(data, labels_per_class=3, seed=0)
    assert per_class(splits.train) == [3, 3]
    # pools: a 20-4-2=14, b 30-6-3=21; 11 + 18 hidden, plus the 5 never labelled
    assert len(splits.unlabelled) == 11 + 18 + 5
    assert (splits.unlabelled.labels == -1).all()
    assert splits.unlabelled.class_names == ["a", "b"]


def test_labelled_fraction_per_class():
    data = labelled({"a": 20, "b": 40})
    splits = make_splits(data, labelled_fraction=0.5, test_fraction=0.25, val_fraction=0.0)
    # pools 15 and 30; half of each rounded half up
    assert per_class(splits.train) == [8, 15]
    assert len(splits.unlabelled) == 7 + 15
    assert len(splits.val) == 0


def test_labelled_subsets_grow_with_the_budget():
    """Same seed, larger budget: the smaller labelled set is contained in the larger one."""
    data = labelled({"a": 30, "b": 30})
    small = make_splits(data, labels_per_class=2, seed=5)
    large = make_splits(data, labels_per_class=6, seed=5)
    assert positions(small.train) <= positions(large.train)
    assert small.test.positions.tolist() == large.test.positions.tolist()


def test_too_few_images_names_the_class_and_counts():
    data = labelled({"common": 30, "rare": 2})
    with pytest.raises(HeadstartError) as caught:
        make_splits(data)
    message = str(caught.value)
    assert "class 'rare' has 2 image(s): 1 for test and 1 for validation leave 0 for training" in message
    assert "common" not in message


def test_labels_per_class_beyond_the_pool_names_the_class():
    data = labelled({"a": 30, "b": 10})
    with pytest.raises(HeadstartError, match="class 'b' has 10 image.*leave 7 for training, fewer than the 8 labelled"):
        make_splits(data, labels_per_class=8)


def test_given_test_and_val_sets_are_used_as_they_are():
    data = labelled({"a": 10, "b": 10})
    outside = labelled({"a": 3, "b": 3})
    splits = make_splits(data, test=outside, val=outside.subset([0, 5]))
    assert splits.test is outside
    assert len(splits.val) == 2 and len(splits.train) == 20


def test_empty_class_left_for_the_check():
    data = labelled({"a": 10, "nothing": 0, "b": 10})
    splits = make_splits(data)
    assert per_class(splits.train) == [7, 0, 7]


@pytest.mark.parametrize(
    ("arguments", "pattern"),
    [
        (dict(test_fraction=1.0), "test_fraction=1.0"),
        (dict(val_fraction=-0.1), "val_fraction=-0.1"),
        (dict(test_fraction=0.6, val_fraction=0.4), "leaves no training images"),
        (dict(labels_per_class=2, labelled_fraction=0.5), "not both"),
        (dict(labels_per_class=0), "labels_per_class=0"),
        (dict(labelled_fraction=0.0), "labelled_fraction=0.0"),
    ],
)
def test_bad_arguments_refused(arguments, pattern):
    with pytest.raises(HeadstartError, match=pattern):
        make_splits(labelled({"a": 10}), **arguments)


def test_summary_counts_per_split_and_class():
    data = labelled({"a": 10, "b": 20}, unlabelled=3)
    summary = make_splits(data, labels_per_class=2).summary()
    assert summary["train"] == {"images": 4, "per_class": {"a": 2, "b": 2}, "unlabelled": 0}
    assert summary["test"]["per_class"] == {"a": 2, "b": 4}
    assert summary["unlabelled"]["images"] == summary["unlabelled"]["unlabelled"] == 5 + 12 + 3
    assert summary["skipped_files"] == 0


def test_pool_is_every_training_image_without_labels():
    data = labelled({"a": 10, "b": 10})
    splits = make_splits(data, labels_per_class=2)
    pool = splits.pool()
    assert positions(pool) == positions(splits.train) | positions(splits.unlabelled)
    assert (pool.labels == -1).all()
    assert not positions(pool) & (positions(splits.test) | positions(splits.val))
