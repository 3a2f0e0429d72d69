"""One self-contained HTML file that answers "did pretraining help?" for a comparison or a run.

Built only from files (:mod:`headstart.report.summary` reads them), so ``headstart report FOLDER``
rebuilds it from a finished folder at any time. Every image is a PNG embedded as a ``data:`` URI
and the page has no script, no stylesheet and no font from elsewhere: it opens from disk with no
server and no network. Sections: the judging metric and why, the summary line and the comparison
table (mean ± std, n; accuracy and balanced accuracy), test accuracy and time-to-target bars, each
arm's recall per class, learning curves with bands over seeds, probe scores, the
confusion matrix of the best arm, attention maps, each stage's learning-rate schedule, and the
evidence (seeds, hardware, versions, configuration hashes, wall time).
"""

from __future__ import annotations

import base64
import datetime
import html
from pathlib import Path
from typing import Any

import numpy as np

from headstart.files import atomic_write_bytes, is_comparison, is_run, read_json
from headstart.report import figures
from headstart.report.audit import AUDIT_DATA_FILE, AUDIT_FILE, audit_summary, audit_table, write_audit_files
from headstart.report.audit import NOTE as AUDIT_NOTE
from headstart.report.datacheck import section as data_check_section
from headstart.report.label_issues import section as label_issues_section
from headstart.report.summary import labels_per_class_text, summarise
from headstart.report.verdicts import (
    arm_cells,
    budget_verdict,
    contrast_lines,
    effects,
    metric_line,
    metric_name,
    spread_text,
    step_arms,
    step_lines,
)
from headstart.verdict import from_dict, seeds_text

REPORT_FILE = "report.html"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1180px;
       color: #1d2329; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2.2rem;
     border-bottom: 1px solid #d5dbe1; padding-bottom: .2rem; } h3 { font-size: 1.02rem; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
th, td { border: 1px solid #d5dbe1; padding: .3rem .55rem; text-align: right; vertical-align: top; }
th { background: #f1f4f7; } td.name, th.name { text-align: left; }
.verdict { background: #eef6ee; border-left: 4px solid #3c8d40; padding: .6rem .9rem; margin: 1rem 0; }
.verdict.unresolved { background: #fff7e6; border-color: #d39200; }
.verdict.worse { background: #fcecec; border-color: #c0392b; }
span.better { color: #2e7d32; font-weight: 600; } span.worse { color: #c0392b; font-weight: 600; }
span.unresolved { color: #9a6a00; }
.muted { color: #5b6670; font-size: .88rem; } img { max-width: 100%; display: block; margin: .5rem 0; }
code { background: #f1f4f7; padding: 0 .25rem; border-radius: 3px; }
"""


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None, ident: str = "") -> str:
    classes = classes or [""] * len(headers)
    head = "".join(f'<th class="{c}">{html.escape(h)}</th>' for h, c in zip(headers, classes, strict=True))
    body = "".join(
        "<tr>" + "".join(f'<td class="{c}">{cell}</td>' for cell, c in zip(row, classes, strict=True)) + "</tr>"
        for row in rows
    )
    attribute = f' id="{ident}"' if ident else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _comparison_table(budget: dict[str, Any], ident: str) -> str:
    rows = []
    for arm in budget["arms"]:
        cells = arm_cells(arm, budget)
        rows.append(
            [
                html.escape(arm["name"]),
                html.escape(" → ".join(arm["stages"])),
                str(arm["test_accuracy"]["n"]),
                cells["test"],
                cells["balanced"],
                cells["gain"],
                html.escape(cells["verdict"]),
                cells["reach"],
                cells["steps"],
                cells["head_start"],
                cells["wall"],
            ]
        )
    return _table(
        [
            "arm",
            "stages",
            "n",
            "test accuracy",
            "balanced accuracy",
            f"{metric_name(budget)} gain over {budget['baseline']}",
            "verdict, 95% interval, seeds better",
            "time to target",
            "labelled steps to target",
            "head start",
            "wall time",
        ],
        rows,
        ["name", "name"] + [""] * 9,
        ident,
    )


def _word_class(verdict: dict[str, Any] | None) -> str:
    """The CSS class of a verdict box: ``better`` (green), ``worse`` (red), ``unresolved`` (amber)."""
    if verdict is None:
        return "unresolved"
    return {"better": "better", "worse": "worse"}.get(verdict["word"], "unresolved")


def _effects_section(budget: dict[str, Any], suffix: str, index: int) -> str:
    """The forest plot and the table of every paired comparison of one budget (:func:`effects`)."""
    rows = effects(budget)
    if not rows:
        return ""
    cells = []
    for row in rows:
        verdict = from_dict(row["verdict"])
        interval = "—" if verdict.low is None or verdict.high is None else f"{verdict.low:+.4f} to {verdict.high:+.4f}"
        share = f"{verdict.better_in} of {verdict.n}" if verdict.method == "paired t" else verdict.method
        p_value = "—" if verdict.p_adjusted is None else f"{verdict.p_adjusted:.3g}"
        cells.append(
            [
                html.escape(row["label"]),
                f"{verdict.mean:+.4f}",
                interval,
                html.escape(share),
                p_value + (f" (Holm, {verdict.family})" if verdict.family > 1 else ""),
                f'<span class="{_word_class(row["verdict"])}">{html.escape(verdict.word)}</span>',
                html.escape(seeds_text(verdict.seeds_needed) or "—"),
            ]
        )
    table = _table(
        ["comparison", "difference", "95% interval", "seeds better", "p", "verdict", "seeds to resolve"],
        cells,
        ["name", "", "", "", "", "name", "name"],
        f"effects-{index}",
    )
    return (
        f"<h3>Effects{suffix}</h3>"
        + _image(figures.forest(rows, budget.get("labels_per_class")), f"forest plot of the differences{suffix}")
        + table
        + f'<p class="muted">Each row is one arm minus another in test {html.escape(metric_name(budget))}, paired '
        "by seed (same seed, splits and test images). Several seeds: Student's t over the per-seed differences, "
        "its 95% interval and p-value; one seed: McNemar's exact test on the test images for accuracy, a paired "
        "bootstrap over them for the other metrics. The arms against the baseline form one "
        "family, their p-values Holm-corrected; steps and contrasts are judged each on its own. Not resolved: "
        "the seeds a paired t-test needs to find a difference of the observed size at the observed spread "
        "with 80% power.</p>"
    )


def _probe_table(budget: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    settings: dict[str, Any] = {}
    for arm in budget["arms"]:
        for probe in arm["probes"]:
            settings = probe["settings"] or settings
            rows.append(
                [
                    html.escape(arm["name"]),
                    html.escape(probe["backbone"]),
                    spread_text(probe["linear"]),
                    spread_text(probe["knn"]),
                    str(probe["linear"]["n"]),
                ]
            )
    if not rows:
        return '<p class="muted">No probes were run (probes: {enabled: false}).</p>'

    def plain(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{key} = {item}" for key, item in value.items())
        return str(value)

    described = "; ".join(f"{key}: {html.escape(plain(value))}" for key, value in settings.items())
    return (
        _table(["arm", "backbone", "linear probe", "k-NN probe", "n"], rows, ["name", "name", "", "", ""])
        + f'<p class="muted">Frozen, pooled features computed once in eval mode. {described}.</p>'
    )


def _recall_table(budget: dict[str, Any], index: int) -> str:
    """Each arm's test recall of each class, mean ± std over seeds (the small classes accuracy hides)."""
    recorded = [arm for arm in budget["arms"] if arm.get("recall")]
    if not recorded:
        return ""
    labels = recorded[0]["recall"]["labels"]
    rows = [
        [html.escape(arm["name"])]
        + [spread_text(spread, 3) for spread in (arm.get("recall") or {}).get("classes") or []]
        + ["—"] * (len(labels) - len((arm.get("recall") or {}).get("classes") or []))
        for arm in budget["arms"]
    ]
    return _table(
        ["arm"] + [f"recall of {label}" for label in labels], rows, ["name"] + [""] * len(labels), f"recall-{index}"
    ) + (
        '<p class="muted">The share of each class\'s test images the network called by its name, mean ± std '
        "over seeds; balanced accuracy is their mean.</p>"
    )


def _best_confusion(budget: dict[str, Any]) -> str:
    best = budget["winner"]
    if best is None:
        return ""
    runs = [run for run in budget["runs"][best["arm"]] if run["confusion"]]
    if not runs:
        return ""
    total = np.sum([np.asarray(run["confusion"]) for run in runs], axis=0)
    title = f"{best['arm']}: test split, summed over {len(runs)} seed(s)"
    return _image(figures.confusion(total.tolist(), runs[0]["labels"], title), f"confusion matrix of {best['arm']}")


def _evidence(summary: dict[str, Any], folder: Path) -> str:
    hardware = summary.get("hardware") or {}
    versions = summary.get("versions") or {}
    rows = []
    for budget in summary["budgets"]:
        for name, runs in budget["runs"].items():
            for run in runs:
                where = Path(run["folder"])
                where = where.relative_to(folder) if where.is_relative_to(folder) else where
                rows.append(
                    [
                        html.escape(name),
                        str(run["seed"]),
                        "—" if budget["labels_per_class"] is None else str(budget["labels_per_class"]),
                        f"<code>{html.escape(run['config_hash'])}</code>",
                        f"{run['seconds']:.1f} s",
                        f"<code>{html.escape(str(where))}</code>",
                    ]
                )
    total = sum(run["seconds"] for budget in summary["budgets"] for runs in budget["runs"].values() for run in runs)
    machine = ", ".join(f"{key}: {html.escape(str(value))}" for key, value in hardware.items())
    software = ", ".join(f"{key} {html.escape(str(value))}" for key, value in versions.items())
    unfinished = (
        f"<p>Not finished yet (left out): {html.escape(', '.join(summary['unfinished']))}</p>"
        if summary["unfinished"]
        else ""
    )
    return (
        f"<p>Seeds: {', '.join(map(str, summary['seeds']))}. Hardware: {machine or 'not recorded'}. "
        f"Versions: {software or 'not recorded'}. Training wall time of all runs: {total:.1f} s.</p>"
        + unfinished
        + _table(
            ["arm", "seed", "labels per class", "config hash", "wall time", "folder"],
            rows,
            ["name", "", "", "", "", "name"],
        )
    )


def _audit(folder: Path) -> str:
    """The audit section, rendered from the audit's data (``audit-report.json``, written by
    :func:`write_audit_report`) with its figures embedded; an older folder
    that holds only ``audit.md`` gets that file verbatim and a note; no audit, nothing."""
    if (folder / AUDIT_DATA_FILE).is_file():
        data = read_json(folder / AUDIT_DATA_FILE)
        table = audit_table(data)
        parts = [
            f"<h2>{html.escape(data['title'])}</h2>",
            f"<p>{html.escape(audit_summary(data))}</p>",
            _table(
                table[0],
                [[html.escape(cell) for cell in row] for row in table[1:]],
                ["name"] + [""] * (len(table[0]) - 1),
                "audit",
            ),
            f"<p>{html.escape(AUDIT_NOTE)}</p>",
        ]
        parts += [
            _image((folder / figure["file"]).read_bytes(), figure["alt"])
            for figure in data["figures"]
            if (folder / figure["file"]).is_file()
        ]
        return "\n".join(parts)
    if (folder / AUDIT_FILE).is_file():
        return (
            f'<h2>Security audit</h2><p class="muted">This folder\'s audit predates {AUDIT_DATA_FILE}; run the '
            f"audit again to show it here as tables and figures. Its {AUDIT_FILE}:</p>"
            f"<pre>{html.escape((folder / AUDIT_FILE).read_text(encoding='utf-8'))}</pre>"
        )
    return ""


def _has_audit(folder: Path) -> bool:
    return (folder / AUDIT_DATA_FILE).is_file() or (folder / AUDIT_FILE).is_file()


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} — '
        f"headstart report</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def render(folder: str | Path) -> str:
    """The report's HTML for a comparison folder or a run folder (reads only files), with the
    security audit when the folder holds one (:mod:`headstart.report.audit`'s files)."""
    folder = Path(folder)
    if _has_audit(folder) and not is_comparison(folder) and not is_run(folder):
        return _page("security audit", _audit(folder))
    summary = summarise(folder)
    several = len(summary["budgets"]) > 1
    parts = [
        f"<h1>{html.escape(summary['name'])}: did pretraining help?</h1>",
        f'<p class="muted">{len(summary["arms"])} arm(s) × {len(summary["seeds"])} seed(s)'
        + (f" × {len(summary['budgets'])} label budgets" if several else "")
        + f"; baseline <b>{html.escape(summary['baseline'])}</b>; generated "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} from <code>{html.escape(str(folder))}</code>.</p>",
    ]
    cards = sorted(folder.glob("best/MODEL_CARD.md")) + sorted(folder.glob("best/*/MODEL_CARD.md"))
    if cards:  # the winner handed over (headstart.compare.handover)
        links = ", ".join(
            f'<a href="{html.escape(card.relative_to(folder).as_posix())}">'
            f"{html.escape(card.parent.relative_to(folder).as_posix())}</a>"
            for card in cards
        )
        parts.append(f"<p>Model handed over, with its model card: {links}.</p>")
    judged_on = metric_line(summary)
    if judged_on:
        parts.append(f'<p class="metric">{html.escape(judged_on[0].upper() + judged_on[1:])}.</p>')
    for budget in summary["budgets"]:
        verdict = budget_verdict(budget)
        if verdict is None:
            continue
        best = budget["winner"]["verdict"]
        parts.append(f'<div class="verdict {_word_class(best)}">{html.escape(verdict)}</div>')
        steps = [arm["step_verdict"] for arm in step_arms(budget)]
        for judged, line in zip(steps, step_lines(budget, several), strict=True):
            parts.append(f'<div class="verdict step {_word_class(judged)}">{html.escape(line)}</div>')
        for contrasted, line in zip(budget.get("contrasts") or [], contrast_lines(budget, several), strict=True):
            parts.append(f'<div class="verdict step {_word_class(contrasted["verdict"])}">{html.escape(line)}</div>')
    if several:
        parts.append(_image(figures.budgets(summary), "accuracy against labels per class"))
    for index, budget in enumerate(summary["budgets"]):
        label = budget["labels_per_class"]
        suffix = f" — {labels_per_class_text(label)}" if label is not None else ""
        target = budget["target_val_accuracy"]
        parts.append(f"<h2>Comparison{suffix}</h2>")
        parts.append(_comparison_table(budget, f"comparison-{index}"))
        parts.append(
            '<p class="muted">Mean ± sample std over seeds (n). Gain: paired by seed; verdict: better, worse or '
            "not resolved at the 95% level (Holm-corrected over the arms; the effects below give the test). "
            "Time to target: "
            "wall seconds from the start of the run (head start and feature caching included) until "
            + (f"validation accuracy first reached {target:.4f}" if target is not None else "a target")
            + " (default: the lowest of the baseline's best over seeds), and the seeds that reached it. "
            "Steps on the labelled data: full steps run the whole network; cached steps train a head on "
            "backbone features computed once, a small fraction of a full step's cost.</p>"
        )
        parts.append(_image(figures.accuracy_and_time(budget), "test accuracy and time to target"))
        recall = _recall_table(budget, index)
        if recall:
            parts.append(f"<h3>Recall per class{suffix}</h3>" + recall)
        parts.append(_effects_section(budget, suffix, index))
        parts.append(f"<h3>Learning curves{suffix}</h3>")
        parts.append(_image(figures.learning_curves(budget), "learning curves"))
        parts.append(f"<h3>Probes of the backbones{suffix}</h3>")
        parts.append(_probe_table(budget))
        confusion = _best_confusion(budget)
        if confusion:
            parts.append(f"<h3>Confusion matrix of the best arm{suffix}</h3>")
            parts.append(confusion)
        parts.append(label_issues_section(budget, suffix))  # the winner's suspected label errors
    attention_file = folder / "attention.npz"
    if attention_file.is_file():
        with np.load(attention_file) as npz:
            parts.append("<h2>Attention maps</h2>")
            parts.append(_image(figures.attention(npz), "attention maps"))
        parts.append(
            '<p class="muted">Zagoruyko &amp; Komodakis 2017; Gidaris et al. 2018, figure 3: where each layer '
            "responds, scaled to 0..1 per image.</p>"
        )
    budget = summary["budgets"][0]
    semi = figures.unlabelled_used(budget)
    if semi is not None:
        parts.append("<h2>Semi-supervised stages</h2>")
        parts.append(_image(semi, "share of unlabelled images used per epoch"))
        parts.append(
            '<p class="muted">FixMatch (Sohn et al. 2020): a pseudo-label teaches only when the network\'s '
            "confidence on the weakly augmented image reaches the threshold; the share that does grows as "
            "the network improves. FreeMatch (Wang et al. 2023) lets the threshold follow the network's "
            "running confidence, so its share starts near 1.</p>"
        )
    parts.append("<h2>Learning-rate schedules</h2>")
    for name, runs in budget["runs"].items():
        parts.append(_image(figures.schedules(runs, name), f"learning-rate schedule of {name}"))
    sweeps = [
        (name, stage["name"], Path(runs[0]["folder"]) / stage["folder"] / "lr_find.png")
        for name, runs in budget["runs"].items()
        for stage in runs[0]["stages"]
    ]
    for name, stage, plot in sweeps:  # stages that said `lr: find` (headstart.lrfind)
        if plot.is_file():
            parts.append(f"<h3>Learning-rate sweep: {html.escape(name)} / {html.escape(stage)}</h3>")
            parts.append(_image(plot.read_bytes(), f"learning-rate sweep of {name} / {stage}"))
    diagnostics = [
        (name, stage["name"], note)
        for name, runs in budget["runs"].items()
        for stage in runs[0]["stages"]
        for note in stage["diagnostics"]
    ]
    if diagnostics:
        parts.append(
            "<h3>Diagnostics</h3><ul>"
            + "".join(
                f"<li>{html.escape(name)} / {html.escape(stage)}: {html.escape(note)}</li>"
                for name, stage, note in diagnostics
            )
            + "</ul>"
        )
    audit = _audit(folder)
    if audit:
        parts.append(audit)
    checked = data_check_section(folder)  # the folder's data-check.json: copies, two labels, sizes
    if checked:
        parts.append(checked)
    parts.append("<h2>Evidence</h2>")
    parts.append(_evidence(summary, folder))
    return _page(summary["name"], "\n".join(parts))


def write_report(folder: str | Path) -> Path:
    """Render and write ``report.html`` into ``folder`` (atomic); return its path."""
    folder = Path(folder)
    path = folder / REPORT_FILE
    atomic_write_bytes(path, render(folder).encode("utf-8"))
    return path


def write_audit_report(experiment: dict, folder: str | Path) -> Path:
    """Write an audit experiment's figures, data and ``audit.md`` into ``folder``
    (:func:`headstart.report.audit.write_audit_files`), then the folder's ``report.html``, which
    shows the audit alone or inside the comparison or run report of that folder; return the
    Markdown path."""
    path = write_audit_files(experiment, folder)
    write_report(folder)
    return path


__all__ = ["REPORT_FILE", "render", "write_report", "write_audit_report"]
