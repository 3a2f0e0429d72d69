"""Every Python snippet of the guides runs, on tiny data, as a reader would paste it.

The convention, for whoever writes a guide (``docs/guides/*.md``, ``docs/getting-started.md`` and the
home page ``docs/index.md``):

* each fenced block opened with three backticks and ``python`` runs; other languages (``bash``,
  ``yaml``, ``text``) are shown only;
* the blocks of one page run in order, in one namespace, in a fresh temporary working folder, as a
  reader going down the page would: a later block may use what an earlier one defined or wrote;
* a block preceded by a line ``<!-- not run: REASON -->`` (nothing but blank lines between) is
  skipped, and the reason says why (a download, an optional extra, minutes of training);
* a snippet runs offline in seconds: a tiny model (``resnet10t``, ``resnet18`` with
  ``weights=None``, or EfficientNet-Lite0 whose ImageNet weights install with headstart), a few
  pixels (16-64 px), built-in data (``digits``, ``mnist5k``), one or two epochs.

A pretext task a page registers is unregistered afterwards, so later tests see the registry as it was.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```(?P<language>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")


def pages() -> list[Path]:
    return [DOCS / "index.md", DOCS / "getting-started.md", *sorted((DOCS / "guides").glob("*.md"))]


def python_blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """``(line, code, reason it is not run)`` of every ```python block of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        if match["language"] != "python":
            continue
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        skipped = NOT_RUN.match(before[-1].strip()) if before else None
        line = text.count("\n", 0, match.start()) + 2  # the first line of code
        blocks.append((line, match["code"], skipped["reason"] if skipped else None))
    return blocks


def test_the_convention_finds_blocks_and_skips_marked_ones(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nx = 1\n```\n\n<!-- not run: needs a download -->\n\n```python\nraise SystemExit\n```\n"
        "```bash\nheadstart demo\n```\n",
        encoding="utf-8",
    )
    assert python_blocks(page) == [(2, "x = 1\n", None), (8, "raise SystemExit\n", "needs a download")]


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.name)
def test_every_python_snippet_of_the_page_runs(page, tmp_path, monkeypatch):
    from headstart import pretext

    blocks = python_blocks(page)
    run = [(line, code) for line, code, reason in blocks if reason is None]
    if not run:
        pytest.skip(f"{page.name} has no Python snippet to run")
    monkeypatch.chdir(tmp_path)
    registered = set(pretext.names())
    namespace: dict = {"__name__": "__docs__"}
    timings = []
    try:
        for line, code in run:
            started = time.perf_counter()
            try:
                exec(compile(code, f"{page.relative_to(DOCS.parent)}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{page.name}, the snippet at line {line} failed: {error!r}") from error
            timings.append((line, time.perf_counter() - started))
    finally:
        for name in set(pretext.names()) - registered:
            pretext.unregister(name)
    print(f"{page.name}: " + ", ".join(f"line {line} {seconds:.1f} s" for line, seconds in timings))
    slow = [(line, round(seconds, 1)) for line, seconds in timings if seconds > 30]
    assert not slow, f"{page.name}: snippets (line, seconds) over 30 s; make them smaller: {slow}"
