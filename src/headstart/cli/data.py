"""``headstart check-data PATH``: what a folder or CSV of images holds, before anything trains."""

from __future__ import annotations

from pathlib import Path

import typer

from headstart.cli.app import app, user_errors


@app.command("check-data")
@user_errors
def check_data_command(
    path: Path = typer.Argument(..., help="A folder with one sub-folder of images per class, or a CSV file."),
    unlabelled: Path | None = typer.Option(None, "--unlabelled", help="A folder of images without labels too."),
    json_file: Path | None = typer.Option(None, "--json", help="Write every finding to this JSON file."),
    near_distance: int | None = typer.Option(
        None,
        "--near-distance",
        min=0,
        max=64,
        help="Bits (of 64) two perceptual hashes of near copies may differ in (default 10).",
    ),
    exact_only: bool = typer.Option(False, "--exact-only", help="Find exact copies only (same bytes)."),
    near_correlation: float | None = typer.Option(
        None, "--near-correlation", min=-1.0, max=1.0, help="Thumbnail correlation of near copies (default 0.99)."
    ),
    min_side: int | None = typer.Option(None, "--min-side", min=1, help="Smaller sides are tiny (default 16 px)."),
    max_aspect: float | None = typer.Option(
        None, "--max-aspect", min=1.0, help="Longer over shorter side beyond this is extreme (default 3)."
    ),
    max_imbalance: float | None = typer.Option(
        None, "--max-imbalance", min=1.0, help="Largest over smallest class reported beyond this (default 3)."
    ),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Keep fingerprints of unchanged files."),
    path_column: str = typer.Option("path", help="CSV: the column of image paths."),
    label_column: str = typer.Option("label", help="CSV: the column of class names ('' for none)."),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress", help="Progress bar (default: when stderr is a terminal)."
    ),
) -> None:
    """Find copies (exact and near), the same picture under two labels, class imbalance, unreadable, \
tiny and oddly shaped images in a folder or CSV; findings are reported, not errors (exit 0)."""
    from headstart.data.datacheck import check_source, source_for
    from headstart.data.findings import DataCheckSpec
    from headstart.errors import HeadstartError

    if json_file is not None and json_file.is_dir():
        raise HeadstartError(f"--json {json_file}: is a folder; expected a file name such as data-check.json")

    chosen = {
        "near_correlation": near_correlation,
        "min_side": min_side,
        "max_aspect": max_aspect,
        "max_imbalance": max_imbalance,
    }
    options: dict[str, float | int | bool | None] = {key: value for key, value in chosen.items() if value is not None}
    if exact_only:
        options["near_distance"] = None
    elif near_distance is not None:
        options["near_distance"] = near_distance
    options["cache"] = cache
    source = source_for(path, unlabelled, path_column=path_column, label_column=label_column or None)
    checked = check_source(source, DataCheckSpec(**options), progress=progress)
    for line in checked.lines():
        typer.echo(line)
    if json_file is not None:
        try:
            written = checked.write(json_file)
        except OSError as exc:
            raise HeadstartError(f"--json {json_file}: cannot be written ({exc.strerror or exc})") from None
        typer.echo(f"details: {written}")
