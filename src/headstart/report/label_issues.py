"""The report's "Suspected label errors" section: the labelled images whose labels the winning arm's
final backbones doubt most (``label-issues.json`` in each run's last stage, written by
:mod:`headstart.label_errors`), merged over seeds.

An image met in several seeds' lists (each seed labels its own draw, so an image is in some seeds'
labelled sets and not others) is shown once, ranked by its lowest score, with the seeds that
suspect it. The thumbnails come from the records themselves, so the page needs no image file.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.label_errors import LABEL_ISSUES_FILE, read_label_issues

SHOWN = 12
"""Suspects shown per label budget."""


def merged_suspects(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The suspects of ``runs`` (a budget's runs of one arm, as :func:`headstart.report.summary.summarise`
    lists them), one entry per image, lowest score first; and the records' totals, one line per seed."""
    merged: dict[str, dict[str, Any]] = {}
    totals: list[str] = []
    for run in runs:
        if not run.get("stages"):
            continue
        folder = Path(run["folder"]) / run["stages"][-1]["folder"]
        try:
            record = read_label_issues(folder)
        except HeadstartError as error:
            totals.append(f"seed {run['seed']}: {error}")
            continue
        if record is None:
            continue
        totals.append(f"seed {run['seed']}: cleanlab flags {record.flagged} of {record.images} labelled images")
        for suspect in record.suspects:
            entry = merged.setdefault(
                suspect.name,
                {"name": suspect.name, "given": suspect.given, "thumbnail": suspect.thumbnail, "seeds": []},
            )
            entry["seeds"].append(
                {
                    "seed": run["seed"],
                    "score": suspect.score,
                    "suggested": suspect.suggested,
                    "flagged": suspect.flagged,
                }
            )
    entries = sorted(merged.values(), key=lambda entry: (min(s["score"] for s in entry["seeds"]), entry["name"]))
    return entries, totals


def section(budget: dict[str, Any], suffix: str = "") -> str:
    """The section's HTML for one budget of a summary: the winner's suspects; "" when none were recorded."""
    best = budget.get("winner")
    arm = best["arm"] if best else None
    if arm is None:
        return ""
    entries, totals = merged_suspects(budget["runs"].get(arm, []))
    if not totals:
        return ""
    rows = []
    for entry in entries[:SHOWN]:
        picture = (
            f'<img alt="{html.escape(Path(entry["name"]).name)}" style="display:inline;margin:0;'
            f'image-rendering:pixelated;width:48px" src="{entry["thumbnail"]}">'
            if entry["thumbnail"]
            else ""
        )
        suggested = sorted({seen["suggested"] for seen in entry["seeds"]})
        seeds = ", ".join(
            f"{seen['seed']}: {seen['score']:.3f}{' (flagged)' if seen['flagged'] else ''}" for seen in entry["seeds"]
        )
        rows.append(
            f"<tr><td>{picture}</td><td class='name'><code>{html.escape(entry['name'])}</code></td>"
            f"<td>{html.escape(entry['given'])}</td><td>{html.escape(' or '.join(suggested))}</td>"
            f"<td>{html.escape(seeds)}</td></tr>"
        )
    table = (
        '<table id="label-issues"><thead><tr><th></th><th>image</th><th>given label</th><th>suggested</th>'
        "<th>score by seed</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows
        else "<p>No labelled image is in doubt.</p>"
    )
    return (
        f"<h3>Suspected label errors{html.escape(suffix)}</h3>"
        f"<p>{html.escape(arm)}'s final backbones: {html.escape('; '.join(totals))}.</p>"
        + table
        + '<p class="muted">Confident learning (Northcutt et al. 2021, cleanlab) on leave-one-out k-NN probabilities '
        "of the labelled images' features. Score: the out-of-sample probability of the given label, lowest first; "
        f"flagged: cleanlab estimates the label wrong. Every suspect is listed in each run's {LABEL_ISSUES_FILE}. "
        "Look before you relabel: a network that memorised a wrong label may vouch for it.</p>"
    )


__all__ = ["merged_suspects", "section", "SHOWN"]
