"""``MODEL_CARD.md`` for a handed-over winner (:mod:`headstart.compare.handover`), in the Hugging Face
layout: YAML metadata between ``---`` lines (``library_name``, ``tags``, ``datasets``, ``metrics``,
``base_model``, a ``model-index`` with the test results), then sections — model details, intended
use, training data and splits, the recipe, evaluation (the verdict with its 95% interval and the
per-class recall), how the seed was chosen, limitations, the security audit, how to use it.

Model cards: Mitchell et al. 2019, "Model Cards for Model Reporting" (FAT* '19); the layout is
Hugging Face's ``modelcard_template.md``. Everything on the card is read from files the comparison
wrote: ``run.json`` and ``stage.json`` of the run handed over, the summary, ``data-check.json``,
``label-issues.json`` and ``audit-report.json`` when present.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from headstart.checkpoint import RunRecord, StageRecord
from headstart.data.findings import CHECK_FILE
from headstart.files import read_json


def _parameters(stage_folder: Path) -> int | None:
    """Tensors' elements in a stage's ``weights.safetensors`` (read from its header only)."""
    weights = stage_folder / "weights.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as tensors:
        return sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())  # noqa: SIM118


def _spread(values: dict[str, Any] | None) -> str:
    if not values or values.get("mean") is None:
        return "—"
    if values.get("n", 1) < 2:
        return f"{values['mean']:.4f}"
    return f"{values['mean']:.4f} ± {values['std']:.4f} (n = {values['n']})"


def _front_matter(summary: dict[str, Any], budget: dict[str, Any], run: dict[str, Any], config: dict) -> str:
    model = config.get("model") or {}
    source = ((config.get("data") or {}).get("source")) or {}
    dataset = source.get("path") or source.get("kind") or "unknown"
    pretexts = sorted({stage["pretext"] for stage in run.get("stages", []) if stage.get("pretext")})
    metadata: dict[str, Any] = {
        "library_name": "headstart",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "transfer-learning", "headstart", *pretexts],
        "datasets": [str(dataset)],
        "metrics": ["accuracy", "balanced_accuracy"],
    }
    if model.get("weights") == "imagenet":
        metadata["base_model"] = f"timm/{model.get('name')}"
    results = [{"type": "accuracy", "name": "test accuracy, this seed", "value": run.get("test_accuracy")}]
    if run.get("balanced_accuracy") is not None:
        results.append(
            {
                "type": "balanced_accuracy",
                "name": "test balanced accuracy, this seed",
                "value": run["balanced_accuracy"],
            }
        )
    metadata["model-index"] = [
        {
            "name": f"{summary['name']}/{run['arm']}",
            "results": [
                {
                    "task": {"type": "image-classification"},
                    "dataset": {"name": str(dataset), "type": str(source.get("kind", "unknown"))},
                    "metrics": [row for row in results if row["value"] is not None],
                }
            ],
        }
    ]
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n"


def _recipe(folder: Path, stages: list[str]) -> list[str]:
    lines = [
        "| stage | data | pretext | epochs | frozen tensors | BatchNorm | optimizer | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in stages:
        record = StageRecord.read(folder / name)
        spec = record.stage
        semi = f" + {spec.semi_supervised.method}" if spec.semi_supervised is not None else ""
        optimizer = spec.optimizer
        lines.append(
            f"| {record.stage_name} | {spec.data}{semi} | {spec.pretext.name if spec.pretext else '—'} | "
            f"{len(record.history)} | {len(record.frozen)} | {record.bn_policy} | "
            f"{optimizer.name}, lr {optimizer.lr:g}, {optimizer.schedule} | {record.seconds:.0f} s |"
        )
    return lines


def _limitations(root: Path, budget: dict[str, Any], run: dict[str, Any], record: dict[str, Any]) -> list[str]:
    notes = []
    verdict = record.get("verdict") or {}
    if verdict.get("word") != "better":
        notes.append(
            f"- Against the baseline ({budget['baseline']}) this arm is **{verdict.get('word', 'not judged')}**: "
            "it had the best mean, which is not evidence that it is better."
        )
    count = run.get("test_count") or 0
    if count:
        notes.append(
            f"- The test split holds {count} images; one image is {100 / count:.2g} points of accuracy. "
            "The interval in Evaluation is the honest precision."
        )
    labelled = ((run.get("splits") or {}).get("labelled")) or 0
    if labelled:
        notes.append(f"- Trained on {labelled} labelled images; classes or conditions absent from them are unknown.")
    check_file = root / CHECK_FILE
    if check_file.is_file():
        check = read_json(check_file)
        notes.append(f"- Data check before training: {check.get('summary', 'recorded')}")
    issues = Path(run["folder"]) / run["stages"][-1]["folder"] / "label-issues.json" if run.get("stages") else None
    if issues is not None and issues.is_file():
        found = read_json(issues)
        notes.append(
            f"- cleanlab flags {found.get('flagged', 0)} of {found.get('images', 0)} labelled images as possibly "
            "mislabelled (`label-issues.json` in the final stage)."
        )
    notes.append("- Inputs unlike the training images (other cameras, resolutions, classes) are out of scope.")
    return notes


def _audit(root: Path, run_folder: Path) -> list[str]:
    from headstart.report.audit import AUDIT_DATA_FILE, audit_summary

    for folder in (run_folder, root):
        path = folder / AUDIT_DATA_FILE
        if path.is_file():
            return ["## Security audit", "", audit_summary(read_json(path)), ""]
    return [
        "## Security audit",
        "",
        "No audit ran. `headstart audit best/` runs the target-agnostic attack on transfer-learned models "
        "(Rezaei & Liu, ICLR 2020).",
        "",
    ]


def model_card(
    root: Path, summary: dict[str, Any], budget: dict[str, Any], run: dict[str, Any], record: dict[str, Any]
) -> str:
    """The card's Markdown for ``run`` (a summary outcome of the winning arm), handed over as ``record``
    (the content of ``best.json``)."""
    from headstart.report.verdicts import budget_verdict, contrast_lines, metric_line

    run = {**run, "arm": record["arm"]}
    folder = Path(run["folder"])
    saved = RunRecord.read(folder)
    config = saved.config
    final = saved.finished_stages[-1]
    final_record = StageRecord.read(folder / final)
    arm = next(row for row in budget["arms"] if row["name"] == record["arm"])
    labels = final_record.head.labels or saved.labels or []
    model = config.get("model") or {}
    parameters = _parameters(folder / final)
    splits = run.get("splits") or {}
    lines = [
        _front_matter(summary, budget, run, config),
        f"# {summary['name']}: {record['arm']}, seed {record['seed']}",
        "",
        f"Handed over by `headstart compare` from `{record['source']}`"
        + (f" at {budget['labels_per_class']} labels per class" if budget.get("labels_per_class") else "")
        + ".",
        "",
        "## Model details",
        "",
        f"- Architecture: `{model.get('name')}` (timm), "
        + (f"{parameters:,} parameters, " if parameters else "")
        + f"input {final_record.model.image_size} px, {final_record.model.in_chans} channel(s).",
        f"- Starting weights: {model.get('weights') or 'random'}.",
        f"- Output: {len(labels)} classes: {', '.join(map(str, labels[:30]))}{' …' if len(labels) > 30 else ''}.",
        f"- Preprocessing: `{json.dumps(final_record.preprocessing)}`.",
        f"- Files: `run.json` and the stage folders ({', '.join(saved.finished_stages)}); the network is "
        f"`{final}/weights.safetensors` with `{final}/stage.json`.",
        f"- Versions: {', '.join(f'{k} {v}' for k, v in (saved.versions or {}).items()) or 'not recorded'}.",
        "",
        "## Intended use",
        "",
        f"Classifying images like the training images into the {len(labels)} classes above, as "
        "`headstart predict`, `headstart serve` or `headstart.checkpoint.load_network` do. Not for decisions about "
        "people, nor for images of other kinds, without a new evaluation.",
        "",
        "## Training data and splits",
        "",
        f"- Source: `{json.dumps((config.get('data') or {}).get('source'))}`.",
        f"- Splits: test {splits.get('test', '?')} images, validation {splits.get('val', '?')}, "
        f"labelled training {splits.get('labelled', '?')} ({splits.get('labelled_draw', 'fixed')} draw, "
        f"digest `{splits.get('labelled_digest', '?')}`); the test and validation images are the same for every "
        "arm and seed.",
        "",
        "## Training procedure",
        "",
        *_recipe(folder, saved.finished_stages),
        "",
        "## Evaluation",
        "",
        f"- This seed, test split: accuracy {run.get('test_accuracy', 0):.4f}"
        + (f", balanced accuracy {run['balanced_accuracy']:.4f}" if run.get("balanced_accuracy") is not None else "")
        + (f", macro F1 {run['macro_f1']:.4f}" if run.get("macro_f1") is not None else "")
        + ".",
        f"- The arm over {len(arm['seeds'])} seed(s): test accuracy {_spread(arm.get('test_accuracy'))}"
        + (f", balanced accuracy {_spread(arm.get('balanced_accuracy'))}" if arm.get("balanced_accuracy") else "")
        + ".",
        f"- Verdict: {budget_verdict(budget) or 'not judged'}.",
        *[f"- {line}" for line in contrast_lines(budget)],
        *([f"- {metric_line(summary)}."] if metric_line(summary) else []),
        "",
    ]
    recall = run.get("recall") or []
    if recall:
        lines += ["Recall per class on the test split (this seed):", "", "| class | recall |", "| --- | --- |"]
        lines += [
            f"| {label} | {'—' if value is None else format(value, '.3f')} |"
            for label, value in zip(labels, recall, strict=False)
        ]
        lines.append("")
    lines += [
        "## How this seed was chosen",
        "",
        f"By validation, never by test: {record['rule']}.",
        "",
        "| seed | validation accuracy |",
        "| --- | --- |",
        *[
            f"| {entry['seed']} | {'—' if entry['val_accuracy'] is None else format(entry['val_accuracy'], '.4f')} |"
            for entry in record["seeds"]
        ],
        "",
        "## Limitations",
        "",
        *_limitations(root, budget, run, record),
        "",
        *_audit(root, folder),
        "## How to use",
        "",
        "```bash",
        "headstart predict --checkpoint best IMAGES_OR_FOLDER --output predictions.csv",
        "headstart export best --output model.onnx",
        "headstart serve best",
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = ["model_card"]
