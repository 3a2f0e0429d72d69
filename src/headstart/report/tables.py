"""Markdown tables of a comparison, rendered from its ``comparison.json`` — so that documents quote runs,
not numbers typed by hand.

``headstart report FOLDER --markdown`` prints them. A Markdown file can hold tables between markers::

    <!-- table: levels docs/results/demo.json -->
    ...rendered here...
    <!-- /table -->

and :func:`refresh` (``headstart report --refresh FILE.md``) re-renders every marked table from the
JSON it names (a path relative to the Markdown file's folder, or to the current folder). Kinds:

* ``levels`` — the judging metric (test accuracy, or the comparison's ``metric``) per arm (rows) and
  label budget (columns): mean ± std (n), the best mean of each budget in bold;
* ``arms`` — one budget's arms: stages, test accuracy, balanced accuracy (when the runs recorded it),
  the gain over the baseline in the judging metric with its verdict, and wall time per run;
* ``effects`` — every paired comparison of every budget (against the baseline, each added stage,
  each contrast): difference, 95% interval, seeds better, verdict and, when not resolved, the seeds
  a paired t-test needs (:mod:`headstart.verdict`); ``effects FILE contrast`` (or ``baseline``,
  ``step``) keeps one kind;
* ``recall`` — one budget's test recall of each class per arm, mean ± std over seeds: the small
  classes that accuracy hides;
* ``probes`` — one budget's linear and k-NN probes of each arm's backbones, mean ± std over seeds;
* ``time`` — one budget's time to the target validation accuracy: seeds that reached it, wall
  seconds (the head start included) and labelled steps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.files import atomic_write_bytes, read_json
from headstart.report.summary import judged_metric, judged_spread, labels_per_class_text
from headstart.report.verdicts import effects, metric_name, spread_text
from headstart.verdict import from_dict, seeds_text, signed

KINDS = ("levels", "arms", "effects", "probes", "time", "recall")
EFFECT_KINDS = ("baseline", "step", "contrast")
_BLOCK = re.compile(r"(<!-- table: (\w+) (\S+?)(?: (\S+))? -->\n)(.*?)(<!-- /table -->)", re.DOTALL)


def _budget_name(budget: dict[str, Any]) -> str:
    return "—" if budget["labels_per_class"] is None else str(budget["labels_per_class"])


def _rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def levels(summary: dict[str, Any]) -> str:
    """The judging metric (test accuracy unless the comparison chose another), arms × label budgets,
    mean ± std (n); each budget's best mean in bold."""
    budgets = summary["budgets"]
    best = {
        id(budget): max(
            (
                judged_spread(arm, budget)["mean"]
                for arm in budget["arms"]
                if judged_spread(arm, budget)["mean"] is not None
            ),
            default=None,
        )
        for budget in budgets
    }
    rows = []
    for name in summary["arms"]:
        row = [f"`{name}`"]
        for budget in budgets:
            arm = next((a for a in budget["arms"] if a["name"] == name), None)
            shown = judged_spread(arm, budget) if arm is not None else None
            if shown is None or shown["mean"] is None:
                row.append("—")
                continue
            text = f"{spread_text(shown, 3)} ({shown['n']})"
            row.append(f"**{text}**" if shown["mean"] == best[id(budget)] else text)
        rows.append(row)
    header = ["arm"] + [_level_header(budget) for budget in budgets]
    return _rows(header, rows)


def _level_header(budget: dict[str, Any]) -> str:
    """``test accuracy``; ``10 labels per class``; with another judging metric, its name too."""
    judged = judged_metric(budget) != "accuracy"
    if budget["labels_per_class"]:
        where = labels_per_class_text(budget["labels_per_class"])
        return f"{where}, {metric_name(budget)}" if judged else where
    return f"test {metric_name(budget)}"


def arms(summary: dict[str, Any], labels_per_class: int | None = None) -> str:
    """One budget's arms: stages, test accuracy, gain over the baseline and its verdict, wall time."""
    budget = _budget(summary, labels_per_class)
    balanced = any((arm.get("balanced_accuracy") or {}).get("mean") is not None for arm in budget["arms"])
    rows = []
    for arm in budget["arms"]:
        verdict = from_dict(arm["verdict"]) if arm.get("verdict") else None
        shown = arm.get("balanced_accuracy") or {"mean": None}
        rows.append(
            [
                f"`{arm['name']}`",
                " → ".join(arm["stages"]),
                f"{spread_text(arm['test_accuracy'], 3)} ({arm['test_accuracy']['n']})",
            ]
            + ([spread_text(shown, 3)] if balanced else [])
            + [
                "baseline" if verdict is None else _effect_cell(verdict),
                f"{spread_text(arm['seconds'], 1)} s",
            ]
        )
    judged = "" if judged_metric(budget) == "accuracy" else f"{metric_name(budget)} "
    return _rows(
        ["arm", "stages", "test accuracy (seeds)"]
        + (["balanced accuracy"] if balanced else [])
        + [f"{judged}against `{budget['baseline']}`, paired", "wall time per run"],
        rows,
    )


def _effect_cell(verdict: Any) -> str:
    if verdict.low is None or verdict.high is None:
        return f"{signed(verdict.mean)}, {verdict.word}"
    if verdict.method == "paired t":
        share = f", {verdict.better_in} of {verdict.n} seeds"
    else:
        share = ", bootstrap" if verdict.method == "paired bootstrap" else ", McNemar"
    return f"{signed(verdict.mean)} [{signed(verdict.low)}, {signed(verdict.high)}]{share}: **{verdict.word}**"


def effects_table(summary: dict[str, Any], kind: str | None = None) -> str:
    """Every paired comparison of every budget (:func:`headstart.report.verdicts.effects`), or only
    those of one ``kind`` (``baseline``, ``step`` or ``contrast``); the label-budget column only when
    the comparison has label budgets."""
    budgets = summary["budgets"]
    several = any(budget["labels_per_class"] is not None for budget in budgets)
    rows = []
    for budget in budgets:
        for row in effects(budget):
            if kind is not None and row["kind"] != kind:
                continue
            verdict = from_dict(row["verdict"])
            low, high = verdict.low, verdict.high
            interval = "—" if low is None or high is None else f"{signed(low)} to {signed(high)}"
            share = f"{verdict.better_in} of {verdict.n}" if verdict.method == "paired t" else verdict.method
            holm = f" (Holm, {verdict.family} arms)" if verdict.family > 1 else ""
            cells = [
                row["label"],
                signed(verdict.mean),
                interval,
                share,
                f"**{verdict.word}**{holm}",
                seeds_text(verdict.seeds_needed) or "—",
            ]
            rows.append(([_budget_name(budget)] if several else []) + cells)
    metric = summary.get("metric") or "accuracy"
    difference = "difference" if metric == "accuracy" else f"difference in {metric_name({'metric': metric})}"
    header = ["comparison", difference, "95% interval", "seeds better", "verdict", "to resolve"]
    return _rows((["labels per class"] if several else []) + header, rows)


def recall_table(summary: dict[str, Any], labels_per_class: int | None = None) -> str:
    """One budget's test recall of each class (columns) per arm (rows), mean ± std over seeds: the
    share of a class's test images the arm's network called by its name."""
    budget = _budget(summary, labels_per_class)
    recorded = [arm for arm in budget["arms"] if arm.get("recall")]
    if not recorded:
        return _rows(["arm", "recall per class"], [[f"`{arm['name']}`", "—"] for arm in budget["arms"]])
    labels = recorded[0]["recall"]["labels"]
    rows = []
    for arm in budget["arms"]:
        classes = (arm.get("recall") or {}).get("classes") or [{"mean": None}] * len(labels)
        rows.append([f"`{arm['name']}`"] + [spread_text(spread, 3) for spread in classes])
    return _rows(["arm"] + [f"recall of {label}" for label in labels], rows)


def probes(summary: dict[str, Any], labels_per_class: int | None = None) -> str:
    """One budget's probes: each arm's backbone at its start and after each stage, linear and k-NN."""
    budget = _budget(summary, labels_per_class)
    rows = [
        [
            f"`{arm['name']}`",
            probe["backbone"],
            spread_text(probe["linear"], 3),
            spread_text(probe["knn"], 3),
            str(probe["linear"]["n"]),
        ]
        for arm in budget["arms"]
        for probe in arm["probes"]
    ]
    return _rows(["arm", "backbone", "linear probe", "k-NN probe", "seeds"], rows)


def time_table(summary: dict[str, Any], labels_per_class: int | None = None) -> str:
    """One budget's time to converge: the seeds that reached the target, wall seconds from the run's
    start (head start included) and labelled steps (full, and head steps on cached features)."""
    budget = _budget(summary, labels_per_class)
    target = budget["target_val_accuracy"]
    rows = []
    for arm in budget["arms"]:
        seeds = len(arm["seeds"])
        reached = arm["reached"]
        rows.append(
            [
                f"`{arm['name']}`",
                f"{reached} of {seeds}",
                f"{spread_text(arm['seconds_to_target'], 1)} s" if reached else "—",
                f"{spread_text(arm['full_steps_to_target'], 0)} + {spread_text(arm['cached_steps_to_target'], 0)}"
                if reached
                else "—",
                f"{spread_text(arm['head_start_seconds'], 1)} s",
            ]
        )
    reach = "target" if target is None else f"val. accuracy {target:.3f}"
    return _rows(
        ["arm", f"seeds reaching {reach}", "wall time to it", "labelled steps to it (full + cached)", "head start"],
        rows,
    )


def _budget(summary: dict[str, Any], labels_per_class: int | None) -> dict[str, Any]:
    for budget in summary["budgets"]:
        if labels_per_class is None or budget["labels_per_class"] == labels_per_class:
            return budget
    raise HeadstartError(f"{summary['name']}: no label budget of {labels_per_class} per class")


def render(kind: str, summary: dict[str, Any], argument: str | None = None) -> str:
    """The Markdown table ``kind`` (:data:`KINDS`) of ``summary`` (a ``comparison.json``)."""
    if kind == "levels":
        return levels(summary)
    if kind == "arms":
        return arms(summary, int(argument) if argument else None)
    if kind == "effects":
        if argument is not None and argument not in EFFECT_KINDS:
            raise HeadstartError(f"effects table of {argument!r}: expected one of {', '.join(EFFECT_KINDS)}")
        return effects_table(summary, argument)
    if kind == "probes":
        return probes(summary, int(argument) if argument else None)
    if kind == "time":
        return time_table(summary, int(argument) if argument else None)
    if kind == "recall":
        return recall_table(summary, int(argument) if argument else None)
    raise HeadstartError(f"table kind {kind!r}: expected one of {', '.join(KINDS)}")


def refresh(path: str | Path, *, write: bool = True) -> str:
    """Re-render every marked table of the Markdown file ``path`` (module docstring) from the JSON it
    names; write the file back (atomic) when anything changed and ``write``; return the new text."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")

    def replace(match: re.Match[str]) -> str:
        opening, kind, source, argument, _, closing = match.groups()
        found = next((p for p in (path.parent / source, Path(source)) if p.is_file()), None)
        if found is None:
            raise HeadstartError(f"{path}: table source {source} not found (relative to {path.parent} or .)")
        return opening + render(kind, read_json(found), argument) + closing

    new = _BLOCK.sub(replace, text)
    if write and new != text:
        atomic_write_bytes(path, new.encode("utf-8"))
    return new


__all__ = [
    "EFFECT_KINDS",
    "KINDS",
    "arms",
    "effects_table",
    "levels",
    "probes",
    "recall_table",
    "refresh",
    "render",
    "time_table",
]
