"""The winner handed over: ``OUTPUT/best/`` (``OUTPUT/best/labels-N/`` per label budget) holds the
winning arm's run at one seed, as an ordinary run folder, with a model card.

Which arm
    The budget's winner (:func:`headstart.report.summary.winner`): the best mean over seeds in the
    judging metric on the test split, with its verdict against the baseline. The card states the
    verdict whatever it is: an arm that is "not resolved" against the baseline is handed over as
    the best measured, not as a proven gain.

Which seed
    The seed whose final network has the highest **validation** accuracy: the weights the run
    kept (the epoch restored by early stopping, else the last epoch) on the validation split,
    which no stage trains on. Ties go to the lower seed. The test split plays no part, so the test
    figures on the card stay an unbiased estimate for the network handed over (choosing the seed
    by test accuracy would report the maximum of several noisy draws).

What is written
    * the run folder of that seed (``run.json`` and every stage folder, weights hard-linked when
      the file system allows, else copied), so ``headstart predict --checkpoint``, ``export``,
      ``probe``, ``audit`` and :func:`headstart.checkpoint.load_network` take ``best/`` as they take
      any run folder;
    * ``best.json``: the arm, the seed, the rule and every seed's validation accuracy;
    * ``MODEL_CARD.md`` in the Hugging Face layout (YAML metadata, then model details, intended
      use, training data and splits, the recipe, evaluation with the verdict and its interval,
      per-class recall, limitations and the audit's result when an audit ran), written by
      :mod:`headstart.compare.card`.

The folder is built beside its place and renamed into it, so an interrupted hand-over leaves the
earlier ``best/`` or none, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from headstart.checkpoint import RunRecord, StageRecord
from headstart.errors import HeadstartError
from headstart.files import atomic_write_json

BEST_FOLDER = "best"
BEST_FILE = "best.json"
CARD_FILE = "MODEL_CARD.md"
SEED_RULE = (
    "the seed whose kept weights (the epoch early stopping restored, else the last) have the highest "
    "validation accuracy; ties go to the lower seed; the test split plays no part"
)


def kept_val_accuracy(run_folder: str | Path) -> float | None:
    """Validation accuracy of the weights a run kept: its final stage's restored best epoch, else its
    last epoch; ``None`` when the stage recorded none."""
    run = RunRecord.read(Path(run_folder))
    if not run.finished_stages:
        return None
    stage = StageRecord.read(Path(run_folder) / run.finished_stages[-1])
    rows = [row for row in stage.history if "val_accuracy" in row]
    if not rows:
        return None
    if stage.best_epoch is not None:
        kept = [row for row in rows if int(row.get("epoch", -1)) == int(stage.best_epoch)]
        if kept:
            return float(kept[-1]["val_accuracy"])
    return float(rows[-1]["val_accuracy"])


def pick_seed(runs: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run to hand over among one arm's ``runs`` (summary outcomes, module docstring), and every
    seed's validation accuracy as ``[{"seed", "val_accuracy", "folder"}]``."""
    if not runs:
        raise HeadstartError("hand-over: the winning arm has no finished run")
    scored = [
        {"seed": run["seed"], "val_accuracy": kept_val_accuracy(run["folder"]), "folder": run["folder"]} for run in runs
    ]
    ranked = sorted(
        zip(scored, runs, strict=True),
        key=lambda pair: (
            -(pair[0]["val_accuracy"] if pair[0]["val_accuracy"] is not None else -1.0),
            pair[0]["seed"] if pair[0]["seed"] is not None else 0,
        ),
    )
    return ranked[0][1], sorted(scored, key=lambda entry: entry["seed"] if entry["seed"] is not None else 0)


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (no bytes copied), or copy it where links cannot be made."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_run(source: Path, target: Path) -> None:
    """``source``'s run folder (``run.json`` and its finished stages) into the new folder ``target``."""
    run = RunRecord.read(source)
    target.mkdir(parents=True)
    for name in ("run.json", *[f"{stage}/" for stage in run.finished_stages]):
        if name.endswith("/"):
            shutil.copytree(source / name, target / name, copy_function=_link_or_copy)  # type: ignore[arg-type]
        else:
            shutil.copy2(source / name, target / name)


def best_folder(root: Path, budget: dict[str, Any], several: bool) -> Path:
    """Where a budget's winner goes: ``best/``, or ``best/labels-N/`` when a comparison has several budgets."""
    if several and budget.get("labels_per_class") is not None:
        return root / BEST_FOLDER / f"labels-{budget['labels_per_class']}"
    return root / BEST_FOLDER


def hand_over(root: str | Path, summary: dict[str, Any]) -> list[Path]:
    """Write the winner of every budget of ``summary`` (:func:`headstart.report.summary.summarise` of
    ``root``) into its ``best`` folder (module docstring); returns the folders written."""
    from headstart.compare.card import model_card

    root = Path(root)
    several = len(summary["budgets"]) > 1
    written = []
    for budget in summary["budgets"]:
        won = budget.get("winner")
        if won is None:
            continue
        run, seeds = pick_seed(budget["runs"][won["arm"]])
        target = best_folder(root, budget, several)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            shutil.rmtree(staging)
            copy_run(Path(run["folder"]), staging)
            record = {
                "arm": won["arm"],
                "seed": run["seed"],
                "labels_per_class": budget.get("labels_per_class"),
                "source": os.path.relpath(run["folder"], root),
                "rule": SEED_RULE,
                "seeds": [{**entry, "folder": os.path.relpath(entry["folder"], root)} for entry in seeds],
                "verdict": won.get("verdict"),
                "metric": budget.get("metric"),
            }
            atomic_write_json(staging / BEST_FILE, record)
            (staging / CARD_FILE).write_text(model_card(root, summary, budget, run, record), encoding="utf-8")
            if target.exists():
                retired = target.with_name(f".{target.name}-old")
                shutil.rmtree(retired, ignore_errors=True)
                target.rename(retired)
                staging.rename(target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written.append(target)
    return written


def usage_lines(folder: Path) -> list[str]:
    """The commands that use a handed-over model: predict, export, serve."""
    return [
        f"model handed over: {folder} (card: {folder / CARD_FILE})",
        f"  headstart predict --checkpoint {folder} IMAGES_OR_FOLDER --output predictions.csv",
        f"  headstart export {folder} --output model.onnx",
        f"  headstart serve {folder}",
    ]


__all__ = [
    "BEST_FILE",
    "BEST_FOLDER",
    "CARD_FILE",
    "SEED_RULE",
    "best_folder",
    "copy_run",
    "hand_over",
    "kept_val_accuracy",
    "pick_seed",
    "usage_lines",
]
