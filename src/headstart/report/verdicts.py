"""How a comparison's numbers and verdicts are worded: the cells of the comparison table, the verdict
lines the terminal prints and the report boxes, and the list of effects the forest plot and the
effects tables show. Everything here reads a summary (:func:`headstart.report.summary.summarise`)
and writes text; the judging itself is :mod:`headstart.verdict`'s.
"""

from __future__ import annotations

from typing import Any

from headstart.metrics import METRICS
from headstart.report.summary import judged_metric, judged_spread, labels_per_class_text
from headstart.verdict import Verdict, from_dict, signed, verdict_text


def spread_text(values: dict[str, Any], digits: int = 4) -> str:
    """``mean ± std`` of a spread (``{"mean", "std", "n"}``); the mean alone for one value; ``—`` for none."""
    if values["mean"] is None:
        return "—"
    if values["n"] < 2:
        return f"{values['mean']:.{digits}f}"
    return f"{values['mean']:.{digits}f} ± {values['std']:.{digits}f}"


def metric_name(budget: dict[str, Any]) -> str:
    """How a sentence names the budget's judging metric: ``accuracy``, ``balanced accuracy``, ``macro F1``."""
    return METRICS[judged_metric(budget)]


def metric_line(summary: dict[str, Any]) -> str | None:
    """Which metric judged the comparison and why (``judged on balanced accuracy: the labelled classes
    are imbalanced, 900 (cat) against 40 (fox)``); ``None`` for a summary written before the choice."""
    return summary.get("metric_reason")


def arm_cells(arm: dict[str, Any], budget: dict[str, Any]) -> dict[str, str]:
    """The cells of an arm's row in the comparison table, as the terminal and the HTML report show
    them: test accuracy, balanced accuracy, gain over the baseline in the judging metric, its verdict,
    time and steps to the target, head start, wall time."""
    seeds = len(arm["seeds"])
    reached = bool(arm["reached"])
    verdict = from_dict(arm["verdict"]) if arm.get("verdict") else None
    balanced = arm.get("balanced_accuracy")
    return {
        "test": spread_text(arm["test_accuracy"]),
        "balanced": spread_text(balanced) if balanced else "—",
        "gain": "baseline" if arm["name"] == budget["baseline"] else spread_text(arm["gain"]),
        "verdict": "—" if verdict is None else short_verdict(verdict),
        "reach": f"{spread_text(arm['seconds_to_target'], 1)} s ({arm['reached']}/{seeds})"
        if reached
        else f"not reached (0/{seeds})",
        "steps": f"{spread_text(arm['full_steps_to_target'], 0)} full + "
        f"{spread_text(arm['cached_steps_to_target'], 0)} cached"
        if reached
        else "—",
        "head_start": f"{spread_text(arm['head_start_seconds'], 1)} s "
        f"({spread_text(arm['head_start_steps'], 0)} steps)",
        "wall": f"{spread_text(arm['seconds'], 1)} s",
    }


def short_verdict(verdict: Verdict) -> str:
    """A table cell: ``better [+0.056, +0.140] 3/3``; ``not resolved [−0.009, +0.025] 2/3, ~7 seeds``."""
    if verdict.low is None or verdict.high is None:
        return f"{verdict.word} (one seed)"
    cell = f"{verdict.word} [{signed(verdict.low)}, {signed(verdict.high)}]"
    if verdict.method == "paired t":
        cell += f" {verdict.better_in}/{verdict.n}"
    else:
        cell += " bootstrap" if verdict.method == "paired bootstrap" else " McNemar"
    if verdict.word == "not resolved" and verdict.seeds_needed is not None:
        cell += f", ~{verdict.seeds_needed} seeds" if verdict.seeds_needed <= 1000 else ", >1000 seeds"
    return cell


def summary_line(summary: dict[str, Any]) -> list[str]:
    """One line per label budget with a winner: which arm had the best test accuracy and its verdict
    against the baseline (:func:`budget_verdict`)."""
    return [line for line in map(budget_verdict, summary["budgets"]) if line is not None]


def _where(budget: dict[str, Any], several: bool = True) -> str:
    return f"{labels_per_class_text(budget['labels_per_class'])}: " if several and budget["labels_per_class"] else ""


def budget_verdict(budget: dict[str, Any]) -> str | None:
    """The verdict line of one label budget, or ``None`` when no arm has a value of the judging metric:
    the arm with its best mean, and whether it is better than the baseline (:mod:`headstart.verdict`)."""
    best = budget["winner"]
    if best is None:
        return None
    where = _where(budget, budget["labels_per_class"] is not None)
    arm = next(arm for arm in budget["arms"] if arm["name"] == best["arm"])
    accuracy = arm["test_accuracy"]
    if judged_metric(budget) == "accuracy":
        shown = f"test accuracy {spread_text(accuracy)} (n={accuracy['n']})"
    else:
        judged = judged_spread(arm, budget)
        shown = f"test {metric_name(budget)} {spread_text(judged)} (n={judged['n']}; accuracy {spread_text(accuracy)})"
    if best["arm"] == budget["baseline"]:
        return (
            f"{where}the baseline {best['arm']} had the best {shown}; no arm beat it — re-think pretraining "
            "that does not help"
        )
    if best["verdict"] is None:
        return (
            f"{where}{best['arm']} had the best {shown}; no run of the baseline {budget['baseline']} "
            "to judge it against"
        )
    verdict = from_dict(best["verdict"])
    lead = f"{best['arm']} won" if verdict.word == "better" else f"{best['arm']} had the best mean"
    return f"{where}{lead}, {shown}; against {budget['baseline']}: {verdict_text(verdict)}"


def contrast_lines(budget: dict[str, Any], several: bool = False) -> list[str]:
    """The verdict of each of the comparison's ``contrasts`` at one budget (prefixed with the label
    budget when ``several``): e.g. whether the pretraining before FixMatch adds anything once FixMatch runs."""
    where = _where(budget, several)
    return [
        f"{where}{judged['arm']} against {judged['against']}: {verdict_text(from_dict(judged['verdict']))}"
        for judged in budget.get("contrasts") or []
    ]


def step_lines(budget: dict[str, Any], several: bool = False) -> list[str]:
    """What each step added: for an arm that extends another (its stages begin with all of the other's),
    the verdict on its extra stages, paired by seed (prefixed with the label budget when ``several``)."""
    where = _where(budget, several)
    lines = []
    for arm in step_arms(budget):
        extra = step_names(arm, budget)
        lines.append(
            f"{where}{' → '.join(extra)} after {arm['extends']} ({arm['name']}): "
            + verdict_text(from_dict(arm["step_verdict"]))
        )
    return lines


def step_arms(budget: dict[str, Any]) -> list[dict[str, Any]]:
    """Arms that extend another arm other than the baseline (an arm extending the baseline is judged
    against it in the baseline's family already)."""
    return [
        arm
        for arm in budget["arms"]
        if arm.get("extends") and arm.get("step_verdict") and arm["extends"] != budget["baseline"]
    ]


def step_names(arm: dict[str, Any], budget: dict[str, Any]) -> list[str]:
    """The stages ``arm`` runs after those of the arm it extends."""
    parent = next(a for a in budget["arms"] if a["name"] == arm["extends"])
    return arm["stages"][len(parent["stages"]) :]


def effects(budget: dict[str, Any]) -> list[dict[str, Any]]:
    """Every paired comparison of one budget, as the forest plot and the effects table show them:
    ``{"label", "kind" ("baseline", "step" or "contrast"), "arm", "against", "verdict"}``."""
    rows: list[dict[str, Any]] = []
    for arm in budget["arms"]:
        if arm.get("verdict"):
            rows.append(
                {
                    "label": f"{arm['name']} − {budget['baseline']}",
                    "kind": "baseline",
                    "arm": arm["name"],
                    "against": budget["baseline"],
                    "verdict": arm["verdict"],
                }
            )
    for arm in step_arms(budget):
        rows.append(
            {
                "label": f"+{' → '.join(step_names(arm, budget))} ({arm['name']} − {arm['extends']})",
                "kind": "step",
                "arm": arm["name"],
                "against": arm["extends"],
                "verdict": arm["step_verdict"],
            }
        )
    for judged in budget.get("contrasts") or []:
        rows.append(
            {
                "label": f"{judged['arm']} − {judged['against']}",
                "kind": "contrast",
                "arm": judged["arm"],
                "against": judged["against"],
                "verdict": judged["verdict"],
            }
        )
    return rows
