"""Datasets: sources (folders, CSV, arrays, built-in sets), splits, label fractions and checks.

Typical use::

    data = load_source(SourceSpec(kind="folder", path="photos", image_size=64))
    splits = make_splits(data, labels_per_class=10, seed=0)
    warnings = check_dataset(splits, min_image_size=32, model_name="resnet18")
    print(check_source(SourceSpec(kind="folder", path="photos", image_size=64)).summary_line())
"""

from headstart.data.builtin import BUILTINS, load_builtin, load_digits, load_lfw, load_mnist5k
from headstart.data.checks import check_dataset
from headstart.data.datacheck import check_source
from headstart.data.dataset import ArrayStore, FileStore, ImageSet
from headstart.data.findings import DataCheck, DataCheckSpec
from headstart.data.images import IMAGE_SUFFIXES, MAX_PIXELS, probe_image, read_image
from headstart.data.sources import SourceSpec, from_arrays, load_source
from headstart.data.splits import Splits, make_splits
from headstart.data.task import TaskData

__all__ = [
    "BUILTINS",
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "ArrayStore",
    "DataCheck",
    "DataCheckSpec",
    "FileStore",
    "ImageSet",
    "SourceSpec",
    "Splits",
    "TaskData",
    "check_dataset",
    "check_source",
    "from_arrays",
    "load_builtin",
    "load_digits",
    "load_lfw",
    "load_mnist5k",
    "load_source",
    "make_splits",
    "probe_image",
    "read_image",
]
