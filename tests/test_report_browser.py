"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``) renders it from
disk with no server and no network; the DOM has one table row per arm, every image decodes, and a
screenshot is not blank.

``.ci/run`` installs Chromium and sets ``HEADSTART_REQUIRE_BROWSER=1``, so there the test fails
instead of skipping when no browser is found.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headstart.compare import run as run_comparison
from helpers import BROWSER_FLAGS, browser_path

CHECK = """<script>window.addEventListener("load", function () {
  var rows = [].map.call(document.querySelectorAll("table[id^=comparison] tbody tr"),
                         function (row) { return row.cells[0].textContent; });
  var images = [].map.call(document.images, function (image) {
    return {alt: image.alt, width: image.naturalWidth, height: image.naturalHeight}; });
  // what the page would fetch (images, styles, scripts) or send the reader off the machine to; a
  // relative link to a file of the folder (the handed-over model's card) is neither
  var external = [].filter.call(document.querySelectorAll("[src],link[href],a[href]"), function (node) {
    var target = node.getAttribute("src") || node.getAttribute("href");
    if (node.tagName === "A") return /^[a-z]+:/i.test(target) && !/^data:/.test(target);
    return !/^data:/.test(target) && !/^#/.test(target); }).length;
  var cards = [].map.call(document.querySelectorAll("a[href$='MODEL_CARD.md']"),
                          function (node) { return node.getAttribute("href"); });
  var effects = [].map.call(document.querySelectorAll("table[id^=effects] tbody tr"), function (row) {
    return [row.cells[0].textContent, row.cells[5].textContent]; });
  var out = document.createElement("pre"); out.id = "dom-check";
  out.textContent = JSON.stringify({rows: rows, images: images, external: external, effects: effects, cards: cards});
  document.body.appendChild(out);
});</script>"""


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report") / "digits"
    tiny = {"name": "test_resnet", "weights": None, "image_size": 16}
    run_comparison(
        {
            "name": "digits",
            "output": str(folder),
            "seeds": 2,
            "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 10}},
            "label_budgets": [5, 10],
            "contrasts": [{"arm": "rotation", "against": "frozen-head"}],
            "arms": {
                "scratch": {"model": tiny, "stages": [{"name": "task", "epochs": 3, "batch_size": 25}]},
                "rotation": {
                    "model": tiny,
                    "stages": [
                        {
                            "name": "rotation",
                            "data": "all",
                            "pretext": {"name": "rotation"},
                            "epochs": 1,
                            "batch_size": 64,
                        },
                        {"name": "task", "epochs": 3, "batch_size": 25},
                    ],
                },
                "frozen-head": {
                    "model": tiny,
                    "stages": [{"name": "head", "freeze": ["backbone"], "epochs": 3, "batch_size": 25}],
                },
            },
            "attention": {"images": 3},
        },
        echo=lambda _: None,
        progress=False,
    )
    return folder / "report.html"


def test_report_renders_in_headless_chromium_with_a_row_per_arm_and_every_image_decoded(report, tmp_path):
    browser = browser_path()
    if browser is None:
        pytest.skip("no chromium on PATH (.ci/run installs Debian's chromium)")
    page = report.read_text(encoding="utf-8")
    assert "<script" not in page  # the report itself runs nothing
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"), encoding="utf-8")
    dumped = subprocess.run(
        [browser, *BROWSER_FLAGS, "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="dom-check">(.*?)</pre>', dumped.stdout, re.S)
    assert found, dumped.stderr[-2000:]
    dom = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert dom["rows"] == ["scratch", "rotation", "frozen-head"] * 2  # one table per label budget
    assert len(dom["images"]) >= 10  # budgets, bars, curves, confusion per budget, attention, schedules
    budgets = [image for image in dom["images"] if image["alt"] == "accuracy against labels per class"]
    assert len(budgets) == 1 and budgets[0]["width"] > 500, dom["images"]
    assert "rotation against frozen-head:" in page
    # each budget's forest plot decodes, and its effects table has the baseline's family and the contrast
    forests = [image for image in dom["images"] if image["alt"].startswith("forest plot")]
    assert len(forests) == 2 and all(image["width"] > 500 for image in forests), dom["images"]
    expected = ["rotation − scratch", "frozen-head − scratch", "rotation − frozen-head"]
    assert [label for label, _ in dom["effects"]] == expected * 2
    assert {word for _, word in dom["effects"]} <= {"better", "worse", "not resolved"}
    assert all(image["width"] > 0 and image["height"] > 0 for image in dom["images"]), dom["images"]
    assert dom["external"] == 0
    assert dom["cards"] and all((report.parent / card).is_file() for card in dom["cards"])  # the winners' cards

    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *BROWSER_FLAGS, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    assert (pixels < 128).mean() > 0.01
