"""The numbers of a comparison, computed only from what its runs wrote on disk.

Read: ``compare.json`` (the plan: arms, seeds, label budgets, run folders), each run's ``run.json``
and ``stage.json`` files, ``probe.json`` files. Nothing is held over from the process that trained.
A single run folder is read as a comparison of one arm at one seed.

How time is counted (both promised gains are per arm, mean ± std over seeds):

* **final metric** — test accuracy after the last stage; the test split is seen by no stage.
  The gain over the baseline is paired by seed (same splits and seed, different arm) and given as
  mean ± std of the per-seed differences.
* **time to target** — the first labelled epoch whose validation accuracy reaches the target (by
  default the lowest of the baseline's best validation accuracies over seeds, so the baseline
  reaches it at every seed). Counted two ways:

  - *wall seconds* from the start of the run's first stage: the head start (pretext or
    general-dataset stages) and feature caching included, validation passes included;
  - *training steps* on the labelled data, split into **full steps** (a forward and backward pass
    through the whole network) and **head steps on cached features** (the backbone frozen and its
    features computed once: such a step costs a small fraction of a full one, so it is never
    added to full steps). Steps of the head start are reported on their own.

Spread is the sample standard deviation over seeds (n − 1 in the denominator); one seed has none.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypedDict

from headstart.errors import HeadstartError
from headstart.files import COMPARISON_FILE, RUN_FILE, atomic_write_json, is_comparison, is_run, read_json

MANIFEST_FILE = COMPARISON_FILE
"""The comparison's manifest (:data:`headstart.files.COMPARISON_FILE`), under the name compare.py imports."""
SUMMARY_FILE = "comparison.json"


class TimelinePoint(TypedDict):
    """One validation epoch of a run's labelled stages, on the run's clock (``run_outcome``)."""

    val_accuracy: float
    seconds: float
    full_steps: int
    cached_steps: int
    stage: str


def labels_per_class_text(count: int) -> str:
    """``"1 label per class"``, ``"10 labels per class"``: a label budget as every title and line writes it."""
    return f"{count} label per class" if count == 1 else f"{count} labels per class"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for a single value; ``None`` for none)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))


def load_manifest(folder: str | Path) -> dict[str, Any]:
    """The plan of a comparison folder, or a one-arm, one-seed plan for a single run folder."""
    from headstart.structure import RunRecord

    folder = Path(folder)
    if is_comparison(folder):
        return read_json(folder / COMPARISON_FILE)
    if is_run(folder):
        record = RunRecord.read(folder)
        return {
            "name": record.name,
            "arms": [record.name],
            "baseline": record.name,
            "seeds": [record.config.get("seed", 0)],
            "label_budgets": None,
            "spec": {},
            "runs": [{"arm": record.name, "seed": record.config.get("seed", 0), "budget": None, "folder": "."}],
            "hardware": record.hardware,
            "versions": record.versions,
        }
    raise HeadstartError(f"{folder}: neither a comparison ({COMPARISON_FILE}) nor a run folder ({RUN_FILE})")


def run_outcome(folder: Path) -> dict[str, Any] | None:
    """One finished run as the report needs it; ``None`` when the run has not finished."""
    from headstart.probe import read_probe
    from headstart.structure import RunRecord

    if not is_run(folder):
        return None
    run = RunRecord.read(folder)
    if run.status != "finished":
        return None
    records = run.stage_records(folder)
    elapsed = 0.0
    full_steps = cached_steps = head_start_steps = 0
    head_start_seconds = 0.0
    timeline: list[TimelinePoint] = []
    stages = []
    for record in records:
        head_start = record.stage.pretext is not None or record.stage.data == "general"
        stages.append(
            {
                "name": record.stage_name,
                "folder": record.folder.name if record.folder else record.stage_name,
                "head_start": head_start,
                "seconds": record.seconds,
                "steps": record.steps,
                "cached_features": record.cached_features,
                "learning_rates": record.learning_rates,
                "step_losses": record.step_losses,
                "frozen": len(record.frozen),
                "bn_policy": record.bn_policy,
                "pretext": record.stage.pretext.name if record.stage.pretext else None,
                "diagnostics": record.diagnostics,
                "unlabelled_used": [
                    float(row["train_unlabelled_used"]) for row in record.history if "train_unlabelled_used" in row
                ],
                "probe": (
                    probe.model_dump() if record.folder is not None and (probe := read_probe(record.folder)) else None
                ),
            }
        )
        if head_start:
            head_start_seconds += record.seconds
            head_start_steps += record.steps
            elapsed += record.seconds
            continue
        trained = record.history[-1].get("seconds", 0.0) if record.history else 0.0
        overhead = max(0.0, record.seconds - trained)  # feature caching, set-up, last checkpoint
        for row in record.history:
            if "val_accuracy" not in row:
                continue
            steps = int(row.get("steps", 0))
            timeline.append(
                {
                    "val_accuracy": float(row["val_accuracy"]),
                    "seconds": elapsed + overhead + float(row.get("seconds", 0.0)),
                    "full_steps": full_steps + (0 if record.cached_features else steps),
                    "cached_steps": cached_steps + (steps if record.cached_features else 0),
                    "stage": record.stage_name,
                }
            )
        elapsed += record.seconds
        if record.cached_features:
            cached_steps += record.steps
        else:
            full_steps += record.steps
    init_probe = folder / "init-probe.json"
    return {
        "folder": str(folder),
        "name": run.name,
        "seed": run.config.get("seed"),
        "config_hash": run.config_hash,
        "test_accuracy": float(run.test["accuracy"]) if run.test and "accuracy" in run.test else None,
        "test_count": int(run.test["count"]) if run.test and "count" in run.test else 0,
        "confusion": run.test_confusion,
        "labels": run.labels,
        "seconds": float(run.seconds or 0.0) + run.earlier_seconds,
        "head_start_seconds": head_start_seconds,
        "head_start_steps": head_start_steps,
        "timeline": timeline,
        "stages": stages,
        "hardware": run.hardware,
        "versions": run.versions,
        "init_probe": read_json(init_probe) if init_probe.is_file() else None,
    }


def reach(timeline: list[TimelinePoint], target: float) -> dict[str, Any] | None:
    """The first point of a labelled timeline whose validation accuracy reaches ``target``."""
    for epoch, point in enumerate(timeline, start=1):
        if point["val_accuracy"] >= target - 1e-9:
            return {**point, "epoch": epoch}
    return None


def _spread(values: list[float]) -> dict[str, Any]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def _probe_rows(outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probe scores per backbone (the start, then each stage), mean ± std over seeds."""
    rows: dict[str, dict[str, list[float]]] = {}
    order: list[str] = []
    settings: dict[str, Any] = {}
    for outcome in outcomes:
        probes = [("start (before any stage)", outcome["init_probe"])]
        probes += [(f"after {stage['name']}", stage["probe"]) for stage in outcome["stages"]]
        for label, probe in probes:
            if probe is None:
                continue
            if label not in rows:
                rows[label] = {"linear": [], "knn": []}
                order.append(label)
            rows[label]["linear"].append(probe["linear_accuracy"])
            rows[label]["knn"].append(probe["knn_accuracy"])
            settings = {
                **probe["settings"],
                "bank": f"{probe['bank_split']} ({probe['bank_size']} images)",
                "probed": f"{probe['probe_split']} ({probe['probe_size']} images)",
            }
    return [
        {
            "backbone": label,
            "linear": _spread(rows[label]["linear"]),
            "knn": _spread(rows[label]["knn"]),
            "settings": settings,
        }
        for label in order
    ]


def _paired_gains(runs: list[dict[str, Any]], other: list[dict[str, Any]]) -> list[float]:
    """Test accuracy minus ``other``'s at the same seed, for the seeds both have."""
    by_seed = {o["seed"]: o["test_accuracy"] for o in other if o["test_accuracy"] is not None}
    return [
        o["test_accuracy"] - by_seed[o["seed"]] for o in runs if o["test_accuracy"] is not None and o["seed"] in by_seed
    ]


def _budget_table(
    outcomes: dict[str, list[dict[str, Any]]],
    baseline: str,
    target: float | None,
    parents: dict[str, str] | None = None,
) -> dict[str, Any]:
    parents = parents or {}
    base = outcomes.get(baseline, [])
    if target is None:
        bests = [max(point["val_accuracy"] for point in o["timeline"]) for o in base if o["timeline"]]
        target = min(bests) if bests else None
    arms = []
    for name, runs in outcomes.items():
        tests = [o["test_accuracy"] for o in runs if o["test_accuracy"] is not None]
        gains = _paired_gains(runs, base)
        parent = parents.get(name) if parents.get(name) in outcomes else None
        reached = [reach(o["timeline"], target) for o in runs] if target is not None else [None] * len(runs)
        hits = [point for point in reached if point is not None]
        arms.append(
            {
                "name": name,
                "stages": [stage["name"] for stage in runs[0]["stages"]] if runs else [],
                "seeds": [o["seed"] for o in runs],
                "test_accuracy": _spread(tests),
                "gain": _spread(gains) if name != baseline else _spread([0.0] * len(gains)),
                "extends": parent,
                "step_gain": _spread(_paired_gains(runs, outcomes[parent])) if parent else None,
                "seconds": _spread([o["seconds"] for o in runs]),
                "head_start_seconds": _spread([o["head_start_seconds"] for o in runs]),
                "head_start_steps": _spread([float(o["head_start_steps"]) for o in runs]),
                "reached": len(hits),
                "seconds_to_target": _spread([point["seconds"] for point in hits]),
                "full_steps_to_target": _spread([float(point["full_steps"]) for point in hits]),
                "cached_steps_to_target": _spread([float(point["cached_steps"]) for point in hits]),
                "epochs_to_target": _spread([float(point["epoch"]) for point in hits]),
                "labelled_epochs": len(runs[0]["timeline"]) if runs else 0,
                "probes": _probe_rows(runs),
                "config_hashes": sorted({o["config_hash"] for o in runs}),
            }
        )
    return {"target_val_accuracy": target, "baseline": baseline, "arms": arms}


def _judge(gain: dict[str, Any], arm: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """A paired gain of ``arm`` over ``other`` judged against the spread between seeds (the larger
    std of the two arms' test accuracies): it counts only when its mean exceeds that spread."""
    spread = max(arm["test_accuracy"]["std"] or 0.0, other["test_accuracy"]["std"] or 0.0)
    mean = gain["mean"] or 0.0
    return {
        "gain": mean,
        "gain_std": gain["std"],
        "spread": spread,
        "exceeds_spread": arm["name"] != other["name"] and mean > spread and arm["test_accuracy"]["n"] > 1,
        "positive_seeds": sum(1 for value in gain["values"] if value > 0),
        "seeds": len(gain["values"]),
    }


def winner(budget: dict[str, Any]) -> dict[str, Any] | None:
    """The arm with the best mean test accuracy, its gain over the baseline, and whether the gain
    exceeds the spread between seeds (the larger std of the two arms' test accuracies)."""
    scored = [arm for arm in budget["arms"] if arm["test_accuracy"]["mean"] is not None]
    if not scored:
        return None
    best = max(scored, key=lambda arm: arm["test_accuracy"]["mean"])
    base = next(arm for arm in budget["arms"] if arm["name"] == budget["baseline"])
    return {"arm": best["name"], **_judge(best["gain"], best, base)}


def contrast(budget: dict[str, Any], arm: str, against: str) -> dict[str, Any] | None:
    """``arm`` against ``against`` at one budget (a comparison's ``contrasts``): the paired gain in
    test accuracy and whether it exceeds the spread; ``None`` when either arm has no finished run."""
    rows = {row["name"]: row for row in budget["arms"]}
    if arm not in rows or against not in rows or rows[arm]["test_accuracy"]["mean"] is None:
        return None
    gain = _spread(_paired_gains(budget["runs"][arm], budget["runs"][against]))
    if gain["mean"] is None:
        return None
    return {"arm": arm, "against": against, **_judge(gain, rows[arm], rows[against])}


def summarise(folder: str | Path, *, write: bool = True) -> dict[str, Any]:
    """The comparison's table from its folder (module docstring); written to ``comparison.json``."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    target = (manifest.get("spec") or {}).get("target")
    budgets = []
    missing = []
    for budget in manifest.get("label_budgets") or [None]:
        outcomes: dict[str, list[dict[str, Any]]] = {arm: [] for arm in manifest["arms"]}
        for entry in manifest["runs"]:
            if entry["budget"] != budget:
                continue
            outcome = run_outcome(folder / entry["folder"])
            if outcome is None:
                missing.append(entry["folder"])
                continue
            outcome["seed"] = entry["seed"]
            outcomes[entry["arm"]].append(outcome)
        outcomes = {arm: runs for arm, runs in outcomes.items() if runs}
        if not outcomes:
            continue
        table = _budget_table(outcomes, manifest["baseline"], target, manifest.get("extends"))
        table["labels_per_class"] = budget
        table["winner"] = winner(table)
        table["runs"] = outcomes
        pairs = (manifest.get("spec") or {}).get("contrasts") or []
        table["contrasts"] = [
            judged for pair in pairs if (judged := contrast(table, pair["arm"], pair["against"])) is not None
        ]
        budgets.append(table)
    if not budgets:
        raise HeadstartError(f"{folder}: no finished run to report on yet")
    summary = {
        "name": manifest["name"],
        "baseline": manifest["baseline"],
        "seeds": manifest["seeds"],
        "arms": manifest["arms"],
        "budgets": budgets,
        "unfinished": missing,
        "hardware": manifest.get("hardware", {}),
        "versions": manifest.get("versions", {}),
    }
    if write:
        slim = {
            **summary,
            "budgets": [{key: value for key, value in budget.items() if key != "runs"} for budget in budgets],
        }
        atomic_write_json(folder / SUMMARY_FILE, slim)
    return summary


def spread_text(values: dict[str, Any], digits: int = 4) -> str:
    """``mean ± std`` of a spread (``{"mean", "std", "n"}``); the mean alone for one value; ``—`` for none."""
    if values["mean"] is None:
        return "—"
    if values["n"] < 2:
        return f"{values['mean']:.{digits}f}"
    return f"{values['mean']:.{digits}f} ± {values['std']:.{digits}f}"


def arm_cells(arm: dict[str, Any], budget: dict[str, Any]) -> dict[str, str]:
    """The cells of an arm's row in the comparison table, as the terminal and the HTML report show
    them: test accuracy, gain over the baseline, time and steps to the target, head start, wall time."""
    seeds = len(arm["seeds"])
    reached = bool(arm["reached"])
    return {
        "test": spread_text(arm["test_accuracy"]),
        "gain": "baseline" if arm["name"] == budget["baseline"] else spread_text(arm["gain"]),
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


def summary_line(summary: dict[str, Any]) -> list[str]:
    """One line per label budget with a winner: which arm won, by how much, and whether that beats
    the spread (:func:`budget_verdict`)."""
    return [line for line in map(budget_verdict, summary["budgets"]) if line is not None]


def budget_verdict(budget: dict[str, Any]) -> str | None:
    """The verdict line of one label budget, or ``None`` when no arm has a test accuracy."""
    best = budget["winner"]
    if best is None:
        return None
    where = f"{labels_per_class_text(budget['labels_per_class'])}: " if budget["labels_per_class"] is not None else ""
    arm = next(arm for arm in budget["arms"] if arm["name"] == best["arm"])
    accuracy = arm["test_accuracy"]
    text = (
        f"{where}{best['arm']} won with test accuracy {accuracy['mean']:.4f} ± {accuracy['std']:.4f} "
        f"(n={accuracy['n']})"
    )
    if best["arm"] == budget["baseline"]:
        text += f"; no arm beat the baseline {budget['baseline']} — re-think pretraining that does not help"
    else:
        text += (
            f", {best['gain']:+.4f} ± {best['gain_std']:.4f} over {budget['baseline']} "
            f"(paired by seed, better in {best['positive_seeds']} of {best['seeds']}); "
        )
        text += _spread_text(best, accuracy["n"])
    return text


def _spread_text(judged: dict[str, Any], seeds: int) -> str:
    if seeds < 2:
        return "one seed: no spread to judge the gain against"
    if judged["exceeds_spread"]:
        return f"the gain exceeds the spread between seeds (±{judged['spread']:.4f})"
    return f"the gain is within the spread between seeds (±{judged['spread']:.4f})"


def contrast_lines(budget: dict[str, Any], several: bool = False) -> list[str]:
    """The verdict of each of the comparison's ``contrasts`` at one budget (prefixed with the label
    budget when ``several``): e.g. whether the pretraining before FixMatch gains more than the spread."""
    where = f"{labels_per_class_text(budget['labels_per_class'])}: " if several else ""
    lines = []
    for judged in budget.get("contrasts") or []:
        spread = f" ± {judged['gain_std']:.4f}" if judged["gain_std"] is not None else ""
        lines.append(
            f"{where}{judged['arm']} against {judged['against']}: {judged['gain']:+.4f}{spread} "
            f"(paired by seed, better in {judged['positive_seeds']} of {judged['seeds']}); "
            + _spread_text(judged, judged["seeds"])
        )
    return lines


def step_lines(budget: dict[str, Any], several: bool = False) -> list[str]:
    """What each step added: for an arm that extends another (its stages begin with all of the other's),
    the paired gain of its extra stages (prefixed with the label budget when ``several``)."""
    where = f"{labels_per_class_text(budget['labels_per_class'])}: " if several else ""
    lines = []
    for arm in budget["arms"]:
        gain = arm.get("step_gain")
        if not arm.get("extends") or not gain or gain["mean"] is None:
            continue
        extra = arm["stages"][len(next(a for a in budget["arms"] if a["name"] == arm["extends"])["stages"]) :]
        better = sum(1 for value in gain["values"] if value > 0)
        spread = f" ± {gain['std']:.4f}" if gain["std"] is not None else ""
        lines.append(
            f"{where}{' → '.join(extra)} added {gain['mean']:+.4f}{spread} to {arm['extends']} "
            f"({arm['name']}; paired by seed, better in {better} of {len(gain['values'])})"
        )
    return lines
