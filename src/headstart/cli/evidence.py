"""Commands that read finished stages: ``report``, ``probe``, ``audit``."""

from __future__ import annotations

from pathlib import Path

import typer

from headstart.cli.app import app, user_errors
from headstart.errors import HeadstartError
from headstart.files import is_comparison, is_run


@app.command("report")
@user_errors
def report_command(
    folder: Path = typer.Argument(
        ..., help="A comparison folder, a run folder or an audit folder; with --refresh, a Markdown file."
    ),
    markdown: bool = typer.Option(
        False, "--markdown", help="Also print the comparison's tables as Markdown (levels, arms, effects)."
    ),
    refresh: bool = typer.Option(
        False,
        "--refresh",
        help="FOLDER is a Markdown file: re-render its tables marked <!-- table: KIND JSON --> from the "
        "comparison.json files they name.",
    ),
) -> None:
    """Rebuild report.html from what a finished comparison, run or audit wrote on disk."""
    from headstart.report.html import write_report
    from headstart.report.summary import summarise
    from headstart.report.verdicts import summary_line

    if refresh:
        from headstart.report.tables import refresh as refresh_tables

        if not folder.is_file():
            raise HeadstartError(f"{folder}: --refresh expects a Markdown file")
        before = folder.read_text(encoding="utf-8")
        after = refresh_tables(folder)
        typer.echo(f"{folder}: {'tables re-rendered' if after != before else 'tables already up to date'}")
        return
    path = write_report(folder)
    if markdown and (is_comparison(folder) or is_run(folder)):
        from headstart.report.tables import arms, effects_table, levels

        table = summarise(folder, write=False)
        typer.echo(levels(table))
        for budget in table["budgets"]:
            typer.echo(arms(table, budget["labels_per_class"]))
        typer.echo(effects_table(table))
    if is_comparison(folder) or is_run(folder):
        summary = summarise(folder, write=False)
        for line in ([summary["metric_reason"]] if summary.get("metric_reason") else []) + summary_line(summary):
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
    label_errors: int = typer.Option(
        12,
        min=0,
        help="Suspected label errors to rank among the labelled images (cleanlab on the bank's leave-one-out "
        "k-NN votes; saved in label-issues.json); 0: none. Needs --bank train.",
    ),
) -> None:
    """Linear and k-NN probes of a stage's frozen backbone features; stored in its probe.json. Also
    ranks the labelled images whose labels look wrong (confident learning, cleanlab)."""
    from headstart.checkpoint import find_stage_folder
    from headstart.label_errors import LABEL_ISSUES_FILE, read_label_issues
    from headstart.probe import probe_stage

    folder = find_stage_folder(stage)
    record = probe_stage(
        folder,
        bank_split=bank,
        probe_split=split,
        k=k,
        temperature=temperature,
        c=c,
        label_errors=label_errors if bank == "train" else 0,
    )
    if json_output:
        typer.echo(record.model_dump_json(indent=2))
        return
    typer.echo(
        f"{folder}: linear probe {record.linear_accuracy:.4f}, k-NN probe (k={record.settings['knn']['k']}) "
        f"{record.knn_accuracy:.4f} on {record.probe_size} {split} images; bank: {record.bank_size} {bank} "
        f"images, {record.num_features} features; {record.seconds:.1f} s (saved in {folder / 'probe.json'})"
    )
    issues = read_label_issues(folder) if label_errors and bank == "train" else None
    if issues is not None:
        typer.echo(
            f"suspected label errors: cleanlab flags {issues.flagged} of {issues.images} labelled images; "
            f"the {len(issues.suspects)} most doubtful (saved in {folder / LABEL_ISSUES_FILE}):"
        )
        for suspect in issues.suspects:
            typer.echo(
                f"  {suspect.score:.3f}  {suspect.name}: given {suspect.given}, looks like {suspect.suggested}"
                + ("  (flagged)" if suspect.flagged else "")
            )


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
