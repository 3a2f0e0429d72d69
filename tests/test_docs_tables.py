"""The tables that README and the docs quote are rendered from comparisons' own ``comparison.json``
(kept in docs/results/), so a document cannot drift from its runs: re-rendering every marked table
(``headstart report --refresh FILE.md``) must change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from headstart.errors import HeadstartError
from headstart.report.tables import refresh

ROOT = Path(__file__).resolve().parents[1]
MARKED = sorted(
    path
    for path in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]
    if "<!-- table: " in path.read_text(encoding="utf-8")
)


def test_some_documents_quote_rendered_tables():
    assert ROOT / "README.md" in MARKED


@pytest.mark.parametrize("path", MARKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_marked_table_is_what_its_comparison_json_renders(path):
    text = path.read_text(encoding="utf-8")
    assert refresh(path, write=False) == text, f"{path}: run `headstart report --refresh {path}`"


def test_refresh_rewrites_a_stale_table_and_names_a_missing_source(tmp_path):
    source = next((ROOT / "docs" / "results").glob("*.json"))
    page = tmp_path / "page.md"
    page.write_text(f"before\n<!-- table: levels {source} -->\n| stale |\n<!-- /table -->\nafter\n", encoding="utf-8")
    new = refresh(page)
    assert "| stale |" not in new and "| arm |" in new and new.endswith("<!-- /table -->\nafter\n")
    assert page.read_text(encoding="utf-8") == new
    page.write_text("<!-- table: effects nowhere.json -->\n<!-- /table -->\n", encoding="utf-8")
    with pytest.raises(HeadstartError, match="nowhere.json not found"):
        refresh(page)
