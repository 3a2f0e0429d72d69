"""Commands on networks: ``predict``, ``zoo list``, ``summary``, ``export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from headstart.cli.app import PREDICT_BATCH, _console, _network_for, _pooling_mode, app, user_errors, zoo_app
from headstart.errors import HeadstartError


@app.command()
@user_errors
def predict(
    images: list[Path] = typer.Argument(..., help="Image files to classify."),
    model: str = typer.Option("EfficientNetLite0", "--model", "-m", help="Zoo alias or timm name."),
    weights: str = typer.Option("imagenet", help="imagenet, none, or a .safetensors/.pth file."),
    checkpoint: Path | None = typer.Option(
        None, help="A headstart checkpoint to predict with (its network, head and labels); overrides --model."
    ),
    top: int = typer.Option(5, min=1, help="Predictions listed per image."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images with a pretrained network and list the most probable labels."""
    absent = [str(path) for path in images if not path.exists()]
    if absent:  # fail before loading PyTorch and a network
        raise HeadstartError(f"{', '.join(absent)}: no such file")
    from headstart.preprocess import decode_predictions, preprocess_input

    network = _network_for(model, weights, checkpoint)
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), PREDICT_BATCH):
        batch = images[start : start + PREDICT_BATCH]
        probabilities = network.predict(preprocess_input(batch, network.preprocessing))
        for path, predictions in zip(batch, decode_predictions(probabilities, network.labels, top=top), strict=True):
            results.append(
                {
                    "file": str(path),
                    "predictions": [{"label": label, "probability": probability} for label, probability in predictions],
                }
            )
    if json_output:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.console import JustifyMethod
    from rich.table import Table

    table = Table(title=f"{network.model_name} predictions")
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
