"""Every random stream of a run derives its seed here, from the run's seed and named parts.

One rule: :func:`derive` hashes ``(seed, *parts)`` with BLAKE2b into a 32-bit integer (what
numpy and ``lightning.seed_everything`` accept as well as torch), so two
streams that differ in any part (stage index, epoch, rank, step, purpose) never share a seed and
no arithmetic between parts can collide (``seed + index`` would give stage 1 of seed 0 the seed
of stage 0 of seed 1). The streams a run draws:

========================= =====================================================================
``stage(seed, index)``    a stage's start: a new head's initial weights, a sweep's first batches
``epoch(seed, index, e)`` training batch order and on-device augmentation of epoch ``e``
``step(...)``             one step's pretext alteration or strong augmentation
``stream(seed, p)``       pass ``p`` of a shuffled index order (epochs, unlabelled streams)
========================= =====================================================================
"""

from __future__ import annotations

import hashlib

_MASK = (1 << 32) - 1


def derive(seed: int, *parts: int | str) -> int:
    """A seed for the stream named by ``parts`` under the run seed ``seed`` (a non-negative int < 2^32)."""
    text = "/".join(str(part) for part in (int(seed), *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "little") & _MASK


def stage(seed: int, index: int) -> int:
    """The seed at the start of stage ``index`` (a new head's initial weights depend on it)."""
    return derive(seed, "stage", index)


def epoch(seed: int, index: int, epoch_number: int, rank: int = 0) -> int:
    """The seed of epoch ``epoch_number`` of stage ``index`` on process ``rank``."""
    return derive(seed, "epoch", index, epoch_number, rank)


def step(seed: int, index: int, epoch_number: int, rank: int, step_number: int) -> int:
    """The seed of one step's random alterations (pretext labels, strong augmentation)."""
    return derive(seed, "step", index, epoch_number, rank, step_number)


def stream(seed: int, number: int) -> int:
    """The seed of pass ``number`` over a shuffled index order."""
    return derive(seed, "pass", number)


__all__ = ["derive", "stage", "epoch", "step", "stream"]
