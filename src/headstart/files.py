"""Files headstart writes: their names, atomic writes, JSON, PNG bytes, and the facts every record keeps.

A leaf module (it imports nothing else of headstart but :mod:`headstart.errors`), so every layer
writes through it. Every file is written to a temporary name in the same folder, flushed with
``fsync`` and moved into place with ``os.replace``, then the folder is synced: a failed write
(disk full) or a ``kill -9`` mid-save leaves the previous file whole and loadable.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError

WEIGHTS_FILE = "weights.safetensors"
"""A finished stage's whole network (backbone and head), safetensors: no pickle."""
STAGE_FILE = "stage.json"
"""A finished stage's record; its presence marks the stage finished."""
RESUME_FILE = "last.ckpt"
"""Lightning's resume state of a stage in progress (weights, optimizer, scheduler, loops)."""
RUN_FILE = "run.json"
"""A run's record: configuration, finished stages, test metrics."""
COMPARISON_FILE = "compare.json"
"""A comparison's manifest."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(file_object)`` so that it is replaced whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide reports from other users
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def atomic_move(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move a finished file (written elsewhere, e.g. by a converter) into ``path`` atomically: it is
    copied to a temporary name beside ``path``, synced, then replaced in one step."""
    source = Path(source)
    with open(source, "rb") as file:
        atomic_write(path, lambda out: _copy(file, out))


def _copy(source, target) -> None:
    while chunk := source.read(1 << 20):
        target.write(chunk)


def sync_folder(folder: str | os.PathLike) -> None:
    """``fsync`` a folder so that a rename in it survives a crash."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda file: file.write(data))


def json_bytes(payload: Any) -> bytes:
    """The JSON text headstart writes: indented, keys sorted, a final newline."""
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as JSON (:func:`json_bytes`) to ``path`` atomically."""
    atomic_write_bytes(path, json_bytes(payload))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or damaged file is a :class:`HeadstartError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadstartError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadstartError(f"{path}: not valid JSON metadata ({error})") from None


def png_bytes(figure, *, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes (laid out tight); a pyplot figure is closed afterwards."""
    import sys

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=dpi)
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(figure)
    return buffer.getvalue()


def is_finished_stage(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a finished stage (its ``stage.json`` is written last)."""
    return (Path(folder) / STAGE_FILE).is_file()


def is_run(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a run (its ``run.json``)."""
    return (Path(folder) / RUN_FILE).is_file()


def is_comparison(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a comparison (its ``compare.json``)."""
    return (Path(folder) / COMPARISON_FILE).is_file()


def hardware() -> dict[str, str | int]:
    """The machine a run trained on, recorded in ``run.json`` and shown in reports."""
    import torch

    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            processor = next(
                (line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), processor
            )
    except OSError:
        pass
    machine: dict[str, str | int] = {
        "cpu": processor,
        "cpu_cores": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
        machine["gpu_count"] = torch.cuda.device_count()
    return machine


def versions() -> dict[str, str]:
    """Versions recorded in every checkpoint and report."""
    import lightning
    import timm
    import torch

    import headstart

    return {
        "headstart": headstart.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
