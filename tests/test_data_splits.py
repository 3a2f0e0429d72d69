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


# ------------------------------------------------------------------------ the labelled draw


def todays_positions(data, *, seed: int, labels_per_class: int, test_fraction=0.2, val_fraction=0.1):
    """The fixed draw as the module docstring writes it: per class (in label order) one permutation of
    ``default_rng(seed)``; test first, validation next, the first k of the rest labelled."""
    rng = np.random.default_rng(seed)
    found: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for label in np.unique(data.labels[data.labels >= 0]):
        members = rng.permutation(np.flatnonzero(data.labels == label))
        n_test = max(1, int(np.floor(test_fraction * members.size + 0.5)))
        n_val = max(1, int(np.floor(val_fraction * members.size + 0.5)))
        found["test"] += members[:n_test].tolist()
        found["val"] += members[n_test : n_test + n_val].tolist()
        found["train"] += members[n_test + n_val :][:labels_per_class].tolist()
    return {name: sorted(values) for name, values in found.items()}


def test_the_fixed_draw_is_the_documented_split():
    data = labelled({"a": 23, "b": 17, "c": 30}, unlabelled=4)
    splits = make_splits(data, labels_per_class=3, seed=7)
    expected = todays_positions(data, seed=7, labels_per_class=3)
    for name in ("train", "val", "test"):
        assert getattr(splits, name).positions.tolist() == expected[name]
    assert splits.draw_seed is None and splits.draw_record()["labelled_draw"] == "fixed"


def test_a_draw_per_seed_changes_the_labelled_images_and_nothing_else():
    data = labelled({"a": 40, "b": 40, "c": 40}, unlabelled=5)
    fixed = make_splits(data, labels_per_class=2, seed=3)
    draws = [make_splits(data, labels_per_class=2, seed=3, draw_seed=seed) for seed in (0, 1, 2)]
    labelled_sets = [positions(draw.train) for draw in draws]
    assert len({frozenset(found) for found in labelled_sets}) == 3  # each seed labels its own images
    for draw in draws:
        for name in ("val", "test"):
            assert getattr(draw, name).positions.tolist() == getattr(fixed, name).positions.tolist()
        assert positions(draw.pool()) == positions(fixed.pool())  # the pool whatever the draw
        assert per_class(draw.train) == [2, 2, 2]
        assert positions(draw.train) <= positions(fixed.pool())
    # the same draw seed draws the same images; a larger budget keeps the smaller one's
    again = make_splits(data, labels_per_class=2, seed=3, draw_seed=1)
    larger = make_splits(data, labels_per_class=6, seed=3, draw_seed=1)
    assert again.train.positions.tolist() == draws[1].train.positions.tolist()
    assert positions(draws[1].train) <= positions(larger.train)
    # a labelled fraction draws from the same pools
    half = [make_splits(data, labelled_fraction=0.3, seed=3, draw_seed=seed) for seed in (0, 1)]
    assert len(half[0].train) == len(half[1].train) and positions(half[0].train) != positions(half[1].train)
    assert half[0].test.positions.tolist() == fixed.test.positions.tolist()


def test_the_draw_record_names_the_labelled_images_and_digests_the_held_out_ones():
    from headstart.data.splits import ids_digest

    data = labelled({"a": 20, "b": 20})
    first, second = (make_splits(data, labels_per_class=3, seed=0, draw_seed=seed) for seed in (4, 5))
    record = first.draw_record()
    assert record["labelled_draw"] == "per_seed" and record["draw_seed"] == 4 and record["split_seed"] == 0
    assert record["labelled_ids"] == sorted(first.train.positions.tolist()) and record["labelled"] == 6
    assert record["labelled_digest"] == ids_digest(record["labelled_ids"]) and len(record["labelled_digest"]) == 16
    assert record["test"] == len(first.test) and record["test_digest"] == ids_digest(first.test.positions)
    other = second.draw_record()
    assert other["labelled_digest"] != record["labelled_digest"]
    assert (other["test_digest"], other["val_digest"]) == (record["test_digest"], record["val_digest"])
    assert ids_digest([3, 1, 2]) == ids_digest([1, 2, 3])


def test_task_data_draws_with_the_run_seed_and_refuses_a_per_seed_split_without_one():
    from headstart.data import TaskData

    spec = {"labels_per_class": 2, "labelled_draw": "per_seed"}
    with pytest.raises(HeadstartError, match="labelled_draw is per_seed.*run_seed"):
        TaskData.load({"kind": "digits"}, spec)
    first, second = (TaskData.load({"kind": "digits"}, spec, run_seed=seed) for seed in (0, 1))
    assert positions(first.split("train")) != positions(second.split("train"))
    assert first.split("test").positions.tolist() == second.split("test").positions.tolist()
    assert positions(first.split("all")) == positions(second.split("all"))
    # the fixed draw ignores the run's seed
    fixed = TaskData.load({"kind": "digits"}, {"labels_per_class": 2}, run_seed=1)
    today = make_splits(load_digits(), labels_per_class=2)
    assert fixed.split("train").positions.tolist() == today.train.positions.tolist()
