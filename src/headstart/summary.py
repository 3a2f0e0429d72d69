"""Keras' ``model.summary()`` for headstart networks, and the layer walk the diagram shares.

One walk over a network's modules (:func:`expands`, :func:`layer_rows`) and one dummy forward
pass with shape hooks (:func:`output_shapes`) serve both the table here and the SVG of
:mod:`headstart.diagram`, so the two always show the same layers with the same shapes.

A module is one layer when it holds parameters itself (a BatchNorm with its activation), when no
child of it holds any (a pooling wrapper), or when it lies ``depth`` levels down; otherwise its
children are walked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.modes import evaluating


def expands(module: nn.Module, level: int, depth: int) -> bool:
    """Whether the walk shows ``module``'s children instead of the module (module docstring)."""
    children = list(module.children())
    own = any(True for _ in module.parameters(recurse=False))
    children_hold = any(True for child in children for _ in child.parameters())
    return level < depth and bool(children) and not own and children_hold


def layer_rows(network: nn.Module, depth: int) -> list[tuple[str, nn.Module]]:
    """``(full name, module)`` of every layer the walk shows, in network order, ``depth`` levels
    below the network's top-level modules (backbone, pooling, head)."""
    rows: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, name: str, level: int) -> None:
        if not expands(module, level, depth):
            rows.append((name, module))
            return
        for child_name, child in module.named_children():
            visit(child, f"{name}.{child_name}", level + 1)

    for child_name, child in network.named_children():
        visit(child, child_name, 0)
    return rows


def output_shapes(
    network: nn.Module, modules: dict[str, nn.Module], input_size: Sequence[int], caller: str = "summary"
) -> tuple[dict[str, Any], Any]:
    """Run one zero batch of ``input_size`` (``(C, H, W)``) through ``network`` in evaluation mode
    and return each named module's first output and the network's output (shapes read from them).
    An input the network cannot read is a :class:`HeadstartError` naming ``caller``."""
    outputs: dict[str, Any] = {}
    hooks = []
    for name, module in modules.items():

        def record(_module, _inputs, output, name=name):
            outputs.setdefault(name, output)

        hooks.append(module.register_forward_hook(record))
    parameter = next(network.parameters())
    try:
        with evaluating(network):
            final = network(torch.zeros((1, *input_size), device=parameter.device, dtype=parameter.dtype))
    except (RuntimeError, ValueError) as error:
        raise HeadstartError(
            f"{caller}: a {tuple(input_size)} input does not run through "
            f"{getattr(network, 'model_name', type(network).__name__)}: "
            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, final


def _describe(output) -> str:
    if isinstance(output, torch.Tensor):
        return "(None, " + ", ".join(str(size) for size in output.shape[1:]) + ")"
    if isinstance(output, (tuple, list)):
        return " ".join(_describe(item) for item in output)
    return "?"


def input_size_of(network, input_size: int | Sequence[int] | None) -> tuple[int, ...]:
    """``(C, H, W)`` from ``H`` or a tuple; ``None``: the network's pretrained input size."""
    if input_size is None:
        return tuple(int(value) for value in network.preprocessing.input_size)
    if isinstance(input_size, int):
        return (network.in_chans, input_size, input_size)
    return tuple(int(value) for value in input_size)


def summary(network, input_size: int | Sequence[int] | None = None, depth: int = 2) -> str:
    """A table like Keras' ``model.summary()``: layer, type, output shape, parameters, trainable.

    Rows are modules ``depth`` levels below the backbone and head (depth 2: the backbone's
    top-level modules, its stages split into blocks); output shapes come from forward hooks on
    one dummy batch of ``input_size`` (``(C, H, W)`` or ``H``; default the pretrained size).
    The footer gives Total / Trainable / Non-trainable parameters, the numbers the chapter
    compares before and after freezing.
    """
    if depth < 1:
        raise HeadstartError(f"summary depth={depth}: expected at least 1")
    size = input_size_of(network, input_size)
    rows = layer_rows(network, depth)
    outputs, _ = output_shapes(network, dict(rows), size)
    table = [("Layer (type)", "Output shape", "Param #", "Trainable")]
    for name, module in rows:
        parameters = list(module.parameters())
        count = sum(parameter.numel() for parameter in parameters)
        trainable = sum(parameter.numel() for parameter in parameters if parameter.requires_grad)
        flag = "-" if count == 0 else "yes" if trainable == count else "no" if trainable == 0 else "partly"
        shape = _describe(outputs[name]) if name in outputs else "-"
        table.append((f"{name} ({type(module).__name__})", shape, f"{count:,}", flag))
    widths = [max(len(row[column]) for row in table) for column in range(4)]

    def line(row) -> str:
        return "  ".join(
            cell.ljust(width) if column in (0, 1) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    total = sum(parameter.numel() for parameter in network.parameters())
    trainable_total = sum(parameter.numel() for parameter in network.parameters() if parameter.requires_grad)
    rule = "=" * len(line(table[0]))
    header = (
        f'Network "{network.model_name}": include_top={network.include_top}, pooling={network.pooling}, '
        f"input {size}, BatchNorm policy {network.bn_policy}"
    )
    body = [header, rule, line(table[0]), rule] + [line(row) for row in table[1:]] + [rule]
    body += [
        f"Total params: {total:,}",
        f"Trainable params: {trainable_total:,}",
        f"Non-trainable params: {total - trainable_total:,}",
    ]
    return "\n".join(body)
