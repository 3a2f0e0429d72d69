"""Runs of a comparison that share their first stages: which, how many, and linking them."""

from __future__ import annotations

import shutil

from headstart.checkpoint import RunRecord, stage_folder
from headstart.compare.spec import INIT_PROBE_FILE, PlannedRun
from headstart.config import (
    RunSpec,
)
from headstart.errors import HeadstartError
from headstart.files import STAGE_FILE, is_run
from headstart.probe import PROBE_FILE
from headstart.structure import same_configuration


def reuse_or_resume(planned: PlannedRun, overwrite: bool) -> str:
    """``fresh``, ``reuse`` (finished with this configuration), ``resume`` or ``overwrite``."""
    folder = planned.folder
    if not is_run(folder):
        if folder.exists() and any(folder.iterdir()):
            if _linked_only(planned):  # stopped between linking a donor's stages and writing run.json
                return "overwrite"
            raise HeadstartError(f"{folder}: exists and is not a headstart run; choose another output")
        return "fresh"
    record = RunRecord.read(folder)
    if not same_configuration(record, planned.spec):
        if overwrite:
            return "overwrite"
        raise HeadstartError(
            f"{folder}: holds a run of a different configuration (hash {record.config_hash}, this "
            f"arm {planned.spec.config_hash()}); pass --overwrite or choose another output"
        )
    return "reuse" if record.status == "finished" else "resume"


def _linked_only(planned: PlannedRun) -> bool:
    """Whether the run's folder holds nothing but its own stage folders and ``init-probe.json``: what
    :func:`link_stages` leaves before the run starts (links of another run's files, safe to remove)."""
    names = {stage_folder(planned.folder, index, stage.name).name for index, stage in enumerate(planned.spec.stages)}
    return all(path.name in names | {INIT_PROBE_FILE} for path in planned.folder.iterdir())


def common_stages(first: RunSpec, second: RunSpec) -> int:
    """How many leading stages two runs share with everything that fixes their weights (model,
    data, seed, stage settings) — equal weights after them on a deterministic device."""
    count = 0
    for index in range(1, min(len(first.stages), len(second.stages)) + 1):
        if first.prefix_key(index) != second.prefix_key(index):
            break
        count = index
    return count


def shared_stages(planned: PlannedRun, finished: list[PlannedRun]) -> tuple[PlannedRun, int] | None:
    """The finished run (same seed) sharing the most leading stages with ``planned``, and how many;
    ``None`` when none shares any. Runs of another label budget share only stages that read no
    labels (a pretext stage on the whole training pool: :meth:`RunSpec.prefix_key`); of equal
    counts, a donor of the same budget is preferred."""
    candidates = [
        (common_stages(donor.spec, planned.spec), donor.budget == planned.budget, donor)
        for donor in finished
        if donor.seed == planned.seed
    ]
    if not candidates:
        return None
    count, _, donor = max(candidates, key=lambda triple: triple[:2])
    return (donor, count) if count else None


def link_stages(donor: PlannedRun, planned: PlannedRun, count: int) -> list[str]:
    """Hard-link (copy where links fail) the donor's first ``count`` finished stage folders into
    ``planned``'s folder, training checkpoints left out; the run then resumes after them. Probes
    come along only from a donor of the same label budget (a probe reads the budget's labels)."""
    names = []
    same_labels = donor.budget == planned.budget
    for index, stage in enumerate(planned.spec.stages[:count]):
        source = stage_folder(donor.folder, index, stage.name)
        target = stage_folder(planned.folder, index, stage.name)
        # stage.json last: its presence marks the stage finished, so a link cut short (Ctrl+C) is retrained
        for path in sorted(source.rglob("*"), key=lambda path: path.name == STAGE_FILE):
            if path.is_dir() or path.suffix == ".ckpt" or (path.name == PROBE_FILE and not same_labels):
                continue
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                destination.hardlink_to(path)
            except OSError:
                shutil.copy2(path, destination)
        names.append(target.name)
    if same_labels and (donor.folder / INIT_PROBE_FILE).is_file() and not (planned.folder / INIT_PROBE_FILE).exists():
        shutil.copy2(donor.folder / INIT_PROBE_FILE, planned.folder / INIT_PROBE_FILE)
    return names


def extends(runs: list[PlannedRun]) -> dict[str, str]:
    """For each arm whose stages start with all of another arm's (same model and settings), that
    other arm — the longest such: what the extra stages added is the paired gain over it."""
    first_seed: dict[str, PlannedRun] = {}
    for planned in runs:
        first_seed.setdefault(planned.arm, planned)
    parents = {}
    for name, planned in first_seed.items():
        candidates = [
            (len(other.spec.stages), other.arm)
            for other in first_seed.values()
            if other.arm != name
            and len(other.spec.stages) < len(planned.spec.stages)
            and common_stages(other.spec, planned.spec) == len(other.spec.stages)
        ]
        if candidates:
            parents[name] = max(candidates)[1]
    return parents
