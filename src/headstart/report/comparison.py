"""Judge pretraining by its two promised gains: less time to converge and a better final metric.

The chapter's test of a pretraining strategy is a comparison with the same network trained from a
random start on the same labelled data. Two things can improve, and both are measured here per arm:

* the **final metric** — accuracy on the test split, which no stage has seen;
* the **time to converge** — how many epochs on the labelled data an arm needs before its
  validation accuracy reaches a target, by default the best validation accuracy the baseline arm
  (``scratch``) reached in all of its epochs. An arm that never reaches it gets ``None``.

Pretext and general-dataset stages are not counted as labelled epochs (they are the head start);
their wall time is, in each arm's total. :func:`write_comparison` writes ``comparison.json`` and a
figure ``comparison.png`` (validation curves on the labelled data, test accuracy per arm).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from headstart.checkpoint import atomic_write_bytes, atomic_write_json


@dataclass
class ArmOutcome:
    """What one arm of a comparison achieved."""

    name: str
    stages: list[str]
    test_accuracy: float
    seconds: float
    labelled_curve: list[float]
    """Validation accuracy after each epoch on the labelled data, stages in order."""
    head_start_seconds: float
    """Wall time of the stages before the labelled data (pretext or general dataset)."""


def arm_outcome(name: str, run_folder: str | Path) -> ArmOutcome:
    """Summarise a finished run as one arm of a comparison, from what it wrote on disk
    (``run.json`` and each stage's ``stage.json``), never from results held in memory."""
    from headstart.structure import RunRecord

    run = RunRecord.read(run_folder)
    if run.status != "finished":
        raise ValueError(f"arm {name!r}: the run in {run_folder} is {run.status}, not finished")
    curve: list[float] = []
    head_start = 0.0
    records = run.stage_records(run_folder)
    for record in records:
        if record.stage.pretext is not None or record.stage.data == "general":
            head_start += record.seconds
            continue
        curve.extend(float(row["val_accuracy"]) for row in record.history if "val_accuracy" in row)
    if run.test is None or "accuracy" not in run.test:
        raise ValueError(f"arm {name!r}: the run reports no test accuracy to compare")
    return ArmOutcome(name, [record.stage_name for record in records], float(run.test["accuracy"]),
                      float(run.seconds or 0.0), curve, head_start)


def epochs_to_reach(curve: list[float], target: float) -> int | None:
    """Number of labelled epochs until validation accuracy first reaches ``target`` (1-based)."""
    for epoch, value in enumerate(curve, start=1):
        if value >= target - 1e-9:
            return epoch
    return None


def compare(outcomes: list[ArmOutcome], baseline: str = "scratch") -> dict[str, Any]:
    """The comparison table: per arm, test accuracy, its gain over the baseline and epochs to converge."""
    by_name = {outcome.name: outcome for outcome in outcomes}
    if baseline not in by_name:
        raise ValueError(f"baseline arm {baseline!r} is not among the arms {sorted(by_name)}")
    reference = by_name[baseline]
    target = max(reference.labelled_curve) if reference.labelled_curve else None
    rows = []
    for outcome in outcomes:
        rows.append({
            **asdict(outcome),
            "test_gain": outcome.test_accuracy - reference.test_accuracy,
            "epochs_to_target": None if target is None else epochs_to_reach(outcome.labelled_curve, target),
            "labelled_epochs": len(outcome.labelled_curve),
        })
    return {"baseline": baseline, "target_val_accuracy": target, "arms": rows}


def _figure(table: dict[str, Any], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, bars) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    names = [row["name"] for row in table["arms"]]
    colours = {name: plt.get_cmap("tab10")(index) for index, name in enumerate(names)}
    for row in table["arms"]:
        epochs = range(1, len(row["labelled_curve"]) + 1)
        curves.plot(epochs, row["labelled_curve"], label=row["name"], color=colours[row["name"]], linewidth=1.6)
        if row["epochs_to_target"] is not None:
            curves.axvline(row["epochs_to_target"], color=colours[row["name"]], linestyle=":", linewidth=1)
    if table["target_val_accuracy"] is not None:
        curves.axhline(table["target_val_accuracy"], color="grey", linestyle="--", linewidth=1,
                       label=f"best of {table['baseline']}")
    curves.set_xlabel("epoch on the labelled data")
    curves.set_ylabel("validation accuracy")
    curves.set_title("time to converge")
    curves.grid(alpha=0.3)
    curves.legend(loc="lower right")
    accuracies = [row["test_accuracy"] for row in table["arms"]]
    drawn = bars.bar(names, accuracies, color=[colours[name] for name in names])
    for bar, row in zip(drawn, table["arms"]):
        bars.annotate(f"{row['test_accuracy']:.3f}\n{row['seconds']:.0f} s", (bar.get_x() + bar.get_width() / 2,
                      bar.get_height()), ha="center", va="bottom", fontsize=9)
    bars.set_ylim(0, min(1.0, max(accuracies) * 1.2) if accuracies else 1.0)
    bars.set_ylabel("test accuracy")
    bars.set_title("final metric")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def write_comparison(outcomes: list[ArmOutcome], folder: str | Path, *, title: str = "",
                     baseline: str = "scratch") -> dict[str, Any]:
    """Write ``comparison.json`` and ``comparison.png`` into ``folder``; return the table."""
    table = {"title": title, **compare(outcomes, baseline)}
    folder = Path(folder)
    atomic_write_bytes(folder / "comparison.png", _figure(table, title))
    atomic_write_json(folder / "comparison.json", table)
    return table
