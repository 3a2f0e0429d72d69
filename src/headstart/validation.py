"""One way to check a typed spec or record and to say what is wrong with it.

Every mapping headstart reads — a run file, a comparison file, a stage given as a dict, a head
spec, a data source, a ``stage.json`` — is validated by pydantic through :func:`validate`, and a
problem becomes one :class:`~headstart.errors.HeadstartError` line per problem, in one format::

    runs/mnist.yaml: stages[1].freeze: Input should be a valid list (got 'backbone')
    runs/mnist.yaml: stages[0].epoch: unknown key; did you mean 'epochs'?

``source`` names where the mapping came from (a file, or an argument such as ``stage``).
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from headstart.errors import HeadstartError

Model = TypeVar("Model", bound=BaseModel)


def location(loc: tuple[Any, ...]) -> str:
    """pydantic's location tuple as a run file writes it: ``stages[1].optimizer.lr``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(
            ("function-", "literal[", "constrained-")
        ):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _known_fields(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            inner = [a for c in candidates for a in getattr(c, "__args__", ())]
            model = next((c for c in inner if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return list(getattr(model, "model_fields", {}))


def describe_validation_error(error: ValidationError, source: str, model: type[BaseModel]) -> str:
    """One line per problem: ``SOURCE: stages[1].freeze: what is wrong (got …)``; an unknown key
    gets the closest field of ``model`` (the model that was validated) as a suggestion."""
    lines = []
    for problem in error.errors():
        where = location(problem["loc"])
        if problem["type"] == "extra_forbidden":
            key = str(problem["loc"][-1])
            close = difflib.get_close_matches(key, _known_fields(problem["loc"], model), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"{source}: {where}: unknown key{hint}")
        elif problem["type"] == "missing":
            lines.append(f"{source}: {where}: missing; this key is required")
        else:
            lines.append(f"{source}: {where}: {problem['msg']} (got {_short(problem.get('input'))})")
    return "\n".join(lines)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate(model: type[Model], value: Any, source: str) -> Model:
    """``value`` as a ``model`` (returned as is when it already is one), or a :class:`HeadstartError`
    whose lines name ``source``, the key and the problem (:func:`describe_validation_error`)."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise HeadstartError(describe_validation_error(error, source, model)) from None
