"""A comparison's runs trained at once: the order they depend on, and worker processes on one machine.

The runs of a comparison are almost independent: each is its own folder. The one dependency is a
shared prefix: an arm whose first stages equal another's (same model, data, seed and stage
settings: :func:`headstart.compare.sharing.shared_stages`) starts from that donor's finished stages
instead of training them again. The donor of each run is chosen as the one-after-another loop
chooses it (the earlier run in plan order sharing the most stages), so the runs, and their results,
are the same whichever way they are trained; a run waits only until its donor's shared stages are
finished (:class:`Job`, :func:`jobs`).

:func:`run_local` trains the jobs in ``workers`` processes (:mod:`headstart.compare.workers`),
each with ``threads`` CPU threads (the cores divided among the workers: oversubscribed cores make
every trainer slow) and, on a GPU machine, a GPU of its own. A worker that dies (``kill -9``, out
of memory) fails only its run; the others go on, and the command that resumes the failed run reuses
every finished one. Ctrl+C stops every worker after its current step; finished runs stay reusable.
:mod:`headstart.compare.ray_executor` submits the same jobs to a Ray cluster.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from headstart.checkpoint import RunRecord, stage_folder
from headstart.compare.sharing import link_stages, shared_stages
from headstart.compare.spec import CompareSpec, PlannedRun
from headstart.errors import INTERRUPTED_EXIT_CODE, HeadstartError
from headstart.files import is_finished_stage, is_run
from headstart.report.summary import labels_per_class_text
from headstart.stage import Interrupted

FAILED_EXIT_CODE = 1
"""Exit code of a comparison some of whose runs failed (the others finished and are kept)."""
LOG_FOLDER = ".logs"
"""Beside the arms' folders, what each worker printed: ``worker-N.log`` (a dot: no arm name may start with one)."""


class RunsFailed(HeadstartError):
    """Some runs of a parallel comparison did not finish; the message names them and the command
    that resumes them (every finished run is reused)."""

    exit_code = FAILED_EXIT_CODE


class ComparisonInterrupted(Interrupted):
    """Ctrl+C (or SIGTERM) stopped a parallel comparison; every finished run is kept."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, folder: Path, how_to_continue: str) -> None:
        HeadstartError.__init__(
            self,
            f"interrupted; every worker stopped after its current step and the finished runs are kept in "
            f"{folder}. Continue with: {how_to_continue}",
        )
        self.folder = folder
        self.stage = ""


@dataclass
class Job:
    """A planned run and what it waits for: the first ``shared`` stages of run ``donor`` (indices
    into the plan), which it links instead of training."""

    index: int
    planned: PlannedRun
    decision: str
    """``fresh``, ``overwrite``, ``resume`` or ``reuse`` (:func:`~headstart.compare.sharing.reuse_or_resume`)."""
    donor: int | None = None
    shared: int = 0

    @property
    def trains(self) -> bool:
        return self.decision != "reuse"


def jobs(runs: list[PlannedRun], decisions: list[str]) -> list[Job]:
    """The runs in plan order (donors always come first), each with its donor as the sequential loop
    picks it: among the runs before it, the one sharing the most leading stages."""
    planned_jobs = []
    for index, (planned, decision) in enumerate(zip(runs, decisions, strict=True)):
        job = Job(index, planned, decision)
        if decision in ("fresh", "overwrite"):
            shared = shared_stages(planned, runs[:index])
            if shared is not None:
                job.donor, job.shared = runs.index(shared[0]), shared[1]
        planned_jobs.append(job)
    return planned_jobs


def label(planned: PlannedRun) -> str:
    """``rotation, seed 1, 4 labels per class``."""
    budget = f", {labels_per_class_text(planned.budget)}" if planned.budget is not None else ""
    return f"{planned.arm}, seed {planned.seed}{budget}"


def start(job: Job, donor: PlannedRun | None, echo: Callable[[str], None]) -> bool:
    """Make ``job``'s folder ready to train: clear a run of another configuration (``overwrite``),
    link the donor's shared stages; returns whether the run resumes (stages already on disk)."""
    planned = job.planned
    if job.decision == "overwrite":
        shutil.rmtree(planned.folder)
    if donor is None or not job.shared:
        return job.decision == "resume"
    names = link_stages(donor, planned, job.shared)
    where = (
        f", {labels_per_class_text(donor.budget)} (these stages read no labels)"
        if donor.budget != planned.budget and donor.budget is not None
        else ""
    )
    echo(
        f"    {', '.join(names)} shared with {donor.arm}, seed {donor.seed}{where} (same model, data, "
        "seed and stage settings)"
    )
    return True


def outcome_line(test: dict[str, float] | None, seconds: float) -> str:
    """``test accuracy 0.9120, balanced accuracy 0.9101 in 12.3 s``."""
    if not test:
        return f"finished in {seconds:.1f} s"
    balanced = f", balanced accuracy {test['balanced_accuracy']:.4f}" if "balanced_accuracy" in test else ""
    return f"test accuracy {test['accuracy']:.4f}{balanced} in {seconds:.1f} s"


def cores() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a SLURM allocation), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(spec: CompareSpec) -> int:
    """``workers: auto``: one per GPU when this machine has several and the runs may use them, else 1.

    On GPUs each run has a device of its own and computes as it would alone, so N GPUs give N runs at
    once at no cost to the results. On a CPU the workers split the cores: the demo on 2 cores took
    402 s as 2 workers × 1 thread against 537 s as 1 × 2 (1.34×, ``bench/bench_compare_workers.py``),
    but a run computed with one thread rounds its reductions unlike one with two, so single runs
    moved by up to 0.013 in test accuracy; the label-budget comparison at one label per class gained
    nothing (503 s against 497) and its chaotic runs moved by up to 0.15. One worker with every core
    keeps the published tables' runs reproducible; ``--workers N`` takes the speed."""
    if spec.accelerator == "cpu":
        return 1
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return gpus if gpus >= 2 else 1


def threads_per_worker(workers: int) -> int:
    """Each worker's share of the cores, at least one."""
    return max(1, cores() // workers)


def finished_prefix(planned: PlannedRun) -> int:
    """How many of the run's first stages are already finished on disk."""
    count = 0
    for index, stage in enumerate(planned.spec.stages):
        if not is_finished_stage(stage_folder(planned.folder, index, stage.name)):
            break
        count = index + 1
    return count


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set while the block runs (a spawned process copies it as it starts)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def progress_bar(total: int, show: bool):
    """An overall bar with runs done of ``total`` and the time left (rich), or ``None``."""
    if not show or not total:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=Console(file=sys.stderr),
        transient=True,
    )


class _Worker:
    """One worker process, its pipe, its GPU and the job it runs."""

    def __init__(self, number: int, threads: int, gpu: int | None, log: Path) -> None:
        self.number, self.threads, self.gpu, self.log = number, threads, gpu, log
        self.job: Job | None = None
        self.process: Any = None
        self.connection: Any = None

    def launch(self, context: Any) -> None:
        from headstart.compare.workers import main

        if self.connection is not None:
            self.connection.close()  # the pipe of a process that died
        parent, child = context.Pipe()
        values = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if self.gpu is not None:
            values["CUDA_VISIBLE_DEVICES"] = str(self.gpu)
        self.process = context.Process(
            target=main, args=(self.number, self.threads, str(self.log), child), name=f"headstart-worker-{self.number}"
        )
        with environment(values):  # read by PyTorch as the worker imports it
            self.process.start()
        child.close()
        self.connection = parent

    def messages(self) -> Iterator[tuple]:
        """What the worker has sent and not yet been read (all of it, once it has died)."""
        try:
            while self.connection.poll():
                yield self.connection.recv()
        except (EOFError, OSError):
            return

    def stop(self, wait: float) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                pass
            self.process.join(wait)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def record_failure(planned: PlannedRun, problem: str, status: Literal["failed", "interrupted"] = "failed") -> None:
    """Write ``failed`` (or ``status``: ``interrupted``) into the run.json of a run whose process
    ended before it could (it says ``running``): records tell the truth, whoever reads them."""
    if not is_run(planned.folder):
        return
    record = RunRecord.read(planned.folder)
    if record.status == "running":
        record.status, record.error = status, None if status == "interrupted" else problem
        record.write(planned.folder)


def death(code: int | None) -> str:
    """Why a worker process ended, in words: ``killed by SIGKILL`` or ``exited with code 1``."""
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _sigterm_as_ctrl_c() -> Any:
    """SIGTERM (a scheduler ending the job) stops the workers as Ctrl+C does; returns the handler it
    replaced (``None`` outside the main thread, where handlers cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def run_local(
    spec: CompareSpec,
    planned_jobs: list[Job],
    *,
    workers: int,
    threads: int,
    gpus: int,
    echo: Callable[[str], None],
    show_bars: bool,
    how_to_continue: str,
) -> None:
    """Train and probe every job in ``workers`` processes, in dependency order (module docstring);
    a :class:`RunsFailed` naming the runs that did not finish once the others have."""
    import multiprocessing

    from headstart.compare.workers import Task

    root = spec.output_dir()
    runs = [job.planned for job in planned_jobs]
    pending = [job for job in planned_jobs if job.trains or spec.probes.enabled]
    training = sum(job.trains for job in planned_jobs)
    done_stages = {
        job.index: len(job.planned.spec.stages) if not job.trains else finished_prefix(job.planned)
        for job in planned_jobs
    }
    failed: dict[int, str] = {}
    for job in planned_jobs:
        if not job.trains:
            echo(f"{label(job.planned)}: finished before, reused")
    context = multiprocessing.get_context("spawn")
    pool = [
        _Worker(number, threads, number % gpus if gpus else None, root / LOG_FOLDER / f"worker-{number}.log")
        for number in range(1, min(workers, max(len(pending), 1)) + 1)
    ]
    bar = progress_bar(training, show_bars)
    say = (lambda line: bar.console.print(line, markup=False, highlight=False)) if bar is not None else echo
    counts = {"started": 0, "ended": 0}
    task = bar.add_task("runs", total=training) if bar is not None else None

    def ready(job: Job) -> bool | None:
        """True: it may start; False: its donor's stages are not finished yet; None: its donor failed."""
        if job.donor is None or done_stages[job.donor] >= job.shared:
            return True
        return None if job.donor in failed else False

    def end(worker: _Worker, job: Job, problem: str | None, test: Any = None, seconds: float = 0.0) -> None:
        if job.trains:
            counts["ended"] += 1
            if bar is not None and task is not None:
                bar.advance(task)
        where = f"[{counts['ended']}/{training}] worker {worker.number}"
        if problem is not None:
            failed[job.index] = problem
            say(f"{where}: {label(job.planned)} failed: {problem} (log: {worker.log})")
        elif job.trains:
            done_stages[job.index] = len(job.planned.spec.stages)
            say(f"{where}: {label(job.planned)}: {outcome_line(test, seconds)}")

    def handle(worker: _Worker, message: tuple) -> None:
        kind, index = message[0], message[1]
        job = planned_jobs[index]
        if kind == "stage":
            done_stages[index] = max(done_stages[index], message[2] + 1)
        elif kind == "trained":
            end(worker, job, None, message[2], message[3])
        elif kind == "line":  # probes and label checks, named by run: workers finish in any order
            say(f"    {label(job.planned)}: {message[2].strip()}")
        elif kind in ("done", "failed", "interrupted"):
            if kind == "failed":
                if job.trains and done_stages[index] < len(job.planned.spec.stages):
                    end(worker, job, message[2])
                else:  # trained, then its probes failed
                    failed[index] = message[2]
                    say(f"worker {worker.number}: probes of {label(job.planned)} failed: {message[2]}")
            elif kind == "interrupted":
                if job.trains:
                    end(worker, job, "interrupted")
                else:
                    failed[index] = "interrupted"
            worker.job = None

    def dispatch(worker: _Worker) -> None:
        while pending:
            chosen = None
            for job in list(pending):
                state = ready(job)
                if state is None:
                    pending.remove(job)
                    problem = f"not started: {label(runs[job.donor or 0])}, whose stages it shares, did not finish"
                    failed[job.index] = problem
                    if job.trains:
                        counts["ended"] += 1
                        if bar is not None and task is not None:
                            bar.advance(task)
                    say(f"{label(job.planned)}: {problem}")
                elif state:
                    chosen = job
                    break
            if chosen is None:
                return
            pending.remove(chosen)
            if chosen.trains:
                counts["started"] += 1
                stages = " → ".join(stage.name for stage in chosen.planned.spec.stages)
                say(
                    f"[{counts['started']}/{training}] worker {worker.number} starts {label(chosen.planned)}: {stages}"
                    + (" (resuming)" if chosen.decision == "resume" else "")
                )
            resume = start(chosen, runs[chosen.donor] if chosen.donor is not None else None, say)
            if worker.process is None or not worker.process.is_alive():
                worker.launch(context)
            worker.job = chosen
            worker.connection.send(
                Task(chosen.index, chosen.planned, chosen.trains, resume, spec.probes, spec.label_errors)
            )
            return

    from multiprocessing.connection import wait

    terminate = _sigterm_as_ctrl_c()
    try:
        with bar if bar is not None else nullcontext():
            while True:
                for worker in pool:
                    if worker.job is None:
                        dispatch(worker)
                busy = [worker for worker in pool if worker.job is not None]
                if not busy:
                    for job in pending:  # nothing runs that they could wait for
                        failed[job.index] = "not started"
                    break
                ready_objects = wait(
                    [worker.connection for worker in busy] + [worker.process.sentinel for worker in busy], timeout=5
                )
                for worker in busy:
                    if worker.connection in ready_objects or worker.process.sentinel in ready_objects:
                        for message in worker.messages():
                            handle(worker, message)
                    if worker.job is not None and not worker.process.is_alive():
                        for message in worker.messages():  # what it sent before it died
                            handle(worker, message)
                        if worker.job is not None:
                            job, worker.job = worker.job, None
                            problem = f"worker process {death(worker.process.exitcode)}"
                            record_failure(job.planned, problem)
                            end(worker, job, problem)
                        worker.process = None  # a fresh one takes the next run
    except KeyboardInterrupt:
        say("stopping every worker after its current step …")
        for worker in pool:
            if worker.process is not None and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGINT)
                try:  # and no next run: a worker that finished its run as the signal came ends too
                    worker.connection.send(None)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + 120
        for worker in pool:
            if worker.process is not None:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        raise ComparisonInterrupted(root, how_to_continue) from None
    finally:
        for worker in pool:
            worker.stop(wait=30)
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
    if failed:
        names = "; ".join(f"{label(runs[index])} ({why})" for index, why in sorted(failed.items()))
        raise RunsFailed(
            f"{len(failed)} of {len(planned_jobs)} runs did not finish: {names}. The others are kept in {root}; "
            f"resume with: {how_to_continue}"
        )
