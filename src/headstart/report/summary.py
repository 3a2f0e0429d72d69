"""The numbers of a comparison, computed only from what its runs wrote on disk.

Read: ``compare.json`` (the plan: arms, seeds, label budgets, run folders), each run's ``run.json``
and ``stage.json`` files, ``probe.json`` files. Nothing is held over from the process that trained.
A single run folder is read as a comparison of one arm at one seed.

How time is counted (both promised gains are per arm, mean ± std over seeds):

* **final metric** — the judging metric on the test split after the last stage; the test split is
  seen by no stage. The comparison file's ``metric`` picks it: ``accuracy``, ``balanced_accuracy``
  (the mean of the per-class recalls), ``macro_f1``, or ``auto`` (the default): balanced accuracy
  when the labelled training classes of the runs are imbalanced beyond
  :data:`headstart.metrics.IMBALANCE_RATIO`, else accuracy (:func:`headstart.metrics.choose_metric`;
  the summary's ``metric_reason`` says which and why). Accuracy, balanced accuracy, macro F1 and each
  class's recall are reported whatever judges. The gain over the baseline is paired by seed (same
  test images and seed, different arm) and given as mean ± std of the per-seed differences, and
  judged by :mod:`headstart.verdict`: better, worse or not resolved, with its 95% interval
  (Holm-corrected over the arms tested against the baseline; with one seed, McNemar's exact test on
  the test images for accuracy, a paired bootstrap over them for the other metrics).
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
from headstart.metrics import Metric, choose_metric, class_metrics, imbalance
from headstart.verdict import Verdict, corrected, on_test_images, over_seeds, paired_bootstrap

METRIC_KEYS: dict[str, str] = {
    "accuracy": "test_accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "macro_f1": "macro_f1",
}
"""Where each judging metric (:data:`headstart.metrics.METRICS`) sits in a run's outcome and in an arm's
row of a budget's table (its spread over seeds)."""
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
    balanced_accuracy, macro_f1, recall = _class_scores(run)
    return {
        "folder": str(folder),
        "name": run.name,
        "seed": run.config.get("seed"),
        "config_hash": run.config_hash,
        "test_accuracy": float(run.test["accuracy"]) if run.test and "accuracy" in run.test else None,
        "test_count": int(run.test["count"]) if run.test and "count" in run.test else 0,
        "balanced_accuracy": balanced_accuracy,
        "macro_f1": macro_f1,
        "recall": recall,
        "train_class_counts": getattr(run, "train_class_counts", None),
        "confusion": run.test_confusion,
        "test_predictions": getattr(run, "test_predictions", None),
        "test_targets": getattr(run, "test_targets", None),
        "splits": getattr(run, "splits", None),
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


def _class_scores(run: Any) -> tuple[float | None, float | None, list[float | None] | None]:
    """Balanced accuracy, macro F1 and per-class recall of a run on its test split: as run.json records
    them, or — for runs written before they were — from its test confusion matrix
    (:func:`headstart.metrics.class_metrics`); ``None`` when neither is there."""
    test = run.test or {}
    recall = getattr(run, "test_recall", None)
    if "balanced_accuracy" in test and "macro_f1" in test and recall is not None:
        return float(test["balanced_accuracy"]), float(test["macro_f1"]), recall
    if not run.test_confusion:
        return None, None, None
    computed = class_metrics(run.test_confusion)
    return computed["balanced_accuracy"], computed["macro_f1"], computed["recall"]


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


def _paired_gains(runs: list[dict[str, Any]], other: list[dict[str, Any]], metric: str = "accuracy") -> list[float]:
    """``metric`` on the test split minus ``other``'s at the same seed, for the seeds both have."""
    key = METRIC_KEYS[metric]
    return [arm[key] - against[key] for arm, against in _pairs(runs, other, metric)]


def _recall_row(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Each class's test recall over an arm's seeds (``{"labels", "classes": [spread per class]}``);
    ``None`` when no run has one."""
    recalls = [o["recall"] for o in runs if o.get("recall")]
    if not recalls:
        return None
    labels = next((o["labels"] for o in runs if o.get("labels")), None) or [str(c) for c in range(len(recalls[0]))]
    return {
        "labels": labels,
        "classes": [
            _spread([float(r[c]) for r in recalls if c < len(r) and r[c] is not None]) for c in range(len(labels))
        ],
    }


def _budget_table(
    outcomes: dict[str, list[dict[str, Any]]],
    baseline: str,
    target: float | None,
    parents: dict[str, str] | None = None,
    metric: Metric = "accuracy",
) -> dict[str, Any]:
    parents = parents or {}
    base = outcomes.get(baseline, [])
    if target is None:
        bests = [max(point["val_accuracy"] for point in o["timeline"]) for o in base if o["timeline"]]
        target = min(bests) if bests else None
    arms = []
    for name, runs in outcomes.items():
        tests = [o["test_accuracy"] for o in runs if o["test_accuracy"] is not None]
        gains = _paired_gains(runs, base, metric)
        parent = parents.get(name) if parents.get(name) in outcomes else None
        reached = [reach(o["timeline"], target) for o in runs] if target is not None else [None] * len(runs)
        hits = [point for point in reached if point is not None]
        arms.append(
            {
                "name": name,
                "stages": [stage["name"] for stage in runs[0]["stages"]] if runs else [],
                "seeds": [o["seed"] for o in runs],
                "test_accuracy": _spread(tests),
                "balanced_accuracy": _spread(
                    [o["balanced_accuracy"] for o in runs if o.get("balanced_accuracy") is not None]
                ),
                "macro_f1": _spread([o["macro_f1"] for o in runs if o.get("macro_f1") is not None]),
                "recall": _recall_row(runs),
                "gain": _spread(gains) if name != baseline else _spread([0.0] * len(gains)),
                "extends": parent,
                "step_gain": _spread(_paired_gains(runs, outcomes[parent], metric)) if parent else None,
                "step_verdict": judge_runs(runs, outcomes[parent], metric).as_dict() if parent else None,
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
    # every arm against the baseline is one family of tests: Holm's correction over them
    tested = [name for name in outcomes if name != baseline and base and _pairs(outcomes[name], base, metric)]
    judged = corrected([judge_runs(outcomes[name], base, metric) for name in tested])
    for arm in arms:
        arm["verdict"] = None
    verdicts = dict(zip(tested, judged, strict=True))
    for arm in arms:
        if arm["name"] in verdicts:
            arm["verdict"] = verdicts[str(arm["name"])].as_dict()
    return {"target_val_accuracy": target, "baseline": baseline, "arms": arms, "metric": metric}


def _pairs(
    runs: list[dict[str, Any]], other: list[dict[str, Any]], metric: str = "accuracy"
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Runs of two arms at the same seed, both with a value of ``metric`` on the test split, in ``runs``' order."""
    key = METRIC_KEYS[metric]
    by_seed = {o["seed"]: o for o in other if o.get(key) is not None}
    return [(o, by_seed[o["seed"]]) for o in runs if o.get(key) is not None and o["seed"] in by_seed]


def judge_runs(runs: list[dict[str, Any]], other: list[dict[str, Any]], metric: Metric = "accuracy") -> Verdict:
    """``runs`` against ``other`` paired by seed in ``metric`` (:mod:`headstart.verdict`): Student's t
    over the seeds' differences; with one seed, when both runs recorded their predictions of the same
    test images, McNemar's exact test on them for accuracy, a paired bootstrap over them for balanced
    accuracy and macro F1 (McNemar's test counts images, so it fits accuracy only)."""
    pairs = _pairs(runs, other, metric)
    if len(pairs) == 1:
        arm, against = pairs[0]
        if (
            arm.get("test_predictions") is not None
            and against.get("test_predictions") is not None
            and arm.get("test_targets") is not None
            and arm.get("test_targets") == against.get("test_targets")
        ):
            if metric == "accuracy":
                return on_test_images(arm["test_predictions"], against["test_predictions"], arm["test_targets"])
            labels = arm.get("labels") or against.get("labels")
            return paired_bootstrap(
                arm["test_predictions"],
                against["test_predictions"],
                arm["test_targets"],
                metric=metric,
                num_classes=len(labels) if labels else None,
            )
    key = METRIC_KEYS[metric]
    return over_seeds([arm[key] - against[key] for arm, against in pairs], metric=metric)


def judged_metric(budget: dict[str, Any]) -> Metric:
    """The metric a budget's table was judged on (accuracy in tables written before the choice)."""
    return budget.get("metric") or "accuracy"


def judged_spread(arm: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """An arm's spread over seeds in the budget's judging metric (:func:`judged_metric`)."""
    return arm.get(METRIC_KEYS[judged_metric(budget)]) or {"mean": None, "std": None, "n": 0, "values": []}


def winner(budget: dict[str, Any]) -> dict[str, Any] | None:
    """The arm with the best mean in the judging metric and its verdict against the baseline
    (Holm-corrected over every arm tested against the baseline in this budget); ``None`` when no arm
    has a value of it."""
    scored = [arm for arm in budget["arms"] if judged_spread(arm, budget)["mean"] is not None]
    if not scored:
        return None
    best = max(scored, key=lambda arm: judged_spread(arm, budget)["mean"])
    return {"arm": best["name"], "verdict": best["verdict"]}


def contrast(budget: dict[str, Any], arm: str, against: str) -> dict[str, Any] | None:
    """``arm`` against ``against`` at one budget (a comparison's ``contrasts``), paired by seed and
    judged on its own in the budget's metric (:func:`judge_runs`); ``None`` when either arm has no
    finished run."""
    rows = {row["name"]: row for row in budget["arms"]}
    if arm not in rows or against not in rows or judged_spread(rows[arm], budget)["mean"] is None:
        return None
    metric = judged_metric(budget)
    if not _pairs(budget["runs"][arm], budget["runs"][against], metric):
        return None
    return {
        "arm": arm,
        "against": against,
        "verdict": judge_runs(budget["runs"][arm], budget["runs"][against], metric).as_dict(),
    }


def _most_imbalanced(outcomes: list[dict[str, Any]]) -> dict[str, int] | None:
    """The labelled training class counts of the run whose classes are most imbalanced (``None``
    when no run recorded them)."""
    counts = [o["train_class_counts"] for o in outcomes if o.get("train_class_counts")]
    return max(counts, key=imbalance) if counts else None


def summarise(folder: str | Path, *, write: bool = True) -> dict[str, Any]:
    """The comparison's table from its folder (module docstring); written to ``comparison.json``."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    target = (manifest.get("spec") or {}).get("target")
    choice = (manifest.get("spec") or {}).get("metric") or "auto"  # comparisons from before the choice: auto
    collected: list[tuple[int | None, dict[str, list[dict[str, Any]]]]] = []
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
        if outcomes:
            collected.append((budget, outcomes))
    everything = [o for _, outcomes in collected for runs in outcomes.values() for o in runs]
    metric, reason = choose_metric(choice, _most_imbalanced(everything))
    budgets = []
    for budget, outcomes in collected:
        table = _budget_table(outcomes, manifest["baseline"], target, manifest.get("extends"), metric)
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
        "metric": metric,
        "metric_choice": choice,
        "metric_reason": reason,
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
