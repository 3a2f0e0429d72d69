"""The layer-selector language: which parameters ``freeze``, ``unfreeze``, BatchNorm policies and
discriminative learning rates act on, chosen **by name**, never by position (STYLE rule 2).

=========================== ==============================================================
selector                    parameters
=========================== ==============================================================
``all``                     every parameter
``backbone``                the pretrained model, its own classifier left out
``head``                    the head on top (and the backbone's classifier with ``include_top``)
``stem``                    timm's ``group_matcher`` stem (``conv1``/``bn1``, ``conv_stem``…)
``blocks`` / ``blocks[i]``  timm's fine groups (layer-wise learning-rate decay ids); ranges
``blocks[a:b]``             as Python slices, negative indices allowed
``stages`` / ``stages[i]``  timm's coarse groups (a ResNet's ``layer1`` … ``layer4``)
``re:<expression>``         parameter names matching a regular expression
=========================== ==============================================================

A network without ``group_matcher`` (an imported ONNX backbone) groups by its top-level children.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from torch import nn

from headstart.errors import HeadstartError

KEYWORDS = ("all", "backbone", "head", "stem", "blocks", "stages")
_RANGE = re.compile(r"^(blocks|stages)\[\s*(-?\d*)\s*(?:(:)\s*(-?\d*)\s*)?\]$")


def classifier_names(network) -> list[str]:
    """Names of the backbone's own classifier parameters (only present when ``include_top``)."""
    if not network.include_top or not hasattr(network.backbone, "get_classifier"):
        return []
    classifier = network.backbone.get_classifier()
    if not isinstance(classifier, nn.Module):
        return []
    ids = {id(parameter) for parameter in classifier.parameters()}
    return [f"backbone.{name}" for name, parameter in network.backbone.named_parameters() if id(parameter) in ids]


def backbone_groups(network, coarse: bool) -> tuple[list[str], list[list[str]]]:
    """``(stem names, block groups)`` from timm's ``group_matcher``, classifier left out."""
    from timm.models import group_parameters

    backbone = network.backbone
    classifier = set(classifier_names(network))
    names = [f"backbone.{name}" for name, _ in backbone.named_parameters()]
    if not hasattr(backbone, "group_matcher"):
        children = [f"backbone.{child}." for child, _ in backbone.named_children()]
        blocks = [[name for name in names if name.startswith(child) and name not in classifier] for child in children]
        return [], [block for block in blocks if block]
    matcher = backbone.group_matcher(coarse=coarse)
    layer_of = {f"backbone.{name}": layer for name, layer in group_parameters(backbone, matcher, reverse=True).items()}
    if isinstance(matcher, dict) and matcher.get("stem"):
        stem_spec = matcher["stem"]
        patterns = [stem_spec] if isinstance(stem_spec, str) else [entry[0] for entry in stem_spec]
        stem_layers = {
            layer_of[name] for name in names if any(re.match(pattern, name[len("backbone.") :]) for pattern in patterns)
        }
    else:
        stem_layers = {0}
    stem = [name for name in names if layer_of[name] in stem_layers and name not in classifier]
    by_layer: dict[int, list[str]] = {}
    for name in names:
        if name not in classifier and layer_of[name] not in stem_layers:
            by_layer.setdefault(layer_of[name], []).append(name)
    return stem, [by_layer[layer] for layer in sorted(by_layer)]


def head_names(network) -> list[str]:
    """The head's parameter names (with ``include_top``, the backbone's classifier first)."""
    return classifier_names(network) + [f"head.{name}" for name, _ in network.head.named_parameters()]


def param_groups(network) -> dict[str, list[str]]:
    """Group name → parameter names, in network order: ``stem``, ``blocks[0]``, …, ``head``; every
    key is also a valid selector."""
    stem, blocks = backbone_groups(network, coarse=False)
    groups: dict[str, list[str]] = {}
    if stem:
        groups["stem"] = stem
    for index, block in enumerate(blocks):
        groups[f"blocks[{index}]"] = block
    head = head_names(network)
    if head:
        groups["head"] = head
    return groups


def names_for(network, selector: str) -> list[str]:
    """The parameter names one selector chooses (module docstring); an unknown selector is an
    error with the closest known ones suggested."""
    all_names = [name for name, _ in network.named_parameters()]
    if not isinstance(selector, str) or not selector.strip():
        raise HeadstartError(
            f"selector {selector!r} ({type(selector).__name__}): expected a name such as 'backbone', 'stem', "
            "'blocks[:3]', 'head', 'all' or 're:<regular expression>'"
        )
    selector = selector.strip()
    if selector.startswith("re:"):
        try:
            pattern = re.compile(selector[3:])
        except re.error as exc:
            raise HeadstartError(f"selector {selector!r}: invalid regular expression ({exc})") from None
        return [name for name in all_names if pattern.search(name)]
    if selector == "all":
        return all_names
    if selector == "head":
        return head_names(network)
    if selector == "backbone":
        classifier = set(classifier_names(network))
        return [name for name in all_names if name.startswith("backbone.") and name not in classifier]
    if selector == "stem":
        return backbone_groups(network, coarse=False)[0]
    if selector in ("blocks", "stages"):
        return [name for block in backbone_groups(network, coarse=selector == "stages")[1] for name in block]
    match = _RANGE.match(selector)
    if match:
        kind, start, colon, stop = match.groups()
        blocks = backbone_groups(network, coarse=kind == "stages")[1]
        if colon:
            chosen = blocks[slice(int(start) if start else None, int(stop) if stop else None)]
        else:
            if not start:
                raise HeadstartError(f"selector {selector!r}: expected an index or a range such as {kind}[:2]")
            index = int(start)
            if not -len(blocks) <= index < len(blocks):
                raise HeadstartError(
                    f"selector {selector!r}: {network.model_name} has {len(blocks)} {kind} "
                    f"(indices 0..{len(blocks) - 1})"
                )
            chosen = [blocks[index]]
        return [name for block in chosen for name in block]
    options = list(KEYWORDS) + list(param_groups(network))
    close = difflib.get_close_matches(selector, options, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise HeadstartError(
        f"unknown selector {selector!r}: expected all, backbone, head, stem, blocks, stages, "
        f"blocks[i] / blocks[a:b], stages[i] / stages[a:b] or re:<regular expression>{hint}"
    )


def select(network, selectors: Sequence) -> list[str]:
    """Parameter names chosen by ``selectors`` (their union), in network order.

    A selector that chooses nothing is an error (usually a typo in a regular expression). A list
    of selectors counts as its items (``freeze(["stem", "blocks[:2]"])``, as a run file writes them).
    """
    flat = tuple(
        item for selector in selectors for item in (selector if isinstance(selector, (list, tuple)) else (selector,))
    )
    if not flat:
        raise HeadstartError("no selector given: expected e.g. 'backbone', 'stem', 'blocks[:3]', 'head'")
    chosen: set[str] = set()
    for selector in flat:
        names = names_for(network, selector)
        if not names:
            raise HeadstartError(f"selector {selector!r} selects no parameters of {network.model_name}")
        chosen.update(names)
    return [name for name, _ in network.named_parameters() if name in chosen]
