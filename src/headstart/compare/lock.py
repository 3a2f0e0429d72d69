"""One comparison at a time in an output folder: a lock file holding the PID of the command that trains there.

Two ``headstart compare`` commands on one folder would both see the same unfinished runs, train
them twice and overwrite each other's checkpoints. The first command creates
``OUTPUT/.headstart-compare.lock`` with ``O_CREAT | O_EXCL`` (atomic: of two commands starting at
once, exactly one creates it) and removes it when it ends, however it ends. The second reads the
holder's PID and host and refuses in one line. A lock left by a command that died without removing
it (``kill -9``, a power cut) names a PID that no longer runs on this host: it is taken over. A
lock written on another host (a shared filesystem) cannot be checked from here and is refused with
the path to remove once that command is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headstart.errors import HeadstartError

LOCK_FILE = ".headstart-compare.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def _holder(path: Path) -> dict | None:
    """What the lock file says (``pid``, ``host``), or ``None`` while it is empty or half-written."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def _create(path: Path) -> bool:
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "w") as file:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, file)
    return True


@contextmanager
def comparison_lock(root: Path) -> Iterator[Path]:
    """Hold ``root``'s lock file while the block runs (creating ``root``); a :class:`HeadstartError`
    when another live command holds it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    for attempt in range(20):
        if _create(path):
            break
        holder = _holder(path)
        if holder is None:  # being written right now, or left empty by a crash: look again shortly
            if attempt < 10:
                time.sleep(0.05)
                continue
        elif holder.get("host") != socket.gethostname():
            raise HeadstartError(
                f"{root}: another headstart compare (PID {holder['pid']} on {holder.get('host')}) holds "
                f"{path.name}; wait for it to finish, or remove {path} once that command has stopped"
            )
        elif _alive(holder["pid"]) and holder["pid"] != os.getpid():
            raise HeadstartError(
                f"{root}: another headstart compare (PID {holder['pid']}) is training in this folder; wait for it "
                "to finish or choose another output"
            )
        path.unlink(missing_ok=True)  # stale: its command is gone
    else:
        raise HeadstartError(f"{path}: cannot take this lock file over; remove it if no comparison runs here")
    try:
        yield path
    finally:
        holder = _holder(path)
        if holder is not None and holder["pid"] == os.getpid():
            path.unlink(missing_ok=True)
