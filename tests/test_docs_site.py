"""The documentation site: ``mkdocs build --strict`` passes, the API reference shows every public
function and class with its docstring, and the built pages render in a real browser.

The browser is headless Chromium (Debian's ``chromium``) reading the built site from disk, no
server and no network. ``.ci/run`` installs it and sets ``HEADSTART_REQUIRE_BROWSER=1``, so there
the browser tests fail instead of skipping when no browser is found.

The screenshot of a report on the getting-started page comes from here too:
``HEADSTART_DOCS_SCREENSHOT=1 python3 -m pytest tests/test_docs_site.py -k screenshot`` runs
``headstart demo --quick --seeds 1`` (about five minutes on two cores), opens its ``report.html``
in Chromium and writes ``docs/assets/report.png``; without the variable the test checks that the
picture in the docs is such a screenshot.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import BROWSER_FLAGS, browser_path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCREENSHOT = DOCS / "assets" / "report.png"
SCREENSHOT_SIZE = (1280, 1600)


def api_pages() -> dict[str, str]:
    """``module → page``: the module each page of ``docs/api/`` documents (its first ``::: module``)."""
    found = {}
    for page in sorted((DOCS / "api").glob("*.md")):
        modules = re.findall(r"^:::\s*(\S+)", page.read_text(encoding="utf-8"), re.M)
        if modules:
            found[modules[0]] = page.stem
    return found


def public_objects(module_name: str) -> list[str]:
    """The functions and classes a module names in ``__all__``."""
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} documents its public names in __all__"
    return [
        name
        for name in module.__all__
        if inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name))
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built as CI builds it: ``mkdocs build --strict`` (a warning fails the build)."""
    pytest.importorskip("mkdocs", reason='the docs extra is missing: python3 -m pip install -e ".[docs]"')
    folder = tmp_path_factory.mktemp("site")
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-4000:]
    return folder


def test_the_site_builds_strictly_with_a_search_index(site):
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {entry["location"].split("#")[0] for entry in index["docs"]}
    assert {"", "getting-started/", "guides/training/", "api/stage/", "benchmarks/"} <= locations
    assert any("fit_stage" in entry["text"] or "fit_stage" in entry["title"] for entry in index["docs"])
    assert (site / "assets" / "report.png").is_file()


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", "", html).replace("&#39;", "'").replace("&quot;", '"').split())


def test_every_public_function_and_class_is_in_the_api_reference_with_its_docstring(site):
    import griffe

    package = griffe.load("headstart", search_paths=[str(ROOT / "src")], resolve_aliases=True)
    pages = api_pages()
    assert {"headstart.zoo", "headstart.stage", "headstart.data", "headstart.compare"} <= set(pages)
    missing, undocumented = [], []
    for module, page in pages.items():
        html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
        for name in public_objects(module):
            target = package[f"{module.removeprefix('headstart.')}.{name}"]
            if target.is_module:  # a package member named like a submodule: griffe keeps the submodule only
                function = getattr(importlib.import_module(module), name)
                canonical = f"{function.__module__}.{function.__qualname__}"  # where it is defined, if elsewhere
                summary = " ".join(inspect.getdoc(function).replace("`", "").split("\n\n")[0].split())
                found = canonical != f"{module}.{name}" and f'id="{canonical}"' in html
                if not found and summary not in _text(html):  # else its docstring copied onto the page
                    missing.append(f"{module}.{name} (shares its name with a submodule)")
                continue
            if f'id="{module}.{name}"' not in html:
                missing.append(f"{module}.{name}")
            target = target.final_target if target.is_alias else target
            if target.docstring is None or not target.docstring.value.strip():
                undocumented.append(f"{module}.{name}")
    assert not undocumented, f"public names without a docstring: {undocumented}"
    assert not missing, f"public names missing from the API reference: {missing}"


def test_no_private_helper_is_in_the_api_reference(site):
    for page in sorted((site / "api").glob("*/index.html")):
        anchors = re.findall(r'id="(headstart\.[\w.]+)"', page.read_text(encoding="utf-8"))
        private = [anchor for anchor in anchors if re.search(r"\._[a-z]", anchor)]
        assert not private, f"{page.parent.name}: private names shown: {private[:5]}"


def _render(browser: str, page: Path, tmp_path: Path) -> tuple[str, np.ndarray]:
    """The DOM after the page's scripts ran, and a screenshot of it as grey pixels."""
    dumped = subprocess.run(
        [browser, *BROWSER_FLAGS, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dumped.returncode == 0 and "</html>" in dumped.stdout, dumped.stderr[-2000:]
    shot = tmp_path / f"{page.parent.name or 'index'}.png"
    subprocess.run(
        [
            browser,
            *BROWSER_FLAGS,
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as image:
        return dumped.stdout, np.asarray(image.convert("L"), dtype=float)


@pytest.mark.parametrize("page", ["index.html", "api/stage/index.html"])
def test_built_pages_render_in_headless_chromium_with_navigation(site, page, tmp_path):
    browser = browser_path()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    dom, pixels = _render(browser, site / page, tmp_path)
    assert 'class="md-nav md-nav--primary"' in dom  # the site's navigation
    links = re.findall(r'class="md-nav__link[^"]*"', dom)
    assert len(links) >= 20, len(links)
    for section in ("Getting started", "Guides", "Benchmarks and measured results", "API overview"):
        assert section in dom
    article = re.search(r'<article class="md-content__inner.*?</article>', dom, re.S)
    assert article and len(re.sub(r"<[^>]+>", "", article.group(0)).split()) > 100  # a page of text, not a shell
    if page.startswith("api/"):
        assert 'id="headstart.stage.fit_stage"' in dom and "doc-signature" in dom
    assert pixels.shape == (900, 1280)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and colour, not a blank page


def test_the_report_screenshot_in_the_docs_is_a_real_report(tmp_path):
    if os.environ.get("HEADSTART_DOCS_SCREENSHOT") == "1":
        browser = browser_path()
        if browser is None:
            pytest.fail("HEADSTART_DOCS_SCREENSHOT=1 needs chromium on PATH (apt-get install chromium)")
        from headstart.demo import run_demo

        result = run_demo(tmp_path / "headstart-demo", seeds=[0], quick=True, progress=False, echo=lambda _: None)
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        width, height = SCREENSHOT_SIZE
        subprocess.run(
            [
                browser,
                *BROWSER_FLAGS,
                f"--window-size={width},{height}",
                f"--screenshot={SCREENSHOT}",
                result.report.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    with Image.open(SCREENSHOT) as image:
        assert image.size == SCREENSHOT_SIZE
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # tables, text and plots
    assert "assets/report.png" in (DOCS / "getting-started.md").read_text(encoding="utf-8")


def test_the_readme_is_a_front_page_whose_links_lead_into_the_site(site):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 160
    assert 'python3 -m pip install -e ".[test]" && python3 -m pytest -q --durations=20' in readme  # CI runs it
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#([\w-]+))?\)", readme)
    assert len({path for path, _ in links}) >= 10
    for path, anchor in links:
        assert (ROOT / path).is_file(), path
        page = Path(path).relative_to("docs").with_suffix("")
        built = site / (page.parent if page.name == "index" else page) / "index.html"
        assert not anchor or f'id="{anchor}"' in built.read_text(encoding="utf-8"), f"{path}#{anchor}"
