"""Plain helpers shared by the test files: ``from helpers import digit_network, two_colour_jpeg``.

Importable because pytest's default ``prepend`` import mode puts ``tests/`` (a folder without an
``__init__.py``, like its ``conftest.py``) at the front of ``sys.path``. Fixtures live in
``conftest.py``; what is here is called like any function.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

DIGITS = [str(digit) for digit in range(10)]
"""The class names of the built-in digits sets."""
CATS = {"tabby, tabby cat", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat, Siamese"}
"""ImageNet's domestic cats (the labels a pretrained network may give scikit-image's chelsea)."""
TINY_RESNET = "test_resnet"
TINY_EFFICIENTNET = "test_efficientnet"  # timm's 356k-parameter test model, 160×160 input
ORIENTATION_TAG = 0x0112
"""EXIF tag of the orientation."""


# ------------------------------------------------------------------------------ tensors and arrays


def generator(seed: int = 0) -> torch.Generator:
    """A CPU random generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def random_tensor(*shape: int, seed: int = 0) -> torch.Tensor:
    """Standard normal values of ``shape`` from their own seeded generator."""
    return torch.randn(*shape, generator=generator(seed))


def per_class_arrays(
    counts: Mapping[str, int],
    *,
    size: int = 4,
    channels: int = 1,
    extra_labels: Sequence[int] = (),
    class_names: Sequence[str] | None = None,
    name: str = "toy",
):
    """An in-memory :class:`~headstart.data.ImageSet` of random uint8 pixels: ``counts[name]`` images
    of each class in order, then one image per entry of ``extra_labels`` (``-1``: unlabelled)."""
    from headstart.data import from_arrays

    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts.values())] + [np.array(extra_labels)])
    shape = (labels.size, size, size) if channels == 1 else (labels.size, size, size, 3)
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    names = list(counts) if class_names is None else list(class_names)
    return from_arrays(images, labels.astype(np.int64), class_names=names, name=name)


# ------------------------------------------------------------------------------------ image files


def grey_image(pixels) -> Image.Image:
    """An 8-bit grey PIL image from ``[height, width]`` values in 0..1 (a tensor or an array)."""
    values = pixels.numpy() if isinstance(pixels, torch.Tensor) else np.asarray(pixels)
    return Image.fromarray((values * 255).round().astype(np.uint8))


def two_colour_jpeg(path: str | os.PathLike, orientation: int) -> None:
    """16 wide × 8 high, red left half and blue right half, tagged with an EXIF orientation."""
    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:, :8] = (255, 0, 0)
    stored[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(stored).save(path, exif=exif, quality=100)


def truncated_jpeg(path: str | os.PathLike, *, side: int = 48, seed: int = 1, keep: float = 2 / 3) -> None:
    """A JPEG of random noise (``side`` × ``side``) cut after ``keep`` of its bytes: its header reads,
    its pixels do not."""
    path = Path(path)
    noise = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_image_folder(
    root: str | os.PathLike,
    counts: Mapping[str, int],
    *,
    size: int = 4,
    colour: Callable[[str, int], tuple[int, int, int]] = lambda name, index: (0, 0, 0),
) -> Path:
    """A folder source: one sub-folder per class (made even when its count is 0) holding
    ``counts[name]`` RGB PNGs ``0.png``, ``1.png``… of one ``colour(name, index)`` each."""
    root = Path(root)
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            Image.new("RGB", (size, size), colour(name, index)).save(root / name / f"{index}.png")
    return root


# ------------------------------------------------------------------------------ digits and networks


def digit_network(seed: int = 0):
    """timm's ``test_resnet`` from random weights (seeded), no top, one input channel: the tiny
    network the digits tests train."""
    from headstart.zoo import load

    torch.manual_seed(seed)
    return load(TINY_RESNET, weights=None, include_top=False, in_chans=1)


def digit_data(labels_per_class: int | None = None, seed: int = 0):
    """scikit-learn's digits as a :class:`~headstart.data.TaskData`, ``labels_per_class`` labelled
    training images per class (all of them when ``None``)."""
    from headstart.data import TaskData

    splits = {"seed": seed} if labels_per_class is None else {"labels_per_class": labels_per_class, "seed": seed}
    return TaskData.load({"kind": "digits"}, splits)


def digit_run(output: str | os.PathLike, stages: list[dict], *, labels_per_class: int = 10, **extra) -> dict:
    """A run file (as a mapping) on the digits with ``test_resnet`` at 16 px, no progress bars."""
    return {
        "output": str(output),
        "progress": False,
        **extra,
        "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": labels_per_class}},
        "model": {"name": TINY_RESNET, "weights": None, "image_size": 16},
        "stages": stages,
    }


# ------------------------------------------------------------------------------------ interruption


def ctrl_c_at_epoch(epoch: int = 1):
    """A Lightning callback that sends this process SIGINT (Ctrl+C) as epoch ``epoch`` starts."""
    from lightning.pytorch.callbacks import Callback

    class CtrlCAtEpoch(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == epoch:
                os.kill(os.getpid(), signal.SIGINT)

    return CtrlCAtEpoch()


def interrupted_then_resumed(fit: Callable, folder: Path):
    """Run ``fit(folder, resume=False, callbacks=[Ctrl+C as the second epoch starts])``, which must
    raise :class:`~headstart.stage.Interrupted`, then ``fit(folder, resume=True, callbacks=[])``;
    return what the resumed call returns. ``fit`` passes ``callbacks`` on to ``fit_stage`` or
    ``headstart.structure.run`` (their ``callbacks=`` argument)."""
    from headstart.stage import Interrupted

    with pytest.raises(Interrupted):
        fit(folder, resume=False, callbacks=[ctrl_c_at_epoch(1)])
    return fit(folder, resume=True, callbacks=[])


BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-extensions",
]
"""Headless Chromium's flags for the tests that open a page (no network, no extensions, no sandbox)."""


def browser_path() -> str | None:
    """Chromium's path, or None; with ``HEADSTART_REQUIRE_BROWSER=1`` (CI) a missing browser fails the test."""
    found = next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )
    if found is None and os.environ.get("HEADSTART_REQUIRE_BROWSER") == "1":
        pytest.fail("HEADSTART_REQUIRE_BROWSER=1 but no chromium on PATH (apt-get install chromium)")
    return found


# ------------------------------------------------------------------------- folders of real photos

SAMPLE_PHOTOS = (
    "astronaut brick camera chelsea clock coffee coins grass gravel horse hubble_deep_field "
    "immunohistochemistry moon page retina rocket text microaneurysms"
).split()
"""scikit-image sample photos that are distinct pictures (``data.cat()`` is ``chelsea`` again)."""


def sample_photo(name: str, side: int = 160) -> Image.Image:
    """scikit-image's sample ``name`` as an RGB image whose longer side is ``side`` pixels."""
    from skimage import data

    pixels = getattr(data, name)()
    if pixels.dtype != np.uint8:  # boolean (horse) and float samples: stretched to 0..255
        values = pixels.astype(np.float64)
        pixels = (255 * (values - values.min()) / max(float(np.ptp(values)), 1e-9)).astype(np.uint8)
    image = Image.fromarray(pixels[..., :3] if pixels.ndim == 3 else pixels).convert("RGB")
    scale = side / max(image.size)
    return image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))))


def photo_folder(root: str | os.PathLike, classes: Mapping[str, Sequence[str]], side: int = 160) -> Path:
    """A folder source of distinct real photos: ``root/<class>/<sample name>.png`` for each sample
    name of :data:`SAMPLE_PHOTOS` listed under each class."""
    root = Path(root)
    for class_name, names in classes.items():
        (root / class_name).mkdir(parents=True, exist_ok=True)
        for name in names:
            sample_photo(name, side).save(root / class_name / f"{name}.png")
    return root


def plant_copy(source: Path, target: Path, *, scale: float = 1.0, quality: int | None = None) -> Path:
    """A copy of the image file ``source`` at ``target``: the same bytes (no ``scale`` nor ``quality``),
    or resized by ``scale`` and saved in ``target``'s format (JPEG at ``quality``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if scale == 1.0 and quality is None:
        shutil.copyfile(source, target)
        return target
    with Image.open(source) as image:
        copy = image.convert("RGB").resize((round(image.size[0] * scale), round(image.size[1] * scale)))
    copy.save(target, **({"quality": quality} if quality is not None else {}))
    return target
