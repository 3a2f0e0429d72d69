"""Exports checked on real images: ONNX (``torch.onnx.export``) and Keras (ONNX → ``onnx2tf``).

See :mod:`headstart.interop` for the choices and the parity rule."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from headstart.errors import HeadstartError
from headstart.files import (
    atomic_move,
    atomic_write_bytes,
    atomic_write_json,
)
from headstart.interop.common import (
    FORMATS,
    INPUT_NAME,
    METADATA_PREFIX,
    OUTPUT_NAME,
    TOLERANCE,
    ExportReport,
    ParityCheck,
    as_network,
    metadata_props,
    other_size,
    sample_batch,
)
from headstart.modes import evaluating
from headstart.network import Network

# ------------------------------------------------------------------------------------------ ONNX


def _export_program(network: Network, example: torch.Tensor, dynamic_size: bool):
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes: dict[int, object] = {0: batch}
    if dynamic_size:
        shapes[2] = torch.export.Dim("height", min=32, max=4096)
        shapes[3] = torch.export.Dim("width", min=32, max=4096)
    return torch.onnx.export(
        network,
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamo=True,
        external_data=False,
        dynamic_shapes=(shapes,),
        verbose=False,
    )


def _onnx_session(data: bytes):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _torch_outputs(network: Network, batch: torch.Tensor) -> np.ndarray:
    parameter = next(network.parameters())
    with torch.no_grad():
        return network(batch.to(parameter.device, parameter.dtype)).float().cpu().numpy()


def _onnx_checks(network: Network, data: bytes, batches: Sequence[torch.Tensor]) -> list[ParityCheck]:
    session = _onnx_session(data)
    checks = []
    for batch in batches:
        exported = session.run(None, {INPUT_NAME: batch.numpy().astype(np.float32)})[0]
        reference = _torch_outputs(network, batch)
        checks.append(ParityCheck(list(batch.shape), float(np.abs(exported - reference).max())))
    return checks


def _onnx_bytes(network: Network, dynamic_size: bool | None) -> tuple[bytes, list[str], list[ParityCheck]]:
    """Export ``network`` (in eval mode) and check it; dynamic height/width when the model allows."""
    import onnx

    example = sample_batch(network.preprocessing, count=2)
    fixed_size = network.pooling == "flatten" and not network.include_top
    attempts = [False] if dynamic_size is False or fixed_size else [True, False]
    failure = ""
    for dynamic in attempts:
        try:
            program = _export_program(network, example, dynamic)
        except Exception as error:  # noqa: BLE001 - the exporter raises many types; retried with fixed size
            failure = str(error).splitlines()[0] if str(error) else type(error).__name__
            if dynamic and dynamic_size is None:
                continue
            raise HeadstartError(f"{network.model_name}: ONNX export failed ({failure})") from None
        axes = ["batch", "height", "width"] if dynamic else ["batch"]
        proto = program.model_proto
        for key, value in metadata_props(network, axes).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        data = proto.SerializeToString()
        batches = [sample_batch(network.preprocessing, count=3)]
        if dynamic:
            batches.append(sample_batch(network.preprocessing, size=other_size(network.preprocessing), count=2))
        try:
            checks = _onnx_checks(network, data, batches)
        except Exception as error:  # noqa: BLE001 - onnxruntime refuses a shape the graph fixed
            if dynamic and dynamic_size is None:
                failure = str(error).splitlines()[0]
                continue
            raise HeadstartError(f"{network.model_name}: onnxruntime cannot run the exported model ({error})") from None
        onnx.checker.check_model(proto)
        return data, axes, checks
    raise HeadstartError(f"{network.model_name}: ONNX export failed ({failure})")


def _check_tolerance(report: ExportReport) -> None:
    if not report.max_abs_difference <= report.tolerance:
        raise HeadstartError(
            f"{report.path}: not written, the {report.format} model differs from PyTorch by up to "
            f"{report.max_abs_difference:.3g} on real images (tolerance {report.tolerance:g})"
        )


SUFFIXES = {".onnx": "onnx", ".keras": "keras", ".h5": "keras"}
"""The file suffix of each export format: what :func:`export_format` reads a format from."""


def _suffixes_of(format: str) -> str:
    return " or ".join(suffix for suffix, known in SUFFIXES.items() if known == format)


def export_format(path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write ``path`` in: ``format`` when given, else the one its suffix names
    (``.onnx`` → ``onnx``, ``.keras`` / ``.h5`` → ``keras``).

    Raises :class:`HeadstartError` for an unknown format, a suffix that names no format, and a
    suffix that contradicts ``format`` (ONNX bytes in ``model.keras``), before anything is written.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise HeadstartError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    named = SUFFIXES.get(path.suffix)
    if format is None:
        if named is None:
            raise HeadstartError(
                f"{path}: cannot tell the export format from the file name; "
                "end it with .onnx, or .keras / .h5 for Keras"
            )
        return named
    if named != format:
        raise HeadstartError(
            f"{path}: --format {format} writes a file ending with {_suffixes_of(format)}; rename the file, "
            f"or leave --format out to export by the suffix"
        )
    return format


def export_onnx(
    model: Network | str | os.PathLike,
    path: str | os.PathLike,
    *,
    weights: str | None = "imagenet",
    dynamic_size: bool | None = None,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Write ``model`` as one ONNX file at ``path``, checked against PyTorch with onnxruntime.

    Args:
        model: a :class:`Network`, a stage or run folder (its trained head and labels) or a zoo name.
        path: the ``.onnx`` file to write (weights inside, no external data file); another suffix
            is refused.
        weights: for a zoo name, which weights (``imagenet``, ``none`` or a file).
        dynamic_size: ``None`` (default) makes height and width dynamic when the model allows it
            (checked by running a second image size) and fixed otherwise; ``False`` fixes them.
            The batch is always dynamic.
        tolerance: largest accepted ``max |PyTorch − onnxruntime|`` on the real images.

    The input is the normalised image batch ``[batch, C, H, W]`` (``input``); the output is the
    network's logits (``output``). The preprocessing, labels and output kind are stored as
    metadata (:func:`read_metadata`). Raises :class:`HeadstartError` and writes nothing when the
    export fails or the outputs differ by more than ``tolerance``.
    """
    started = time.perf_counter()
    path = Path(path)
    if path.suffix != ".onnx":
        raise HeadstartError(f"{path}: an ONNX file ends with .onnx")
    network = as_network(model, weights)
    with evaluating(network):
        data, axes, checks = _onnx_bytes(network, dynamic_size)
    report = ExportReport(
        path=str(path),
        format="onnx",
        model_name=network.model_name,
        dynamic_axes=axes,
        checks=checks,
        tolerance=tolerance,
        converter=f"torch.onnx {torch.__version__}",
    )
    _check_tolerance(report)
    atomic_write_bytes(path, data)
    report.seconds = time.perf_counter() - started
    return report


# ----------------------------------------------------------------------------------------- Keras


KERAS_INSTALL = 'pip install "headstart[keras]"'


def _import_onnx2tf():
    import timm.models  # noqa: F401 - torchvision imported after TensorFlow crashes the process (segfault)
    import torchvision.models  # noqa: F401

    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import onnx2tf  # noqa: F401
        import tf_keras  # noqa: F401
    except ImportError as error:
        raise HeadstartError(
            f"--format keras needs onnx2tf, TensorFlow and tf-keras ({error.name} is missing); "
            f"install them with: {KERAS_INSTALL}"
        ) from None
    import onnx2tf

    return onnx2tf


def export_keras(
    model: Network | str | os.PathLike,
    path: str | os.PathLike,
    *,
    weights: str | None = "imagenet",
    channels_last: bool = True,
    tolerance: float = TOLERANCE,
) -> ExportReport:
    """Write ``model`` as a Keras model (``.keras`` or ``.h5``) through ONNX and onnx2tf.

    The chapter's listing 2-16 in today's tools: PyTorch → ONNX (:func:`export_onnx`'s exporter,
    fixed height and width, dynamic batch) → ``onnx2tf`` → a ``tf_keras`` functional model. Input
    is ``[batch, H, W, C]`` (``channels_last=True``, the Keras habit) or ``[batch, C, H, W]``;
    pixels are normalised as :attr:`Network.preprocessing` says, which is also written next to
    the model as ``<path>.json`` with the labels. Parity against PyTorch is checked on the same
    real images as the ONNX export; beyond ``tolerance`` nothing is written. Needs the ``keras``
    extra (``pip install "headstart[keras]"``).
    """
    started = time.perf_counter()
    path = Path(path)
    if path.suffix not in (".keras", ".h5"):
        raise HeadstartError(f"{path}: a Keras model file ends with .keras or .h5")
    onnx2tf = _import_onnx2tf()
    network = as_network(model, weights)
    with evaluating(network):
        data, _, _ = _onnx_bytes(network, dynamic_size=False)
        batches = [sample_batch(network.preprocessing, count=3)]
        references = [_torch_outputs(network, batch) for batch in batches]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".headstart-keras-", dir=path.parent) as scratch:
        onnx_file = Path(scratch) / "model.onnx"
        onnx_file.write_bytes(data)
        try:
            keras_model = onnx2tf.convert(
                input_onnx_file_path=str(onnx_file),
                output_folder_path=str(Path(scratch) / "saved"),
                non_verbose=True,
                verbosity="error",
                not_use_onnxsim=True,
                disable_model_save=True,
                keep_ncw_or_nchw_or_ncdhw_input_names=None if channels_last else [INPUT_NAME],
            )
        except Exception as error:  # noqa: BLE001 - onnx2tf raises many types
            raise HeadstartError(
                f"{network.model_name}: onnx2tf could not convert the model "
                f"({str(error).splitlines()[0] if str(error) else type(error).__name__})"
            ) from None
        checks = []
        for batch, reference in zip(batches, references, strict=True):
            keras_input = batch.permute(0, 2, 3, 1) if channels_last else batch
            output = keras_model(keras_input.numpy().astype(np.float32))
            output = np.asarray(output[0] if isinstance(output, (list, tuple)) else output)
            checks.append(ParityCheck(list(keras_input.shape), float(np.abs(output - reference).max())))
        report = ExportReport(
            path=str(path),
            format="keras",
            model_name=network.model_name,
            dynamic_axes=["batch"],
            checks=checks,
            tolerance=tolerance,
            converter=f"onnx2tf {onnx2tf.__version__}",
        )
        _check_tolerance(report)
        temporary = Path(scratch) / f"model{path.suffix}"
        keras_model.save(str(temporary))
        atomic_move(temporary, path)
    sidecar = {
        **{key.removeprefix(METADATA_PREFIX): value for key, value in metadata_props(network, ["batch"]).items()},
        "input": "float32 [batch, height, width, channels]"
        if channels_last
        else "float32 [batch, channels, height, width]",
    }
    sidecar["preprocessing"] = json.loads(sidecar["preprocessing"])
    sidecar["labels"] = json.loads(sidecar["labels"])
    atomic_write_json(path.with_name(path.name + ".json"), sidecar)
    report.seconds = time.perf_counter() - started
    return report


def export(
    model: Network | str | os.PathLike, path: str | os.PathLike, format: str | None = None, **options
) -> ExportReport:
    """:func:`export_onnx` or :func:`export_keras` by ``format``; by default by the suffix of
    ``path`` (:func:`export_format`, which also refuses a suffix that contradicts ``format``)."""
    if export_format(path, format) == "onnx":
        return export_onnx(model, path, **options)
    return export_keras(model, path, **options)
