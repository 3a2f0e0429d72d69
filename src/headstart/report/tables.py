"""Markdown tables of a comparison, rendered from its ``comparison.json`` — so that documents quote runs,
not numbers typed by hand.

``headstart report FOLDER --markdown`` prints them. A Markdown file can hold tables between markers::

    <!-- table: levels docs/results/demo.json -->
    ...rendered here...
    <!-- /table -->

and :func:`refresh` (``headstart report --refresh FILE.md``) re-renders every marked table from the
JSON it names (a path relative to the Markdown file's folder, or to the current folder). Kinds:

* ``levels`` — test accuracy per arm (rows) and label budget (columns): mean ± std (n), the best
  mean of each budget in bold;
* ``arms`` — one budget's arms: stages, test accuracy, the gain over the baseline with its verdict,
  and wall time per run;
* ``effects`` — every paired comparison of every budget (against the baseline, each added stage,
  each contrast): difference, 95% interval, seeds better, verdict and, when not resolved, the seeds
  a paired t-test needs (:mod:`headstart.verdict`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.files import atomic_write_bytes, read_json
from headstart.report.summary import effects, spread_text
from headstart.verdict import from_dict, seeds_text

KINDS = ("levels", "arms", "effects")
_BLOCK = re.compile(r"(<!-- table: (\w+) (\S+?)(?: (\S+))? -->\n)(.*?)(<!-- /table -->)", re.DOTALL)


def _budget_name(budget: dict[str, Any]) -> str:
    return "—" if budget["labels_per_class"] is None else str(budget["labels_per_class"])


def _rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def levels(summary: dict[str, Any]) -> str:
    """Test accuracy, arms × label budgets, mean ± std (n); each budget's best mean in bold."""
    budgets = summary["budgets"]
    best = {
        id(budget): max(
            (arm["test_accuracy"]["mean"] for arm in budget["arms"] if arm["test_accuracy"]["mean"] is not None),
            default=None,
        )
        for budget in budgets
    }
    rows = []
    for name in summary["arms"]:
        row = [f"`{name}`"]
        for budget in budgets:
            arm = next((a for a in budget["arms"] if a["name"] == name), None)
            if arm is None or arm["test_accuracy"]["mean"] is None:
                row.append("—")
                continue
            text = f"{spread_text(arm['test_accuracy'], 3)} ({arm['test_accuracy']['n']})"
            row.append(f"**{text}**" if arm["test_accuracy"]["mean"] == best[id(budget)] else text)
        rows.append(row)
    header = ["arm"] + [
        f"{_budget_name(budget)} labels per class" if budget["labels_per_class"] else "test accuracy"
        for budget in budgets
    ]
    return _rows(header, rows)


def arms(summary: dict[str, Any], labels_per_class: int | None = None) -> str:
    """One budget's arms: stages, test accuracy, gain over the baseline and its verdict, wall time."""
    budget = _budget(summary, labels_per_class)
    rows = []
    for arm in budget["arms"]:
        verdict = from_dict(arm["verdict"]) if arm.get("verdict") else None
        rows.append(
            [
                f"`{arm['name']}`",
                " → ".join(arm["stages"]),
                f"{spread_text(arm['test_accuracy'], 3)} ({arm['test_accuracy']['n']})",
                "baseline" if verdict is None else _effect_cell(verdict),
                f"{spread_text(arm['seconds'], 1)} s",
            ]
        )
    return _rows(
        ["arm", "stages", "test accuracy (seeds)", f"against `{budget['baseline']}`, paired", "wall time per run"],
        rows,
    )


def _effect_cell(verdict: Any) -> str:
    if verdict.low is None or verdict.high is None:
        return f"{verdict.mean:+.3f}, {verdict.word}"
    share = f", {verdict.better_in} of {verdict.n} seeds" if verdict.method == "paired t" else ", McNemar"
    return f"{verdict.mean:+.3f} [{verdict.low:+.3f}, {verdict.high:+.3f}]{share}: **{verdict.word}**"


def effects_table(summary: dict[str, Any]) -> str:
    """Every paired comparison of every budget (:func:`headstart.report.summary.effects`)."""
    rows = []
    for budget in summary["budgets"]:
        for row in effects(budget):
            verdict = from_dict(row["verdict"])
            interval = "—" if verdict.low is None else f"{verdict.low:+.3f} to {verdict.high:+.3f}"
            share = f"{verdict.better_in} of {verdict.n}" if verdict.method == "paired t" else verdict.method
            holm = f" (Holm, {verdict.family} arms)" if verdict.family > 1 else ""
            rows.append(
                [
                    _budget_name(budget),
                    row["label"],
                    f"{verdict.mean:+.3f}",
                    interval,
                    share,
                    f"**{verdict.word}**{holm}",
                    seeds_text(verdict.seeds_needed) or "—",
                ]
            )
    return _rows(
        ["labels per class", "comparison", "difference", "95% interval", "seeds better", "verdict", "to resolve"],
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
        return effects_table(summary)
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


__all__ = ["KINDS", "arms", "effects_table", "levels", "refresh", "render"]
