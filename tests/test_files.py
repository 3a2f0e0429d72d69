"""headstart.files: atomic writes keep the previous file on failure; names and predicates in one place."""

import errno
import os

import pytest

from headstart import files
from headstart.errors import HeadstartError


def test_a_failed_write_leaves_the_previous_file_whole_and_no_temporary(tmp_path):
    path = tmp_path / "stage.json"
    files.atomic_write_json(path, {"version": 1})

    def disk_full(file):
        file.write(b'{"version": 2')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        files.atomic_write(path, disk_full)
    assert files.read_json(path) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage.json"]


def test_atomic_move_copies_then_replaces(tmp_path):
    source, target = tmp_path / "made-by-a-converter.bin", tmp_path / "out" / "model.keras"
    source.write_bytes(b"x" * (3 << 20))
    target.parent.mkdir()
    target.write_bytes(b"old")
    files.atomic_move(source, target)
    assert target.read_bytes() == b"x" * (3 << 20)
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_json_is_sorted_indented_and_ends_with_a_newline(tmp_path):
    files.atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_reading_a_missing_or_damaged_json_names_the_file(tmp_path):
    with pytest.raises(HeadstartError, match="absent.json: no such file"):
        files.read_json(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(HeadstartError, match="bad.json: not valid JSON"):
        files.read_json(tmp_path / "bad.json")


def test_png_bytes_of_a_figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    data = files.png_bytes(figure, dpi=50)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (100, 50)


def test_folder_predicates_read_the_marker_files(tmp_path):
    assert not files.is_finished_stage(tmp_path) and not files.is_run(tmp_path)
    (tmp_path / files.STAGE_FILE).write_text("{}")
    (tmp_path / files.RUN_FILE).write_text("{}")
    (tmp_path / files.COMPARISON_FILE).write_text("{}")
    assert files.is_finished_stage(tmp_path) and files.is_run(tmp_path) and files.is_comparison(tmp_path)
