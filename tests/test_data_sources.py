"""Folder, CSV and .npz sources: labels, class names, sizes, modes, corrupt files, caching."""

from __future__ import annotations

import os

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from headstart.data import SourceSpec, load_source
from headstart.errors import HeadstartError
from helpers import truncated_jpeg, two_colour_jpeg, write_image_folder


@pytest.fixture
def pets(tmp_path):
    """A folder source: cat/ and dog/ with one file of each awkward mode, plus things to ignore."""
    root = tmp_path / "pets"
    (root / "cat" / "more").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("L", (10, 12), 90).save(root / "cat" / "a_grey.png")
    Image.new("RGBA", (9, 9), (255, 0, 0, 0)).save(root / "cat" / "b_clear.png")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 255, 0] * 256)
    palette.save(root / "cat" / "c_palette.gif")
    Image.new("RGB", (8, 8), (5, 5, 5)).save(root / "cat" / "more" / "d_nested.PNG")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(root / "dog" / "e_deep.png")
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(root / "dog" / "f_cmyk.jpg", quality=100)
    two_colour_jpeg(root / "dog" / "g_turned.jpg", orientation=6)
    Image.new("RGB", (8, 8)).save(root / ".ipynb_checkpoints" / "hidden.png")
    (root / "dog" / "notes.txt").write_text("not an image, ignored by suffix")
    return root


def by_file(data):
    """{file name: (image, label)} for a file-backed ImageSet."""
    return {os.path.basename(data.describe(i)): data[i] for i in range(len(data))}


def test_folder_labels_sizes_and_modes(pets):
    data = load_source(SourceSpec(kind="folder", path=str(pets), image_size=8, resize="stretch"))
    assert data.class_names == ["cat", "dog"]
    assert data.name == "pets" and data.channels == 3 and data.image_size() == (8, 8)
    files = by_file(data)
    assert sorted(files) == [
        "a_grey.png",
        "b_clear.png",
        "c_palette.gif",
        "d_nested.PNG",
        "e_deep.png",
        "f_cmyk.jpg",
        "g_turned.jpg",
    ]
    assert {name: label for name, (_, label) in files.items()} == {
        "a_grey.png": 0,
        "b_clear.png": 0,
        "c_palette.gif": 0,
        "d_nested.PNG": 0,
        "e_deep.png": 1,
        "f_cmyk.jpg": 1,
        "g_turned.jpg": 1,
    }
    for image, _ in files.values():
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert torch.allclose(files["a_grey.png"][0], torch.full((3, 8, 8), 90 / 255))
    assert torch.allclose(files["b_clear.png"][0], torch.ones(3, 8, 8))  # transparent → white
    assert files["c_palette.gif"][0][:, 0, 0].tolist() == [0.0, 1.0, 0.0]
    assert torch.allclose(files["e_deep.png"][0], torch.ones(3, 8, 8))  # 16-bit full scale → 1.0
    assert float(files["f_cmyk.jpg"][0].min()) > 0.95  # CMYK all-zero ink is white


def test_folder_applies_exif_orientation(pets):
    """Orientation 6 turns the stored red-left/blue-right image so red is on top."""
    data = load_source(SourceSpec(kind="folder", path=str(pets), image_size=8, resize="stretch"))
    turned, _ = by_file(data)["g_turned.jpg"]
    red, blue = turned[0], turned[2]
    assert red[1, 6] > 0.8 and blue[1, 6] < 0.2  # top right is red (would be blue unturned)
    assert blue[6, 1] > 0.8 and red[6, 1] < 0.2  # bottom left is blue


def test_folder_grey_channel_option(pets):
    data = load_source(SourceSpec(kind="folder", path=str(pets), image_size=4, channels=1))
    image, _ = by_file(data)["a_grey.png"]
    assert data.channels == 1 and image.shape == (1, 4, 4)
    assert torch.allclose(image, torch.full((1, 4, 4), 90 / 255))


def test_empty_class_folder_stays_a_class(tmp_path):
    root = write_image_folder(tmp_path / "shapes", {"circle": 1, "square": 0, "triangle": 1})
    data = load_source(SourceSpec(kind="folder", path=str(root), image_size=4))
    assert data.class_names == ["circle", "square", "triangle"]
    assert data.labels.tolist() == [0, 2]
    assert data.class_counts() == {"circle": 1, "square": 0, "triangle": 1}


def test_folder_of_loose_images_is_unlabelled(tmp_path):
    for k in range(3):
        Image.new("RGB", (5, 5)).save(tmp_path / f"{k}.png")
    data = load_source(SourceSpec(kind="folder", path=str(tmp_path), image_size=4))
    assert data.labels.tolist() == [-1, -1, -1] and data.class_names == []


def test_an_unlabelled_folder_joins_the_unlabelled_pool_and_never_test_or_validation(tmp_path):
    from headstart.data import TaskData

    # distinct colours: identical files would be copies, kept in one split by the data check
    root = write_image_folder(tmp_path / "labelled", {"a": 6, "b": 6}, size=8, colour=lambda name, k: (k, ord(name), 0))
    extra = tmp_path / "extra" / "any" / "layout"
    extra.mkdir(parents=True)
    for index in range(7):
        Image.new("RGB", (9, 9), (index * 30, 0, 0)).save(extra / f"{index}.png")
    spec = SourceSpec(kind="folder", path=str(root), image_size=8, unlabelled=str(tmp_path / "extra"))
    images = load_source(spec)
    assert images.labels.tolist().count(-1) == 7 and images.class_names == ["a", "b"]
    data = TaskData.load(spec, {"test_fraction": 0.2, "val_fraction": 0.2, "labels_per_class": 2, "seed": 0})
    assert (data.split("test").labels >= 0).all() and (data.split("val").labels >= 0).all()
    assert len(data.split("unlabelled")) == 7 + 2 * (6 - 2 - 1 - 1)  # the folder + the labelled pool's rest
    plain = SourceSpec(kind="folder", path=str(root), image_size=8)
    assert "unlabelled" not in plain.model_dump(exclude_none=True)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp_path, root: str(tmp_path / "nowhere"), "nowhere: no such folder"),
        (lambda tmp_path, root: str((tmp_path / "empty").mkdir() or tmp_path / "empty"), "holds no image files"),
        (lambda tmp_path, root: str(root / "a"), "also labelled images of the dataset"),
    ],
    ids=["missing", "empty", "overlapping"],
)
def test_a_bad_unlabelled_folder_is_named(tmp_path, make, message):
    root = write_image_folder(tmp_path / "labelled", {"a": 3, "b": 3}, size=8)
    with pytest.raises(HeadstartError, match=message):
        load_source(SourceSpec(kind="folder", path=str(root), image_size=8, unlabelled=make(tmp_path, root)))
    with pytest.raises(pydantic.ValidationError, match="read by folder and csv sources"):
        SourceSpec(kind="digits", unlabelled=str(root))


def test_loose_images_beside_class_folders_refused(pets):
    Image.new("RGB", (4, 4)).save(pets / "stray.png")
    with pytest.raises(HeadstartError, match=r"outside the class folders \(stray\.png\)"):
        load_source(SourceSpec(kind="folder", path=str(pets), image_size=4))


def test_missing_folder_named(tmp_path):
    with pytest.raises(HeadstartError, match="nowhere: no such folder"):
        load_source(SourceSpec(kind="folder", path=str(tmp_path / "nowhere"), image_size=4))


@pytest.fixture
def broken(tmp_path):
    """A folder with two good images and three broken ones, sorted so a_empty.jpg comes first."""
    root = tmp_path / "broken"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    Image.new("RGB", (6, 6), (0, 128, 255)).save(root / "good" / "fine1.png")
    Image.new("RGB", (6, 6), (0, 128, 255)).save(root / "good" / "fine2.jpg")
    (root / "bad" / "a_empty.jpg").write_bytes(b"")
    (root / "bad" / "b_text.jpg").write_text("hello, I am text")
    truncated_jpeg(root / "bad" / "c_cut.jpg")
    return root


def test_corrupt_files_fail_naming_the_first(broken):
    with pytest.raises(HeadstartError) as caught:
        load_source(SourceSpec(kind="folder", path=str(broken), image_size=6))
    message = str(caught.value)
    assert "3 unreadable image file(s)" in message
    first = message.splitlines()[1].strip()
    assert first.startswith(str(broken / "bad" / "a_empty.jpg")) and "0 bytes" in first
    assert "b_text.jpg: not a readable image" in message
    assert "c_cut.jpg: corrupt or truncated image" in message


def test_corrupt_files_skipped_and_counted(broken):
    data = load_source(SourceSpec(kind="folder", path=str(broken), image_size=6, on_corrupt="skip"))
    assert len(data) == 2 and data.class_names == ["bad", "good"]
    assert data.labels.tolist() == [1, 1]
    skipped = {os.path.basename(path): reason for path, reason in data.skipped}
    assert sorted(skipped) == ["a_empty.jpg", "b_text.jpg", "c_cut.jpg"]
    assert "0 bytes" in skipped["a_empty.jpg"] and "truncated" in skipped["c_cut.jpg"]


def test_header_verification_misses_only_truncation(broken):
    """verify='header' skips the empty and text files but, as documented, lets the cut JPEG in."""
    data = load_source(SourceSpec(kind="folder", path=str(broken), image_size=6, on_corrupt="skip", verify="header"))
    assert sorted(os.path.basename(p) for p, _ in data.skipped) == ["a_empty.jpg", "b_text.jpg"]
    assert len(data) == 3 and not data.store.verified
    cut = [i for i in range(len(data)) if data.describe(i).endswith("c_cut.jpg")][0]
    with pytest.raises(HeadstartError, match="c_cut.jpg: corrupt or truncated"):
        data[cut]


def test_cache_keeps_decoded_images(pets):
    spec = dict(kind="folder", path=str(pets), image_size=8)
    cached = load_source(SourceSpec(**spec, cache=True))
    plain = load_source(SourceSpec(**spec))
    for path in pets.rglob("*"):
        if path.is_file():
            path.unlink()
    images, labels = cached.as_tensors()  # served from memory: the files are gone
    assert images.shape == (7, 3, 8, 8) and labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    with pytest.raises(HeadstartError, match="no such file"):
        plain[0]


def test_crop_and_stretch_differ_on_wide_files(tmp_path):
    root = tmp_path / "wide" / "only"
    root.mkdir(parents=True)
    stored = np.zeros((8, 32, 3), dtype=np.uint8)
    stored[:, 8:24] = 255
    Image.fromarray(stored).save(root / "band.png")
    spec = dict(kind="folder", path=str(tmp_path / "wide"), image_size=8)
    cropped = load_source(SourceSpec(**spec, resize="crop"))[0][0]
    stretched = load_source(SourceSpec(**spec, resize="stretch"))[0][0]
    assert float(cropped.min()) > 0.99
    assert float(stretched[:, :, 0].max()) < 0.01 and float(stretched[:, :, 4].min()) > 0.99


# ---------------------------------------------------------------------------------------- CSV


@pytest.fixture
def table(tmp_path):
    """labels.csv in tmp/table, naming images by paths relative to that folder and one absolute."""
    folder = tmp_path / "table"
    (folder / "images").mkdir(parents=True)
    for name, value in (("a", 10), ("b", 20), ("c", 30), ("d", 40)):
        Image.new("L", (6, 6), value).save(folder / "images" / f"{name}.png")
    absolute = folder / "images" / "d.png"
    (folder / "labels.csv").write_text(
        "path,label,notes\n"
        "images/a.png,10,first\n"
        "images/b.png,2,\n"
        f"{absolute},10,absolute path\n"
        "images/c.png,,unlabelled\n"
    )
    return folder / "labels.csv"


def test_csv_relative_paths_resolved_from_its_folder(table, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    data = load_source(SourceSpec(kind="csv", path=str(table), image_size=6, channels=1))
    assert data.class_names == ["2", "10"]  # integer names in numeric order
    assert data.labels.tolist() == [1, 0, 1, -1]
    assert data.name == "labels"
    values = [round(float(data[i][0][0, 0, 0]) * 255) for i in range(4)]
    assert values == [10, 20, 40, 30]


def test_csv_unknown_label_column_names_file_and_column(table):
    with pytest.raises(HeadstartError) as caught:
        load_source(SourceSpec(kind="csv", path=str(table), image_size=6, label_column="class"))
    message = str(caught.value)
    assert str(table) in message and "no column 'class'" in message
    assert "['path', 'label', 'notes']" in message


def test_csv_misspelt_column_gets_a_suggestion(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("path,lable\nx.png,cat\n")
    with pytest.raises(HeadstartError, match="no column 'label'.*did you mean 'lable'"):
        load_source(SourceSpec(kind="csv", path=str(table), image_size=6))


def test_csv_missing_files_reported_with_line_numbers(table):
    with open(table, "a") as handle:
        handle.write("images/ghost.png,2,\n")
    with pytest.raises(HeadstartError, match=r"ghost\.png: line 6 of .*labels\.csv: no such file"):
        load_source(SourceSpec(kind="csv", path=str(table), image_size=6))
    data = load_source(SourceSpec(kind="csv", path=str(table), image_size=6, on_corrupt="skip"))
    assert len(data) == 4
    assert [reason for _, reason in data.skipped] == [f"line 6 of {table}: no such file"]


def test_csv_malformed_rows_reported_with_line_numbers(table):
    with open(table, "a") as handle:
        handle.write(",2,\nimages/a.png\n")
    with pytest.raises(HeadstartError) as caught:
        load_source(SourceSpec(kind="csv", path=str(table), image_size=6))
    message = str(caught.value)
    assert "line 6 has an empty 'path' cell" in message
    assert "line 7 has 1 cell(s); expected at least 2" in message


def test_csv_without_labels(table):
    data = load_source(SourceSpec(kind="csv", path=str(table), image_size=6, label_column=None))
    assert data.labels.tolist() == [-1] * 4 and data.class_names == []


def test_empty_csv_named(tmp_path):
    table = tmp_path / "empty.csv"
    table.write_text("")
    with pytest.raises(HeadstartError, match=r"empty\.csv: file is empty"):
        load_source(SourceSpec(kind="csv", path=str(table), image_size=6))


# ---------------------------------------------------------------------------------------- npz


def test_npz_arrays(tmp_path):
    path = tmp_path / "set.npz"
    images = np.random.default_rng(0).integers(0, 256, (5, 7, 7, 3), dtype=np.uint8)
    np.savez(path, images=images, labels=np.array([0, 1, 1, 0, 1]), class_names=np.array(["no", "yes"]))
    data = load_source(SourceSpec(kind="arrays", path=str(path)))
    assert len(data) == 5 and data.class_names == ["no", "yes"] and data.name == "set"
    assert torch.allclose(data[2][0], torch.from_numpy(images[2]).permute(2, 0, 1).float() / 255)
    resized = load_source(SourceSpec(kind="arrays", path=str(path), image_size=4, channels=1))
    assert resized[0][0].shape == (1, 4, 4)


def test_npz_without_images_named(tmp_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, pictures=np.zeros((1, 2, 2)))
    with pytest.raises(HeadstartError, match=r"wrong\.npz: has arrays \['pictures'\]; expected 'images'"):
        load_source(SourceSpec(kind="arrays", path=str(path)))


def test_npz_with_pickled_objects_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, images=np.array([object()], dtype=object))
    with pytest.raises(HeadstartError, match=r"pickled\.npz: not a readable \.npz"):
        load_source(SourceSpec(kind="arrays", path=str(path)))


# --------------------------------------------------------------------------------------- spec


@pytest.mark.parametrize(
    ("fields", "pattern"),
    [
        (dict(kind="folder", path="x"), "needs image_size"),
        (dict(kind="csv", image_size=8), "needs a path"),
        (dict(kind="folder", path="x", image_size=8, size=3), "Extra inputs are not permitted"),
        (dict(kind="folder", path="x", image_size=0), "greater than or equal to 1"),
        (dict(kind="folder", path="x", image_size=8, channels=4), "channels"),
        (dict(kind="zip", path="x"), "kind"),
    ],
)
def test_spec_validation(fields, pattern):
    with pytest.raises(pydantic.ValidationError, match=pattern):
        SourceSpec(**fields)
