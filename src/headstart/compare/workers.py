"""The worker process of a parallel comparison: it trains the runs its parent sends, one at a time.

Each worker is a fresh interpreter (``spawn``: a forked copy of a parent that has loaded PyTorch
would inherit its thread pools and locks) started with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set
to its share of the cores, and ``CUDA_VISIBLE_DEVICES`` to its GPU on a GPU machine, so that two
workers never fight over the same cores or device (concurrent trainers that each take every core
run many times slower than one). It talks to its parent over its own pipe, not a shared queue: a
worker killed in the middle of a message cannot leave a lock held that the others need.

Messages to the parent, each a tuple starting with the kind and the run's index in the plan:
``("stage", i, stage_index)`` when a stage finishes (a run that extends this one may then start),
``("trained", i, test, seconds)``, ``("line", i, text)`` (probe results), ``("done", i)`` (the
worker is free), ``("failed", i, error)``, ``("interrupted", i)``. What the run itself prints
(Lightning, the stage's device line) goes to ``OUTPUT/.logs/worker-N.log`` (a dot: no arm name can take it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headstart.compare.spec import LabelErrorOptions, PlannedRun, ProbeOptions


@dataclass
class Task:
    """One run for a worker: train it (unless it finished before), then probe it."""

    index: int
    planned: PlannedRun
    train: bool
    resume: bool
    probes: ProbeOptions
    label_errors: LabelErrorOptions


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _log_to(path: Path) -> None:
    """Send this process's standard output and error, C libraries' included, to ``path`` (appended)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)


def _stop_with_parent() -> None:
    """Stop after the current step (as Ctrl+C does) if the parent dies: its lock is then stale, and
    a new command taking the folder over must not meet a run still being written."""
    import signal
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="headstart-parent-watch", daemon=True).start()


def main(number: int, threads: int, log: str, connection: Any) -> None:
    """Serve tasks from ``connection`` until ``None`` arrives, the pipe closes or Ctrl+C."""
    _log_to(Path(log))
    _stop_with_parent()
    import torch

    torch.set_num_threads(threads)
    from headstart.compare.evidence import ProbeMemo

    memo = ProbeMemo()  # a backbone met again by this worker is probed once
    try:
        while True:
            task = connection.recv()
            if task is None:
                return
            if not _serve(task, connection, memo):
                return
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return


def _serve(task: Task, connection: Any, memo: Any) -> bool:
    """Train and probe one run; ``False`` when Ctrl+C stopped it (the worker then ends)."""
    from headstart.compare.evidence import probe_run
    from headstart.stage import Interrupted
    from headstart.structure import run

    index = task.index
    try:
        if task.train:
            result = run(
                task.planned.spec,
                resume=task.resume,
                progress=False,
                on_stage_end=lambda record: connection.send(("stage", index, record.stage_index)),
            )
            connection.send(("trained", index, result.test, result.seconds))
        if task.probes.enabled:
            probe_run(
                task.planned,
                task.probes,
                lambda line: connection.send(("line", index, line)),
                memo,
                task.label_errors,
            )
    except (Interrupted, KeyboardInterrupt):
        connection.send(("interrupted", index))
        return False
    except Exception as error:  # noqa: BLE001 - reported to the parent, which records the run as failed
        import traceback

        traceback.print_exc()  # into the worker's log
        connection.send(("failed", index, one_line(error)))
        return True
    connection.send(("done", index))
    return True
