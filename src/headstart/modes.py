"""Run a module in evaluation mode for a while, then give it back the mode it arrived in.

The one place for "save the mode → ``eval()`` → restore": a whole-set pass, a probe, a shape
probe or an export never leaves a caller's network in another mode than it found it. The restore
calls ``module.train(mode)``, so a :class:`~headstart.network.Network` re-applies its ``frozen``
BatchNorm policy on the way back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def evaluating(module: nn.Module, *, no_grad: bool = True) -> Iterator[nn.Module]:
    """``with evaluating(network): ...`` runs the block in evaluation mode (and without gradients
    unless ``no_grad=False``), then restores the module's training mode, also on an exception."""
    was_training = module.training
    module.eval()
    try:
        if no_grad:
            with torch.no_grad():
                yield module
        else:
            yield module
    finally:
        module.train(was_training)
