"""What the data check found (:class:`DataCheck`) and its thresholds (:class:`DataCheckSpec`).

The check itself, and what it looks for, is :mod:`headstart.data.datacheck`; this module holds its
result: the findings, their words (one summary line, a few examples of each), ``data-check.json``
(:meth:`DataCheck.to_json`), and :meth:`DataCheck.try_splits`, which splits the checked files as
:meth:`TaskData.load <headstart.data.task.TaskData.load>` will, without reading any image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from headstart.data.checks import check_dataset
from headstart.data.dataset import FileStore, ImageSet
from headstart.data.duplicates import NEAR_CORRELATION, NEAR_DISTANCE
from headstart.data.splits import SplitSpec, make_splits
from headstart.files import atomic_write_json, read_json
from headstart.validation import validate

EXAMPLES = 5
"""Examples of each finding :meth:`DataCheck.lines` prints (``data-check.json`` holds them all)."""
CHECK_FILE = "data-check.json"
"""What a run, comparison or ``headstart check-data --json`` writes: :meth:`DataCheck.to_json`."""
FORMAT = 1


class DataCheckSpec(BaseModel):
    """The thresholds of the data check; every default is measured or argued in the docs
    (docs/guides/data.md, "Checking a folder before training")."""

    model_config = ConfigDict(extra="forbid")

    near_distance: int | None = Field(
        NEAR_DISTANCE,
        ge=0,
        le=64,
        description="largest Hamming distance (bits of 64) between the perceptual hashes of near copies; "
        "none: exact copies only. With the thumbnail check, 10 finds 95-100% of the 50% resizes and "
        "quality-70 re-encodes of photos (86-94% of 128-px tiles): headstart.data.duplicates",
    )
    near_correlation: float = Field(
        NEAR_CORRELATION,
        ge=-1.0,
        le=1.0,
        description="smallest correlation of the 8x8 thumbnails of near copies: 0.99 keeps distinct MNIST "
        "digits apart (4.2% of them get a false copy, against 96% with the hash alone); lower finds more "
        "crops and more false copies",
    )
    min_side: int = Field(
        16,
        ge=1,
        description="images whose shorter side is below this (pixels) are tiny: below the chapter's 16 x 16, "
        "a network's downsampling leaves no picture",
    )
    max_aspect: float = Field(
        3.0,
        ge=1.0,
        description="longer side over shorter side above this is an extreme aspect: the centre crop keeps "
        "less than a third of it",
    )
    max_imbalance: float = Field(
        3.0,
        ge=1.0,
        description="largest class over smallest above this is reported: accuracy then rewards the large class",
    )
    cache: bool = Field(True, description="keep fingerprints of unchanged files next to the data")


@dataclass
class DataCheck:
    """What the check found in one source (module docstring); :meth:`to_json` is ``data-check.json``."""

    name: str
    source: dict[str, Any]
    """kind, path and unlabelled folder of the source."""
    options: DataCheckSpec
    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    groups: np.ndarray
    """Per path, the position of the first image of its group of copies (its own when it has none)."""
    copies: list[dict[str, Any]]
    """Groups of two images or more: ``members`` (positions), ``kind`` ("exact": every file has the same
    bytes; else "near"), ``exact_copies`` (members whose bytes another member has too, beyond the first)
    and ``distance`` (the largest Hamming distance of the near pairs that joined the group)."""
    widths: np.ndarray
    heights: np.ndarray
    colours: np.ndarray | None = None
    """Per path, whether the picture is in colour (``None`` when not recorded)."""
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    not_followed: list[tuple[str, str]] = field(default_factory=list)
    decoded: int = 0
    seconds: float = 0.0

    # ---------------------------------------------------------------------------- findings

    @property
    def readable(self) -> np.ndarray:
        """Boolean per path: the file was read and decoded."""
        unreadable = {path for path, _ in self.unreadable}
        return np.array([str(path) not in unreadable for path in self.paths], dtype=bool)

    def class_counts(self) -> dict[str, int]:
        """Readable images per class name (classes with none included as 0)."""
        counts = np.bincount(self.labels[(self.labels >= 0) & self.readable], minlength=len(self.class_names))
        return {name: int(counts[k]) for k, name in enumerate(self.class_names)}

    def imbalance(self) -> float | None:
        """Largest class over smallest (classes with images); None with fewer than two classes."""
        counts = [count for count in self.class_counts().values() if count]
        return max(counts) / min(counts) if len(counts) >= 2 else None

    def two_labels(self) -> list[dict[str, Any]]:
        """Groups of copies whose labelled images carry more than one class."""
        return [group for group in self.copies if len(self._group_labels(group)) > 1]

    def _group_labels(self, group: dict[str, Any]) -> list[str]:
        labels = sorted({int(self.labels[i]) for i in group["members"] if self.labels[i] >= 0})
        return [self._label_name(label) for label in labels]

    def _label_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else f"label {label}"

    def tiny(self) -> np.ndarray:
        """Positions of readable images whose shorter side is below ``options.min_side``."""
        readable = self.readable
        return np.flatnonzero(readable & (np.minimum(self.widths, self.heights) < self.options.min_side))

    def extreme_aspect(self) -> np.ndarray:
        """Positions of readable images whose longer side exceeds ``options.max_aspect`` times the shorter."""
        readable = self.readable
        short = np.maximum(np.minimum(self.widths, self.heights), 1)
        return np.flatnonzero(readable & (np.maximum(self.widths, self.heights) / short > self.options.max_aspect))

    def split_groups(self) -> np.ndarray | None:
        """The groups for :func:`~headstart.data.splits.make_splits`, or None when there are no copies."""
        return self.groups.copy() if self.copies else None

    @property
    def clean(self) -> bool:
        """Nothing to report: no finding, and classes within ``options.max_imbalance``."""
        imbalance = self.imbalance()
        return not (
            self.copies
            or self.unreadable
            or self.not_followed
            or self.tiny().size
            or self.extreme_aspect().size
            or (imbalance is not None and imbalance > self.options.max_imbalance)
        )

    # ----------------------------------------------------------------------------- words

    def _shown(self, path: str | Path) -> str:
        """A path as messages show it: relative to the source's folder when inside it."""
        base = self.source.get("path")
        if base:
            root = Path(base) if self.source.get("kind") == "folder" else Path(base).parent
            try:
                return str(Path(path).absolute().relative_to(root.absolute()))
            except ValueError:
                pass
        return str(path)

    def summary_line(self) -> str:
        """One line: what was checked and what was found ("nothing to report" when clean)."""
        counts = self.class_counts()
        labelled = sum(counts.values())
        head = f"data check of {self.name}: {len(self.paths)} image(s)"
        if self.class_names:
            head += f" in {len(self.class_names)} classes"
        if labelled < len(self.paths) - len(self.unreadable):
            head += f" ({len(self.paths) - len(self.unreadable) - labelled} unlabelled)"
        if self.clean:
            return head + ": nothing to report"
        found = []
        if self.copies:
            images = sum(len(group["members"]) for group in self.copies)
            exact = sum(group["exact_copies"] for group in self.copies)
            near = images - len(self.copies) - exact
            kinds = ", ".join(_plural(n, noun) for n, noun in ((exact, "exact copy"), (near, "near copy")) if n)
            text = f"{len(self.copies)} group(s) of copies ({images} images: {kinds})"
            two = len(self.two_labels())
            found.append(text + (f", {two} under two labels" if two else ""))
        if self.unreadable:
            found.append(f"{len(self.unreadable)} unreadable")
        if self.not_followed:
            found.append(f"{len(self.not_followed)} folder(s) or link(s) not read")
        if self.tiny().size:
            found.append(f"{self.tiny().size} tiny (< {self.options.min_side} px)")
        if self.extreme_aspect().size:
            found.append(f"{self.extreme_aspect().size} of extreme aspect (> {self.options.max_aspect:g}:1)")
        imbalance = self.imbalance()
        if imbalance is not None and imbalance > self.options.max_imbalance:
            largest = max(counts, key=lambda name: counts[name])
            smallest = min((name for name in counts if counts[name]), key=lambda name: counts[name])
            found.append(
                f"classes imbalanced {imbalance:.1f}:1 ({largest} {counts[largest]}, {smallest} {counts[smallest]})"
            )
        return head + ": " + "; ".join(found)

    def lines(self, limit: int = EXAMPLES) -> list[str]:
        """The summary line, then up to ``limit`` examples of each finding (for a terminal)."""
        out = [self.summary_line()]

        def listed(title: str, rows: list[str]) -> None:
            if rows:
                more = f" (and {len(rows) - limit} more)" if len(rows) > limit else ""
                out.append(f"  {title}{more}:")
                out.extend(f"    {row}" for row in rows[:limit])

        def members(group: dict[str, Any]) -> str:
            names = []
            for i in group["members"]:
                label = int(self.labels[i])
                names.append(self._shown(self.paths[i]) + (f" ({self._label_name(label)})" if label >= 0 else ""))
            return " = ".join(names)

        listed("under two labels", [members(group) for group in self.two_labels()])
        listed(
            "copies",
            [f"{group['kind']}: {members(group)}" for group in self.copies if len(self._group_labels(group)) <= 1],
        )
        listed("unreadable", [f"{self._shown(path)}: {reason}" for path, reason in self.unreadable])
        listed("not read", [f"{self._shown(path)}: {reason}" for path, reason in self.not_followed])
        listed(
            "tiny", [f"{self._shown(self.paths[i])}: {self.widths[i]}x{self.heights[i]}" for i in self.tiny().tolist()]
        )
        listed(
            "extreme aspect",
            [
                f"{self._shown(self.paths[i])}: {self.widths[i]}x{self.heights[i]}"
                for i in self.extreme_aspect().tolist()
            ],
        )
        return out

    # ------------------------------------------------------------------------------ JSON

    def to_json(self) -> dict[str, Any]:
        """``data-check.json``: the options, the counts and every finding with absolute paths."""

        def image(i: int) -> dict[str, Any]:
            label = int(self.labels[i])
            return {
                "path": str(self.paths[i]),
                "label": self._label_name(label) if label >= 0 else None,
                "width": int(self.widths[i]),
                "height": int(self.heights[i]),
            }

        imbalance = self.imbalance()
        return {
            "format": FORMAT,
            "name": self.name,
            "source": self.source,
            "options": self.options.model_dump(mode="json"),
            "summary": self.summary_line(),
            "clean": self.clean,
            "images": len(self.paths),
            "classes": self.class_counts(),
            "unlabelled": int((self.labels < 0).sum()),
            "imbalance": imbalance,
            "copies": [
                {
                    "kind": group["kind"],
                    "exact_copies": group["exact_copies"],
                    "distance": group["distance"],
                    "labels": self._group_labels(group),
                    "images": [image(i) for i in group["members"]],
                }
                for group in self.copies
            ],
            "two_labels": sum(len(self._group_labels(group)) > 1 for group in self.copies),
            "unreadable": [{"path": path, "reason": reason} for path, reason in self.unreadable],
            "not_read": [{"path": path, "reason": reason} for path, reason in self.not_followed],
            "tiny": [image(i) for i in self.tiny().tolist()],
            "extreme_aspect": [image(i) for i in self.extreme_aspect().tolist()],
            "decoded": self.decoded,
            "seconds": round(self.seconds, 3),
        }

    def write(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` (a folder: its ``data-check.json``) atomically; return the file."""
        target = Path(path)
        if target.is_dir():
            target = target / CHECK_FILE
        atomic_write_json(target, self.to_json())
        return target

    # ---------------------------------------------------------------------------- splits

    def try_splits(self, splits: Any = None, run_seed: int | None = None) -> None:
        """Split the readable images as :meth:`TaskData.load <headstart.data.task.TaskData.load>` will
        (``splits``: a SplitSpec or mapping), without reading any image, and raise the HeadstartError it
        would raise (too few groups of copies in a class, a class made only of another's copies), so a
        command can refuse before it writes anything."""
        spec = validate(SplitSpec, splits or {}, "splits")
        keep = np.flatnonzero(self.readable)
        images = ImageSet(
            FileStore([self.paths[i] for i in keep], 1, 3), self.labels[keep], self.class_names, self.name
        )
        divided = make_splits(
            images,
            test_fraction=spec.test_fraction,
            val_fraction=spec.val_fraction,
            seed=spec.seed,
            labels_per_class=spec.labels_per_class,
            labelled_fraction=spec.labelled_fraction,
            draw_seed=spec.draw_seed(run_seed if run_seed is not None else 0),
            groups=self.groups[keep] if self.copies else None,
        )
        check_dataset(divided, verify_files=False)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def read_check(path: str | os.PathLike) -> dict[str, Any]:
    """A ``data-check.json`` as written by :meth:`DataCheck.write` (a folder: its ``data-check.json``)."""
    target = Path(path)
    return read_json(target / CHECK_FILE if target.is_dir() else target)


__all__ = ["CHECK_FILE", "EXAMPLES", "DataCheck", "DataCheckSpec", "read_check"]
