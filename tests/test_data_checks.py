"""check_dataset: every problem is listed in one error; softer findings come back as warnings."""

from __future__ import annotations

import numpy as np
import pytest

from headstart.data import SourceSpec, Splits, check_dataset, from_arrays, load_source, make_splits
from headstart.errors import HeadstartError
from helpers import per_class_arrays as toy
from helpers import truncated_jpeg, write_image_folder


def problems_of(splits, **options) -> str:
    with pytest.raises(HeadstartError) as caught:
        check_dataset(splits, **options)
    return str(caught.value)


def by_class(data, *names):
    wanted = [data.class_names.index(n) for n in names]
    return data.subset(np.flatnonzero(np.isin(data.labels, wanted)))


def test_clean_dataset_passes_without_warnings():
    splits = make_splits(toy({"a": 10, "b": 10}))
    assert check_dataset(splits, min_image_size=4) == []


def test_duplicate_class_names():
    splits = make_splits(toy({"a": 10, "b": 10}, class_names=["same", "same"]))
    assert "train: duplicate class names ['same']" in problems_of(splits)


def test_empty_class():
    splits = make_splits(toy({"a": 10, "nothing": 0, "b": 10}))
    assert "class 'nothing' has no images at all (an empty class)" in problems_of(splits)


def test_empty_class_folder(tmp_path):
    root = write_image_folder(
        tmp_path / "shapes",
        {"circle": 5, "square": 0, "triangle": 5},
        colour=lambda name, k: (k, 0, 0) if name == "circle" else (0, k, 0),
    )
    splits = make_splits(load_source(SourceSpec(kind="folder", path=str(root), image_size=4)))
    message = problems_of(splits)
    assert "class 'square' has no images at all" in message
    assert "circle" not in message and "triangle" not in message


def test_classes_in_test_absent_from_train():
    data = toy({"a": 10, "b": 10})
    splits = Splits(
        train=by_class(data, "a"), unlabelled=data.subset([]), val=by_class(data, "a"), test=by_class(data, "b")
    )
    message = problems_of(splits)
    assert "class 'b' has no training images" in message
    assert "test: classes 'b' (10) have test images but no training images (class mismatch)" in message


def test_class_names_in_another_order():
    data = toy({"a": 10, "b": 10})
    reordered = toy({"b": 3, "a": 3}, name="outside")
    splits = make_splits(data, test=reordered)
    assert "in another order; a label would mean different classes" in problems_of(splits)


def test_class_names_differ():
    splits = make_splits(toy({"a": 10, "b": 10}), val=toy({"a": 2, "c": 2}))
    assert "val: class names ['a', 'c'] differ from train's ['a', 'b']" in problems_of(splits)


def test_unknown_labels():
    splits = make_splits(toy({"a": 10, "b": 10}, extra_labels=[7] * 10))
    message = problems_of(splits)
    assert "train: 7 image(s) have unknown labels [7] (only 2 class names, so labels run 0..1)" in message
    assert "test: 2 image(s) have unknown labels [7]" in message


def test_unlabelled_images_in_test():
    data = toy({"a": 10, "b": 10}, extra_labels=[-1, -1])
    splits = make_splits(data, test=data.subset([0, 10, 20, 21]))
    assert "test: 2 image(s) are unlabelled (-1), first: image 20; test images need labels" in problems_of(splits)


def test_image_smaller_than_the_network_minimum():
    splits = make_splits(toy({"a": 10, "b": 10}, size=8))
    message = problems_of(splits, min_image_size=16, model_name="resnet18")
    assert "image 8×8 is smaller than the 16×16 minimum that resnet18 accepts" in message
    assert "image_size=16" in message
    assert check_dataset(splits, min_image_size=8) == []


def test_different_channel_counts():
    splits = make_splits(toy({"a": 10, "b": 10}), test=toy({"a": 2, "b": 2}, channels=3))
    assert "different channel counts" in problems_of(splits)


def test_test_images_shared_with_train():
    data = toy({"a": 10, "b": 10})
    splits = make_splits(data, test=data.subset([0, 1, 2]))
    assert "test shares 3 image(s) with train" in problems_of(splits)


def test_test_files_shared_through_another_source(tmp_path):
    """The same files loaded twice are still the same images."""
    root = write_image_folder(tmp_path / "photos", {"a": 6, "b": 6}, colour=lambda name, k: (k * 9, 0, 0))
    spec = SourceSpec(kind="folder", path=str(root), image_size=4)
    splits = make_splits(load_source(spec), test=load_source(spec))
    message = problems_of(splits)
    # val_fraction 0.1 of 6 per class: 1 validation and 5 training images per class
    assert "test shares 10 image(s) with train" in message
    assert "test shares 2 image(s) with val" in message


def test_unreadable_file_found_by_the_check(tmp_path):
    root = write_image_folder(tmp_path / "photos", {"a": 5, "b": 5})
    truncated_jpeg(root / "b" / "cut.jpg", seed=0)
    data = load_source(SourceSpec(kind="folder", path=str(root), image_size=4, verify="header"))
    splits = make_splits(data, test_fraction=0.0, val_fraction=0.0)
    assert "cut.jpg: corrupt or truncated image" in problems_of(splits)
    assert check_dataset(splits, verify_files=False) == []


def test_every_problem_listed_at_once():
    data = toy({"a": 10, "nothing": 0, "b": 10}, size=8, class_names=["a", "a", "b"])
    message = problems_of(make_splits(data), min_image_size=16)
    assert message.startswith("dataset check found 3 problem(s):")
    assert "duplicate class names" in message and "has no images at all" in message
    assert "smaller than the 16×16 minimum that the network accepts" in message


def test_warnings_returned():
    data = toy({"a": 10, "A ": 10, "b": 10})
    splits = make_splits(data, val=toy({"a": 3, "A ": 3, "b": 0}, name="val"))
    warnings = check_dataset(splits)
    assert any("differ only in case or spaces" in w for w in warnings)
    assert any("val: classes 'b' have no val images" in w for w in warnings)


def test_skipped_files_warned(tmp_path):
    root = write_image_folder(tmp_path / "photos", {"a": 5})
    (root / "a" / "empty.png").write_bytes(b"")
    data = load_source(SourceSpec(kind="folder", path=str(root), image_size=4, on_corrupt="skip"))
    warnings = check_dataset(make_splits(data, test_fraction=0.2, val_fraction=0.0))
    assert any("1 unreadable file(s) were skipped at load" in w and "empty.png" in w for w in warnings)


def test_unlabelled_dataset_is_a_warning():
    data = from_arrays(np.zeros((6, 4, 4), dtype=np.uint8), None)
    splits = make_splits(data)
    assert check_dataset(splits) == ["the dataset has no class names: only self-supervised stages can use it"]
