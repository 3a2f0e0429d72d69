"""The ``headstart`` command.

``headstart demo`` is the main job (MNIST with 10 labels per class: scratch vs rotation
pretraining vs ImageNet transfer); ``headstart run FILE`` runs the stages of a YAML run file,
``--resume`` continues one that was interrupted. ``headstart predict PATH...`` classifies image
files, folders or globs with a pretrained network or a trained checkpoint (Keras' ``model.predict``
+ ``decode_predictions`` in one line; ``-o`` writes a row per image to a CSV or JSONL file);
``headstart zoo list`` shows the model names; ``headstart summary MODEL`` prints the
layer table with parameter counts, after freezing if asked (``--diagram FILE.svg`` also draws it);
``headstart lr-find FILE --stage NAME`` sweeps the learning rate of one stage and suggests one;
``headstart check-data PATH`` reports the copies, the pictures under two labels and the imbalance
of a folder or CSV of images before anything trains; ``headstart serve MODEL`` answers predictions
over HTTP.

A user error (unreadable image, unknown model, a weights file that does not fit) prints one line,
``error: <what and where>``, on stderr and exits with code 2
(:data:`headstart.errors.USER_ERROR_EXIT_CODE`), never a traceback. Ctrl+C or SIGTERM during a
run abandons the epoch in progress, keeps the last finished one on disk and exits with 130
(:data:`headstart.errors.INTERRUPTED_EXIT_CODE`); ``headstart run FILE --resume`` continues.

The command modules import PyTorch, Lightning, timm and the plotting and statistics libraries inside
the commands that use them, never at module level, so that ``headstart --help``, each command's
``--help`` and a mistyped option answer at once instead of after seconds of loading
(``tests/test_cli_startup.py`` keeps it so).
"""

from __future__ import annotations

# isort: off
# importing the command modules registers their commands, in the order `headstart --help` lists them
from headstart.cli import models  # noqa: F401
from headstart.cli import training  # noqa: F401
from headstart.cli import evidence  # noqa: F401
from headstart.cli import data  # noqa: F401
from headstart.cli import serving  # noqa: F401

# isort: on
from headstart.cli.app import app
from headstart.cli.training import _print_comparison

__all__ = ["app", "main", "_print_comparison"]


def main() -> None:
    """Entry point of ``python -m headstart``."""
    app(prog_name="headstart")
