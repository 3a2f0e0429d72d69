"""Commands that train: ``run``, ``lr-find``, ``compare``, ``demo``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from headstart.cli.app import _console, app, user_errors
from headstart.errors import HeadstartError


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
    devices: int | None = typer.Option(None, help="Processes/devices per machine (overrides the file's `devices`)."),
    num_nodes: int | None = typer.Option(None, help="Machines taking part (overrides the file's `num_nodes`)."),
    accelerator: str | None = typer.Option(
        None, help="cpu, gpu or auto (overrides the file; default auto: the GPU when there is one)."
    ),
    precision: str | None = typer.Option(None, help="32-true, bf16-mixed or 16-mixed (overrides the file)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars."),
) -> None:
    """Run the stages of a YAML run file in order; Ctrl+C stops cleanly and --resume continues.

    On several machines, start it on each with torchrun or SLURM's srun (docs/guides/accelerators.md)."""
    from headstart.config import load_run_file, parse_run

    spec = load_run_file(file)  # a bad file fails before Lightning is loaded
    overrides = {
        key: value
        for key, value in (
            ("output", str(output) if output else None),
            ("devices", devices),
            ("num_nodes", num_nodes),
            ("accelerator", accelerator),
            ("precision", precision),
        )
        if value is not None
    }
    if overrides:
        spec = parse_run({**spec.model_dump(mode="json"), **overrides}, str(file))
    from headstart.ranks import is_rank_zero  # no Lightning yet: the first line comes at once

    if is_rank_zero():
        stages = " → ".join(stage.name for stage in spec.stages)
        typer.echo(f"run '{spec.name}': {spec.model.name}, {stages}, into {spec.output_dir()}", err=True)
    from headstart.data.datacheck import check_before_training  # folder and CSV sources: copies, labels

    checked = check_before_training(spec.data.source, [(spec.data.splits, spec.seed)], progress=progress)
    from headstart.structure import run

    if checked is not None and is_rank_zero():
        typer.echo(checked.summary_line(), err=True)
    result = run(spec, resume=resume, overwrite=overwrite, progress=progress)
    if is_rank_zero():
        if checked is not None:
            checked.write(result.folder)
        _print_stage_table(result)


def _print_comparison(result) -> None:
    """The comparison's table per label budget (mean ± std over seeds), its verdicts and the report."""
    from rich.table import Table

    from headstart.report.summary import labels_per_class_text
    from headstart.report.verdicts import arm_cells, contrast_lines, metric_line, metric_name, step_lines, summary_line

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
            "balanced acc.",
            f"{metric_name(budget)} vs {budget['baseline']}",
            "verdict [95% CI] seeds better",
            f"to val {target:.3f} (seeds)" if target is not None else "time to target",
            "steps to target",
            "wall time",
        ):
            shown.add_column(column)

        for arm in budget["arms"]:
            cells = arm_cells(arm, budget)
            row = (
                cells["test"],
                cells["balanced"],
                cells["gain"],
                cells["verdict"],
                cells["reach"],
                cells["steps"],
                cells["wall"],
            )
            shown.add_row(arm["name"], " → ".join(arm["stages"]), str(arm["test_accuracy"]["n"]), *row)
        _console().print(shown)
    judged_on = metric_line(result.table)
    if judged_on:
        typer.echo(judged_on)
    for line in summary_line(result.table):
        typer.echo(line)
    several = len(result.table["budgets"]) > 1
    for budget in result.table["budgets"]:
        for line in step_lines(budget, several) + contrast_lines(budget, several):
            typer.echo(line)
    typer.echo(
        f"report: {result.report} ({result.report.stat().st_size / 1024:.0f} KiB); {result.seconds:.0f} s in all"
    )
    from headstart.compare.handover import usage_lines

    for folder in getattr(result, "best", []):  # the last lines: the commands that use the winner
        for line in usage_lines(folder):
            typer.echo(line)


def _progress_default(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


@app.command()
@user_errors
def demo(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A folder with one sub-folder of images per class (PATH/<class>/<image>): run the main job on it "
        "instead of MNIST, choosing splits, models, image sizes and epochs from the images.",
    ),
    unlabelled: Path | None = typer.Option(
        None,
        "--unlabelled",
        help="With --data: a folder of images without labels, for the pretext and FixMatch stages.",
    ),
    budget: str | None = typer.Option(
        None,
        "--budget",
        help="With --data: time for the whole comparison, all seeds (90s, 15m, 1h; default 15m); every stage's "
        "epochs are scaled to fit.",
    ),
    labels_per_class: int | None = typer.Option(
        None,
        "--labels-per-class",
        min=1,
        help="With --data: keep this many labelled training images per class, the rest without labels "
        "(default: every training image keeps its label).",
    ),
    output: Path | None = typer.Option(
        None, help="Folder of the comparison (runs, report.html); default headstart-demo, or headstart-demo-<folder>."
    ),
    seeds: int = typer.Option(3, min=1, help="Seeds per arm (0, 1, …); --seeds 1 is quick."),
    seed: int | None = typer.Option(None, help="Run this one seed only (instead of --seeds)."),
    quick: bool = typer.Option(False, help="Fewer epochs (a smoke test of the same structure)."),
    show_config: bool = typer.Option(False, "--show-config", help="Print the comparison file and exit."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain runs left by a different configuration."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars per stage (default: when stderr is a terminal)."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Runs trained at once, each in its own process with its share of the cores or its own GPU "
        "(default: one per GPU on a machine with several, else 1).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads per run (default: the cores divided among the workers)."
    ),
) -> None:
    """MNIST with 10 labels per class, or your own folder (--data): from scratch vs rotation pretraining vs \
ImageNet transfer, over seeds."""
    import yaml

    chosen = [seed] if seed is not None else list(range(seeds))
    _check_parallel(workers, threads, "local", None)
    if data is not None and (workers is not None or threads is not None):
        raise HeadstartError(
            "--workers and --threads apply to the MNIST demo; with --data the time budget is fitted to one "
            "run at a time, so leave them out"
        )
    if data is not None:
        _demo_on_folder(
            data, unlabelled, budget, labels_per_class, output, chosen, quick, show_config, overwrite, progress
        )
        return
    given = [name for name, value in (("--unlabelled", unlabelled), ("--budget", budget)) if value is not None]
    if labels_per_class is not None:
        given.append("--labels-per-class")
    if given:
        raise HeadstartError(
            f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --data PATH (a folder of class "
            "sub-folders)"
        )

    from headstart.demo import demo_comparison, run_demo

    output = output or Path("headstart-demo")
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
        workers=workers,
        threads=threads,
    )
    _print_comparison(result)


def _demo_on_folder(
    data: Path,
    unlabelled: Path | None,
    budget: str | None,
    labels_per_class: int | None,
    output: Path | None,
    seeds: list[int],
    quick: bool,
    show_config: bool,
    overwrite: bool,
    progress: bool | None = None,
) -> None:
    """``headstart demo --data``: the main job on the user's folder (:mod:`headstart.demo_folder`)."""
    from headstart.demo_folder import DEFAULT_BUDGET, folder_comparison, run_folder_demo
    from headstart.demo_folder import show_config as config_text

    if show_config:
        chosen = folder_comparison(
            data,
            unlabelled,
            output=output,
            seeds=seeds,
            quick=quick,
            budget=budget or DEFAULT_BUDGET,
            labels_per_class=labels_per_class,
        )
        typer.echo(config_text(chosen), nl=False)
        return
    command = shlex.join(
        ["headstart", "demo", "--data", str(data)]
        + (["--unlabelled", str(unlabelled)] if unlabelled is not None else [])
        + (["--budget", budget] if budget is not None else [])
        + (["--labels-per-class", str(labels_per_class)] if labels_per_class is not None else [])
        + (["--output", str(output)] if output is not None else [])
        + (["--seed", str(seeds[0])] if len(seeds) == 1 and seeds[0] != 0 else ["--seeds", str(len(seeds))])
        + (["--quick"] if quick else [])
    )
    result = run_folder_demo(
        data,
        unlabelled,
        output=output,
        seeds=seeds,
        quick=quick,
        budget=budget or DEFAULT_BUDGET,
        labels_per_class=labels_per_class,
        progress=_progress_default(progress),
        overwrite=overwrite,
        echo=lambda line: typer.echo(line, err=True),
        how_to_continue=command,
    )
    _print_comparison(result)


def _number_list(text: str, option: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]``; a HeadstartError naming ``option`` otherwise."""
    try:
        values = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise HeadstartError(f"{option} {text!r}: expected whole numbers separated by commas, such as 1,2,4") from None
    if not values:
        raise HeadstartError(f"{option} {text!r}: expected at least one number")
    return values


def _only_arms(spec, text: str) -> dict[str, Any]:
    """The comparison-file fields that keep only the arms named in ``--arms`` (and the contrasts
    between them); a HeadstartError naming an unknown arm or a missing baseline."""
    names = [name for name in text.replace(" ", "").split(",") if name]
    unknown = [name for name in names if name not in spec.arms]
    if not names or unknown:
        raise HeadstartError(
            f"--arms {text!r}: {'unknown arm(s) ' + ', '.join(unknown) if unknown else 'no arm named'}; "
            f"the file's arms are {', '.join(spec.arms)}"
        )
    if spec.baseline_arm not in names:
        raise HeadstartError(
            f"--arms {text!r}: keep the baseline {spec.baseline_arm!r}, which every gain is judged against"
        )
    kept = {name: arm.model_dump(mode="json", exclude_none=True) for name, arm in spec.arms.items() if name in names}
    contrasts = [
        contrast.model_dump(mode="json")
        for contrast in spec.contrasts
        if contrast.arm in names and contrast.against in names
    ]
    layers = {name: value for name, value in spec.attention.layers.items() if name in names}
    attention = {**spec.attention.model_dump(mode="json"), "layers": layers}
    return {"arms": kept, "contrasts": contrasts, "baseline": spec.baseline_arm, "attention": attention}


@app.command("compare")
@user_errors
def compare_command(
    file: Path = typer.Argument(..., help="YAML comparison file (see headstart.compare)."),
    output: Path | None = typer.Option(None, help="Output folder (overrides the file's `output`)."),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        help="Seeds (overrides the file's `seeds`): a count (6 → 0..5) or a list (0,1,2,7). More seeds settle a "
        "'not resolved' verdict; finished runs are reused.",
    ),
    label_budgets: str | None = typer.Option(
        None, "--label-budgets", help="Labels per class (overrides the file's `label_budgets`), e.g. 1,2."
    ),
    arms: str | None = typer.Option(
        None,
        "--arms",
        help="Only these arms of the file (comma-separated; the baseline included), e.g. to add seeds to one "
        "contrast; contrasts between arms left out are dropped.",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain runs left by a different configuration."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bars per stage (default: when stderr is a terminal)."
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Runs trained at once, each in its own process with its share of the cores or its own GPU "
        "(overrides the file's `workers`; default auto: one per GPU on a machine with several, else 1).",
    ),
    threads: int | None = typer.Option(
        None, "--threads", help="CPU threads per run (default: the cores divided among the workers)."
    ),
    executor: str = typer.Option(
        "local", "--executor", help="local (processes on this machine) or ray (tasks on a Ray cluster)."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="With --executor ray: an existing cluster (ray://host:10001 or auto); "
        "default: a local Ray started on the spot.",
    ),
    plan_only: bool = typer.Option(
        False, "--plan-only", help="Print one `headstart run` command per planned run, in dependency order, and exit."
    ),
) -> None:
    """Arms × seeds × label budgets on one task; finished runs are reused; writes report.html."""
    from headstart.compare import load_compare_file, parse_compare
    from headstart.compare import run as run_comparison

    spec, base = load_compare_file(file)
    overrides: dict[str, Any] = {}
    if output is not None:
        overrides["output"] = str(output)
    if seeds is not None:
        listed = _number_list(seeds, "--seeds")
        overrides["seeds"] = listed[0] if len(listed) == 1 and "," not in seeds else listed
    if label_budgets is not None:
        overrides["label_budgets"] = _number_list(label_budgets, "--label-budgets")
    if arms is not None:
        overrides.update(_only_arms(spec, arms))
    if overrides:
        spec = parse_compare({**spec.model_dump(mode="json"), **overrides}, str(file))
    _check_parallel(workers, threads, executor, ray_address)
    if plan_only:
        from headstart.compare.plan_file import plan_commands

        for line in plan_commands(spec, base):
            typer.echo(line)
        return
    again = shlex.join(
        ["headstart", "compare", str(file)]
        + (["--output", str(output)] if output is not None else [])
        + (["--seeds", seeds] if seeds is not None else [])
        + (["--label-budgets", label_budgets] if label_budgets is not None else [])
        + (["--arms", arms] if arms is not None else [])
        + (["--workers", str(workers)] if workers is not None else [])
        + (["--threads", str(threads)] if threads is not None else [])
        + (["--executor", executor] if executor != "local" else [])
        + (["--ray-address", ray_address] if ray_address is not None else [])
    )
    result = run_comparison(
        spec,
        base=base,
        overwrite=overwrite,
        progress=_progress_default(progress),
        echo=lambda line: typer.echo(line, err=True),
        how_to_continue=again,
        workers=workers,
        threads=threads,
        executor="ray" if executor == "ray" else "local",
        ray_address=ray_address,
    )
    _print_comparison(result)


def _check_parallel(workers: int | None, threads: int | None, executor: str, ray_address: str | None) -> None:
    """One-line errors for the options that spread a comparison's runs over processes."""
    for option, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise HeadstartError(f"{option} {value}: expected a whole number of at least 1")
    if executor not in ("local", "ray"):
        raise HeadstartError(f"--executor {executor!r}: expected local or ray")
    if ray_address is not None and executor != "ray":
        raise HeadstartError("--ray-address needs --executor ray")
