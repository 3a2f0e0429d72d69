"""A comparison as one ``headstart run`` command per run: for schedulers that start each run as its own job.

``headstart compare FILE --plan-only`` writes every planned run's run file to ``OUTPUT/.plan/`` and
prints the command that trains it into its usual folder (``OUTPUT/[labels-N/]ARM/seed-S``), one per
line, in dependency order: a run that shares its first stages with another comes after it. Started
as separate jobs (a SLURM array, one task per line), each run trains its shared stages itself
instead of linking the other's (the same weights, computed twice); ``--resume`` makes a retried job
continue where it stopped. ``headstart compare FILE`` afterwards reuses every finished run and writes
the probes, the attention maps and the report.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from headstart.compare.executor import jobs, label
from headstart.compare.spec import CompareSpec, plan
from headstart.files import atomic_write_bytes

PLAN_FOLDER = ".plan"
"""Beside the arms' folders; a dot, as no arm name may start with one."""


def plan_commands(spec: CompareSpec, base: Path = Path(".")) -> list[str]:
    """Write each planned run's run file and return the lines to print: a comment per run (its arm,
    seed, budget and the run it shares stages with), then its ``headstart run`` command."""
    runs = plan(spec, base)
    folder = spec.output_dir() / PLAN_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {len(runs)} runs of {spec.name}; then `headstart compare` reuses them and writes the report"]
    for job in jobs(runs, ["fresh"] * len(runs)):
        planned = job.planned
        budget = f"labels-{planned.budget}-" if planned.budget is not None else ""
        path = folder / f"{budget}{planned.arm}-seed-{planned.seed}.yaml"
        atomic_write_bytes(path, yaml.safe_dump(planned.spec.model_dump(mode="json"), sort_keys=False).encode())
        shares = f" (its first {job.shared} stage(s) equal {label(runs[job.donor])}'s)" if job.donor is not None else ""
        lines.append(f"# {job.index + 1}. {label(planned)}{shares}")
        lines.append(shlex.join(["headstart", "run", str(path), "--resume", "--no-progress"]))
    return lines
