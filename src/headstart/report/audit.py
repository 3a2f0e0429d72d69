"""The audit's report: tables next to Rezaei & Liu's, crafted examples, per-class hits.

The audit's facts and table rows are data first: :func:`audit_data` gathers them from an
experiment, :func:`write_audit_files` writes them to ``audit-report.json`` beside the figures
(``audit-*.png``) and renders ``audit.md`` from that data; the HTML report
(:mod:`headstart.report.html`) renders its audit section from the same JSON with
:func:`audit_table` and :func:`audit_summary`, so both show the same numbers and neither parses
the other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from headstart.files import atomic_write_bytes, atomic_write_json, png_bytes

AUDIT_FILE = "audit.md"
"""The audit as Markdown, for people."""
AUDIT_DATA_FILE = "audit-report.json"
"""The audit's facts, table cells and figure files: what :mod:`headstart.report.html` renders."""
TITLE = "Target-agnostic attack (Rezaei & Liu, ICLR 2020)"
NOTE = (
    "NABAC: crafted inputs, in a random neuron order, until every class was forced with confidence > 0.99 "
    "(mean ± std over victims × random orders; an order that never breaks every class counts all attempts, "
    "so NABAC is then a lower bound). Effectiveness: share of those attempts whose top confidence reaches "
    "95% / 99%."
)
FIGURE_DPI = 130

PAPER_CLASSES = {
    5: ("48.25 ± 42.5", "91.68% ± 5.69", "87.82% ± 6.98"),
    10: ("149.97 ± 132.15", "88.87% ± 2.46", "83.07% ± 3.31"),
    15: ("323.36 ± 253.56", "87.79% ± 2.42", "82.08% ± 2.74"),
    20: ("413", "87.17%", "79.16%"),
}
"""Rezaei & Liu 2020, table 2-1 of the chapter (VGG-Face → LFW, one new layer)."""
PAPER_LAYERS = {
    1: ("48.25 ± 42.5", "91.68% ± 5.69", "87.82% ± 6.98"),
    2: ("51.87 ± 39.94", "91.57% ± 4.87", "86.45% ± 5.35"),
    3: ("257.26 ± 387.16", "89% ± 8.20", "85.67% ± 8.88"),
}
"""Rezaei & Liu 2020, table 2-2 of the chapter (5 classes)."""


def _paper(classes: int, layers: int, defence: str) -> tuple[str, ...] | None:
    if defence != "none":
        return None
    if layers == 1:
        return PAPER_CLASSES.get(classes)
    return PAPER_LAYERS.get(layers) if classes == 5 else None


def _row(cell: dict[str, Any]) -> list[str]:
    """One table row from a cell's data (:meth:`headstart.audit.experiment.Cell.to_dict`, as stored in JSON)."""
    metrics = cell["metrics"]
    e95, e99 = metrics["effectiveness"]["95"], metrics["effectiveness"]["99"]
    paper = _paper(cell["classes"], cell["layers"], cell["defence"])
    accuracy, spread = cell["clean_accuracy"]
    return [
        str(cell["classes"]),
        str(cell["layers"]),
        cell["defence"],
        str(cell["victims"]),
        f"{accuracy:.4f} ± {spread:.4f}" if cell["victims"] > 1 else f"{accuracy:.4f}",
        f"{metrics['nabac_mean']:.1f} ± {metrics['nabac_std']:.1f}",
        f"{metrics['reached']:.0%}",
        f"{100 * e95[0]:.1f}% ± {100 * e95[1]:.1f}",
        f"{100 * e99[0]:.1f}% ± {100 * e99[1]:.1f}",
        f"{metrics['classes_hit']['99']:.0%}",
        " / ".join(paper) if paper else "—",
    ]


HEADER = [
    "classes",
    "new layers",
    "defence",
    "victims",
    "clean accuracy",
    "NABAC",
    "orders breaking all",
    "effectiveness 95%",
    "effectiveness 99%",
    "classes hit at 99%",
    "paper: NABAC / eff. 95% / eff. 99%",
]


def audit_data(experiment: dict) -> dict[str, Any]:
    """The audit's facts and pooled cells as plain JSON values (no figures, no tensors)."""
    crafted = experiment["crafted"]
    first = experiment["results"][0]["result"]
    facts = {
        "neurons": experiment["neurons"],
        "image_size": experiment["image_size"],
        "crafting_seconds": crafted.seconds,
        "crafted_per_second": crafted.per_second,
        "config": dict(crafted.config.__dict__),
        "feature_layer": first.feature_layer,
        "median_target_activation": float(crafted.target_activation.median()),
        "median_largest_other": float(crafted.largest_other.median()),
        "median_output_target": (float(crafted.output_target.median()) if crafted.output_target is not None else None),
        "median_output_other": (
            float(crafted.output_largest_other.median()) if crafted.output_largest_other is not None else None
        ),
    }
    return {"title": TITLE, "facts": facts, "cells": [cell.to_dict() for cell in experiment["cells"]], "figures": []}


def audit_figures(experiment: dict) -> dict:
    """``{name: matplotlib Figure}``: crafted examples and the victims' sorted top confidences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = experiment["results"]
    figures = {}
    examples = entries[0]["result"].examples(per_class=1)
    if examples:
        figure, axes = plt.subplots(1, len(examples), figsize=(1.6 * len(examples), 2.0), squeeze=False)
        for axis, example in zip(axes[0], examples, strict=True):
            image = example["pixels"].clamp(0, 255).permute(1, 2, 0).numpy() / 255.0
            axis.imshow(image if image.shape[2] == 3 else image[:, :, 0], cmap="gray")
            axis.set_title(f"n{example['neuron']} → {example['label']}\n{example['confidence']:.3f}", fontsize=7)
            axis.axis("off")
        figure.suptitle(f"crafted inputs and the class they force ({entries[0]['victim'].name})", fontsize=8)
        figures["examples"] = figure
    figure, axis = plt.subplots(figsize=(7, 3))
    for entry in entries:
        if entry["victim"].seed != 0:
            continue
        confidence = entry["result"].probabilities.max(dim=1).values.sort().values.numpy()
        axis.plot(confidence, label=entry["victim"].name, linewidth=1)
    axis.axhline(0.99, color="grey", linestyle=":", linewidth=0.8)
    axis.set_xlabel("crafted inputs, sorted")
    axis.set_ylabel("victim's top confidence")
    axis.legend(fontsize=5)
    figures["confidence"] = figure
    return figures


def audit_table(data: dict[str, Any]) -> list[list[str]]:
    """``[header, rows...]`` of the audit's cells, formatted (the same in Markdown and HTML)."""
    return [HEADER] + [_row(cell) for cell in data["cells"]]


def audit_summary(data: dict[str, Any]) -> str:
    """The paragraph above the table: how the inputs were crafted and what the backbone made of them."""
    facts = data["facts"]
    config = facts["config"]
    return (
        f"Crafted on the public EfficientNet-Lite0 ImageNet backbone only ({facts['feature_layer']} features): "
        f"{facts['neurons']} feature neurons, {config['steps']} steps of size {config['step_size']} (pixel units), "
        f"target {config['target_value']:g}, pixels clipped to 0..255: {config['clip']}; {facts['image_size']} px "
        f"images; {facts['crafting_seconds']:.0f} s ({facts['crafted_per_second']:.2f} crafted inputs per second). "
        f"Median pooled value of the chosen neuron after crafting {facts['median_target_activation']:.2f}, of the "
        f"largest other {facts['median_largest_other']:.2f}"
        + (
            f"; in the features a head reads, {facts['median_output_target']:.2f} and "
            f"{facts['median_output_other']:.2f}"
            if facts["median_output_target"] is not None
            else ""
        )
        + ". Victims answered as black boxes (probabilities only); each row pools its victims (random digits, "
        "split and initialisation per victim)."
    )


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]])


def audit_markdown(data: dict[str, Any]) -> str:
    """``audit.md``'s text, rendered from the audit's data."""
    text = [f"# {data['title']}", "", audit_summary(data), "", _markdown_table(audit_table(data)), "", NOTE, ""]
    text += [f"![{figure['alt']}]({figure['file']})" for figure in data["figures"]]
    return "\n".join(text) + "\n"


def write_audit_files(experiment: dict, folder: str | os.PathLike) -> Path:
    """Write the figures (``audit-*.png``), the data (``audit-report.json``) and ``audit.md`` into
    ``folder``; return the Markdown path. :func:`headstart.report.html.write_audit_report` also
    writes the folder's ``report.html``."""
    folder = Path(folder)
    data = audit_data(experiment)
    for name, figure in audit_figures(experiment).items():
        atomic_write_bytes(folder / f"audit-{name}.png", png_bytes(figure, dpi=FIGURE_DPI))
        data["figures"].append({"name": name, "file": f"audit-{name}.png", "alt": name})
    atomic_write_json(folder / AUDIT_DATA_FILE, data)
    path = folder / AUDIT_FILE
    atomic_write_bytes(path, audit_markdown(data).encode())
    return path
