"""The data block of a run file: the task dataset, its splits, a general dataset for transfer, residency."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from headstart.config.strict import Strict
from headstart.data.sources import SourceSpec
from headstart.data.splits import SplitSpec


class DataSpec(Strict):
    """The task dataset and, optionally, a general dataset for transfer stages."""

    source: SourceSpec
    splits: SplitSpec = SplitSpec()
    general: SourceSpec | None = None
    residency: Literal["auto", "memory", "stream"] = Field(
        "auto",
        description="auto: stream files from disk, gather in-memory sets; memory: decode every split once "
        "and hold it (uint8); stream: decode lazily in worker processes every epoch",
    )


def resolve_data_paths(data: DataSpec, folder: Path) -> None:
    """Read relative source paths from ``folder`` (the folder of the file that names them)."""
    for source in (data.source, data.general):
        if source is not None and source.path is not None and not Path(source.path).is_absolute():
            source.path = str((folder / source.path).resolve())
        if source is not None and source.unlabelled is not None and not Path(source.unlabelled).is_absolute():
            source.unlabelled = str((folder / source.unlabelled).resolve())


__all__ = ["DataSpec", "resolve_data_paths"]
