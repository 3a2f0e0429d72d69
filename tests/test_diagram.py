"""Architecture diagrams: valid SVG naming every top-level block, frozen blocks marked, ResNet-50 on one page."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from typer.testing import CliRunner

from headstart.cli import app
from headstart.diagram import PAGE_HEIGHT, PAGE_WIDTH
from headstart.errors import HeadstartError
from headstart.zoo import load

SVG = "{http://www.w3.org/2000/svg}"


def _parse(path):
    root = ET.parse(path).getroot()  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    texts = [element.text or "" for element in root.iter(f"{SVG}text")]
    blocks = {
        group.get("data-name"): group.get("class").split()
        for group in root.iter(f"{SVG}g")
        if "block" in (group.get("class") or "").split()
    }
    return root, texts, blocks


def test_the_diagram_names_every_top_level_block_and_marks_the_frozen_ones(tmp_path):
    network = load("test_resnet", weights=None, include_top=False, in_chans=1)
    network.replace_head({"hidden": [16], "outputs": 10}, labels=[str(digit) for digit in range(10)])
    network.freeze("stem")
    network.set_bn_policy("frozen", ("stem",))
    drawn = network.diagram(tmp_path / "tiny.svg", input_size=32)
    root, texts, blocks = _parse(tmp_path / "tiny.svg")
    top_level = [f"backbone.{name}" for name, _ in network.backbone.named_children()] + ["pool", "head"]
    assert drawn.blocks == top_level
    for name in top_level:
        local = name.split(".")[-1]
        assert name in blocks and any(text.startswith((f"{local}:", f"{local} (")) for text in texts), name
    stem = [
        f"backbone.{name}"
        for name, child in network.backbone.named_children()
        if any(True for _ in child.parameters()) and all(not p.requires_grad for p in child.parameters())
    ]
    assert stem, "the stem should hold frozen parameters"
    for name in top_level:
        assert ("frozen" in blocks[name]) == (name in stem), (name, blocks[name])
    inside = [name for name in blocks if any(name.startswith(f"{block}.") for block in stem)]
    assert inside and all("frozen" in blocks[name] or "no-parameters" in blocks[name] for name in inside)
    assert any("frozen" in text for text in texts) and any("BN stats fixed" in text for text in texts)
    assert "partly-frozen" in blocks["backbone"] and "trainable" in blocks["head"]
    # shapes come from a forward pass at the requested size: the head outputs 10, the input is 1×32×32
    assert "1×32×32" in texts and any(text.startswith("10 ·") or text == "10" for text in texts)
    assert drawn.boxes == len(blocks) and {"input", "output"} <= set(blocks)


def test_resnet50_at_the_default_depth_fits_on_a_page(tmp_path):
    network = load("ResNet50", weights=None, include_top=False)
    network.replace_head({"outputs": 5}, labels=list("abcde"))
    network.freeze("backbone")
    drawn = network.diagram(tmp_path / "resnet50.svg")
    _, texts, blocks = _parse(tmp_path / "resnet50.svg")
    assert drawn.boxes <= 40 and drawn.width <= PAGE_WIDTH and drawn.height <= PAGE_HEIGHT
    assert {f"backbone.layer{index}" for index in range(1, 5)} <= set(blocks)
    assert all("frozen" in blocks[f"backbone.layer{index}"] for index in range(1, 5))
    assert "2048×7×7" in " ".join(texts)


def test_the_summary_command_draws_the_diagram(tmp_path):
    target = tmp_path / "model.svg"
    result = CliRunner().invoke(
        app, ["summary", "test_resnet", "--no-top", "--freeze", "backbone", "--diagram", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert "Trainable params" in result.output and f"diagram: {target}" in result.output
    _, _, blocks = _parse(target)
    assert "frozen" in blocks["backbone"]


def test_a_depth_below_one_is_refused():
    network = load("test_resnet", weights=None, include_top=False)
    with pytest.raises(HeadstartError, match="depth=0"):
        network.diagram(depth=0)
