"""The ``headstart`` command.

``headstart demo`` is the main job (MNIST with 10 labels per class: scratch vs rotation
pretraining vs ImageNet transfer); ``headstart run FILE`` runs the stages of a YAML run file,
``--resume`` continues one that was interrupted. ``headstart predict IMAGE...`` classifies images
with a pretrained network or a trained checkpoint (Keras' ``model.predict`` + ``decode_predictions``
in one line); ``headstart zoo list`` shows the model names; ``headstart summary MODEL`` prints the
layer table with parameter counts, after freezing if asked (``--diagram FILE.svg`` also draws it);
``headstart lr-find FILE --stage NAME`` sweeps the learning rate of one stage and suggests one.

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
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from headstart.errors import INTERRUPTED_EXIT_CODE, USER_ERROR_EXIT_CODE, HeadstartError
from headstart.files import is_comparison, is_run

if TYPE_CHECKING:
    from headstart.heads import PoolingMode

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


def _pooling_mode(value: str) -> PoolingMode:
    """The ``--pooling`` option as a pooling mode; refused as :func:`headstart.zoo.load` refuses it."""
    match value:
        case "avg" | "max" | "flatten" | "none":
            return value
    from headstart.heads import POOLING_MODES

    raise HeadstartError(f"pooling={value!r}: expected one of {', '.join(POOLING_MODES)} (or None, as 'none')")


def _network_for(model: str, weights: str, checkpoint: Path | None):
    if checkpoint is not None:
        from headstart.checkpoint import load_network

        return load_network(checkpoint)
    from headstart.zoo import load

    return load(model, weights=weights)


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
    from headstart.preprocess import decode_predictions, preprocess_input

    absent = [str(path) for path in images if not path.exists()]
    if absent:  # fail before loading a network
        raise HeadstartError(f"{', '.join(absent)}: no such file")
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


@app.command("lr-find")
@user_errors
def lr_find_command(
    file: Path = typer.Argument(..., help="YAML run file (see headstart.config)."),
    stage: str = typer.Option(..., "--stage", "-s", help="Name of the stage to sweep."),
    output: Path | None = typer.Option(
        None, help="Run folder holding the earlier stages (overrides the file's `output`)."
    ),
    run_earlier: bool = typer.Option(
        False, "--run-earlier", help="Train unfinished earlier stages in a temporary folder."
    ),
    plot: Path | None = typer.Option(None, help="PNG of loss against rate; default lr-find-<run>-<stage>.png here."),
    min_lr: float = typer.Option(1e-7, min=0, help="Rate at the first step (fastai's start_lr)."),
    max_lr: float = typer.Option(10.0, min=0, help="Rate the sweep grows to (fastai's end_lr)."),
    steps: int = typer.Option(100, min=20, help="Optimizer steps of the sweep."),
    json_output: bool = typer.Option(False, "--json", help="Print the sweep as JSON."),
) -> None:
    """Sweep the learning rate for one stage of a run (LR range test) and suggest one; the run's \
folder is not touched."""
    from headstart.config import load_run_file, parse_run
    from headstart.structure import find_learning_rate

    spec = load_run_file(file)
    if output is not None:
        spec = parse_run({**spec.model_dump(mode="json"), "output": str(output)}, str(file))
    result = find_learning_rate(
        spec, stage, run_earlier=run_earlier, min_lr=min_lr, max_lr=max_lr, steps=steps, source=str(file)
    )
    path = result.plot(plot or Path(f"lr-find-{spec.name}-{stage}.png"))
    if json_output:
        typer.echo(result.model_dump_json(indent=2))
        return
    typer.echo(result.describe())
    typer.echo(f"plot: {path}; to use it: optimizer: {{lr: {result.suggestion:.3g}}} (or lr: find)")


def _print_stage_table(result) -> None:
    from rich.table import Table

    table = Table(title=f"run {result.spec.name} — {result.folder}")
    for column in ("stage", "epochs", "steps", "seconds", "last train loss", "last val metric", "data", "notes"):
        table.add_column(column)
    for record in result.stages:
        last = record.last_metrics
        val = next(
            (f"{key}={last[key]:.4f}" for key in ("val_accuracy", "val_mae", "val_mse", "val_loss") if key in last), ""
        )
        data = "cached features" if record.cached_features else record.data.residency
        notes = "resumed: done before" if record.stage_name in result.resumed else "; ".join(record.diagnostics)
        table.add_row(
            record.stage_name,
            str(len(record.history)),
            str(record.steps),
            f"{record.seconds:.1f}",
            f"{last.get('train_loss', float('nan')):.4f}",
            val,
            data,
            notes,
        )
    _console().print(table)
    if result.test is not None:
        typer.echo(
            f"test accuracy {result.test['accuracy']:.4f} on {result.test['count']} images "
            f"(never seen by any stage); {result.seconds:.1f} s"
        )


@app.command("run")
@user_errors
def run_command(
    file: Path = typer.Argument(..., help="YAML run file (see headstart.config)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in the output folder where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in the output folder."),
    output: Path | None = typer.Option(None, help="Output folder (overrides the file's `output`)."),
    devices: int | None = typer.Option(None, help="Processes/devices (overrides the file's `devices`)."),
    accelerator: str | None = typer.Option(None, help="cpu, gpu or auto (overrides the file)."),
    precision: str | None = typer.Option(None, help="32-true, bf16-mixed or 16-mixed (overrides the file)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Run the stages of a YAML run file in order; Ctrl+C stops cleanly and --resume continues."""
    from headstart.config import load_run_file, parse_run
    from headstart.structure import run

    spec = load_run_file(file)
    overrides = {
        key: value
        for key, value in (
            ("output", str(output) if output else None),
            ("devices", devices),
            ("accelerator", accelerator),
            ("precision", precision),
        )
        if value is not None
    }
    if overrides:
        spec = parse_run({**spec.model_dump(mode="json"), **overrides}, str(file))
    result = run(spec, resume=resume, overwrite=overwrite, progress=progress)
    if _is_rank_zero():
        _print_stage_table(result)


def _is_rank_zero() -> bool:
    import os

    return os.environ.get("LOCAL_RANK", "0") == "0"


def _print_comparison(result) -> None:
    """The comparison's table per label budget (mean ± std over seeds), its verdicts and the report."""
    from rich.table import Table

    from headstart.report.summary import arm_cells, labels_per_class_text, step_lines, summary_line

    for budget in result.table["budgets"]:
        target = budget["target_val_accuracy"]
        label = (
            f", {labels_per_class_text(budget['labels_per_class'])}" if budget["labels_per_class"] is not None else ""
        )
        shown = Table(title=f"{result.table['name']}{label}")
        for column in (
            "arm",
            "stages",
            "n",
            "test accuracy",
            f"vs {budget['baseline']}",
            f"to val {target:.3f} (seeds)" if target is not None else "time to target",
            "steps to target",
            "wall time",
        ):
            shown.add_column(column)

        for arm in budget["arms"]:
            cells = arm_cells(arm, budget)
            row = (cells["test"], cells["gain"], cells["reach"], cells["steps"], cells["wall"])
            shown.add_row(arm["name"], " → ".join(arm["stages"]), str(arm["test_accuracy"]["n"]), *row)
        _console().print(shown)
    for line in summary_line(result.table):
        typer.echo(line)
    several = len(result.table["budgets"]) > 1
    for budget in result.table["budgets"]:
        for line in step_lines(budget, several):
            typer.echo(line)
    typer.echo(
        f"report: {result.report} ({result.report.stat().st_size / 1024:.0f} KiB); {result.seconds:.0f} s in all"
    )


def _progress_default(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


@app.command()
@user_errors
def demo(
    output: Path = typer.Option(Path("headstart-demo"), help="Folder of the comparison (runs, report.html)."),
    seeds: int = typer.Option(3, min=1, help="Seeds per arm (0, 1, …); --seeds 1 is quick."),
    seed: int | None = typer.Option(None, help="Run this one seed only (instead of --seeds)."),
    quick: bool = typer.Option(False, help="Fewer epochs (a smoke test of the same structure)."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the comparison file and exit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain runs left by a different configuration."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars per stage (default: when stderr is a terminal)."
    ),
) -> None:
    """MNIST with 10 labels per class: from scratch vs rotation pretraining vs ImageNet transfer, over seeds."""
    import yaml

    from headstart.demo import demo_comparison, run_demo

    chosen = [seed] if seed is not None else list(range(seeds))
    if show_config:
        spec = demo_comparison(output, seeds=chosen, quick=quick)
        typer.echo(yaml.safe_dump(spec.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
        return
    result = run_demo(
        output,
        seeds=chosen,
        quick=quick,
        progress=_progress_default(progress),
        overwrite=overwrite,
        echo=lambda line: typer.echo(line, err=True),
    )
    _print_comparison(result)


@app.command("compare")
@user_errors
def compare_command(
    file: Path = typer.Argument(..., help="YAML comparison file (see headstart.compare)."),
    output: Path | None = typer.Option(None, help="Output folder (overrides the file's `output`)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain runs left by a different configuration."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars per stage (default: when stderr is a terminal)."
    ),
) -> None:
    """Arms × seeds × label budgets on one task; finished runs are reused; writes report.html."""
    from headstart.compare import load_compare_file, parse_compare
    from headstart.compare import run as run_comparison

    spec, base = load_compare_file(file)
    if output is not None:
        spec = parse_compare({**spec.model_dump(mode="json"), "output": str(output)}, str(file))
    result = run_comparison(
        spec,
        base=base,
        overwrite=overwrite,
        progress=_progress_default(progress),
        echo=lambda line: typer.echo(line, err=True),
        how_to_continue=f"headstart compare {file}",
    )
    _print_comparison(result)


@app.command("report")
@user_errors
def report_command(
    folder: Path = typer.Argument(..., help="A comparison folder, a run folder or an audit folder."),
) -> None:
    """Rebuild report.html from what a finished comparison, run or audit wrote on disk."""
    from headstart.report.html import write_report
    from headstart.report.summary import summarise, summary_line

    path = write_report(folder)
    if is_comparison(folder) or is_run(folder):
        for line in summary_line(summarise(folder, write=False)):
            typer.echo(line)
    typer.echo(f"report: {path} ({path.stat().st_size / 1024:.0f} KiB)")


@app.command("probe")
@user_errors
def probe_command(
    stage: Path = typer.Argument(..., help="A stage folder (any stage, pretext stages included) or a run folder."),
    split: str = typer.Option("test", help="Split whose images are classified."),
    bank: str = typer.Option("train", help="Labelled split the probes learn from (the k-NN bank)."),
    k: int = typer.Option(20, min=1, help="Neighbours of the k-NN probe."),
    temperature: float = typer.Option(0.07, min=1e-6, help="k-NN vote weight exp(similarity / temperature)."),
    c: float = typer.Option(1.0, min=1e-9, help="Inverse L2 strength of the linear probe (scikit-learn's C)."),
    json_output: bool = typer.Option(False, "--json", help="Print the probe record as JSON."),
) -> None:
    """Linear and k-NN probes of a stage's frozen backbone features; stored in its probe.json."""
    from headstart.checkpoint import find_stage_folder
    from headstart.probe import probe_stage

    folder = find_stage_folder(stage)
    record = probe_stage(folder, bank_split=bank, probe_split=split, k=k, temperature=temperature, c=c)
    if json_output:
        typer.echo(record.model_dump_json(indent=2))
        return
    typer.echo(
        f"{folder}: linear probe {record.linear_accuracy:.4f}, k-NN probe (k={record.settings['knn']['k']}) "
        f"{record.knn_accuracy:.4f} on {record.probe_size} {split} images; bank: {record.bank_size} {bank} "
        f"images, {record.num_features} features; {record.seconds:.1f} s (saved in {folder / 'probe.json'})"
    )


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


@app.command("audit")
@user_errors
def audit_command(
    target: str = typer.Argument(..., help="A stage or run folder (the fine-tuned model to audit)."),
    neurons: int | None = typer.Option(None, min=1, help="Feature neurons attacked (default: all), drawn at random."),
    steps: int = typer.Option(49, min=1, help="Gradient steps per crafted input (Rezaei & Liu: 49)."),
    clip: bool = typer.Option(True, "--clip/--no-clip", help="Keep crafted pixels in 0..255 (the paper does not)."),
    batch_size: int = typer.Option(64, min=1, help="Neurons crafted together."),
    orders: int = typer.Option(100, min=1, help="Random neuron orders for NABAC mean ± std."),
    seed: int = typer.Option(0, help="Seed of the neuron draw and orders."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    output: Path | None = typer.Option(None, help="Folder for audit.json (and crafted examples)."),
) -> None:
    """Target-agnostic attack (Rezaei & Liu 2020) on a fine-tuned model, crafting on its public backbone."""
    from headstart.audit import AttackConfig, audit

    if not Path(target).exists():
        raise HeadstartError(f"{target}: no such stage or run folder")
    result = audit(
        target,
        neurons=neurons,
        config=AttackConfig(steps=steps, clip=clip),
        batch_size=batch_size,
        orders=orders,
        seed=seed,
        device=device,
        progress=lambda done, total: typer.echo(f"crafted {done}/{total}", err=True),
    )
    typer.echo(f"{result.target}: {result.metrics.row()}")
    typer.echo(
        f"crafted {len(result.crafted.neurons)} inputs on {result.backbone} in {result.crafted.seconds:.1f} s "
        f"({result.crafted.per_second:.2f} per second); hits per class {result.metrics.hits_per_class}"
    )
    if output is not None:
        from headstart.files import atomic_write_json

        atomic_write_json(Path(output) / "audit.json", result.to_dict())
        typer.echo(f"written {Path(output) / 'audit.json'}")


def main() -> None:
    """Entry point of ``python -m headstart``."""
    app(prog_name="headstart")
