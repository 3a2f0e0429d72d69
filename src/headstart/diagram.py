"""An architecture diagram of a network as an SVG file: Keras' ``plot_model`` for headstart networks.

The chapter shows its models with ``keras.utils.plot_model``; ``network.diagram("model.svg")``
(or ``headstart summary MODEL --diagram model.svg``) draws the same kind of picture for a
:class:`~headstart.network.Network`:

* the input, the backbone's top-level blocks in order (a ResNet's ``conv1 … layer4``, an
  EfficientNet's ``conv_stem``, ``blocks``, ``conv_head``), the pooling and the head;
* ``depth`` levels below the backbone and the head, as :meth:`Network.summary` counts them: at
  depth 2 (the default) a block that holds others (a ResNet stage, EfficientNet's ``blocks``)
  is a frame around its sub-blocks, laid side by side and wrapped, so the picture grows with the
  number of top-level blocks, not with the number of layers — ResNet-50 fits on an A4 page;
* each box: name, type, output shape per example (``channels×height×width``, from forward hooks
  on one dummy batch of the network's input size, in evaluation mode) and parameter count;
* what is frozen: a box whose parameters are all frozen is grey and hatched and says
  ``frozen``; partly frozen ones say so; BatchNorm layers that the ``frozen`` policy holds in
  evaluation mode say ``BN stats fixed``. Blocks that the forward pass does not use (a
  classifier left out by ``include_top=False``) are dashed and say ``not used``.

The SVG is written directly (no Graphviz or other program needed); every box is a ``<g>``
element with ``class="block …"`` (``frozen``, ``partly-frozen``, ``trainable``) and a
``data-name`` attribute holding the module's full name, so the file is easy to check and style.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.files import atomic_write_bytes
from headstart.summary import expands, input_size_of, output_shapes

PAGE_WIDTH = 794
"""An A4 page at 96 dots per inch is 794 × 1123 pixels; sub-blocks wrap to stay within its width."""
PAGE_HEIGHT = 1123
FONT = 11
"""Font size in pixels; text width is estimated at 0.6 em per character (sans-serif)."""
LINE = 14
PAD = 6
GAP = 10
_CHAR = 0.6 * FONT

COLOURS = {
    "trainable": "#dbeafe",
    "frozen": "#d9d9d9",
    "partly-frozen": "#fde9c4",
    "no-parameters": "#ffffff",
    "unused": "#ffffff",
}


@dataclass
class Node:
    """One box: a module, what it outputs and how much of it trains."""

    name: str
    """Full module name (``backbone.layer1.0``); ``input`` for the input."""
    label: str
    module: nn.Module | None
    children: list[Node] = field(default_factory=list)
    shape: str | None = None
    parameters: int = 0
    trainable: int = 0
    bn_fixed: bool = False

    @property
    def state(self) -> str:
        if self.module is not None and self.shape is None and not self.children:
            return "unused"
        if self.parameters == 0:
            return "no-parameters"
        if self.trainable == 0:
            return "frozen"
        return "trainable" if self.trainable == self.parameters else "partly-frozen"

    def lines(self) -> list[str]:
        notes = [self.shape or ("not used" if self.state == "unused" else "")]
        if self.parameters:
            notes.append(_count(self.parameters))
        if self.state in ("frozen", "partly-frozen"):
            notes.append(self.state.replace("-", " "))
        if self.bn_fixed:
            notes.append("BN stats fixed")
        return [self.label, " · ".join(note for note in notes if note)]


@dataclass
class Diagram:
    """A drawn diagram: the SVG text, its size and what it shows."""

    svg: str
    width: int
    height: int
    boxes: int
    """Boxes drawn (blocks, frames, input), the legend not counted."""
    blocks: list[str]
    """Full names of the top-level blocks: the backbone's children, the pooling and the head."""
    path: Path | None = None


def _count(value: int) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return str(value)


def _shape(output) -> str | None:
    if isinstance(output, torch.Tensor):
        return "×".join(str(size) for size in output.shape[1:]) or "scalar"
    if isinstance(output, (tuple, list)) and output:
        shapes = [_shape(item) for item in output]
        return ", ".join(shape for shape in shapes if shape)
    return None


def _tree(network, depth: int) -> tuple[list[Node], list[str]]:
    """The boxes below the input: backbone (its children, ``depth`` levels), pooling, head."""
    bn_fixed = set(network.frozen_batchnorm_names())

    def node(module: nn.Module, name: str, label: str, level: int) -> Node:
        parameters = list(module.parameters())
        result = Node(
            name=name,
            label=f"{label}: {type(module).__name__}",
            module=module,
            parameters=sum(p.numel() for p in parameters),
            trainable=sum(p.numel() for p in parameters if p.requires_grad),
            bn_fixed=name in bn_fixed,
        )
        if expands(module, level, depth):
            result.children = [
                node(child, f"{name}.{child_name}", child_name, level + 1)
                for child_name, child in module.named_children()
            ]
        return result

    backbone = node(network.backbone, "backbone", "backbone", 0)
    if not backbone.children:  # a backbone that is one layer still shows as one block
        backbone.children = [
            node(child, f"backbone.{child_name}", child_name, 1)
            for child_name, child in network.backbone.named_children()
        ]
    top = [
        backbone,
        node(network.pool, "pool", f"pool ({network.pooling})", depth),
        node(network.head, "head", "head", 0),
    ]
    blocks = [child.name for child in backbone.children] + ["pool", "head"]
    return top, blocks


def _measure_shapes(network, nodes: list[Node], input_size: tuple[int, ...]) -> str:
    everything: list[Node] = []

    def walk(items: list[Node]) -> None:
        for item in items:
            everything.append(item)
            walk(item.children)

    walk(nodes)
    outputs, final = output_shapes(
        network,
        {item.name: item.module for item in everything if item.module is not None},
        input_size,
        caller="diagram",
    )
    for item in everything:
        if item.name in outputs:
            item.shape = _shape(outputs[item.name])
    return _shape(final) or "?"


# ----------------------------------------------------------------------------------------- layout


@dataclass
class _Box:
    node: Node
    width: float
    height: float
    inner: list[tuple[_Box, float, float]] = field(default_factory=list)
    """Children with their offsets inside this box."""
    vertical: bool = True


def _text_width(lines: Sequence[str]) -> float:
    return max(len(line) for line in lines) * _CHAR + 2 * PAD


def _layout(node: Node, vertical: bool, available: float) -> _Box:
    """Size ``node``: a leaf fits its text; a frame stacks its children (``vertical``) or sets them
    side by side, wrapping within ``available`` pixels; directions alternate by level."""
    lines = node.lines()
    if not node.children:
        return _Box(node, min(available, max(90.0, _text_width(lines))), len(lines) * LINE + PAD)
    title = float(LINE * 2 + PAD)
    inside = available - 2 * PAD
    boxes = [_layout(child, not vertical, inside) for child in node.children]
    placed: list[tuple[_Box, float, float]] = []
    if vertical:
        y = title
        for box in boxes:
            placed.append((box, PAD, y))
            y += box.height + GAP
        width = max([box.width for box in boxes] + [_text_width(lines) - 2 * PAD]) + 2 * PAD
        height = y - GAP + PAD
    else:
        x, y, row_height, width = 0.0, title, 0.0, 0.0
        for box in boxes:
            if x and x + box.width > inside:
                x, y = 0.0, y + row_height + GAP
                row_height = 0.0
            placed.append((box, PAD + x, y))
            x += box.width + GAP
            row_height = max(row_height, box.height)
            width = max(width, x - GAP)
        width = max(width, _text_width(lines) - 2 * PAD) + 2 * PAD
        height = y + row_height + PAD
    return _Box(node, min(available, width), height, placed, vertical)


# ----------------------------------------------------------------------------------------- drawing


def _emit(box: _Box, x: float, y: float, out: list[str]) -> int:
    node = box.node
    state = node.state
    classes = f"block {state}" + (" frame" if box.inner else "")
    fill = COLOURS[state] if not box.inner else {"frozen": "#efefef", "partly-frozen": "#fff8ec"}.get(state, "#f8fafc")
    dash = ' stroke-dasharray="4 3"' if state in ("unused", "no-parameters") or box.inner else ""
    out.append(f'<g class="{classes}" data-name={quoteattr(node.name)}>')
    out.append(f"<title>{escape(node.name)}: {node.parameters:,} parameters, {node.trainable:,} trainable</title>")
    out.append(
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" rx="4" '
        f'fill="{fill}" stroke="#555"{dash}/>'
    )
    if state == "frozen" or (state == "partly-frozen" and not box.inner):  # a frame's blocks show which part
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{box.width:.1f}" height="{box.height:.1f}" rx="4" '
            f'fill="url(#hatch)" stroke="none"/>'
        )
    for line_index, line in enumerate(node.lines()):
        weight = ' font-weight="bold"' if line_index == 0 else ""
        out.append(f'<text x="{x + PAD:.1f}" y="{y + LINE * (line_index + 1) - 2:.1f}"{weight}>{escape(line)}</text>')
    out.append("</g>")
    count = 1
    previous: tuple[float, float, float] | None = None
    for child, dx, dy in box.inner:
        count += _emit(child, x + dx, y + dy, out)
        if box.vertical and previous is not None:
            middle = x + dx + min(child.width, previous[2]) / 2
            out.append(
                f'<line x1="{middle:.1f}" y1="{previous[1]:.1f}" x2="{middle:.1f}" y2="{y + dy:.1f}" '
                'stroke="#555" marker-end="url(#arrow)"/>'
            )
        previous = (x + dx, y + dy + child.height, child.width)
    return count


def draw(
    network, path: str | Path | None = None, *, depth: int = 2, input_size: int | Sequence[int] | None = None
) -> Diagram:
    """Draw ``network`` (module docstring); write the SVG to ``path`` when given (atomic)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise HeadstartError(f"diagram: depth={depth!r}; expected a whole number of at least 1")
    input_size = input_size_of(network, input_size)
    top, blocks = _tree(network, depth)
    output_shape = _measure_shapes(network, top, input_size)
    source = Node(name="input", label="input", module=None, shape="×".join(str(size) for size in input_size))
    output = Node(name="output", label=f"output ({network.output_kind})", module=None, shape=output_shape)
    available = PAGE_WIDTH - 2 * GAP
    laid = [_layout(item, vertical=True, available=available) for item in [source] + top + [output]]
    total = sum(p.numel() for p in network.parameters())
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    header = (
        f"include_top={network.include_top}, pooling={network.pooling}, {_count(total)} parameters, "
        f"{_count(trainable)} trainable, BatchNorm policy {network.bn_policy}"
    )
    body: list[str] = []
    count = 0
    y = float(GAP + 3 * LINE)
    previous: tuple[float, float] | None = None
    for box in laid:
        if previous is not None:
            middle = GAP + min(box.width, previous[1]) / 2
            body.append(
                f'<line x1="{middle:.1f}" y1="{previous[0]:.1f}" x2="{middle:.1f}" y2="{y:.1f}" '
                'stroke="#555" marker-end="url(#arrow)"/>'
            )
        count += _emit(box, GAP, y, body)
        previous = (y + box.height, box.width)
        y += box.height + GAP
    legend_y = y + LINE
    width = int(max([box.width for box in laid] + [len(header) * _CHAR]) + 2 * GAP)
    height = int(legend_y + GAP)
    legend = []
    x = float(GAP)
    for state, words in (
        ("trainable", "trainable"),
        ("frozen", "frozen"),
        ("partly-frozen", "partly frozen"),
        ("no-parameters", "no parameters"),
    ):
        hatch = (
            '<rect x="{x:.1f}" y="{y:.1f}" width="14" height="10" fill="url(#hatch)"/>'
            if state in ("frozen", "partly-frozen")
            else ""
        )
        legend.append(
            f'<rect x="{x:.1f}" y="{legend_y - 9:.1f}" width="14" height="10" fill="{COLOURS[state]}" '
            f'stroke="#555"/>' + hatch.format(x=x, y=legend_y - 9)
        )
        legend.append(f'<text x="{x + 18:.1f}" y="{legend_y:.1f}">{escape(words)}</text>')
        x += 18 + len(words) * _CHAR + 16
    legend.append(f'<text x="{x:.1f}" y="{legend_y:.1f}" fill="#555">shapes per example: channels×height×width</text>')
    svg = "\n".join(
        [
            '<?xml version="1.0" encoding="UTF-8"?>',
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" '
            f'font-size="{FONT}">',
            f"<title>{escape(network.model_name)} architecture</title>",
            "<defs>",
            '<pattern id="hatch" patternUnits="userSpaceOnUse" width="6" height="6" patternTransform="rotate(45)">'
            '<line x1="0" y1="0" x2="0" y2="6" stroke="#8a8a8a" stroke-width="1.5"/></pattern>',
            '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">'
            '<path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>',
            "</defs>",
            f'<rect width="{width}" height="{height}" fill="white"/>',
            f'<text x="{GAP}" y="{GAP + LINE}" font-size="{FONT + 2}" font-weight="bold">'
            f"{escape(network.model_name)}</text>",
            f'<text x="{GAP}" y="{GAP + 2 * LINE + 2}">{escape(header)}</text>',
            *body,
            *legend,
            "</svg>",
            "",
        ]
    )
    diagram = Diagram(svg=svg, width=width, height=height, boxes=count, blocks=blocks)
    if path is not None:
        diagram.path = Path(path)
        atomic_write_bytes(diagram.path, svg.encode("utf-8"))
    return diagram
