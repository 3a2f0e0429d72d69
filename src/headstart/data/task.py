"""TaskData: every split a stage may draw on, loaded once, decoded lazily.

A run's stages read from the same task dataset (``train``, ``unlabelled``, ``all``, ``val``,
``test``) and, for transfer stages, from a general dataset (``general`` and its validation part).
Loading reads file lists and labels and checks the files (see :mod:`headstart.data.sources`); it
does not decode the images into memory unless the source asks for it (``cache: true``), so a
folder of 50,000 photos costs the memory of its paths.

From Python::

    data = TaskData.load(SourceSpec(kind="folder", path="photos", image_size=224),
                         splits={"labels_per_class": 10})
    data.split("train")          # an ImageSet

With ``splits.labelled_draw: per_seed`` the labelled images depend on the run: pass its seed,
``TaskData.load(source, splits, run_seed=1)`` (a run, its probes and its lr-find do).

A folder or CSV source is checked first (:mod:`headstart.data.datacheck`; fingerprints cached next
to the data, so a second load reads no image): every group of copies lands in one split, and the
check is kept as ``TaskData.data_check``. Built-in sets and arrays are split as they always were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from headstart.data.checks import check_dataset
from headstart.data.datacheck import check_loaded
from headstart.data.dataset import ImageSet
from headstart.data.findings import DataCheck
from headstart.data.sources import FILE_KINDS, SourceSpec, load_source
from headstart.data.splits import Splits, SplitSpec, make_splits
from headstart.errors import HeadstartError
from headstart.validation import validate

SPLIT_NAMES = ("train", "unlabelled", "all", "val", "test", "general", "general_val")


@dataclass
class TaskData:
    """The splits of a task (and of an optional general dataset) as lazily decoded image sets."""

    splits: Splits
    general: Splits | None = None
    warnings: list[str] = field(default_factory=list)
    data_check: DataCheck | None = None
    """The data check of a folder or CSV source (copies, two labels, sizes); None for the others."""

    @classmethod
    def load(
        cls,
        source: SourceSpec | dict,
        splits: Any = None,
        general: SourceSpec | dict | None = None,
        *,
        model_name: str = "",
        min_image_size: int | None = None,
        run_seed: int | None = None,
    ) -> TaskData:
        """Load ``source``, split it as ``splits`` (a :class:`~headstart.data.splits.SplitSpec` or mapping) and
        check it; ``general`` is split 80/10/10 with the same seed. ``run_seed``: the seed of the run
        the data is for, which draws the labelled images when ``splits.labelled_draw`` is ``per_seed``
        (needed then; unused by the fixed draw)."""
        source = validate(SourceSpec, source, "source")
        split = validate(SplitSpec, splits or {}, "splits")
        draw_seed = split.draw_seed(run_seed)  # a per_seed spec without a run seed fails before loading
        images = load_source(source)
        data_check = groups = None
        if source.kind in FILE_KINDS:  # copies stay in one split (module docstring)
            images, data_check = check_loaded(images, source)
            groups = data_check.groups[images.positions] if data_check.copies else None
        task_splits = make_splits(
            images,
            test_fraction=split.test_fraction,
            val_fraction=split.val_fraction,
            seed=split.seed,
            labels_per_class=split.labels_per_class,
            labelled_fraction=split.labelled_fraction,
            draw_seed=draw_seed,
            groups=groups,
        )
        # verify="header" promises no full decode before training (a truncated file fails when first read)
        warnings = check_dataset(
            task_splits, min_image_size=min_image_size, model_name=model_name, verify_files=source.verify == "decode"
        )
        for warning in warnings:
            logging.getLogger("headstart").warning(warning)
        general_splits = None
        if general is not None:
            general = validate(SourceSpec, general, "general")
            general_splits = make_splits(load_source(general), test_fraction=0.1, val_fraction=0.1, seed=split.seed)
        return cls(task_splits, general_splits, list(warnings), data_check)

    @classmethod
    def from_spec(cls, data_spec, *, model_name: str = "", run_seed: int | None = None) -> TaskData:
        """From a run file's ``data`` block (:class:`~headstart.config.DataSpec`); ``run_seed`` as in :meth:`load`
        (a run's ``seed``)."""
        return cls.load(data_spec.source, data_spec.splits, data_spec.general, model_name=model_name, run_seed=run_seed)

    @property
    def class_names(self) -> list[str]:
        return list(self.splits.train.class_names)

    @property
    def general_names(self) -> list[str] | None:
        return None if self.general is None else list(self.general.train.class_names)

    @property
    def channels(self) -> int:
        return self.splits.train.channels

    def split(self, name: str) -> ImageSet:
        """One split by name: train, unlabelled, all (train + unlabelled, labels hidden), val, test,
        general (the general dataset's training part) or general_val."""
        if name in ("general", "general_val"):
            if self.general is None:
                raise HeadstartError(f"split '{name}': no general dataset was given (data.general)")
            return self.general.train if name == "general" else self.general.val
        if name == "all":
            return self.splits.pool()
        if name not in SPLIT_NAMES:
            raise HeadstartError(f"split '{name}' is not known; expected one of {', '.join(SPLIT_NAMES)}")
        return getattr(self.splits, name)
