"""Predictions over folders, written to a file that an interrupted run continues.

:func:`predict_to_file` streams the images :func:`headstart.inference.find_images` names through
:func:`headstart.inference.predict_files` and writes one row per image (path, top-k labels and
probabilities, or the file's error) to a ``.csv`` or ``.jsonl`` file, flushed after every batch.
Run again on the same output it skips the paths already written and drops a last line cut short by
an interruption, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from headstart.errors import HeadstartError
from headstart.inference import Predictor, batched, find_images, predict_files

OUTPUT_SUFFIXES = (".csv", ".jsonl")
"""The files :func:`predict_to_file` writes, by suffix."""


@dataclass
class PredictionSummary:
    """What one :func:`predict_to_file` call did."""

    output: Path
    images: int = 0
    """Images predicted in this call."""
    errors: int = 0
    """Images that could not be read (written with their error, or skipped with ``skip_errors``)."""
    resumed: int = 0
    """Paths found already written in ``output`` and not read again."""
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images predicted per second of the call (unreadable ones not counted)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One line: ``1,024 images, 2 errors, 96.3 images/s → preds.csv (300 already there)``."""
        resumed = f" ({self.resumed:,} already there)" if self.resumed else ""
        errors = f"{self.errors:,} error{'s' if self.errors != 1 else ''}"
        return (
            f"{self.images:,} images, {errors}, {self.images_per_second:.1f} images/s in {self.seconds:.1f} s "
            f"→ {self.output}{resumed}"
        )


def _columns(top: int) -> list[str]:
    ranked = [name for rank in range(1, top + 1) for name in (f"label_{rank}", f"probability_{rank}")]
    return ["path", *ranked, "error"]


def _output_kind(output: Path) -> str:
    suffix = output.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise HeadstartError(f"{output}: output suffix {suffix or '(none)'!r}; expected .csv or .jsonl")
    return suffix[1:]


def _written_paths(output: Path, kind: str, columns: list[str]) -> set[str]:
    """The paths ``output`` already holds; a last line without its newline (a write cut short) is
    removed from the file first."""
    data = output.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(output, "r+b") as file:
            file.truncate(end)
        data = data[:end]
    text = data.decode("utf-8")
    if kind == "jsonl":
        paths = set()
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                paths.add(str(json.loads(line)["path"]))
            except (ValueError, KeyError, TypeError):
                raise HeadstartError(
                    f"{output}: line {number} is not a prediction row; pass --overwrite to start afresh"
                ) from None
        return paths
    rows = list(csv.reader(io.StringIO(text)))
    if rows and rows[0] != columns:
        raise HeadstartError(
            f"{output}: its columns are {','.join(rows[0])[:120]}; expected {','.join(columns)[:120]} "
            "(the same --top), or pass --overwrite to start afresh"
        )
    return {row[0] for row in rows[1:] if row}


def predict_to_file(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    skip_errors: bool = False,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PredictionSummary:
    """Predict every image ``inputs`` name (:func:`find_images`) and write one row each to ``output``.

    ``.csv``: columns ``path,label_1,probability_1,…,label_k,probability_k,error`` (k = the
    predictor's ``top``, at most the number of classes); ``.jsonl``: one
    :meth:`Prediction.to_dict` per line. Rows are appended and flushed after every batch. When
    ``output`` exists, the paths it holds are skipped (``overwrite`` starts afresh), so rerunning
    an interrupted call continues it. An unreadable image is a row with its ``error`` (with
    ``skip_errors``, no row; counted either way). ``progress(done, resumed)`` is called after each
    batch with the images done in this call and the paths found already written.
    """
    output = Path(output)
    kind = _output_kind(output)
    classes = len(predictor.labels) if predictor.labels is not None else None
    columns = _columns(min(predictor.top, classes) if classes else predictor.top)
    done = set() if overwrite or not output.exists() else _written_paths(output, kind, columns)
    summary = PredictionSummary(output=output, resumed=len(done))
    pending = ((path, error) for path, error in find_images(inputs) if str(path) not in done)
    output.parent.mkdir(parents=True, exist_ok=True)
    fresh = overwrite or not output.exists() or output.stat().st_size == 0
    started = time.perf_counter()
    with open(output, "w" if fresh else "a", encoding="utf-8", newline="") as file:
        writer = csv.writer(file, lineterminator="\n") if kind == "csv" else None
        if writer is not None and fresh:
            writer.writerow(columns)
        width = (len(columns) - 2) // 2
        predictions = predict_files(predictor, pending, batch_size=batch_size, workers=workers)
        for batch in batched(predictions, batch_size):
            for prediction in batch:
                summary.errors += prediction.error is not None
                summary.images += prediction.error is None
                if prediction.error is not None and skip_errors:
                    continue
                if writer is None:
                    file.write(json.dumps(prediction.to_dict(), ensure_ascii=False) + "\n")
                else:
                    pairs = zip(prediction.labels, prediction.probabilities, strict=True)
                    cells = [(label, f"{probability:.6f}") for label, probability in pairs]
                    cells += [("", "")] * (width - len(cells))
                    writer.writerow([prediction.path, *itertools.chain(*cells), prediction.error or ""])
            file.flush()
            if progress is not None:
                progress(summary.images + summary.errors, summary.resumed)
    summary.seconds = time.perf_counter() - started
    return summary


__all__ = ["OUTPUT_SUFFIXES", "PredictionSummary", "predict_to_file"]
