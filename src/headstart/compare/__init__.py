"""Did pretraining help? Arms × seeds × label budgets on one task, judged by both promised gains.

The chapter judges a pretraining strategy by comparison with the same task trained from a random
start, and names two gains: less time to converge and a better final metric. It also warns that a
pretraining which makes things worse must be re-thought. One seed cannot say which: on MNIST with
10 labels per class the spread between seeds is as large as some gains. A comparison therefore runs
every *arm* (a list of stages: scratch, ImageNet transfer, rotation self-supervision, both, …) on
the same task data, the same splits and the same label budget, over several seeds, then writes a
report (:mod:`headstart.report.html`) built only from what the runs wrote on disk.

A comparison file (``headstart compare FILE``)::

    name: mnist-10-labels
    output: comparisons/mnist
    seeds: [0, 1, 2]              # or a count: 3 → seeds 0, 1, 2
    label_budgets: [5, 10, 50]    # labels per class; default: the data's own splits
    baseline: scratch             # default: the first arm
    contrasts:                    # other pairs judged at every budget, paired by seed
      - {arm: rotation+fixmatch, against: scratch+fixmatch}
    metric: auto                  # or accuracy, balanced_accuracy, macro_f1 (auto: balanced accuracy
                                  # when the labelled classes are imbalanced beyond 1.5 : 1)
    data:                         # every arm trains on this task (an arm's own data is replaced)
      source: {kind: mnist5k}
      splits: {test_fraction: 0.2, val_fraction: 0.05, labels_per_class: 10}
    arms:
      scratch: {run: scratch.yaml}                  # a run file, relative to this file
      rotation:                                     # or the model and stages inline
        model: {name: resnet10t, image_size: 32}
        stages:
          - {name: rotation, data: all, pretext: {name: rotation}, epochs: 12}
          - {name: task, epochs: 40}
    probes: {k: 20}               # linear and k-NN probes of every stage's backbone
    label_errors: {top: 12}       # suspected label errors of the labelled images (cleanlab)
    attention: {images: 4, power: 1}
    workers: auto                 # runs trained at once, one process each: auto = one per GPU, else 1

Each run lands in ``OUTPUT/[labels-N/]ARM/seed-S`` as an ordinary run folder. A rerun reuses the
runs that finished with the same configuration and resumes the interrupted one, so a long
comparison survives Ctrl+C; a folder written by a different configuration is refused unless
``overwrite``. An arm whose first stages equal another arm's (same model, data, seed and stage
settings) starts from that arm's finished stages instead of training them again — they would
come out the same — and counts their wall time as its own; the report says what the extra stages
added (the paired gain over the shorter arm). The test and validation images are the same for
every seed (``data.splits.seed``); which training images carry labels is the same too unless
``data.splits.labelled_draw: per_seed`` draws them anew at each seed (the demo's and the example
comparisons' choice, since their tables are general claims). Seeds vary the initialisation, the
order of batches, the augmentations and, with ``per_seed``, the labelled draw.

With ``workers: N`` (``--workers N``) N runs train at once, each in its own process with its share
of the cores or its own GPU; a run that shares stages with another starts when they are finished
(:mod:`headstart.compare.executor`; ``--executor ray``: :mod:`headstart.compare.ray_executor`).

Every gain is judged by :mod:`headstart.verdict` (through :mod:`headstart.report.summary`): better,
worse or not resolved at the 95% level, paired by seed, with the seeds that would resolve it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from headstart.compare.evidence import ProbeMemo, attention_maps_of_arms, attention_picks, probe_run
from headstart.compare.executor import (
    Job,
    default_workers,
    jobs,
    label,
    outcome_line,
    run_local,
    start,
    threads_per_worker,
)
from headstart.compare.handover import hand_over
from headstart.compare.lock import comparison_lock
from headstart.compare.sharing import common_stages, extends, reuse_or_resume, shared_stages
from headstart.compare.spec import (
    ATTENTION_FILE,
    INIT_PROBE_FILE,
    ArmSpec,
    AttentionOptions,
    CompareSpec,
    Contrast,
    PlannedRun,
    ProbeOptions,
    load_compare_file,
    parse_compare,
    plan,
)
from headstart.data.datacheck import check_before_training
from headstart.errors import HeadstartError
from headstart.files import atomic_write_json, hardware, versions
from headstart.report.summary import MANIFEST_FILE
from headstart.stage import Interrupted

__all__ = [
    "ATTENTION_FILE",
    "INIT_PROBE_FILE",
    "ArmSpec",
    "AttentionOptions",
    "CompareResult",
    "CompareSpec",
    "Contrast",
    "PlannedRun",
    "ProbeOptions",
    "attention_picks",
    "common_stages",
    "extends",
    "load_compare_file",
    "parse_compare",
    "plan",
    "run",
    "shared_stages",
]


@dataclass
class CompareResult:
    """What a comparison wrote: its folder, the summary table and the report's path."""

    folder: Path
    table: dict[str, Any]
    report: Path
    seconds: float
    best: list[Path] = field(default_factory=list)
    """The ``best`` folders handed over (:mod:`headstart.compare.handover`), one per label budget with a winner."""

    @property
    def verdicts(self) -> list[str]:
        """One line per label budget: the arm with the best test accuracy and its verdict against the baseline."""
        from headstart.report.verdicts import summary_line

        return summary_line(self.table)


def run(
    spec: CompareSpec | dict | str | Path,
    *,
    base: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
    how_to_continue: str = "headstart.compare.run",
    workers: int | None = None,
    threads: int | None = None,
    executor: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
) -> CompareResult:
    """Run (or reuse) every planned run, probe the backbones, draw attention maps, write the report.

    ``spec`` is a :class:`CompareSpec`, a mapping, or the path of a comparison file (whose folder
    then resolves relative paths, like ``base``). ``workers`` (default: the file's ``workers``, ``auto``:
    one per GPU on a machine with several, else 1; :func:`~headstart.compare.executor.default_workers`)
    trains that many runs at once in their own processes (:mod:`headstart.compare.executor`),
    each with ``threads`` CPU threads (default: the cores divided among the workers; with one
    worker, the process's own). ``executor="ray"`` submits the runs to Ray instead
    (:mod:`headstart.compare.ray_executor`; ``ray_address``: an existing cluster, default a local
    one started on the spot). Only one comparison trains in an output folder at a time
    (:mod:`headstart.compare.lock`).
    """
    if isinstance(spec, (str, Path)):
        spec, folder = load_compare_file(spec)
        base = base or folder
    elif isinstance(spec, dict):
        spec = parse_compare(spec)
    elif not isinstance(spec, CompareSpec):
        raise HeadstartError(
            f"compare.run spec={type(spec).__name__}: expected a CompareSpec, a mapping or the path "
            "of a comparison file"
        )
    from headstart.report.html import write_report
    from headstart.report.summary import summarise

    count = spec.workers if workers is None else workers
    if count == "auto":
        count = default_workers(spec)
    if not isinstance(count, int) or count < 1 or (threads is not None and threads < 1):
        raise HeadstartError(f"workers={count}, threads={threads}: expected whole numbers of at least 1")
    if executor not in ("local", "ray"):
        raise HeadstartError(f"executor={executor!r}: expected local or ray")
    base = Path(base or ".")
    started = time.perf_counter()
    runs = plan(spec, base)
    root = spec.output_dir()
    existed = root.exists()
    try:
        with comparison_lock(root):
            _train_all(spec, runs, overwrite, progress, echo, how_to_continue, count, threads, executor, ray_address)
    except BaseException:
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # refused before anything was written: leave no empty folder behind
        raise
    table = summarise(root)
    handed = hand_over(root, table)  # best/ (per label budget): the winner at its best validation seed
    report = write_report(root)
    return CompareResult(root, table, report, time.perf_counter() - started, handed)


def _train_all(
    spec: CompareSpec,
    runs: list[PlannedRun],
    overwrite: bool,
    progress: bool | None,
    echo: Callable[[str], None],
    how_to_continue: str,
    workers: int,
    threads: int | None,
    executor: str,
    ray_address: str | None,
) -> None:
    """Everything a comparison trains and computes under its lock: checks, runs, probes, attention maps."""
    from headstart.structure import launch_checks

    decisions = [reuse_or_resume(planned, overwrite) for planned in runs]  # refuse before training anything
    for planned, decision in zip(runs, decisions, strict=True):
        if decision != "reuse":
            launch_checks(planned.spec)  # accelerator: gpu without a GPU, a missing logger package
    # folder and CSV data: copies, two labels, sizes (data-check.json); splits it cannot make fail here
    checked = check_before_training(spec.data.source, [(p.spec.data.splits, p.seed) for p in runs], progress=progress)
    root = spec.output_dir()
    if checked is not None:
        checked.write(root)
        echo(checked.summary_line())
    manifest = {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "baseline": spec.baseline_arm,
        "arms": list(spec.arms),
        "seeds": spec.seeds,
        "label_budgets": spec.label_budgets,
        "runs": [
            {"arm": p.arm, "seed": p.seed, "budget": p.budget, "folder": str(p.folder.relative_to(root))} for p in runs
        ],
        "extends": extends(runs),
        "hardware": hardware(),
        "versions": versions(),
    }
    atomic_write_json(root / MANIFEST_FILE, manifest)
    show_bars = (
        progress if progress is not None else (spec.progress if spec.progress is not None else sys.stderr.isatty())
    )
    planned_jobs = jobs(runs, decisions)
    if executor == "ray":
        from headstart.compare.ray_executor import run_on_ray

        run_on_ray(spec, planned_jobs, threads=threads, address=ray_address, echo=echo, how_to_continue=how_to_continue)
    elif workers > 1:
        import torch

        run_local(
            spec,
            planned_jobs,
            workers=workers,
            threads=threads or threads_per_worker(workers),
            gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
            echo=echo,
            show_bars=show_bars,
            how_to_continue=how_to_continue,
        )
    else:
        _in_order(spec, planned_jobs, echo, show_bars, how_to_continue, threads)
    if spec.attention.enabled:
        attention_maps_of_arms(spec, runs, echo)


def _in_order(
    spec: CompareSpec,
    planned_jobs: list[Job],
    echo: Callable[[str], None],
    show_bars: bool,
    how_to_continue: str,
    threads: int | None,
) -> None:
    """One run after another in this process, each probed as it finishes."""
    import torch

    from headstart.structure import run as run_structure

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        probed = ProbeMemo()
        runs = [job.planned for job in planned_jobs]
        for number, job in enumerate(planned_jobs, start=1):
            planned = job.planned
            prefix = f"[{number}/{len(planned_jobs)}] {label(planned)}"
            if not job.trains:
                echo(f"{prefix}: finished before, reused")
            else:
                stages = " → ".join(stage.name for stage in planned.spec.stages)
                echo(f"{prefix}: {stages}" + (" (resuming)" if job.decision == "resume" else ""))
                resume = start(job, runs[job.donor] if job.donor is not None else None, echo)
                try:
                    result = run_structure(planned.spec, resume=resume, progress=show_bars)
                except Interrupted as interruption:
                    raise Interrupted(
                        interruption.folder,
                        interruption.stage,
                        f"the same command again ({how_to_continue}); finished runs are reused",
                    ) from None
                echo(f"    {outcome_line(result.test, result.seconds)}")
            if spec.probes.enabled:
                probe_run(planned, spec.probes, echo, probed, spec.label_errors)
    finally:
        torch.set_num_threads(before)
