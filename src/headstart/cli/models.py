"""Commands on networks: ``predict``, ``zoo list``, ``summary``, ``export``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from headstart.cli.app import _console, _network_for, _pooling_mode, app, user_errors, zoo_app
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError


@app.command()
@user_errors
def predict(
    images: list[str] = typer.Argument(
        ..., help="Image files, folders (walked recursively: image files only, hidden names skipped) or glob patterns."
    ),
    model: str = typer.Option("EfficientNetLite0", "--model", "-m", help="Zoo alias or timm name."),
    weights: str = typer.Option("imagenet", help="imagenet, none, or a .safetensors/.pth file."),
    checkpoint: Path | None = typer.Option(
        None,
        help="A stage folder, a run folder (its last finished stage) or a comparison's best/ folder: its network, "
        "head and labels; overrides --model.",
    ),
    top: int = typer.Option(5, min=1, help="Predictions listed per image."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    output: Path | None = typer.Option(
        None,
        "--output",
        "-o",
        help="Write one row per image to this .csv or .jsonl file, flushed per batch; an unreadable image gets a "
        "row with its error. An existing file is continued: its paths are not predicted again.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="With --output: start the file afresh."),
    skip_errors: bool = typer.Option(
        False,
        "--skip-errors",
        help="Skip unreadable images and count them (else: a row with the error in --output, "
        "or exit 2 naming the file without --output).",
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per forward pass."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Processes decoding images (default: none on two cores or fewer, else up to 8)."
    ),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, or auto (the GPU when there is one)."),
) -> None:
    """Classify image files, whole folders or glob patterns with a pretrained network or a trained checkpoint.

    Without --output: a table (or --json) of the most probable labels. With --output .csv or .jsonl: a row per image.
    Rows are written per batch; a summary counts images, errors and images/s; rerunning continues the file.
    """
    from headstart.inference import check_inputs

    check_inputs(images)  # fail before loading PyTorch and a network
    if output is not None:
        _output_kind(output)
    from headstart.inference import Predictor, find_images, predict_files
    from headstart.prediction_files import predict_to_file

    predictor = Predictor(_network_for(model, weights, checkpoint), device=device, top=top)
    if output is not None:
        with _Progress(images) as progress:
            try:
                summary = predict_to_file(
                    predictor,
                    images,
                    output,
                    batch_size=batch_size,
                    workers=workers,
                    skip_errors=skip_errors,
                    overwrite=overwrite,
                    progress=progress,
                )
            except KeyboardInterrupt:
                stopped = HeadstartError(
                    f"interrupted; {output} keeps the rows written so far and the same command continues from there"
                )
                stopped.exit_code = INTERRUPTED_EXIT_CODE  # type: ignore[attr-defined]
                raise stopped from None
        typer.echo(summary.describe(), err=json_output)
        return
    results: list[dict[str, Any]] = []
    errors = 0
    with _Progress(images) as progress:
        for prediction in predict_files(predictor, find_images(images), batch_size=batch_size, workers=workers):
            if prediction.error is not None:
                if not skip_errors:
                    raise HeadstartError(prediction.error)
                errors += 1
                continue
            pairs = zip(prediction.labels, prediction.probabilities, strict=True)
            results.append(
                {
                    "file": prediction.path,
                    "predictions": [{"label": label, "probability": probability} for label, probability in pairs],
                }
            )
            progress(len(results) + errors, 0)
    if errors:
        typer.echo(f"skipped {errors} unreadable image{'s' if errors != 1 else ''}", err=True)
    if json_output:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.console import JustifyMethod
    from rich.table import Table

    table = Table(title=f"{predictor.network.model_name} predictions")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("file", "left"),
        ("rank", "right"),
        ("label", "left"),
        ("probability", "right"),
    )
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for result in results:
        for rank, prediction in enumerate(result["predictions"], start=1):
            table.add_row(
                result["file"] if rank == 1 else "", str(rank), prediction["label"], f"{prediction['probability']:.4f}"
            )
    _console().print(table)


def _output_kind(output: Path) -> None:
    if output.suffix.lower() not in (".csv", ".jsonl"):
        raise HeadstartError(f"--output {output}: expected a file name ending with .csv or .jsonl")
    if output.is_dir():
        raise HeadstartError(f"--output {output}: is a folder, expected a .csv or .jsonl file")


class _Progress:
    """A rich progress bar on stderr, shown once a run has lasted ``delay`` seconds and only when
    stderr is a terminal; the images are counted in a background thread to give its total."""

    def __init__(self, inputs: list[str], delay: float = 2.0) -> None:
        self.inputs, self.delay = inputs, delay
        self.bar: Any = None
        self.task: Any = None
        self.total: int | None = None
        self.enabled = sys.stderr.isatty()

    def __enter__(self) -> _Progress:
        import threading
        import time

        self.started = time.monotonic()
        if self.enabled:
            threading.Thread(target=self._count, daemon=True).start()
        return self

    def _count(self) -> None:
        from headstart.inference import find_images

        try:
            self.total = sum(1 for _ in find_images(self.inputs))
        except (HeadstartError, OSError):
            self.total = None

    def __call__(self, done: int, resumed: int) -> None:
        import time

        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.started < self.delay:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("predicting"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("predict", total=None, rate="")
        total = None if self.total is None else max(self.total - resumed, done)
        rate = done / max(time.monotonic() - self.started, 1e-9)
        self.bar.update(self.task, completed=done, total=total, rate=f"{rate:.1f} images/s")

    def __exit__(self, *exc_info) -> None:
        if self.bar is not None:
            self.bar.stop()


@zoo_app.command("list")
@user_errors
def zoo_list(json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the Keras-style aliases with their timm models, sizes and weight sources."""
    from headstart.zoo import list_entries

    entries = [entry.to_dict() for entry in list_entries()]
    if json_output:
        typer.echo(json.dumps(entries, indent=2))
        return
    from rich.table import Table

    table = Table(title="headstart zoo")
    for column in ("alias", "timm name", "parameters", "input size", "weight source"):
        table.add_column(column, justify="right" if column == "parameters" else "left")
    for entry in entries:
        table.add_row(
            entry["alias"],
            entry["timm_name"],
            f"{entry['parameters']:,}",
            "×".join(str(size) for size in entry["input_size"]),
            entry["weight_source"],
        )
    _console().print(table)


@app.command()
@user_errors
def summary(
    model: str = typer.Argument(..., help="Zoo alias or timm name."),
    weights: str = typer.Option("none", help="imagenet, none, or a weights file (counts do not depend on it)."),
    freeze: list[str] = typer.Option(
        [], "--freeze", help="Selector to freeze first (repeatable): backbone, stem, blocks[:3], re:..."
    ),
    include_top: bool = typer.Option(True, "--include-top/--no-top", help="Keep the pretrained classifier."),
    pooling: str = typer.Option("avg", help="avg, max, flatten or none (without the top)."),
    depth: int = typer.Option(2, min=1, help="Module levels below backbone and head to list."),
    diagram: Path | None = typer.Option(
        None,
        "--diagram",
        help="Also draw the architecture as an SVG file "
        "(Keras' plot_model): blocks, output shapes, frozen parts marked.",
    ),
) -> None:
    """Print a Keras-style layer table with total, trainable and non-trainable parameters."""
    from headstart.zoo import load

    network = load(model, weights=weights, include_top=include_top, pooling=_pooling_mode(pooling))
    if freeze:
        network.freeze(*freeze)
    typer.echo(network.summary(depth=depth))
    if diagram is not None:
        drawn = network.diagram(diagram, depth=depth)
        typer.echo(f"diagram: {drawn.path} ({drawn.boxes} boxes, {drawn.width}×{drawn.height} px)")


@app.command("export")
@user_errors
def export_command(
    model: str = typer.Argument(..., help="Zoo alias / timm name, or a stage or run folder (its trained head)."),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="File to write: .onnx for ONNX, .keras or .h5 for Keras; its suffix sets the format.",
    ),
    format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help=escape(
            "onnx or keras; default: the format the suffix of --output names. Refused, before anything is "
            "written, when --output ends with the other format's suffix. keras needs pip install 'headstart[keras]'."
        ),
        show_default=False,
    ),
    weights: str = typer.Option("imagenet", help="For a zoo name: imagenet, none, or a weights file."),
    fixed_size: bool = typer.Option(False, "--fixed-size", help="ONNX: fixed height and width (batch stays dynamic)."),
    channels_first: bool = typer.Option(False, "--channels-first", help="Keras: NCHW input instead of NHWC."),
    tolerance: float = typer.Option(1e-4, min=0, help="Largest accepted max |PyTorch − exported| on real images."),
) -> None:
    """Export a network with its preprocessing and labels; output parity against PyTorch is checked.

    The format follows the suffix of --output (.onnx, or .keras / .h5 for Keras) unless --format names it.
    """
    from headstart.interop import export, export_format

    format = export_format(output, format)
    options: dict[str, Any] = {"weights": weights, "tolerance": tolerance}
    if format == "onnx":
        options["dynamic_size"] = False if fixed_size else None
    else:
        options["channels_last"] = not channels_first
    report = export(model, output, format=format, **options)
    typer.echo(report.describe())
