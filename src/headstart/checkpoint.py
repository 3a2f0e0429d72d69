"""What a stage leaves on disk, written atomically, and how a trained network is read back.

A finished stage writes, in its own folder ``<run>/<index>-<name>/``:

* ``weights.safetensors`` — the whole network (backbone and the stage's head); no pickle.
* ``stage.json`` — the stage's record, one schema (:class:`headstart.stage.StageRecord`) for the
  writer and every reader: stage index and name, frozen parameter names, BatchNorm policy, head
  (kind, spec, labels), preprocessing, model, config hash, library versions, metrics, learning
  rates, how its data was read and what was handed over from the previous stage.

While a stage trains, ``last.ckpt`` (Lightning's format: weights, optimizer, scheduler, loop and
callback state) is rewritten at the end of every epoch; ``--resume`` continues from it.

Every file is written to a temporary name in the same folder, flushed with ``fsync`` and moved
into place with ``os.replace``: a failed write (disk full) or a ``kill -9`` mid-save leaves the
previous file intact and loadable.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from headstart.errors import HeadstartError

WEIGHTS_FILE = "weights.safetensors"
METADATA_FILE = "stage.json"
RESUME_FILE = "last.ckpt"


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
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda file: file.write(data))


def atomic_write_json(path: str | os.PathLike, payload: Any) -> None:
    atomic_write_bytes(path, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HeadstartError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise HeadstartError(f"{path}: not valid JSON metadata ({error})") from None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O whose saves are atomic and whose loads never run pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda file: torch.save(checkpoint, file))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - reported with the file name
            raise HeadstartError(f"{path}: cannot resume from this checkpoint ({str(error).splitlines()[0]})") from None


def hardware() -> dict[str, str | int]:
    """The machine a run trained on, recorded in ``run.json`` and shown in reports."""
    import os

    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            processor = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")),
                             processor)
    except OSError:
        pass
    machine: dict[str, str | int] = {"cpu": processor, "cpu_cores": os.cpu_count() or 1,
                                     "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
        machine["gpu_count"] = torch.cuda.device_count()
    return machine


def versions() -> dict[str, str]:
    """Versions recorded in every checkpoint and report."""
    import lightning
    import timm

    import headstart

    return {
        "headstart": headstart.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def save_weights(path: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> None:
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state_dict.items()}
    atomic_write_bytes(path, save_safetensors_bytes(tensors))


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    try:
        return load_safetensors_bytes(path.read_bytes())
    except FileNotFoundError:
        raise HeadstartError(f"{path}: no such weights file") from None
    except (SafetensorError, ValueError, OSError) as error:
        raise HeadstartError(f"{path}: not a complete safetensors file ({error})") from None


def find_stage_folder(path: str | os.PathLike) -> Path:
    """Accept a stage folder, its weights file, its stage.json, or a run folder (its last finished stage)."""
    path = Path(path)
    if not path.exists():
        raise HeadstartError(f"{path}: no such checkpoint (expected a run folder or a stage folder)")
    if path.is_file():
        path = path.parent
    if (path / METADATA_FILE).is_file():
        return path
    run_file = path / "run.json"
    if run_file.is_file():
        finished = [Path(p) for p in read_json(run_file).get("finished_stages", [])]  # the run record's field
        if finished:
            return path / finished[-1]
        raise HeadstartError(f"{path}: the run has no finished stage yet")
    raise HeadstartError(f"{path}: no {METADATA_FILE} here (expected a headstart stage folder or run folder)")


def _bare_network(model):
    """The network a stage's record describes, random weights, no head yet (nothing is downloaded)."""
    from headstart.zoo import load

    return load(model.name, weights=None, include_top=model.include_top, num_classes=model.classes,
                pooling=model.pooling, in_chans=model.in_chans)


def load_backbone(path: str | os.PathLike):
    """The backbone a stage trained (any stage, pretext stages included), with no head: for probes
    and attention maps. Weights of the stage's head are left out; every backbone weight must load."""
    from headstart.stage import StageRecord

    folder = find_stage_folder(path)
    record = StageRecord.read(folder)
    model = record.model
    network = _bare_network(model)
    state = {key: value for key, value in load_weights(folder / WEIGHTS_FILE).items() if key.startswith("backbone.")}
    result = network.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if key.startswith("backbone.")]
    if missing or result.unexpected_keys:
        raise HeadstartError(f"{folder / WEIGHTS_FILE}: does not match the backbone of {model.name} "
                             f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})")
    network.set_training_size(model.image_size)
    network.eval()
    return network


def load_network(path: str | os.PathLike):
    """Rebuild the trained network of a stage (or of a run's last stage) for prediction.

    Everything comes from the stage's record (:class:`headstart.stage.StageRecord`, read from
    ``stage.json``): the model name, input channels, pooling, head spec, labels and the input
    size the stage trained at; the weights from ``weights.safetensors``. Nothing is downloaded.
    """
    from headstart.heads import build_head
    from headstart.stage import StageRecord

    folder = find_stage_folder(path)
    record = StageRecord.read(folder)
    if record.head.kind != "task" or record.head.spec is None:
        raise HeadstartError(
            f"{folder}: stage '{record.stage_name}' ends with a {record.head.pretext or 'pretext'} pretext head; "
            "predict from a stage that trains the task head"
        )
    model = record.model
    network = _bare_network(model)
    network.replace_head(build_head(record.head.spec, network.head_in_features), labels=record.head.labels)
    state = load_weights(folder / WEIGHTS_FILE)
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise HeadstartError(
            f"{folder / WEIGHTS_FILE}: does not match {model.name} with this head "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    network.set_training_size(model.image_size)
    network.eval()
    return network
