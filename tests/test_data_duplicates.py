"""The data check on a messy folder of real photos: planted copies found, copies kept in one split."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.data import SourceSpec, TaskData, load_digits, load_source, make_splits
from headstart.data.datacheck import check_files, check_source, source_for
from headstart.data.duplicates import copy_groups, exact_pairs, near_pairs
from headstart.data.findings import CHECK_FILE, DataCheckSpec
from headstart.errors import HeadstartError
from helpers import SAMPLE_PHOTOS, per_class_arrays, photo_folder, plant_copy

CLASSES = {"a": SAMPLE_PHOTOS[:6], "b": SAMPLE_PHOTOS[6:12], "c": SAMPLE_PHOTOS[12:18]}
PLANTED = [  # (original, copy, how): every copy of the messy folder
    ("a/astronaut.png", "a/astronaut copy.png", {}),
    ("a/chelsea.png", "a/chelsea small.png", {"scale": 0.5}),
    ("b/horse.png", "b/horse.jpg", {"quality": 70}),
    ("c/rocket.png", "c/rocket small.jpg", {"scale": 0.5, "quality": 70}),
    ("a/coffee.png", "b/coffee.jpg", {"quality": 90}),  # under another label
    ("c/page.png", "a/page.png", {}),  # the same bytes under another label
]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """18 distinct scikit-image photos, six per class, 160 px on the longer side."""
    return photo_folder(tmp_path_factory.mktemp("clean") / "photos", CLASSES)


@pytest.fixture(scope="module")
def messy(tmp_path_factory, clean) -> Path:
    """The clean folder plus :data:`PLANTED`: exact, resized, re-encoded copies, two under other labels."""
    root = tmp_path_factory.mktemp("messy") / "photos"
    shutil.copytree(clean, root, ignore=shutil.ignore_patterns(".*"))
    for original, copy, how in PLANTED:
        plant_copy(root / original, root / copy, **how)
    return root


def _groups_by_name(check) -> list[set[str]]:
    root = Path(check.source["path"])
    return [{str(check.paths[i].relative_to(root)) for i in group["members"]} for group in check.copies]


def test_planted_copies_are_found_with_full_precision_and_recall(messy):
    check = check_source(source_for(messy))
    found = _groups_by_name(check)
    truth = [{original, copy} for original, copy, _ in PLANTED]
    pairs_found = {frozenset(p) for group in found for p in itertools.combinations(sorted(group), 2)}
    pairs_true = {frozenset(group) for group in truth}
    recall = len(pairs_found & pairs_true) / len(pairs_true)
    precision = len(pairs_found & pairs_true) / len(pairs_found)
    assert (precision, recall) == (1.0, 1.0), found
    kinds = {frozenset(_groups_by_name(check)[k]): group["kind"] for k, group in enumerate(check.copies)}
    assert kinds[frozenset({"a/astronaut.png", "a/astronaut copy.png"})] == "exact"
    assert kinds[frozenset({"b/horse.png", "b/horse.jpg"})] == "near"
    two = [{image["label"] for image in group["images"]} for group in check.to_json()["copies"] if group["labels"][1:]]
    assert sorted(map(sorted, two)) == [["a", "b"], ["a", "c"]]
    assert "6 group(s) of copies" in check.summary_line() and "2 under two labels" in check.summary_line()
    assert check.class_counts() == {"a": 9, "b": 8, "c": 7} and check.imbalance() == pytest.approx(9 / 7)


def test_a_clean_folder_reports_nothing_in_one_line(clean):
    check = check_source(source_for(clean))
    assert check.clean and check.lines() == [check.summary_line()]
    assert check.summary_line() == "data check of photos: 18 image(s) in 3 classes: nothing to report"


def test_copies_never_straddle_splits_when_loaded_and_did_without_groups(messy):
    check = check_source(source_for(messy))
    images = load_source(SourceSpec(kind="folder", path=str(messy), image_size=16))
    assert [str(path) for path in images.store.paths] == [str(path) for path in check.paths]

    def straddling(splits) -> int:
        sides = {name: set(getattr(splits, name).positions.tolist()) for name in ("test", "val")}
        sides["training"] = set(splits.train.positions.tolist()) | set(splits.unlabelled.positions.tolist())
        return sum(sum(bool(set(group["members"]) & side) for side in sides.values()) > 1 for group in check.copies)

    before = [straddling(make_splits(images, seed=seed)) for seed in range(5)]
    assert max(before) >= 1  # without the groups some seed puts a copy on each side of the line
    for seed in range(5):
        data = TaskData.load(
            {"kind": "folder", "path": str(messy), "image_size": 16}, {"seed": seed, "labels_per_class": 2}
        )
        assert straddling(data.splits) == 0
        assert data.data_check is not None and len(data.data_check.copies) == len(PLANTED)
    assert (messy / ".headstart-fingerprints.npz").is_file()  # the cache sits next to the data, hidden


def test_without_groups_the_splits_are_unchanged_bit_for_bit():
    digits = load_digits()
    singletons = np.arange(len(digits))
    for options in ({}, {"labels_per_class": 5}, {"labelled_fraction": 0.3, "draw_seed": 2}, {"seed": 7}):
        plain = make_splits(digits, **options)
        grouped = make_splits(digits, groups=singletons, **options)
        for name in ("train", "unlabelled", "val", "test"):
            assert np.array_equal(getattr(plain, name).positions, getattr(grouped, name).positions), (options, name)
            assert np.array_equal(getattr(plain, name).labels, getattr(grouped, name).labels)


def test_whole_groups_go_to_one_side_and_unlabelled_copies_stay_on_the_training_side():
    data = per_class_arrays({"a": 20, "b": 20}, extra_labels=[-1, -1])
    groups = np.arange(len(data))
    for members in ([0, 1], [2, 3, 4], [5, 25], [6, 40], [30, 41]):  # 40, 41: unlabelled images
        groups[members] = members[0]
    for seed in range(10):
        splits = make_splits(data, seed=seed, labels_per_class=3, groups=groups)
        side = {}
        for name in ("train", "unlabelled", "val", "test"):
            for position in getattr(splits, name).positions.tolist():
                side[position] = "training" if name in ("train", "unlabelled") else name
        for leader in np.unique(groups):
            assert len({side[int(p)] for p in np.flatnonzero(groups == leader)}) == 1
        assert side[6] == side[30] == "training"  # grouped with an unlabelled image: may be pretrained on
        assert len(splits.train) == 6  # the budget still counts images


def test_a_class_made_only_of_another_class_copies_is_refused():
    data = per_class_arrays({"a": 6, "b": 3})
    groups = np.arange(len(data))
    groups[6:9] = [0, 1, 2]  # every image of b is a copy of an image of a
    with pytest.raises(HeadstartError, match="'b' has 3 image.*every one a copy of an image of another class"):
        make_splits(data, groups=groups)


def test_pairs_and_groups_on_planted_hashes():
    hashes = np.array([0, 0b111, 2**64 - 1, 0b1, 2**40], dtype=np.uint64)
    thumbs = np.tile(np.arange(64, dtype=np.uint8), (5, 1))
    usable = np.ones(5, dtype=bool)
    first, second, distance = near_pairs(hashes, thumbs, usable, max_distance=3, min_correlation=0.99)
    found = sorted(zip(first.tolist(), second.tolist(), distance.tolist(), strict=True))
    assert found == [(0, 1, 3), (0, 3, 1), (0, 4, 1), (1, 3, 2), (3, 4, 2)]  # 1 and 4 are 4 bits apart
    thumbs[4] = thumbs[4][::-1]  # the same hash, another picture: the thumbnail check refuses it
    first, second, _ = near_pairs(hashes, thumbs, usable, max_distance=3, min_correlation=0.99)
    assert 4 not in first.tolist() + second.tolist()
    digests = np.zeros((5, 16), dtype=np.uint8)
    digests[[1, 3], 0] = 7
    assert copy_groups(5, *exact_pairs(digests, usable)).tolist() == [0, 1, 0, 1, 0]
    usable[2] = False  # an unreadable file is nobody's copy
    assert copy_groups(5, *exact_pairs(digests, usable)).tolist() == [0, 1, 2, 1, 0]
    assert copy_groups(4, np.array([0, 2]), np.array([3, 1])).tolist() == [0, 1, 1, 0]


def test_the_near_search_scales_in_blocks(monkeypatch):
    import headstart.data.duplicates as duplicates

    monkeypatch.setattr(duplicates, "ROW_BLOCK", 7)
    monkeypatch.setattr(duplicates, "COLUMN_BLOCK", 11)
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 60, dtype=np.uint64)
    hashes[30:40] = hashes[:10] ^ np.uint64(0b101)  # ten copies, two bits apart
    thumbs = rng.integers(0, 256, (60, 64), dtype=np.uint8)
    thumbs[30:40] = thumbs[:10]
    first, second, distance = near_pairs(hashes, thumbs, np.ones(60, dtype=bool), max_distance=2)
    assert sorted(zip(first.tolist(), second.tolist(), strict=True)) == [(k, k + 30) for k in range(10)]
    assert set(distance.tolist()) == {2}


def test_a_family_of_copies_is_folded_into_one_edge_per_image_with_the_same_groups(monkeypatch):
    """A burst of near-equal frames links each to every other: past ``limit`` pairs the search keeps
    one edge per image instead (memory in proportion to the images, not to their square), and the
    groups and each group's largest distance are those of every pair."""
    import headstart.data.duplicates as duplicates
    from headstart.data.duplicates import compact_pairs

    monkeypatch.setattr(duplicates, "ROW_BLOCK", 16)
    monkeypatch.setattr(duplicates, "COLUMN_BLOCK", 16)
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, 120, dtype=np.uint64)
    bursts = [range(0, 40), range(50, 90)]  # two families of 40 frames, each within 3 bits of its first
    for burst in bursts:
        flips = rng.integers(0, 2, (len(burst), 3)) << np.array([0, 1, 2])
        hashes[list(burst)] = hashes[burst[0]] ^ flips.sum(axis=1).astype(np.uint64)
    thumbs = rng.integers(0, 256, (120, 64), dtype=np.uint8)
    for burst in bursts:
        thumbs[list(burst)] = thumbs[burst[0]]
    usable = np.ones(120, dtype=bool)
    every = near_pairs(hashes, thumbs, usable, max_distance=3)
    folded = near_pairs(hashes, thumbs, usable, max_distance=3, limit=100)
    assert every[0].size > 1000 and folded[0].size < 200  # 2 × 780 pairs against fewer than 119 + 100
    assert (folded[0] < folded[1]).all()
    groups = copy_groups(120, every[0], every[1])
    assert groups.tolist() == copy_groups(120, folded[0], folded[1]).tolist()
    assert sorted(set(groups.tolist())) == [0, *range(40, 50), 50, *range(90, 120)]

    def largest(first, distance):
        found = np.zeros(120, dtype=np.int64)
        np.maximum.at(found, groups[first], distance)
        return found.tolist()

    assert largest(every[0], every[2]) == largest(folded[0], folded[2]) and max(largest(*every[::2])) == 3
    star = compact_pairs(120, *every)
    assert star[0].size == 78 and copy_groups(120, star[0], star[1]).tolist() == groups.tolist()


def test_fingerprints_are_cached_and_a_changed_file_is_read_again(tmp_path, clean):
    root = tmp_path / "photos"
    shutil.copytree(clean, root, ignore=shutil.ignore_patterns(".*"))
    first = check_source(source_for(root))
    assert first.decoded == 18 and first.clean
    again = check_source(source_for(root))
    assert again.decoded == 0 and again.summary_line() == first.summary_line()
    plant_copy(root / "a" / "clock.png", root / "b" / "coins.png")  # coins becomes clock: size and time change
    changed = check_source(source_for(root))
    assert changed.decoded == 1 and len(changed.two_labels()) == 1
    assert check_source(source_for(root), {"cache": False}).decoded == 18


def test_thresholds_are_options(messy, tmp_path):
    exact = check_source(source_for(messy), DataCheckSpec(near_distance=None))
    assert [group["kind"] for group in exact.copies] == ["exact", "exact"]
    strict = check_source(source_for(messy), {"min_side": 200, "max_aspect": 1.2, "max_imbalance": 1.1})
    assert strict.tiny().size == len(strict.paths)  # every photo is 160 px at most
    assert 0 < strict.extreme_aspect().size < len(strict.paths)
    assert "classes imbalanced 1.3:1 (a 9, c 7)" in strict.summary_line()
    with pytest.raises(HeadstartError, match="near_distance"):
        check_source(source_for(messy), {"near_distance": 65})


def test_check_files_streams_and_records_unreadable_files(tmp_path, clean):
    paths = sorted(clean.glob("*/*.png"))[:4] + [tmp_path / "missing.png", tmp_path / "text.jpg"]
    (tmp_path / "text.jpg").write_text("not an image")
    check = check_files(paths, np.zeros(len(paths), dtype=np.int64), ["x"], name="few", options={"cache": False})
    reasons = dict(check.unreadable)
    assert reasons[str(tmp_path / "missing.png")] == "no such file"
    assert "not a readable image" in reasons[str(tmp_path / "text.jpg")]
    assert check.to_json()["unreadable"][0]["path"] == str(tmp_path / "missing.png")
    assert CHECK_FILE == "data-check.json"


def test_a_csv_source_is_checked_like_its_folder_and_caches_beside_the_csv(messy, tmp_path):
    table = tmp_path / "images.csv"
    rows = ["path,label"] + [f"{path},{path.parent.name}" for path in sorted(messy.glob("*/*.*"))]
    table.write_text("\n".join(rows + [f"{tmp_path / 'gone.png'},a"]) + "\n")
    check = check_source(source_for(table))
    folder = check_source(source_for(messy))
    assert len(check.copies) == len(folder.copies) and len(check.two_labels()) == 2
    assert check.unreadable == [(str(tmp_path / "gone.png"), "no such file")]
    assert (tmp_path / ".images.headstart-fingerprints.npz").is_file()


def test_a_damaged_or_unwritable_cache_is_ignored(tmp_path, clean, monkeypatch):
    import headstart.data.fingerprints as fingerprints

    root = tmp_path / "photos"
    shutil.copytree(clean, root, ignore=shutil.ignore_patterns(".*"))
    (root / ".headstart-fingerprints.npz").write_bytes(b"not a cache")
    assert check_source(source_for(root)).decoded == 18  # ignored, then rewritten
    assert check_source(source_for(root)).decoded == 0

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(fingerprints, "atomic_write", refuse)  # a folder that cannot be written
    (root / ".headstart-fingerprints.npz").unlink()
    assert check_source(source_for(root)).clean
    assert not (root / ".headstart-fingerprints.npz").exists()


def test_fingerprints_tell_colour_from_grey_saved_as_colour_jpeg(tmp_path):
    from skimage import data

    from headstart.data.fingerprints import fingerprint_files

    grey = Image.fromarray(data.camera()).convert("RGB")  # a grey photo in three channels: chroma noise only
    grey.save(tmp_path / "grey.jpg", quality=75)
    Image.fromarray(data.chelsea()).save(tmp_path / "cat.jpg", quality=75)
    Image.fromarray(data.camera()).save(tmp_path / "grey.png")
    paths = [tmp_path / "grey.jpg", tmp_path / "cat.jpg", tmp_path / "grey.png"]
    cache = tmp_path / "cache.npz"
    first = fingerprint_files(paths, cache_file=cache)
    assert first.colours.tolist() == [False, True, False]
    again = fingerprint_files(paths, cache_file=cache)
    assert again.decoded == 0 and again.colours.tolist() == [False, True, False]
