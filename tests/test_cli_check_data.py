"""``headstart check-data`` and the check before ``run``, ``compare`` and ``demo --data``: output, JSON,
exit codes, and bad folders that fail in one line (or are recorded) before anything is written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from headstart.cli import app
from headstart.data import TaskData
from headstart.data.datacheck import check_source, source_for
from headstart.data.findings import CHECK_FILE
from headstart.errors import HeadstartError
from helpers import SAMPLE_PHOTOS, TINY_RESNET, photo_folder, plant_copy, truncated_jpeg

WIDE = {"COLUMNS": "400"}
MODEL = {"name": TINY_RESNET, "weights": None, "image_size": 16}


def _invoke(*arguments: str):
    return CliRunner().invoke(app, list(arguments), env=WIDE)


def _one_error_line(result, fragment: str) -> None:
    """Exit code 2 and one ``error:`` line naming ``fragment``, last (the check's summary may come first)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1] and fragment in errors[0], result.stderr
    assert "Traceback" not in result.output


def _run_file(tmp_path: Path, data: Path, **source) -> Path:
    spec = {
        "name": "check",
        "output": str(tmp_path / "run"),
        "progress": False,
        "num_workers": 0,
        "data": {"source": {"kind": "folder", "path": str(data), "image_size": 16, **source}},
        "model": MODEL,
        "stages": [{"name": "task", "epochs": 1, "batch_size": 8}],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three classes of five distinct photos, one resized copy and one copy under another label."""
    root = photo_folder(
        tmp_path_factory.mktemp("cli") / "photos",
        {"a": SAMPLE_PHOTOS[:5], "b": SAMPLE_PHOTOS[5:10], "c": SAMPLE_PHOTOS[10:15]},
        side=64,
    )
    plant_copy(root / "a" / "chelsea.png", root / "a" / "chelsea small.png", scale=0.5)
    plant_copy(root / "b" / "coins.png", root / "c" / "coins.jpg", quality=90)
    return root


def test_check_data_prints_a_summary_and_writes_json(photos, tmp_path):
    result = _invoke("check-data", str(photos), "--json", str(tmp_path / "found" / "check.json"))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("data check of photos: 17 image(s) in 3 classes: 2 group(s) of copies")
    assert "1 under two labels" in lines[0]
    assert "    b/coins.png (b) = c/coins.jpg (c)" in lines
    assert lines[-1] == f"details: {tmp_path / 'found' / 'check.json'}"
    written = json.loads((tmp_path / "found" / "check.json").read_text())
    assert written["two_labels"] == 1 and written["classes"] == {"a": 6, "b": 5, "c": 6}
    assert written["options"]["near_distance"] == 10 and written["summary"] == lines[0]
    exact = _invoke("check-data", str(photos), "--exact-only", "--max-imbalance", "1.1")
    assert exact.exit_code == 0 and "group" not in exact.stdout.splitlines()[0]
    assert "classes imbalanced 1.2:1" in exact.stdout


def test_a_clean_folder_is_one_line(tmp_path):
    root = photo_folder(tmp_path / "clean", {"x": SAMPLE_PHOTOS[:3], "y": SAMPLE_PHOTOS[3:6]}, side=48)
    result = _invoke("check-data", str(root))
    assert result.exit_code == 0
    assert result.stdout == "data check of clean: 6 image(s) in 2 classes: nothing to report\n"


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["nowhere"], "nowhere: no such folder or file"),
        (["{photos}/a/chelsea.png"], "one image is not a dataset"),
        (["{photos}", "--json", "{photos}"], "is a folder; expected a file name"),
        (["{photos}", "--near-distance", "70"], None),
    ],
    ids=["missing", "one-image", "json-folder", "distance-range"],
)
def test_bad_input_exits_2_in_one_line(photos, arguments, fragment):
    result = _invoke("check-data", *[argument.format(photos=photos) for argument in arguments])
    if fragment is None:  # typer's own range check
        assert result.exit_code == 2 and "Traceback" not in result.output
    else:
        _one_error_line(result, fragment)


def _twins(tmp_path: Path) -> Path:
    """Two classes whose images are the same five photos: every image of b is a copy of one of a."""
    root = photo_folder(tmp_path / "twins", {"a": SAMPLE_PHOTOS[:5]}, side=64)
    for path in sorted((root / "a").iterdir()):
        plant_copy(path, root / "b" / path.name)
    return root


def test_a_folder_of_copies_across_two_classes_is_reported_then_refused_before_training(tmp_path):
    root = _twins(tmp_path)
    reported = _invoke("check-data", str(root))
    assert reported.exit_code == 0 and "5 group(s) of copies" in reported.stdout
    assert "5 under two labels" in reported.stdout
    demo = _invoke("demo", "--data", str(root), "--output", str(tmp_path / "demo"), "--seeds", "1")
    _one_error_line(demo, "class 'b' has 5 image(s), every one a copy of an image of another class")
    assert not (tmp_path / "demo").exists()
    run = _invoke("run", str(_run_file(tmp_path, root)))
    _one_error_line(run, "every one a copy of an image of another class")
    assert not (tmp_path / "run").exists()


def test_a_class_left_with_one_picture_is_refused_in_one_line(tmp_path):
    root = photo_folder(tmp_path / "few", {"a": SAMPLE_PHOTOS[:6], "b": SAMPLE_PHOTOS[6:12], "c": ["moon"]}, side=48)
    for copy in range(5):
        plant_copy(root / "c" / "moon.png", root / "c" / f"moon {copy}.png")  # six files, one picture
    result = _invoke("run", str(_run_file(tmp_path, root)))
    _one_error_line(result, "class 'c' has 6 image(s) in 1 group(s) of copies")
    assert not (tmp_path / "run").exists()


def test_symbolic_link_loops_are_recorded_not_followed(tmp_path):
    root = photo_folder(tmp_path / "links", {"a": SAMPLE_PHOTOS[:5], "b": SAMPLE_PHOTOS[5:10]}, side=48)
    (root / "a" / "up").symlink_to("..")
    (root / "b" / "self").symlink_to("self")
    (root / "b" / "gone.png").symlink_to("nowhere.png")
    result = _invoke("check-data", str(root), "--json", str(tmp_path / "links.json"))
    assert result.exit_code == 0, result.output
    reasons = {
        Path(row["path"]).name: row["reason"] for row in json.loads((tmp_path / "links.json").read_text())["not_read"]
    }
    assert reasons == {
        "up": "symbolic link to a folder above it (a loop), not followed",
        "self": "symbolic link loop, not followed",
        "gone.png": "broken symbolic link",
    }
    assert "3 folder(s) or link(s) not read" in result.stdout.splitlines()[0]
    data = TaskData.load({"kind": "folder", "path": str(root), "image_size": 16}, {"val_fraction": 0.2})
    assert len(data.data_check.paths) == 10 and len(data.data_check.not_followed) == 3


def test_an_unreadable_sub_folder_is_recorded_or_refused(tmp_path, monkeypatch):
    root = photo_folder(tmp_path / "locked", {"a": SAMPLE_PHOTOS[:5], "b": SAMPLE_PHOTOS[5:10]}, side=48)
    locked = root / "a" / "more"
    photo_folder(locked, {"inside": ["rocket"]}, side=48)
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads any folder: make this one refuse, as it would refuse anyone else
        scandir = os.scandir

        def refusing(path="."):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return scandir(path)

        monkeypatch.setattr(os, "scandir", refusing)
    try:
        result = _invoke("check-data", str(root))
        assert result.exit_code == 0, result.output
        assert "a/more: cannot be read (Permission denied); its images are not listed" in result.stdout
        with pytest.raises(HeadstartError, match="(?s)1 unreadable folder.*on_corrupt='skip'.*a/more: cannot be read"):
            TaskData.load({"kind": "folder", "path": str(root), "image_size": 16}, {})
        data = TaskData.load({"kind": "folder", "path": str(root), "image_size": 16, "on_corrupt": "skip"}, {})
        assert [Path(path).name for path, _ in data.data_check.not_followed] == ["more"]
        demo = _invoke("demo", "--data", str(root), "--output", str(tmp_path / "demo"), "--seeds", "1")
        _one_error_line(demo, "1 sub-folder(s) cannot be read (fix their permissions or move them out)")
        assert not (tmp_path / "demo").exists()
    finally:
        locked.chmod(0o755)


def test_a_file_that_changes_between_the_check_and_training(photos, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(photos, root, ignore=shutil.ignore_patterns(".*"))
    assert _invoke("check-data", str(root)).exit_code == 0
    victim = root / "b" / "horse.png"
    truncated_jpeg(victim, side=64)  # now a JPEG cut short, under the old name
    result = _invoke("run", str(_run_file(tmp_path, root)))
    _one_error_line(result, "horse.png: corrupt or truncated image")
    assert not (tmp_path / "run").exists()  # refused before the run's folder is made
    data = TaskData.load({"kind": "folder", "path": str(root), "image_size": 16, "on_corrupt": "skip"}, {})
    assert data.splits.summary()["skipped_files"] == 1
    assert [Path(path).name for path, _ in data.data_check.unreadable] == ["horse.png"]
    assert check_source(source_for(root)).decoded == 1  # the rest came from the cache


def test_run_and_compare_write_the_check_and_the_report_shows_it(photos, tmp_path):
    from headstart.compare import run as run_comparison
    from headstart.report.html import render

    result = _invoke("run", str(_run_file(tmp_path, photos)))
    assert result.exit_code == 0, result.output
    first, second = result.stderr.splitlines()[:2]  # what it will train, then what it found in the data
    assert first.startswith("run 'check': test_resnet, task, into ")
    assert second.startswith("data check of photos: 17 image(s)")
    written = json.loads((tmp_path / "run" / CHECK_FILE).read_text())
    assert written["two_labels"] == 1
    lines: list[str] = []
    spec = {
        "name": "check",
        "output": str(tmp_path / "compare"),
        "seeds": 1,
        "data": {"source": {"kind": "folder", "path": str(photos), "image_size": 16}},
        "arms": {"scratch": {"model": MODEL, "stages": [{"name": "task", "epochs": 1, "batch_size": 8}]}},
        "probes": {"enabled": False},
        "attention": {"enabled": False},
    }
    compared = run_comparison(spec, echo=lines.append, progress=False)
    assert lines[0] == written["summary"] and (compared.folder / CHECK_FILE).is_file()
    page = render(compared.folder)
    section = page[page.index("<h2>Data check</h2>") :]
    assert "under 2 labels: b, c" in section and section.count("data:image/png;base64") >= 4
