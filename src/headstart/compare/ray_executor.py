"""A comparison's runs as Ray tasks: the same jobs and order as on one machine, scheduled by Ray.

``headstart compare FILE --executor ray`` (``pip install 'headstart[ray]'``) submits one task per run
to a Ray cluster — an existing one (``--ray-address``: ``auto`` on a node of a cluster started with
``ray start --head`` and joined with ``ray start --address``, or ``ray://host:10001``) or a local
one started on the spot. Each task asks for what its run needs: one GPU (``num_gpus=1``) when the
cluster has GPUs and the run may use one, and ``threads`` CPUs (``num_cpus``; default 1). Every run
writes into the comparison's output folder, which must be on a filesystem that all nodes share.

Ordering is Ray's: a run that shares its first stages with a donor gets the donor's task as an
argument, so Ray starts it once the donor's task has finished (the whole run, where the processes of
:func:`headstart.compare.executor.run_local` wait only for the shared stages). No other scheduling
happens here.

Threads: a task sets its own PyTorch thread count to the CPUs it asked for before training.
Concurrent Lightning trainers in Ray tasks otherwise each size their thread pools to the whole
machine and oversubscribe its cores (ray-project/ray#42135: from more than 3 to 0.1 iterations per
second).

Ctrl+C: the command writes :data:`STOP_FILE` into the output folder and waits up to
:data:`STOP_WAIT_S` seconds for its tasks before Ray is shut down. A task watches for that file:
a training run stops after its current step (as a worker process does on Ctrl+C) and records
itself interrupted, a task not yet started returns at once. Tasks are not cancelled through Ray:
``ray.cancel`` of a running task could abort the command itself (ray 2.60: "Tried to complete task
that was not pending").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headstart.compare.executor import (
    ComparisonInterrupted,
    Job,
    RunsFailed,
    label,
    outcome_line,
    record_failure,
    start,
)
from headstart.compare.spec import CompareSpec, LabelErrorOptions, PlannedRun, ProbeOptions
from headstart.compare.workers import one_line
from headstart.errors import HeadstartError

STOP_WAIT_S = 120.0
"""Seconds the command waits, after Ctrl+C, for its runs to end their current step."""
STOP_FILE = ".headstart-stop"
"""Written into the output folder on Ctrl+C: the comparison's tasks, on any node, stop when it appears."""
STOPPED = "stopped before it started: the comparison was interrupted"


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise HeadstartError(
            "--executor ray needs the ray package: pip install 'headstart[ray]' (or leave --executor out to train "
            "with processes on this machine)"
        ) from None
    return ray


def train_job(
    job: Job,
    donor: PlannedRun | None,
    probes: ProbeOptions,
    label_errors: LabelErrorOptions,
    threads: int,
    folder: str,
    stop_file: str,
    _donor_done: Any = None,
) -> tuple[dict[str, float] | None, float, list[str], int]:
    """One Ray task: link the donor's shared stages (``_donor_done`` is the donor's task, which Ray
    waits for), train the run, probe it; stop after the current step once ``stop_file`` appears
    (:data:`STOP_FILE`). Returns the test metrics, the seconds, the lines to show and the threads it
    computed with."""
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)  # before any work: the run's share of the node, not all of its cores
    if os.path.isdir(folder):
        os.chdir(folder)  # relative output folders mean the same on every node of a shared filesystem
    from headstart.compare.evidence import ProbeMemo, probe_run
    from headstart.engine.callbacks import InterruptOnSignal
    from headstart.stage import Interrupted
    from headstart.structure import run

    stop = Path(stop_file)
    if stop.exists():
        return None, 0.0, [STOPPED], torch.get_num_threads()
    lines: list[str] = []
    test, seconds = None, 0.0
    done = threading.Event()

    def watch() -> None:  # the comparison's Ctrl+C, seen from this node
        while not done.wait(0.1):
            if stop.exists():
                InterruptOnSignal.request_stop("Ctrl+C")
                return

    InterruptOnSignal.request_stop(None)
    threading.Thread(target=watch, name="headstart-stop-watch", daemon=True).start()
    try:
        if job.trains:
            resume = start(job, donor, lines.append)
            result = run(job.planned.spec, resume=resume, progress=False)
            test, seconds = result.test, result.seconds
        if probes.enabled:
            probe_run(job.planned, probes, lines.append, ProbeMemo(), label_errors)
    except Interrupted:
        lines.append("interrupted: the comparison was stopped")
    finally:
        done.set()
        InterruptOnSignal.request_stop(None)  # the worker process may serve another task
    return test, seconds, lines, torch.get_num_threads()


def run_on_ray(
    spec: CompareSpec,
    planned_jobs: list[Job],
    *,
    threads: int | None,
    address: str | None,
    echo: Callable[[str], None],
    how_to_continue: str,
) -> None:
    """Submit every job as a Ray task (module docstring), show each as it finishes; a
    :class:`~headstart.compare.executor.RunsFailed` naming those that did not once the others have."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            from headstart.compare.executor import cores

            ray.init(num_cpus=cores(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        _submit_and_wait(ray, spec, planned_jobs, threads or 1, echo, how_to_continue)
    finally:
        if started_here:
            ray.shutdown()


def _submit_and_wait(
    ray: Any, spec: CompareSpec, planned_jobs: list[Job], threads: int, echo: Callable[[str], None], again: str
) -> None:
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    remote = ray.remote(train_job)
    runs = [job.planned for job in planned_jobs]
    refs: dict[int, Any] = {}
    stop_file = spec.output_dir().absolute() / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by a command that did not end cleanly
    for job in planned_jobs:
        if not job.trains:
            echo(f"{label(job.planned)}: finished before, reused")
            if not spec.probes.enabled:
                continue
        on_gpu = gpus and job.trains and job.planned.spec.accelerator != "cpu"
        options = {"num_cpus": threads, "num_gpus": 1 if on_gpu else 0, "max_retries": 0}
        donor = runs[job.donor] if job.donor is not None else None
        after = refs.get(job.donor) if job.donor is not None else None
        refs[job.index] = remote.options(**options, name=f"headstart {label(job.planned)}").remote(
            job, donor, spec.probes, spec.label_errors, threads, os.getcwd(), str(stop_file), after
        )
    training = sum(job.trains for job in planned_jobs)
    echo(
        f"{training} runs submitted to Ray ({threads} CPU{'s' if threads > 1 else ''} each{', a GPU' if gpus else ''})"
    )
    waiting = {ref: index for index, ref in refs.items()}
    failed: dict[int, str] = {}
    ended = 0
    try:
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=0.25)  # Ctrl+C is heard between waits
            if not done:
                continue
            index = waiting.pop(done[0])
            job = planned_jobs[index]
            try:
                test, seconds, lines, _ = ray.get(done[0])
            except Exception as error:  # noqa: BLE001 - a failed task (or its donor's) fails only its run
                if job.donor is not None and job.donor in failed:
                    failed[index] = f"not started: {label(runs[job.donor])}, whose stages it shares, did not finish"
                else:
                    cause = getattr(error, "cause", None) or error
                    failed[index] = one_line(cause)
                    record_failure(job.planned, failed[index])  # a task whose process died left "running"
                ended += job.trains
                echo(f"[{ended}/{training}] ray: {label(job.planned)} failed: {failed[index]}")
                continue
            ended += job.trains
            if job.trains:
                echo(f"[{ended}/{training}] ray: {label(job.planned)}: {outcome_line(test, seconds)}")
            for line in lines:
                echo(f"    {label(job.planned)}: {line.strip()}")
    except KeyboardInterrupt:
        stop_file.touch()  # every task stops after its current step; those not started return at once
        try:  # before Ray is shut down (which ends its workers)
            ray.wait(list(waiting), num_returns=len(waiting), timeout=STOP_WAIT_S)
        finally:
            stop_file.unlink(missing_ok=True)
        for index in waiting.values():
            record_failure(runs[index], "interrupted", status="interrupted")  # still running when the wait ran out
        raise ComparisonInterrupted(spec.output_dir(), again) from None
    if failed:
        names = "; ".join(f"{label(runs[index])} ({why})" for index, why in sorted(failed.items()))
        raise RunsFailed(
            f"{len(failed)} of {len(planned_jobs)} runs did not finish: {names}. The others are kept in "
            f"{spec.output_dir()}; resume with: {again}"
        )
