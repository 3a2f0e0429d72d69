"""The main job on a folder of one's own photos: does pretraining give a head start on *this* data?

``headstart demo --data PATH`` runs the five arms of :mod:`headstart.demo` (scratch; rotation →
task; scratch → task → FreeMatch; rotation → task → FreeMatch; ImageNet head → fine-tune) on
``PATH/<class>/<image>`` over seeds, within a time budget, and writes the same report. Everything
it chooses follows the rules below and is printed before training; ``--show-config`` prints the
comparison file instead, for ``headstart compare FILE``.

Images (:func:`headstart.demo_survey.survey`)
    Listed as the folder source lists them (:mod:`headstart.data.sources`: sub-folders are the
    classes, hidden files skipped, image suffixes only). Every file is decoded once before anything
    is written, so an unreadable image stops the job with its path. ``--unlabelled PATH2`` adds the
    image files under a second folder (any layout) as unlabelled images.
Splits (:class:`~headstart.data.splits.SplitSpec`, split seed 0 whatever the arm's seed)
    Per class: :data:`TEST_FRACTION` of the images for test (never seen by any stage, pretext and
    FixMatch stages included), :data:`VAL_FRACTION` for validation (at least one image each,
    at most :data:`MAX_VAL_IMAGES` in all), the
    rest labelled training images — all of them, or ``--labels-per-class N`` with the rest of the
    class's training images unlabelled. With ``--labels-per-class`` each seed draws its own N
    labelled images per class from the same training images (``labelled_draw: per_seed``), so the
    result holds beyond one lucky or unlucky choice; without it every image keeps its label.
    Test and validation images are the same at every seed. Copies of one picture (exact or near,
    found by the data check, :mod:`headstart.data.datacheck`) stay in one split, and the check is
    written to ``data-check.json`` in the output folder. Pretext and FixMatch stages read every
    training image without its label (``data: all``), plus the unlabelled folder. A class needs at
    least :data:`MIN_IMAGES_PER_CLASS` images, and two classes at least.
Models and sizes (:func:`headstart.demo_survey.choose_sizes`)
    ``resnet10t`` from random weights for scratch and rotation, EfficientNet-Lite0 with its ImageNet
    weights (offline package) for transfer, at sizes read from the images: photographs at the
    ImageNet model's own resolution, small images kept small.
Time budget (:mod:`headstart.demo_budget`)
    ``--budget 15m`` (also ``90s``, ``1h``, ``1h30m``; default :data:`DEFAULT_BUDGET`) is a ceiling
    for the whole comparison, all seeds. The cost of every stage is estimated from the image counts
    and a short timed probe of each model on this machine (:func:`~headstart.demo_budget.estimate_seconds`), and every
    stage's recipe epochs are scaled by one factor, the largest that fits — never above the recipe
    (``--quick``: a fifth of it), never below one epoch per stage. The plan and the timings are
    kept in ``OUTPUT/budget.json``: the same command again (same images, same options), after
    Ctrl+C for instance, runs the same epochs and so reuses the finished runs instead of timing the
    machine anew; other options on the same machine reuse the timings.
Judging metric (``metric: auto``, :func:`headstart.metrics.choose_metric`)
    A folder of 900 cats and 40 foxes is judged on balanced accuracy (the mean of the per-class
    recalls), since a network that never says "fox" has accuracy 0.96 there; folders whose labelled
    classes are within 1.5 : 1 are judged on accuracy. With ``--labels-per-class`` the labelled
    split is balanced by construction, so ``auto`` judges on accuracy; the report shows balanced
    accuracy and each class's recall either way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.compare import CompareResult, CompareSpec, parse_compare, plan
from headstart.compare import run as run_comparison
from headstart.compare.sharing import reuse_or_resume
from headstart.data.dataset import ImageSet
from headstart.data.sources import MAX_LISTED
from headstart.data.splits import Splits, make_splits
from headstart.demo import (
    CONTRASTS,
    DEFAULT_SEEDS,
    IMAGENET_MODEL,
    QUICK_SCALE,
    SMALL_MODEL,
    arm_definitions,
    scaled_epochs,
)
from headstart.demo_budget import (
    BUDGET_FILE,
    Counts,
    budget_line,
    capped_epochs,
    duration_text,
    estimate_seconds,
    fit_budget,
    kept_plan,
    parse_budget,
    speeds_for,
)
from headstart.demo_survey import PHOTO_SIDE, Survey, choose_sizes, survey
from headstart.errors import HeadstartError
from headstart.files import atomic_write_json, hardware

TEST_FRACTION = 0.2
VAL_FRACTION = 0.1
DEFAULT_BUDGET = "15m"
MAX_VAL_IMAGES = 1_000
"""The validation split holds :data:`VAL_FRACTION` of the images up to 1,000: it is evaluated after
every epoch (time to target, early stopping, the hand-over's choice of seed), and 1,000 images
measure an accuracy of 0.9 to ±0.019 (95%); the images beyond stay in training."""
CACHE_BYTES = 2 * 1024**3
"""Decoded images are held in memory (``cache: true``) when all of them fit in 2 GiB, else streamed."""


# ------------------------------------------------------------------------------------- splits


def val_fraction(files: int) -> float:
    """:data:`VAL_FRACTION` of the images, but no more than :data:`MAX_VAL_IMAGES` of them."""
    return min(VAL_FRACTION, MAX_VAL_IMAGES / max(files, 1))


def split_spec(labels_per_class: int | None, files: int = 0) -> dict[str, Any]:
    """The ``data.splits`` block of the folder job (module docstring) for a folder of ``files`` images."""
    spec: dict[str, Any] = {"test_fraction": TEST_FRACTION, "val_fraction": val_fraction(files), "seed": 0}
    if labels_per_class is not None:
        spec["labels_per_class"] = labels_per_class
        spec["labelled_draw"] = "per_seed"
    return spec


def _splits(data: Path, images: ImageSet, labels_per_class: int | None, groups: np.ndarray | None = None) -> Splits:
    """The splits the plan counts images in: a per-seed draw changes which images are labelled, not
    how many, so the fixed draw counts for every seed. ``groups``: the data check's groups of copies,
    each kept in one split as the runs will keep them."""
    if labels_per_class is not None and labels_per_class < 1:
        raise HeadstartError(f"--labels-per-class {labels_per_class}: expected 1 or more")
    try:
        return make_splits(
            images,
            test_fraction=TEST_FRACTION,
            val_fraction=val_fraction(len(images)),
            seed=0,
            labels_per_class=labels_per_class,
            groups=groups,
        )
    except HeadstartError as error:
        lines = [line.strip() for line in str(error).removeprefix(f"{images.name}: ").splitlines()]
        message = lines[0] + " " + "; ".join(lines[1:])
        raise HeadstartError(f"{data}: {message} (--labels-per-class {labels_per_class})") from None


# ---------------------------------------------------------------------------------- the plan


@dataclass
class FolderPlan:
    """The comparison the folder job runs and what it chose, in words."""

    spec: CompareSpec
    document: dict[str, Any]
    """The comparison file's content as written (every number of the recipe shown, defaults too)."""
    lines: list[str]
    """The choices as printed before training (and as comments above ``--show-config``)."""
    record: dict[str, Any]
    """What ``budget.json`` keeps: the machine, the timings, the budget and the epochs chosen."""


def _model_block(name: str, weights: str | None, side: int) -> dict[str, Any]:
    return {"name": name, "weights": weights, "image_size": side}


def _epochs_line(spec: CompareSpec) -> str:
    parts = []
    for name, arm in spec.arms.items():
        assert arm.stages is not None
        parts.append(f"{name}: " + " → ".join(f"{stage.name} {stage.epochs}" for stage in arm.stages))
    return "epochs: " + "; ".join(parts)


def folder_comparison(
    data: str | os.PathLike,
    unlabelled: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    quick: bool = False,
    budget: str | float = DEFAULT_BUDGET,
    labels_per_class: int | None = None,
    progress: bool | None = None,
) -> FolderPlan:
    """Survey the folder, choose the splits, models, sizes and epochs (module docstring) and return
    the comparison with its description. Writes nothing but the data check's fingerprint cache;
    raises HeadstartError on bad input. The seconds spent here (the data check, the timed probes)
    are taken from the budget before the epochs are fitted to the rest."""
    begun = time.perf_counter()
    seconds_allowed = budget if isinstance(budget, (int, float)) else parse_budget(budget)
    if seconds_allowed <= 0:
        raise HeadstartError(f"budget {budget!r}: expected a duration above zero, such as 90s or 15m")
    root = Path(data).resolve() if Path(data).exists() else Path(data)
    extra = None if unlabelled is None else (Path(unlabelled).resolve() if Path(unlabelled).exists() else None)
    if unlabelled is not None and extra is None:
        raise HeadstartError(f"{unlabelled}: no such folder (expected a folder of unlabelled images, --unlabelled)")
    found, checked = survey(root, extra, progress=progress)
    locked = [f"{path}: {reason}" for path, reason in checked.not_followed if reason.startswith("cannot be read")]
    if locked:
        raise HeadstartError(
            f"{root}: {len(locked)} sub-folder(s) cannot be read (fix their permissions or move them out): "
            + "; ".join(locked[:MAX_LISTED])
        )
    splits = _splits(root, found.images, labels_per_class, checked.split_groups())
    counts = Counts.of(splits)
    small, imagenet = choose_sizes(found.median_side)
    stored = max(small, imagenet)
    channels = 3 if found.colour else 1
    folder = Path(output) if output is not None else Path(f"headstart-demo-{root.name}")
    source: dict[str, Any] = {
        "kind": "folder",
        "path": str(root),
        "image_size": stored,
        "channels": channels,
        "cache": counts.files * channels * stored * stored <= CACHE_BYTES,
        "verify": "checked",  # each run's data check vouches for the files (cached): no pass per run
    }
    if extra is not None:
        source["unlabelled"] = str(extra)
    class_count = len(found.images.class_names)
    name = (
        f"{root.name}: {class_count} classes, {counts.train} labelled training images, "
        f"epochs fitted to {duration_text(seconds_allowed)}"
    )

    def document(scale: float) -> dict[str, Any]:
        return {
            "name": name,
            "output": str(folder),
            "seeds": list(seeds),
            "data": {"source": source, "splits": split_spec(labels_per_class, len(found.images))},
            "baseline": "scratch",
            "contrasts": CONTRASTS,
            # a user's folder is often imbalanced (900 cats, 40 foxes): balanced accuracy judges then
            "metric": "auto",
            "arms": capped_epochs(
                arm_definitions(
                    _model_block(SMALL_MODEL, None, small),
                    _model_block(IMAGENET_MODEL, "imagenet", imagenet),
                    scaled_epochs(scale),
                ),
                counts,
            ),
        }

    def build(scale: float) -> CompareSpec:
        return parse_compare(document(scale), "demo --data")

    inputs = {
        "data": str(root),
        "unlabelled": None if extra is None else str(extra),
        "budget_seconds": seconds_allowed,
        "quick": quick,
        "seeds": list(seeds),
        "labels_per_class": labels_per_class,
        "counts": asdict(counts),
        "sides": [small, imagenet, stored],
        "channels": channels,
    }
    decode_key = f"{stored}px/{channels}"
    kept = kept_plan(folder)
    speeds, decode, reused = speeds_for(
        {SMALL_MODEL: small, IMAGENET_MODEL: imagenet}, kept, found.decode_seconds, decode_key
    )
    cap = QUICK_SCALE if quick else 1.0

    def cost(candidate: CompareSpec) -> float:
        return estimate_seconds(candidate, counts, speeds, decode)

    spent = time.perf_counter() - begun  # the data check and the timed probes count in the budget
    same_plan = kept.get("inputs") == inputs and isinstance(kept.get("scale"), (int, float))
    if same_plan:  # the same command again: the same epochs, so finished runs are reused
        scale = float(kept["scale"])
        spec = build(scale)
        estimate = cost(spec)
    else:
        scale, spec, estimate = fit_budget(build, cost, max(seconds_allowed - spent, 0.0), cap)
    recipe_seconds = cost(build(cap))

    labelled = int((found.images.labels >= 0).sum())
    lines = [
        f"data: {root} — {class_count} classes ({', '.join(found.images.class_names)}), {labelled} labelled images"
        + (f"; unlabelled: {extra}, {len(found.images) - labelled} images" if extra is not None else ""),
        f"images: {'colour' if found.colour else 'grey'}, shorter side {found.smallest_side}–{found.largest_side} px "
        f"(median {found.median_side}); stored at {stored} px, {channels} channel(s), "
        + ("held in memory" if source["cache"] else "streamed from disk"),
        f"splits (seed 0, the same for every arm and seed): test {counts.test} ({TEST_FRACTION:.0%} of each class, "
        f"never seen by any stage), validation {counts.val} ({val_fraction(len(found.images)):.0%}, at most "
        f"{MAX_VAL_IMAGES:,}), labelled training {counts.train} "
        + (
            f"({labels_per_class} per class, drawn anew at each seed)"
            if labels_per_class is not None
            else "(all the rest)"
        )
        + f", unlabelled {counts.unlabelled}; pretext and FixMatch stages read {counts.pool} training images "
        "without labels",
        f"models: {SMALL_MODEL} from random weights at {small} px; {IMAGENET_MODEL} with ImageNet weights at "
        f"{imagenet} px ("
        + (
            f"its own resolution: photographs, median shorter side {found.median_side} ≥ {PHOTO_SIDE} px"
            if found.median_side >= PHOTO_SIDE
            else f"small images, median shorter side {found.median_side} < {PHOTO_SIDE} px"
        )
        + ")",
        "speed ("
        + (f"timed by an earlier run, {folder / BUDGET_FILE}" if reused else "timed now")
        + "): "
        + "; ".join(
            f"{key} {1000 * value.train:.1f} ms/image to train, {1000 * value.infer:.1f} to infer"
            + (
                f" (+{1000 * value.train_step:.0f} and {1000 * value.infer_step:.0f} ms/step)"
                if value.train_step
                else ""
            )
            for key, value in speeds.items()
        )
        + f"; decoding {1000 * decode:.1f} ms/image",
        budget_line(seconds_allowed, len(spec.seed_list), quick, cap, scale, recipe_seconds, estimate, spent)
        + ("; the epochs of the earlier run with the same data and options" if same_plan else ""),
        _epochs_line(spec),
    ]
    record = {
        "inputs": inputs,
        "machine": hardware(),
        "speeds": {key: asdict(value) for key, value in speeds.items()},
        "decode": {decode_key: decode},
        "budget_seconds": seconds_allowed,
        "scale": scale,
        "estimated_seconds": estimate,
        "epochs": {arm: [stage.epochs for stage in spec.arms[arm].stages or []] for arm in spec.arms},
    }
    return FolderPlan(spec, document(scale), lines, record)


def run_folder_demo(
    data: str | os.PathLike,
    unlabelled: str | os.PathLike | None = None,
    *,
    output: str | os.PathLike | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    quick: bool = False,
    budget: str | float = DEFAULT_BUDGET,
    labels_per_class: int | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    how_to_continue: str | None = None,
) -> CompareResult:
    """Plan the job (:func:`folder_comparison`), print its choices, keep its timings in
    ``budget.json`` and run the comparison (:func:`headstart.compare.run`): ``report.html`` and
    ``comparison.json`` in the output folder."""
    chosen = folder_comparison(
        data,
        unlabelled,
        output=output,
        seeds=seeds,
        quick=quick,
        budget=budget,
        labels_per_class=labels_per_class,
        progress=progress,
    )
    for line in chosen.lines:
        echo(line)
    for planned in plan(chosen.spec):
        reuse_or_resume(planned, overwrite)  # refuse a foreign output folder before writing into it
    folder = chosen.spec.output_dir()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / BUDGET_FILE, chosen.record)
    started = time.perf_counter()
    result = run_comparison(
        chosen.spec,
        overwrite=overwrite,
        progress=progress,
        echo=echo,
        how_to_continue=how_to_continue or f"headstart demo --data {data}",
        workers=1,  # the budget is fitted to one run after another
    )
    estimated = chosen.record["estimated_seconds"]
    echo(
        f"took {duration_text(time.perf_counter() - started)} against an estimated {duration_text(estimated)} "
        f"(budget {duration_text(chosen.record['budget_seconds'])})"
    )
    return result


def show_config(plan_: FolderPlan) -> str:
    """The comparison file of ``plan_`` as YAML, its choices as comments on top."""
    import yaml

    header = "".join(f"# {line}\n" for line in plan_.lines)
    plain = json.loads(json.dumps(plan_.document))  # arms share stage lists: written out, not as YAML aliases
    body = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    return header + "# run it with: headstart compare FILE\n" + body


__all__ = [
    "DEFAULT_BUDGET",
    "FolderPlan",
    "Survey",
    "choose_sizes",
    "folder_comparison",
    "run_folder_demo",
    "show_config",
    "survey",
]
