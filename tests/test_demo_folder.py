"""The main job on a user's own folder: ``headstart demo --data PATH``.

The folders are built from real photographs — scikit-image's sample photographs (astronaut,
chelsea, coffee, rocket; crops and mirror images, JPEG) and LFW faces (grey 25-px PNGs, the
``lfw`` built-in's source) — written into class sub-folders.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from headstart import demo_budget
from headstart.checkpoint import RunRecord, StageRecord
from headstart.cli import app
from headstart.compare import load_compare_file, parse_compare, plan
from headstart.data.task import TaskData
from headstart.demo import arm_definitions, scaled_epochs
from headstart.demo_budget import (
    EPOCH_OVERHEAD_S,
    Counts,
    Speed,
    estimate_seconds,
    fit_budget,
    parse_budget,
    stage_seconds,
)
from headstart.demo_folder import choose_sizes, folder_comparison
from headstart.errors import HeadstartError
from headstart.probe import run_data
from helpers import truncated_jpeg

ARMS = ["scratch", "rotation", "scratch+freematch", "rotation+freematch", "imagenet"]
PHOTOS = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}
PER_CLASS = 6


def _crops(pixels: np.ndarray, count: int, seed: int, side: int = 160) -> list[Image.Image]:
    """``count`` square crops of 60–90% of the shorter side, every other one mirrored, resized to ``side``."""
    rng = np.random.default_rng(seed)
    height, width = pixels.shape[:2]
    crops = []
    for index in range(count):
        size = int(min(height, width) * rng.uniform(0.6, 0.9))
        top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
        crop = pixels[top : top + size, left : left + size]
        if index % 2:
            crop = crop[:, ::-1]
        crops.append(Image.fromarray(np.ascontiguousarray(crop)).resize((side, side)))
    return crops


def _grey(face: np.ndarray) -> Image.Image:
    return Image.fromarray((np.asarray(face) * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five classes of six images: four photographs as JPEG crops, and grey LFW faces as PNGs."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos") / "photos"
    for seed, (name, sample) in enumerate(PHOTOS.items()):
        (root / name).mkdir(parents=True)
        for index, image in enumerate(_crops(getattr(data, sample)(), PER_CLASS, seed)):
            image.save(root / name / f"{index}.jpg", quality=90)
    (root / "face").mkdir()
    for index, face in enumerate(data.lfw_subset()[:PER_CLASS]):
        _grey(face).save(root / "face" / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def extra(tmp_path_factory) -> Path:
    """Unlabelled images in nested folders: crops of two other photographs and LFW non-faces."""
    from skimage import data

    root = tmp_path_factory.mktemp("extra") / "extra"
    (root / "telescope").mkdir(parents=True)
    (root / "more" / "non-faces").mkdir(parents=True)
    for index, image in enumerate(_crops(data.hubble_deep_field(), 3, 10) + _crops(data.immunohistochemistry(), 3, 11)):
        image.save(root / "telescope" / f"{index}.jpg")
    for index, face in enumerate(data.lfw_subset()[-4:]):
        _grey(face).save(root / "more" / "non-faces" / f"{index}.png")
    return root


@pytest.fixture
def fixed_speeds(monkeypatch):
    """The timed probe replaced by fixed speeds (the end-to-end test times the machine for real)."""
    monkeypatch.setattr(
        demo_budget, "measure_speed", lambda model, side, **_: Speed(train=0.01, infer=0.002, build=0.5)
    )


# ---------------------------------------------------------------------------------- the rules


@pytest.mark.parametrize(
    ("text", "seconds"), [("15m", 900), ("90s", 90), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), ("45 S", 45)]
)
def test_budget_strings(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["15", "15x", "m", "", "-5m", "0s", "15m!", "1h 30"])
def test_a_bad_budget_names_the_value(text):
    with pytest.raises(HeadstartError, match="--budget") as raised:
        parse_budget(text)
    assert repr(text) in str(raised.value)


@pytest.mark.parametrize(
    ("median_side", "sides"),
    [
        (25, (32, 64)),  # LFW faces stay small
        (28, (32, 64)),  # MNIST: the MNIST demo's own sizes
        (48, (48, 64)),
        (80, (64, 80)),
        (96, (64, 224)),  # photographs: the ImageNet model at its own resolution
        (160, (64, 224)),
        (3000, (64, 224)),
    ],
)
def test_image_sizes_follow_the_images(median_side, sides):
    assert choose_sizes(median_side) == sides


COUNTS = Counts(train=100, unlabelled=400, val=20, test=40, files=560)
SPEEDS = {
    "resnet10t@64": Speed(train=0.004, infer=0.001, build=0.2, train_step=0.03, infer_step=0.004),
    "efficientnet_lite0@224": Speed(train=0.08, infer=0.02, build=1.0),
}


def _comparison(scale: float, seeds: int = 2):
    return parse_compare(
        {
            "data": {"source": {"kind": "folder", "path": "photos", "image_size": 224}},
            "seeds": seeds,
            "arms": arm_definitions(
                {"name": "resnet10t", "image_size": 64},
                {"name": "efficientnet_lite0", "weights": "imagenet", "image_size": 224},
                scaled_epochs(scale),
            ),
        }
    )


def test_fixmatch_cost_counts_passes_over_the_unlabelled_images():
    stage = _comparison(1.0).arms["rotation+freematch"].stages[-1]
    semi = stage.semi_supervised
    speed = SPEEDS["resnet10t@64"]
    # one training step of the labelled and strong copies, one forward pass of the weak copies
    step = (speed.train_step + (25 + 7 * 25) * speed.train) + (speed.infer_step + 7 * 25 * speed.infer)
    steps = -(-COUNTS.pool // (7 * 25)) if semi.epoch == "unlabelled" else -(-COUNTS.train // 25)
    every_epoch = speed.infer_step + 20 * speed.infer + EPOCH_OVERHEAD_S  # the validation pass (20 < 64: one batch)
    assert stage_seconds(stage, speed, COUNTS) == pytest.approx(stage.epochs * (steps * step + every_epoch))


def test_shared_stages_are_costed_once_and_seeds_multiply():
    one, two = (estimate_seconds(_comparison(1.0, seeds), COUNTS, SPEEDS, 0.002) for seeds in (1, 2))
    assert two == pytest.approx(2 * one)
    spec = _comparison(1.0, 1).model_dump(mode="json")

    def cost(*arms: str) -> float:
        only = parse_compare({**spec, "arms": {name: spec["arms"][name] for name in arms}})
        return estimate_seconds(only, COUNTS, SPEEDS, 0.002)

    rotation_stages = sum(
        stage_seconds(stage, SPEEDS["resnet10t@64"], COUNTS) for stage in _comparison(1.0).arms["rotation"].stages
    )
    # rotation+freematch after rotation trains its semi-supervised stage only: rotation's stages are not paid twice
    saved = cost("rotation") + cost("rotation+freematch") - cost("rotation", "rotation+freematch")
    assert saved > rotation_stages


def test_epochs_are_scaled_to_fit_the_budget():
    def cost(spec):
        return estimate_seconds(spec, COUNTS, SPEEDS, 0.002)

    recipe = cost(_comparison(1.0))
    scale, spec, seconds = fit_budget(_comparison, cost, recipe / 3, 1.0)
    assert seconds <= recipe / 3 and 0.15 < scale < 0.4  # about a third of the recipe's epochs
    assert seconds > 0.8 * recipe / 3  # the budget is spent, not left idle
    assert spec.arms["scratch"].stages[0].epochs == max(1, round(40 * scale))
    # a budget the recipe fits: the recipe, not more
    assert fit_budget(_comparison, cost, recipe * 2, 1.0)[:1] == (1.0,)
    # a budget nothing fits: the fewest epochs (one per stage), and the cost says it is over
    scale, spec, seconds = fit_budget(_comparison, cost, 1.0, 1.0)
    assert scale == 0 and spec == _comparison(0.0) and seconds > 1.0
    assert spec.arms["scratch"].stages[0].epochs == spec.arms["imagenet"].stages[0].epochs == 1


def test_a_large_folder_gets_epochs_of_a_few_thousand_images_and_a_cost_that_does_not_grow_with_it():
    from headstart.demo_budget import EPOCH_IMAGES, capped_epochs, epoch_images, epoch_steps

    def arms(counts):
        return capped_epochs(
            arm_definitions(
                {"name": "resnet10t", "image_size": 64},
                {"name": "efficientnet_lite0", "weights": "imagenet", "image_size": 224},
                scaled_epochs(1.0),
            ),
            counts,
        )

    def spec(counts):
        return parse_compare(
            {"data": {"source": {"kind": "folder", "path": "p", "image_size": 224}}, "arms": arms(counts)}
        )

    small = Counts(train=100, unlabelled=3_000, val=500, test=1_000, files=4_600)
    large = Counts(train=100, unlabelled=38_948, val=1_000, test=9_952, files=50_000)
    assert all("steps_per_epoch" not in stage for arm in arms(small).values() for stage in arm["stages"])
    for stage in (stage for arm in spec(large).arms.values() for stage in arm.stages or []):
        semi = stage.semi_supervised
        read = epoch_steps(stage, large) * stage.batch_size * (semi.ratio if semi else 1)
        assert read < EPOCH_IMAGES + stage.batch_size * (semi.ratio if semi else 1)
        if semi is None:
            assert epoch_images(stage, large) <= read
    rotation = spec(large).arms["rotation"].stages[0]
    assert rotation.steps_per_epoch == -(-EPOCH_IMAGES // 128)
    # ten times the files: the cost grows with the held-out images it evaluates, not with the pool's passes
    grown = estimate_seconds(spec(large), large, SPEEDS, 0.0004) / estimate_seconds(spec(small), small, SPEEDS, 0.0004)
    assert grown < 4


# ----------------------------------------------------------------------------- the plan shown


def test_show_config_on_photographs_is_a_comparison_file_at_the_imagenet_resolution(photos, tmp_path, fixed_speeds):
    output = tmp_path / "out"
    shown = CliRunner().invoke(
        app,
        [
            "demo",
            "--show-config",
            "--data",
            str(photos),
            "--quick",
            "--seeds",
            "1",
            "--budget",
            "2m",
            "--output",
            str(output),
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert not output.exists()  # showing writes nothing
    path = tmp_path / "photos.yaml"
    path.write_text(shown.stdout)
    spec, _ = load_compare_file(path)  # the parser of `headstart compare FILE`
    assert list(spec.arms) == ARMS and spec.seeds == [0] and spec.baseline_arm == "scratch"
    assert spec.arms["imagenet"].model.image_size == 224 and spec.arms["imagenet"].model.weights == "imagenet"
    assert spec.arms["scratch"].model.image_size == 64 and spec.arms["scratch"].model.weights is None
    source = spec.data.source
    assert (source.kind, source.path, source.image_size, source.channels) == ("folder", str(photos), 224, 3)
    assert spec.data.splits.test_fraction == 0.2 and spec.data.splits.labels_per_class is None
    assert spec.data.splits.labelled_draw == "fixed"  # without a label budget every image keeps its label
    assert spec.arms["rotation+freematch"].stages[-1].semi_supervised.ratio == 7
    assert spec.arms["rotation+freematch"].stages[-1].semi_supervised.method == "freematch"
    assert [run.arm for run in plan(spec)] == ARMS
    comments = [line for line in shown.stdout.splitlines() if line.startswith("# ")]
    assert any("test 5 (20% of each class, never seen by any stage)" in line for line in comments)
    assert any("efficientnet_lite0 with ImageNet weights at 224 px" in line for line in comments)
    assert any(line.startswith("# budget 2.0 min for 1 seed(s)") for line in comments)
    assert "&id" not in shown.stdout  # stage lists written out, not as YAML aliases


def test_small_grey_images_stay_small(tmp_path, fixed_speeds):
    from skimage import data

    faces = data.lfw_subset()
    root = tmp_path / "lfw"
    for name, images in (("face", faces[:8]), ("non-face", faces[100:108])):
        (root / name).mkdir(parents=True)
        for index, face in enumerate(images):
            _grey(face).save(root / name / f"{index}.png")
    chosen = folder_comparison(root, output=tmp_path / "out", seeds=[0], quick=True, budget="1m")
    assert chosen.spec.arms["scratch"].model.image_size == 32
    assert chosen.spec.arms["imagenet"].model.image_size == 64
    assert chosen.spec.data.source.channels == 1 and chosen.spec.data.source.image_size == 64
    assert "grey, shorter side 25–25 px" in chosen.lines[1]


def test_labels_per_class_leaves_the_rest_of_the_training_images_unlabelled(photos, extra, tmp_path, fixed_speeds):
    chosen = folder_comparison(photos, extra, output=tmp_path / "out", seeds=[0], budget="1m", labels_per_class=2)
    assert chosen.spec.data.splits.labelled_draw == "per_seed"  # a label budget draws its labels per seed
    splits = TaskData.from_spec(chosen.spec.data, run_seed=0).splits
    assert len(splits.train) == 5 * 2 and set(splits.train.class_counts().values()) == {2}
    # 6 per class: 1 test, 1 validation, 2 labelled, 2 unlabelled; plus the 10 images of the unlabelled folder
    assert len(splits.unlabelled) == 5 * 2 + 10 and len(splits.test) == 5 and len(splits.val) == 5
    assert "labelled training 10 (2 per class, drawn anew at each seed), unlabelled 20" in chosen.lines[2]
    # at every budget the semi-supervised stage has FreeMatch's thresholds (demo.SEMI_SUPERVISED)
    semi = chosen.spec.arms["rotation+freematch"].stages[-1].semi_supervised
    assert (semi.method, semi.momentum, semi.distribution_alignment) == ("freematch", 0.99, False)


# --------------------------------------------------------------------------------- bad input


def _class_folder(root: Path, counts: dict[str, int]) -> Path:
    from skimage import data

    faces = data.lfw_subset()
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            _grey(faces[index]).save(root / name / f"{index}.png")
    return root


def _missing(tmp_path):
    return ["--data", str(tmp_path / "nowhere")], str(tmp_path / "nowhere"), "no such folder"


def _loose_images(tmp_path):
    root = tmp_path / "loose"
    root.mkdir()
    for index in range(6):
        Image.new("RGB", (40, 40), (index * 40, 0, 0)).save(root / f"{index}.png")
    return ["--data", str(root)], str(root), "no class sub-folders"


def _one_class(tmp_path):
    root = _class_folder(tmp_path / "one", {"face": 6})
    return ["--data", str(root)], str(root), "expected at least two"


def _too_few(tmp_path):
    root = _class_folder(tmp_path / "few", {"face": 6, "non-face": 3})
    return ["--data", str(root)], str(root / "non-face"), "3 image(s)"


def _empty_class(tmp_path):
    root = _class_folder(tmp_path / "empty", {"face": 6, "non-face": 0})
    return ["--data", str(root)], str(root / "non-face"), "0 image(s)"


def _text_named_jpeg(tmp_path):
    root = _class_folder(tmp_path / "text", {"face": 6, "non-face": 6})
    (root / "face" / "notes.jpg").write_text("not an image")
    return ["--data", str(root)], str(root / "face" / "notes.jpg"), "unreadable image"


def _truncated_jpeg(tmp_path):
    root = _class_folder(tmp_path / "truncated", {"face": 6, "non-face": 6})
    truncated_jpeg(root / "non-face" / "cut.jpg", side=300)
    return ["--data", str(root)], str(root / "non-face" / "cut.jpg"), "unreadable image"


def _bad_budget(tmp_path):
    root = _class_folder(tmp_path / "budget", {"face": 6, "non-face": 6})
    return ["--data", str(root), "--budget", "15 minutes"], "'15 minutes'", "expected a duration such as 90s"


def _missing_unlabelled(tmp_path):
    root = _class_folder(tmp_path / "unl", {"face": 6, "non-face": 6})
    return ["--data", str(root), "--unlabelled", str(tmp_path / "gone")], str(tmp_path / "gone"), "no such folder"


def _unlabelled_inside_the_classes(tmp_path):
    root = _class_folder(tmp_path / "inside", {"face": 6, "non-face": 6})
    return ["--data", str(root), "--unlabelled", str(root / "face")], str(root / "face"), "also labelled images"


def _too_many_labels(tmp_path):
    root = _class_folder(tmp_path / "labels", {"face": 6, "non-face": 6})
    return ["--data", str(root), "--labels-per-class", "5"], "class 'face' has 6 image(s)", "--labels-per-class 5"


def _options_without_data(tmp_path):
    return ["--budget", "15m"], "--budget", "needs --data PATH"


@pytest.mark.parametrize(
    "case",
    [
        _missing,
        _loose_images,
        _one_class,
        _too_few,
        _empty_class,
        _text_named_jpeg,
        _truncated_jpeg,
        _bad_budget,
        _missing_unlabelled,
        _unlabelled_inside_the_classes,
        _too_many_labels,
        _options_without_data,
    ],
)
def test_bad_input_is_one_line_naming_it_and_nothing_is_written(case, tmp_path, fixed_speeds):
    arguments, named, expected = case(tmp_path)
    output = tmp_path / "out"
    result = CliRunner().invoke(app, ["demo", *arguments, "--quick", "--seeds", "1", "--output", str(output)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert "Traceback" not in result.output and result.stderr.startswith("error: ")
    message = " ".join(result.stderr.split())
    assert named in message and expected in message, message
    assert not output.exists()


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_folder_demo_runs_the_five_arms_on_photographs_within_its_budget(photos, extra, tmp_path):
    output = tmp_path / "demo"
    command = [
        "demo",
        "--data", str(photos),
        "--unlabelled", str(extra),
        "--quick", "--seeds", "1", "--budget", "45s",
        "--output", str(output), "--no-progress",
    ]  # fmt: skip
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert (output / "report.html").stat().st_size > 10_000
    table = json.loads((output / "comparison.json").read_text())
    assert [row["name"] for row in table["budgets"][0]["arms"]] == ARMS
    assert "test accuracy" in result.stdout and "95% CI" in result.stdout and "report:" in result.stdout
    said = result.stderr
    assert "timed now" in said and "budget 45 s for 1 seed(s)" in said and "epochs: scratch: task " in said
    assert (
        "efficientnet_lite0 with ImageNet weights at 224 px" in said and "resnet10t from random weights at 64" in said
    )
    assert "took " in said and "against an estimated" in said
    kept = json.loads((output / "budget.json").read_text())
    assert kept["budget_seconds"] == 45 and kept["estimated_seconds"] > 0

    # every stage saw the images of its split, and none of them a test image
    splits = run_data(output / "imagenet" / "seed-0")[0].splits

    def files(images) -> set[str]:
        return {str(images.store.paths[position]) for position in images.positions}

    test = files(splits.test)
    assert len(test) == 5 and not test & (files(splits.pool()) | files(splits.val))
    assert not any(path.startswith(str(extra)) for path in test)
    assert len(splits.pool()) == len(splits.train) + 10  # the unlabelled folder joins the pool
    sides = {"scratch": 64, "rotation": 64, "scratch+freematch": 64, "rotation+freematch": 64, "imagenet": 224}
    for arm in ARMS:
        run = RunRecord.read(output / arm / "seed-0")
        for name in run.finished_stages:
            record = StageRecord.read(output / arm / "seed-0" / name)
            assert record.model.image_size == sides[arm]
            expected = len(splits.pool()) if record.data.split == "all" else len(splits.train)
            assert record.data.split in ("train", "all") and record.data.train_images == expected
            assert record.data.val_images in (0, len(splits.val))
            if record.stage.semi_supervised is not None:
                assert record.data.unlabelled_images == len(splits.pool())

    # the same command again: the plan kept in budget.json, every run reused
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert again.stderr.count("finished before, reused") == 5  # every arm of the one seed
    assert "the epochs of the earlier run with the same data and options" in again.stderr
    assert "timed by an earlier run" in again.stderr


def test_a_comparison_file_reads_its_unlabelled_folder_relative_to_itself(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "data: {source: {kind: folder, path: photos, unlabelled: more/extra, image_size: 64}}\n"
        "arms: {scratch: {model: {name: resnet10t}, stages: [{name: task}]}}\n"
    )
    spec, _ = load_compare_file(path)
    assert spec.data.source.path == str(tmp_path / "photos")
    assert spec.data.source.unlabelled == str(tmp_path / "more" / "extra")


def test_the_speed_probe_times_the_network_as_the_stages_train_it(monkeypatch):
    """On the CPU: channels-last with one-pixel convolutions as matrix products (resnet10t's last
    stage at 32 px), as a stage's fit would run it; the probed network leaves plain."""
    import torch

    from headstart.engine import accelerate

    seen: list[tuple[bool, bool]] = []
    plain_forward = torch.nn.Conv2d.forward

    def record(self, input):  # noqa: A002
        if input.shape[-2:] == (1, 1):
            seen.append(
                (
                    isinstance(self, accelerate.OnePixelConv2d),
                    self.weight.is_contiguous(memory_format=torch.channels_last),
                )
            )
        return plain_forward(self, input)

    monkeypatch.setattr(torch.nn.Conv2d, "forward", record)
    monkeypatch.setattr(accelerate.OnePixelConv2d, "forward", record)
    speed = demo_budget.measure_speed("resnet10t", 32, batch=4, repeats=1)
    assert speed.train > 0 and speed.infer > 0
    assert seen and all(swapped and channels_last for swapped, channels_last in seen), seen


def test_the_speed_probe_draws_a_line_through_two_batch_sizes(monkeypatch):
    """A step's fixed cost and each image's, from steps timed at 25 and 100 images (resnet10t at
    32 px on 2 cores: 66 and 116 ms): a FixMatch step of 200 images is then costed near its 193 ms,
    where the cost per image at 25 alone would say 528. Timings kept by an earlier run without the
    step costs are taken again."""
    per_image, per_step = demo_budget._line((25, 100), [0.066, 0.116])
    assert (per_image, per_step) == pytest.approx((0.05 / 75, 0.066 - 25 * 0.05 / 75))
    line = Speed(train=per_image, infer=0.0, build=0.0, train_step=per_step)
    assert line.training(200, 1) == pytest.approx(0.182, abs=0.001)
    assert line.training(100, 4) == pytest.approx(4 * per_step + 100 * per_image)
    assert demo_budget._line((25, 100), [0.070, 0.060]) == (0.070 / 25, 0.0)  # noise: never a negative cost
    assert demo_budget._line((8,), [0.6]) == (0.075, 0.0)
    for wrong in ({"batch": 0}, {"repeats": 0}):
        with pytest.raises(HeadstartError, match="measure_speed: batch="):
            demo_budget.measure_speed("resnet10t", 32, **wrong)
    timed = []

    def probe(model, side, **_):
        timed.append((model, side))
        return Speed(train=0.001, infer=0.0002, build=0.1, train_step=0.03, infer_step=0.004)

    monkeypatch.setattr(demo_budget, "measure_speed", probe)
    machine = demo_budget.hardware()
    old = {"machine": machine, "speeds": {"resnet10t@32": {"train": 0.002, "infer": 0.0003, "build": 0.1}}}
    speeds, _, reused = demo_budget.speeds_for({"resnet10t": 32}, old, 0.001, "32px/1")
    assert timed == [("resnet10t", 32)] and not reused and speeds["resnet10t@32"].train_step == 0.03
    new = {"machine": machine, "speeds": {"resnet10t@32": asdict(speeds["resnet10t@32"])}, "decode": {"32px/1": 0.001}}
    assert demo_budget.speeds_for({"resnet10t": 32}, new, 0.001, "32px/1")[2] and len(timed) == 1
