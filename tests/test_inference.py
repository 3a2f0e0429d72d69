"""Predictions over folders (``headstart.inference``, ``headstart predict``): the walk, the rows, unreadable
files, resuming an interrupted run, and streaming instead of reading every file first."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from headstart.cli import app
from headstart.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, HeadstartError
from headstart.inference import Predictor, find_images, load_model, model_card, predict_files
from headstart.prediction_files import predict_to_file
from helpers import DIGITS, digit_run, grey_image, truncated_jpeg

runner = CliRunner()
COLUMNS = ["path", "label_1", "probability_1", "label_2", "probability_2", "label_3", "probability_3", "error"]


@pytest.fixture(scope="module")
def digit_run_folder(tmp_path_factory):
    """A run folder: ``test_resnet`` trained one epoch on scikit-learn's digits at 16 px."""
    from headstart.config import parse_run
    from headstart.structure import run

    folder = tmp_path_factory.mktemp("digits") / "run"
    run(parse_run(digit_run(folder, [{"name": "task", "epochs": 1, "batch_size": 50}])))
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Eight digit images in nested folders, a hidden file and folder, a text file, a text file named
    .jpg, a truncated JPEG and a symbolic link back to the top (a loop)."""
    from helpers import digit_data

    root = tmp_path_factory.mktemp("photos")
    images, _ = digit_data().split("test").as_tensors()
    (root / "a" / "deeper").mkdir(parents=True)
    (root / "b").mkdir()
    (root / ".hidden").mkdir()
    for index in range(8):
        folder = [root / "a", root / "a" / "deeper", root / "b", root][index % 4]
        grey_image(images[index, 0]).save(folder / f"digit-{index}.png")
    grey_image(images[8, 0]).save(root / ".hidden" / "secret.png")
    grey_image(images[9, 0]).save(root / "b" / ".dotfile.png")
    (root / "b" / "notes.txt").write_text("not an image, not walked")
    (root / "b" / "fake.jpg").write_text("text named like a picture")
    truncated_jpeg(root / "a" / "half.jpg")
    os.symlink(root, root / "a" / "loop")
    return root


def _rows(path):
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def test_a_folder_is_walked_recursively_for_images_once_without_hidden_names(photos):
    found = [path.relative_to(photos).as_posix() for path, error in find_images([photos]) if error is None]
    assert found == [
        "a/deeper/digit-1.png",
        "a/deeper/digit-5.png",
        "a/digit-0.png",
        "a/digit-4.png",
        "a/half.jpg",
        "b/digit-2.png",
        "b/digit-6.png",
        "b/fake.jpg",
        "digit-3.png",
        "digit-7.png",
    ]  # the link a/loop leads back to a folder already walked; .hidden, .dotfile and notes.txt are left out
    pattern = [path.name for path, _ in find_images([str(photos / "**" / "digit-[01].png")])]
    assert pattern == ["digit-1.png", "digit-0.png"]
    twice = list(find_images([photos / "b" / "digit-2.png", photos / "b"]))
    assert [path.name for path, _ in twice] == ["digit-2.png", "digit-6.png", "fake.jpg"]
    with pytest.raises(HeadstartError, match="absent: no such file or folder"):
        list(find_images([photos / "absent"]))


def test_csv_rows_hold_the_networks_probabilities_and_each_unreadable_file_its_error(
    photos, digit_run_folder, tmp_path
):
    output = tmp_path / "preds.csv"
    result = runner.invoke(
        app, ["predict", str(photos), "--checkpoint", str(digit_run_folder), "-o", str(output), "--top", "3"]
    )
    assert result.exit_code == 0, result.output
    assert "8 images, 2 errors" in result.stdout and "images/s" in result.stdout
    rows = _rows(output)
    assert rows[0] == COLUMNS and len(rows) == 11
    by_path = {row[0]: row for row in rows[1:]}
    assert "not a readable image" in by_path[str(photos / "b" / "fake.jpg")][-1]
    assert "corrupt or truncated image" in by_path[str(photos / "a" / "half.jpg")][-1]
    network = load_model(digit_run_folder)
    good = [path for path, row in by_path.items() if not row[-1]]
    expected = network.predict([photos / path for path in good]).topk(3)
    for path, values, indices in zip(good, expected.values, expected.indices, strict=True):
        row = by_path[path]
        assert row[1:7:2] == [DIGITS[index] for index in indices.tolist()]
        assert [float(value) for value in row[2:7:2]] == pytest.approx(values.tolist(), abs=1e-5)


def test_skip_errors_writes_no_row_for_them_and_counts_them(photos, digit_run_folder, tmp_path):
    output = tmp_path / "preds.jsonl"
    arguments = ["predict", str(photos), "--checkpoint", str(digit_run_folder), "-o", str(output), "--skip-errors"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    assert "8 images, 2 errors" in result.stdout
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 8 and all(row["error"] is None and len(row["predictions"]) == 5 for row in rows)
    assert {prediction["label"] for row in rows for prediction in row["predictions"]} <= set(DIGITS)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_an_interrupted_run_continues_where_it_stopped(photos, digit_run_folder, tmp_path, suffix):
    """Interrupted after the first batch (Ctrl+C from the progress callback), a half-written last line
    appended as a kill mid-write leaves it: the second call drops that line, predicts only the rest,
    and the file equals an uninterrupted run's."""
    predictor = Predictor(load_model(digit_run_folder), device="cpu", top=3)
    whole = tmp_path / f"whole{suffix}"
    predict_to_file(predictor, [photos], whole, batch_size=4, workers=0)

    def stop(done, resumed):
        raise KeyboardInterrupt

    output = tmp_path / f"preds{suffix}"
    with pytest.raises(KeyboardInterrupt):
        predict_to_file(predictor, [photos], output, batch_size=4, workers=0, progress=stop)
    written = output.read_text().splitlines()
    assert len(written) == 4 + (suffix == ".csv")
    with open(output, "a", encoding="utf-8") as file:
        file.write(whole.read_text().splitlines()[len(written)][:25])  # cut short, no newline
    summary = predict_to_file(predictor, [photos], output, batch_size=4, workers=0)
    assert summary.resumed == 4 and summary.images + summary.errors == 6
    assert output.read_text() == whole.read_text()
    again = predict_to_file(predictor, [photos], output, batch_size=4, workers=0)
    assert again.resumed == 10 and again.images == again.errors == 0
    fresh = predict_to_file(predictor, [photos], output, batch_size=4, workers=0, overwrite=True)
    assert fresh.resumed == 0 and output.read_text() == whole.read_text()


def test_a_keyboard_interrupt_of_the_command_says_the_file_continues(photos, digit_run_folder, tmp_path, monkeypatch):
    import headstart.prediction_files as prediction_files

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prediction_files, "predict_to_file", interrupted)
    output = tmp_path / "preds.csv"
    result = runner.invoke(app, ["predict", str(photos), "--checkpoint", str(digit_run_folder), "-o", str(output)])
    assert result.exit_code == INTERRUPTED_EXIT_CODE
    assert result.stderr.strip().splitlines() == [
        f"error: interrupted; {output} keeps the rows written so far and the same command continues from there"
    ]


def test_worker_processes_give_the_same_rows_in_the_same_order(photos, digit_run_folder, tmp_path):
    predictor = Predictor(load_model(digit_run_folder), device="cpu", top=3)
    in_process = list(predict_files(predictor, find_images([photos]), batch_size=3, workers=0))
    in_workers = list(predict_files(predictor, find_images([photos]), batch_size=3, workers=2))
    assert [prediction.path for prediction in in_workers] == [prediction.path for prediction in in_process]
    for a, b in zip(in_process, in_workers, strict=True):
        assert a.labels == b.labels and a.error == b.error
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


@pytest.mark.parametrize("workers", [0, 2])
def test_files_are_read_as_batches_are_needed_not_all_first(digit_run_folder, tmp_path, workers):
    """The file list is consumed lazily: when the first prediction arrives, only the batches the loader
    prefetches have been taken from it (memory holds batches in flight, whatever the number of files)."""
    image = tmp_path / "one.png"
    Image.new("RGB", (20, 20), (200, 10, 10)).save(image)
    taken = 0

    def endless():
        nonlocal taken
        while True:
            taken += 1
            yield image, None

    predictor = Predictor(load_model(digit_run_folder), device="cpu")
    first = next(predict_files(predictor, endless(), batch_size=4, workers=workers))
    assert first.error is None and first.labels[0] in DIGITS
    assert taken <= 4 * (1 + 2 * max(workers, 1))  # the batch in hand plus prefetch_factor (2) per worker


def test_a_best_folder_predicts_as_its_run_and_its_card_is_read(photos, digit_run_folder, tmp_path):
    best = tmp_path / "best"
    shutil.copytree(digit_run_folder, best)
    (best / "MODEL_CARD.md").write_text("---\nlibrary_name: headstart\ntags: [digits]\n---\n# The winner\n")
    assert model_card(best) == {"library_name": "headstart", "tags": ["digits"]}
    assert model_card(best / "0-task") == {"library_name": "headstart", "tags": ["digits"]}
    assert model_card(digit_run_folder) is None
    image = str(next(path for path, _ in find_images([photos])))
    outputs = []
    for model in (best, digit_run_folder):
        result = runner.invoke(app, ["predict", image, "--checkpoint", str(model), "--json"])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.stdout))
    assert outputs[0] == outputs[1]


def _one_line_error(result, fragment):
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_user_errors_of_predict_over_folders(photos, digit_run_folder, tmp_path):
    checkpoint = ["--checkpoint", str(digit_run_folder)]
    _one_line_error(runner.invoke(app, ["predict", str(photos), "-o", str(tmp_path / "p.txt")]), "expected a file")
    _one_line_error(runner.invoke(app, ["predict", str(tmp_path / "*.png")]), "the pattern matches no file")
    _one_line_error(runner.invoke(app, ["predict", str(photos), *checkpoint, "--device", "tpu"]), "device='tpu'")
    output = tmp_path / "preds.csv"
    assert runner.invoke(app, ["predict", str(photos), *checkpoint, "-o", str(output), "--top", "2"]).exit_code == 0
    _one_line_error(
        runner.invoke(app, ["predict", str(photos), *checkpoint, "-o", str(output), "--top", "3"]), "the same --top"
    )
    overwritten = runner.invoke(app, ["predict", str(photos), *checkpoint, "-o", str(output), "--overwrite"])
    assert overwritten.exit_code == 0 and len(_rows(output)[0]) == 2 + 2 * 5
    # without --output an unreadable file stops the table naming it, as for a single file
    _one_line_error(runner.invoke(app, ["predict", str(photos), *checkpoint]), "half.jpg: corrupt or truncated")


def test_a_file_without_read_permission_gets_a_row_with_its_error(digit_run_folder, tmp_path, monkeypatch):
    locked = tmp_path / "images" / "locked.png"
    locked.parent.mkdir()
    Image.new("RGB", (20, 20)).save(locked)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads it anyway: the operating system's refusal is played by Pillow's open
        import headstart.data.images as images

        opened = images.Image.open

        def refuse(path, *args, **kwargs):
            if str(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return opened(path, *args, **kwargs)

        monkeypatch.setattr(images.Image, "open", refuse)
    predictor = Predictor(load_model(digit_run_folder), device="cpu")
    (prediction,) = predict_files(predictor, find_images([locked.parent]), workers=0)
    assert prediction.error == f"{locked}: cannot be read (permission denied)"


def test_the_progress_bar_starts_after_its_delay_on_a_terminal_only(photos, capsys):
    from headstart.cli.models import _Progress

    quiet = _Progress([str(photos)], delay=0.0)
    assert not quiet.enabled  # pytest's stderr is no terminal
    with quiet:
        quiet(3, 0)
    assert quiet.bar is None
    shown = _Progress([str(photos)], delay=0.0)
    shown.enabled = True
    with shown:
        shown._count()  # what the background thread does: 10 image files under the folder
        shown(4, 2)
        task = shown.bar.tasks[0]
        assert (task.completed, task.total) == (4, 8) and task.fields["rate"].endswith("images/s")
    later = _Progress([str(photos)], delay=60.0)
    later.enabled = True
    with later:
        later(4, 0)
    assert later.bar is None  # a run shorter than the delay shows no bar
