"""Pretext tasks: altered copies of unlabelled images with labels made by construction.

Each task lives in its own module and is reachable by name::

    import headstart.pretext as pretext

    pretext.names()                 # ['color_shift', 'colorization', 'context', 'custom', ...]
    task = pretext.get("rotation", all_rotations=True)

``get`` validates the options against the task's fields; a misspelt name or option raises
:class:`~headstart.errors.HeadstartError` with the known names and the closest match. Register a
task of your own (a :class:`PretextTask` subclass with a unique ``name``) with :func:`register`,
usable as a class decorator, and remove it again with :func:`unregister`. For a task that should
exist only for a while (a test, a notebook cell), :func:`registered` does both::

    with pretext.registered(MyTask):
        task = pretext.get(MyTask.name)
    # the name is free again here
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

from headstart.errors import HeadstartError
from headstart.pretext.base import Encoder, PretextTask, SimpleEncoder
from headstart.pretext.color_shift import ColorShiftTask
from headstart.pretext.colorization import ColorizationTask
from headstart.pretext.context import ContextTask
from headstart.pretext.contrastive import SimCLRTask
from headstart.pretext.custom import CustomTask, HeadSpec
from headstart.pretext.distillation import BYOLTask, DINOTask
from headstart.pretext.jigsaw import JigsawTask
from headstart.pretext.masked_patches import MaskedPatchesTask
from headstart.pretext.noise_level import NoiseLevelTask
from headstart.pretext.noise_presence import NoisePresenceTask
from headstart.pretext.rotation import RotationTask

_REGISTRY: dict[str, type[PretextTask]] = {}


def register(cls: type[PretextTask]) -> type[PretextTask]:
    """Make ``cls`` available to :func:`get` under ``cls.name``; returns ``cls`` (a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, PretextTask)):
        raise HeadstartError(f"register: {cls!r} is not a PretextTask subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise HeadstartError(f"register: {cls.__name__} needs a class attribute name = '...'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise HeadstartError(
            f"register: the name {name!r} is taken by {_REGISTRY[name].__module__}.{_REGISTRY[name].__name__}"
        )
    _REGISTRY[name] = cls
    return cls


def unregister(name: str) -> type[PretextTask]:
    """Remove the task registered as ``name`` and return its class (tests and notebooks that
    register a task and want the registry back as it was); an unknown name raises
    :class:`~headstart.errors.HeadstartError`."""
    if name not in _REGISTRY:
        raise HeadstartError(f"unregister: no task named {name!r}; registered: {', '.join(names())}")
    return _REGISTRY.pop(name)


@contextmanager
def registered(cls: type[PretextTask]) -> Iterator[type[PretextTask]]:
    """Register ``cls`` (as :func:`register` does) for the body of a ``with`` block, then remove it,
    also when the block raises. A task that was already registered before the block stays registered."""
    name = getattr(cls, "name", None)
    already = isinstance(name, str) and _REGISTRY.get(name) is cls
    register(cls)
    try:
        yield cls
    finally:
        if not already and _REGISTRY.get(cls.name) is cls:
            unregister(cls.name)


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def _options_of(cls: type[PretextTask]) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [field.name for field in dataclasses.fields(cls) if field.init]
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def get(name: str, **options) -> PretextTask:
    """The task registered as ``name``, built with ``options`` (its fields; the paper's defaults otherwise)."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HeadstartError(f"unknown pretext task {name!r}{hint} Known tasks: {', '.join(names())}")
    cls = _REGISTRY[name]
    known = _options_of(cls)
    unknown = [key for key in options if key not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise HeadstartError(
            f"pretext task {name!r} has no option {unknown[0]!r}{hint}; its options are: {', '.join(known) or 'none'}"
        )
    try:
        return cls(**options)
    except TypeError as error:
        raise HeadstartError(f"pretext task {name!r}: {error}") from None


def check_batch_size(name: str, batch_size: int, where: str = "") -> str | None:
    """:meth:`PretextTask.check_batch_size` of the task registered as ``name``, without building it:
    raises below the task's minimum batch, returns a warning below its useful one. An unknown name
    passes (``None``): :func:`get` reports it with the known names."""
    cls = _REGISTRY.get(name)
    return None if cls is None else cls.check_batch_size(batch_size, where)


for _task in (
    RotationTask,
    NoisePresenceTask,
    NoiseLevelTask,
    ColorShiftTask,
    ColorizationTask,
    ContextTask,
    JigsawTask,
    MaskedPatchesTask,
    CustomTask,
    SimCLRTask,
    BYOLTask,
    DINOTask,
):
    register(_task)

__all__ = [
    "BYOLTask",
    "ColorShiftTask",
    "ColorizationTask",
    "ContextTask",
    "CustomTask",
    "DINOTask",
    "Encoder",
    "HeadSpec",
    "JigsawTask",
    "MaskedPatchesTask",
    "NoiseLevelTask",
    "NoisePresenceTask",
    "PretextTask",
    "RotationTask",
    "SimCLRTask",
    "SimpleEncoder",
    "check_batch_size",
    "get",
    "names",
    "register",
    "registered",
    "unregister",
]
