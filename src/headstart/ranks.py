"""Which process of a job writes: rank zero of a torchrun, Lightning or SLURM launch.

Kept apart from :mod:`headstart.engine.trainer` (which loads Lightning) so that a command can print
its first line before the heavy libraries load, and only once in a job of many processes.
"""

from __future__ import annotations

import os


def slurm_launched() -> bool:
    """Whether SLURM's srun started this process as one task of a job (Lightning's rule: an
    interactive job, named ``bash`` or ``interactive``, is not)."""
    return "SLURM_NTASKS" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def is_rank_zero() -> bool:
    """Whether this process is the first of its job (it alone writes run files): global rank 0
    of a torchrun launch (``RANK``), the first process of Lightning's own launcher on the first
    machine (``LOCAL_RANK``, ``NODE_RANK``), or task 0 of a SLURM step (``SLURM_PROCID``)."""
    environ = os.environ
    if "RANK" in environ:
        return int(environ["RANK"]) == 0
    if "LOCAL_RANK" in environ or "NODE_RANK" in environ:
        return int(environ.get("LOCAL_RANK", "0")) == 0 and int(environ.get("NODE_RANK", "0")) == 0
    if slurm_launched():
        return int(environ.get("SLURM_PROCID", "0")) == 0
    return True


__all__ = ["is_rank_zero", "slurm_launched"]
