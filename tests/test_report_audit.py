"""The audit's report: the data is written once (``audit-report.json``), ``audit.md`` and the HTML
report's audit section are both rendered from it, and the page shows the data's numbers."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import pytest
import torch

from headstart.audit import AttackConfig, AuditResult, PublicFeatures, attack_metrics, craft
from headstart.audit.experiment import Victim, pool_cells
from headstart.report.audit import AUDIT_DATA_FILE
from headstart.report.html import render, write_audit_report
from headstart.zoo import load


class _Page(HTMLParser):
    """The cells of every table row (by table id) and every image (alt → PNG bytes) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: dict[str, bytes] = {}
        self.headings: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._heading = []
        elif tag == "img":
            self.images[attrs["alt"]] = base64.b64decode(attrs["src"].split(",", 1)[1])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "h2" and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


@pytest.fixture(scope="module")
def experiment():
    """Two victims of 5 classes, one new layer; each of 5 crafted inputs forces its own class at 0.999,
    so every random order needs all 5 attempts: NABAC 5.0 ± 0.0, effectiveness 100%."""
    torch.manual_seed(0)
    public = load("test_efficientnet", weights=None, include_top=False)
    crafted = craft(PublicFeatures(public), torch.arange(5), 32, AttackConfig(steps=2), batch_size=5)
    probabilities = torch.full((5, 5), 0.00025) + torch.eye(5) * (0.999 - 0.00025)
    results = []
    for seed, clean in ((0, 0.9), (1, 0.8)):
        result = AuditResult(
            target=f"victim {seed}",
            backbone="public",
            feature_layer="pre-activation",
            image_size=32,
            metrics=attack_metrics(probabilities.numpy(), orders=20, seed=seed),
            probabilities=probabilities,
            crafted=crafted,
            labels=[f"digit {d}" for d in range(5)],
        )
        victim = Victim(f"victim {seed}", 5, 1, "none", seed, [0, 1, 2, 3, 4], clean, 1.0)
        results.append({"victim": victim, "result": result})
    return {"results": results, "cells": pool_cells(results), "crafted": crafted, "neurons": 5, "image_size": 32}


def test_the_reports_audit_section_shows_the_numbers_of_the_audit_data(experiment, tmp_path):
    markdown = write_audit_report(experiment, tmp_path)
    data = json.loads((tmp_path / AUDIT_DATA_FILE).read_text())
    assert [cell["clean_accuracy"] for cell in data["cells"]] == [pytest.approx([0.85, 0.05])]
    assert data["cells"][0]["metrics"]["nabac_mean"] == 5.0 and data["facts"]["neurons"] == 5
    page = _parse((tmp_path / "report.html").read_text(encoding="utf-8"))
    header, *rows = page.tables["audit"]
    assert header[:6] == ["classes", "new layers", "defence", "victims", "clean accuracy", "NABAC"]
    assert rows == [
        [
            "5",
            "1",
            "none",
            "2",
            "0.8500 ± 0.0500",
            "5.0 ± 0.0",
            "100%",
            "100.0% ± 0.0",
            "100.0% ± 0.0",
            "100%",
            "48.25 ± 42.5 / 91.68% ± 5.69 / 87.82% ± 6.98",
        ]
    ]
    assert page.headings == ["Target-agnostic attack (Rezaei & Liu, ICLR 2020)"]
    for name in ("examples", "confidence"):  # the figures the data names, embedded byte for byte
        assert page.images[name] == (tmp_path / f"audit-{name}.png").read_bytes()
        assert page.images[name][:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 5 | 1 | none | 2 | 0.8500 ± 0.0500 | 5.0 ± 0.0 |" in markdown.read_text()  # audit.md: the same data

    # the page follows the data, not audit.md: change the data, and only the data
    data["cells"][0]["metrics"]["nabac_mean"], data["cells"][0]["clean_accuracy"] = 7.25, [0.5, 0.125]
    (tmp_path / AUDIT_DATA_FILE).write_text(json.dumps(data))
    row = _parse(render(tmp_path)).tables["audit"][1]
    assert row[4:6] == ["0.5000 ± 0.1250", "7.2 ± 0.0"]


def test_a_folder_with_only_an_older_audit_md_says_so(tmp_path):
    (tmp_path / "audit.md").write_text(
        "# Target-agnostic attack\n\n| classes | NABAC |\n|---|---|\n| 5 | 48.2 ± 3.0 |\n"
    )
    page = render(tmp_path)
    assert "predates audit-report.json" in page and "48.2 ± 3.0" in page
    assert "audit" not in _parse(page).tables  # no table parsed back out of the Markdown
