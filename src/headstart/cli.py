"""The ``headstart`` command.

``headstart demo`` is the main job (MNIST with 10 labels per class: scratch vs rotation
pretraining vs ImageNet transfer); ``headstart run FILE`` runs the stages of a YAML run file,
``--resume`` continues one that was interrupted. ``headstart predict IMAGE...`` classifies images
with a pretrained network or a trained checkpoint (Keras' ``model.predict`` + ``decode_predictions``
in one line); ``headstart zoo list`` shows the model names; ``headstart summary MODEL`` prints the
layer table with parameter counts, after freezing if asked.

A user error (unreadable image, unknown model, a weights file that does not fit) prints one line,
``error: <what and where>``, on stderr and exits with code 2
(:data:`headstart.errors.USER_ERROR_EXIT_CODE`), never a traceback. Ctrl+C or SIGTERM during a
run abandons the epoch in progress, keeps the last finished one on disk and exits with 130
(:data:`headstart.errors.INTERRUPTED_EXIT_CODE`); ``headstart run FILE --resume`` continues.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from headstart.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, HeadstartError

app = typer.Typer(
    name="headstart",
    help="Pretraining strategies and transfer learning on PyTorch and timm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
zoo_app = typer.Typer(help="Named pretrained networks (Keras-style aliases and timm names).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")

PREDICT_BATCH = 16
"""Images classified per forward pass by ``headstart predict``."""


def _fail(message: str, code: int = USER_ERROR_EXIT_CODE) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    raise typer.Exit(code)


def _console():
    """A rich console on stdout; wide when piped so that tables do not wrap into columns of words."""
    from rich.console import Console

    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


def user_errors(command):
    """Turn user errors raised by ``command`` into one ``error:`` line and exit code 2."""

    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except HeadstartError as exc:
            _fail(str(exc), code=getattr(exc, "exit_code", USER_ERROR_EXIT_CODE))
        except OSError as exc:  # missing file, permission denied, disk full
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            _fail("interrupted", code=INTERRUPTED_EXIT_CODE)

    return guarded


def _network_for(model: str, weights: str, checkpoint: Optional[Path]):
    if checkpoint is not None:
        try:
            from headstart.checkpoint import load_network
        except ModuleNotFoundError as exc:
            if exc.name != "headstart.checkpoint":
                raise
            raise HeadstartError(
                f"--checkpoint {checkpoint}: this installation has no headstart.checkpoint module"
            ) from None
        return load_network(checkpoint)
    from headstart.zoo import load

    return load(model, weights=weights)


@app.command()
@user_errors
def predict(
    images: List[Path] = typer.Argument(..., help="Image files to classify."),
    model: str = typer.Option("EfficientNetLite0", "--model", "-m", help="Zoo alias or timm name."),
    weights: str = typer.Option("imagenet", help="imagenet, none, or a .safetensors/.pth file."),
    checkpoint: Optional[Path] = typer.Option(
        None, help="A headstart checkpoint to predict with (its network, head and labels); overrides --model."
    ),
    top: int = typer.Option(5, min=1, help="Predictions listed per image."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Classify images with a pretrained network and list the most probable labels."""
    from headstart.preprocess import decode_predictions, preprocess_input

    absent = [str(path) for path in images if not path.exists()]
    if absent:  # fail before loading a network
        raise HeadstartError(f"{', '.join(absent)}: no such file")
    network = _network_for(model, weights, checkpoint)
    results = []
    for start in range(0, len(images), PREDICT_BATCH):
        batch = images[start : start + PREDICT_BATCH]
        probabilities = network.predict(preprocess_input(batch, network.preprocessing))
        for path, predictions in zip(batch, decode_predictions(probabilities, network.labels, top=top)):
            results.append(
                {
                    "file": str(path),
                    "predictions": [{"label": label, "probability": probability} for label, probability in predictions],
                }
            )
    if json_output:
        typer.echo(json.dumps(results, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{network.model_name} predictions")
    for column, justify in (("file", "left"), ("rank", "right"), ("label", "left"), ("probability", "right")):
        table.add_column(column, justify=justify)
    for result in results:
        for rank, prediction in enumerate(result["predictions"], start=1):
            table.add_row(result["file"] if rank == 1 else "", str(rank), prediction["label"], f"{prediction['probability']:.4f}")
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
    freeze: List[str] = typer.Option([], "--freeze", help="Selector to freeze first (repeatable): backbone, stem, blocks[:3], re:..."),
    include_top: bool = typer.Option(True, "--include-top/--no-top", help="Keep the pretrained classifier."),
    pooling: str = typer.Option("avg", help="avg, max, flatten or none (without the top)."),
    depth: int = typer.Option(2, min=1, help="Module levels below backbone and head to list."),
) -> None:
    """Print a Keras-style layer table with total, trainable and non-trainable parameters."""
    from headstart.zoo import load

    network = load(model, weights=weights, include_top=include_top, pooling=pooling)
    if freeze:
        network.freeze(*freeze)
    typer.echo(network.summary(depth=depth))


def _print_stage_table(result) -> None:
    from rich.table import Table

    table = Table(title=f"run {result.spec.name} — {result.folder}")
    for column in ("stage", "epochs", "steps", "seconds", "last train loss", "last val metric", "data", "notes"):
        table.add_column(column)
    for record in result.stages:
        last = record.last_metrics
        val = next((f"{key}={last[key]:.4f}" for key in ("val_accuracy", "val_mae", "val_mse", "val_loss") if key in last), "")
        data = "cached features" if record.cached_features else record.data.residency
        notes = "resumed: done before" if record.stage_name in result.resumed else "; ".join(record.diagnostics)
        table.add_row(record.stage_name, str(len(record.history)), str(record.steps), f"{record.seconds:.1f}",
                      f"{last.get('train_loss', float('nan')):.4f}", val, data, notes)
    _console().print(table)
    if result.test is not None:
        typer.echo(f"test accuracy {result.test['accuracy']:.4f} on {result.test['count']} images "
                   f"(never seen by any stage); {result.seconds:.1f} s")


@app.command("run")
@user_errors
def run_command(
    file: Path = typer.Argument(..., help="YAML run file (see headstart.config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output folder where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in the output folder."),
    output: Optional[Path] = typer.Option(None, help="Output folder (overrides the file's `output`)."),
    devices: Optional[int] = typer.Option(None, help="Processes/devices (overrides the file's `devices`)."),
    accelerator: Optional[str] = typer.Option(None, help="cpu, gpu or auto (overrides the file)."),
    precision: Optional[str] = typer.Option(None, help="32-true, bf16-mixed or 16-mixed (overrides the file)."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Run the stages of a YAML run file in order; Ctrl+C stops cleanly and --resume continues."""
    from headstart.config import load_run_file, parse_run
    from headstart.structure import run

    spec = load_run_file(file)
    overrides = {key: value for key, value in (("output", str(output) if output else None), ("devices", devices),
                                                ("accelerator", accelerator), ("precision", precision))
                 if value is not None}
    if overrides:
        spec = parse_run({**spec.model_dump(mode="json"), **overrides}, str(file))
    result = run(spec, resume=resume, overwrite=overwrite, progress=progress)
    if _is_rank_zero():
        _print_stage_table(result)


def _is_rank_zero() -> bool:
    import os

    return os.environ.get("LOCAL_RANK", "0") == "0"


@app.command()
@user_errors
def demo(
    output: Path = typer.Option(Path("headstart-demo"), help="Folder for the three runs."),
    seed: int = typer.Option(0, help="Seed of every arm."),
    quick: bool = typer.Option(False, help="Fewer epochs (a smoke test of the same structure)."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the arms as run files and exit."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars per stage."),
) -> None:
    """MNIST with 10 labels per class: from scratch vs rotation pretraining vs ImageNet transfer."""
    import yaml

    from headstart.demo import demo_arms, run_demo

    if show_config:
        for name, spec in demo_arms(str(output), seed=seed, quick=quick).items():
            typer.echo(f"# --- {name} ---")
            typer.echo(yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        return
    table = run_demo(output, seed=seed, quick=quick, progress=progress,
                     echo=lambda line: typer.echo(line, err=True))
    from rich.table import Table

    target = table["target_val_accuracy"]
    shown = Table()
    for column in ("arm", "stages", "test accuracy", "vs scratch",
                   f"labelled epochs to val {target:.3f}" if target is not None else "labelled epochs", "wall time (s)"):
        shown.add_column(column)
    for row in table["arms"]:
        reach = row["epochs_to_target"]
        shown.add_row(row["name"], " → ".join(row["stages"]), f"{row['test_accuracy']:.4f}", f"{row['test_gain']:+.4f}",
                      f"{reach} of {row['labelled_epochs']}" if reach is not None else f"not in {row['labelled_epochs']}",
                      f"{row['seconds']:.1f}")
    typer.echo(table["title"])
    _console().print(shown)
    typer.echo(f"comparison plotted in {output}/comparison.png")
    typer.echo(f"runs written to {output}/")


def main() -> None:
    """Entry point of ``python -m headstart``."""
    app(prog_name="headstart")
