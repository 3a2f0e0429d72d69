"""The stage as one unit from Python: fit_stage, its typed record, streaming from disk, sanity checks."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from headstart.config import StageSpec
from headstart.data import SourceSpec, TaskData, from_arrays, load_digits, make_splits
from headstart.data.dataset import FileStore
from headstart.engine.batches import plan_images
from headstart.engine.losses import ScheduleFromArray, learning_rate_factors
from headstart.engine.passes import network_input
from headstart.errors import HeadstartError
from headstart.heads import HeadSpec
from headstart.stage import Interrupted, StageRecord, TrainerOptions, fit_stage
from helpers import DIGITS, ctrl_c_at_epoch, digit_data, digit_network, grey_image


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """scikit-learn's real 8×8 digits written as 24-pixel JPEG and PNG files, one folder per class."""
    root = tmp_path_factory.mktemp("digit-files")
    digits = load_digits()
    pixels, labels = digits.as_tensors()
    for index in range(600):
        image = grey_image(pixels[index, 0]).resize((24, 24))
        folder = root / DIGITS[int(labels[index])]
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{index:04d}.{'png' if index % 2 else 'jpg'}", quality=95)
    return root


def _folder_data(root: Path, **source) -> TaskData:
    return TaskData.load(
        SourceSpec(kind="folder", path=str(root), image_size=16, channels=1, **source),
        {"labels_per_class": 30, "seed": 0},
    )


def test_freeze_fit_unfreeze_fit_in_a_few_lines_with_typed_records(tmp_path):
    data = digit_data(40)
    network = digit_network()
    head = fit_stage(
        network,
        {"name": "head", "freeze": ["backbone"], "epochs": 4, "optimizer": {"lr": 0.01}},
        data,
        folder=tmp_path / "0-head",
        image_size=16,
    )
    tune = fit_stage(
        network,
        {"name": "fine-tune", "epochs": 6, "batch_size": 25, "optimizer": {"lr": 0.003}},
        data,
        folder=tmp_path / "1-fine-tune",
        index=1,
        image_size=16,
    )
    assert head.cached_features and not tune.cached_features
    assert head.bn_policy == "frozen" and tune.bn_policy == "train"
    assert head.handover.head == "new task head" and tune.handover.head == "kept"
    assert all(name.startswith("backbone.") for name in head.frozen) and head.frozen and not tune.frozen
    assert head.data.residency == "memory" and tune.data.train_images == 400
    assert tune.steps == 6 * 16 and len(tune.learning_rates) == tune.steps
    # the record on disk is the record returned, read through the same schema
    for record in (head, tune):
        assert StageRecord.read(record.folder) == record
    # well above chance (0.1) on real digits after ten short epochs
    assert tune.last_metrics["val_accuracy"] > 0.5


def test_a_stage_without_a_folder_keeps_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = fit_stage(
        digit_network(), StageSpec(name="task", epochs=1), TaskData.load({"kind": "digits"}), image_size=16
    )
    assert record.folder is None and record.steps > 0
    assert list(tmp_path.iterdir()) == []


def test_a_folder_of_files_is_streamed_and_trains_exactly_as_in_memory(digit_folder, tmp_path):
    stage = StageSpec(name="task", epochs=3, batch_size=20, augment="crop", optimizer={"lr": 0.003})
    streamed_network, held_network = digit_network(1), digit_network(1)
    streamed = fit_stage(
        streamed_network,
        stage,
        _folder_data(digit_folder),
        folder=tmp_path / "stream",
        image_size=16,
        options=TrainerOptions(num_workers=2),
    )
    held = fit_stage(
        held_network,
        stage,
        _folder_data(digit_folder),
        folder=tmp_path / "memory",
        image_size=16,
        options=TrainerOptions(residency="memory"),
    )
    assert (streamed.data.residency, streamed.data.workers) == ("stream", 2)
    assert held.data.residency == "memory"
    assert "streamed from disk by 2 worker(s)" in streamed.data.description
    # the same pixels in the same order: the same training, whichever way they arrived
    for key, value in held_network.state_dict().items():
        torch.testing.assert_close(streamed_network.state_dict()[key], value, msg=key)
    assert streamed.step_losses == pytest.approx(held.step_losses, abs=1e-6)


def test_streaming_never_decodes_more_than_a_batch_at_once(digit_folder, tmp_path, monkeypatch):
    largest = []
    original = FileStore.pixels

    def watched(store, positions):
        largest.append(len(positions))
        return original(store, positions)

    monkeypatch.setattr(FileStore, "pixels", watched)
    data = _folder_data(digit_folder)
    record = fit_stage(
        digit_network(),
        StageSpec(name="task", epochs=1, batch_size=16),
        data,
        folder=tmp_path / "s",
        image_size=16,
        options=TrainerOptions(num_workers=0),
    )
    assert record.data.residency == "stream"
    assert largest and max(largest) <= 256  # training batches of 16, validation batches of 256
    assert sum(largest) < 3 * len(data.split("train")) + len(data.split("val")) * 2


def test_a_cached_head_stage_streams_its_features_once(digit_folder, tmp_path):
    network = digit_network()
    record = fit_stage(
        network,
        StageSpec(name="head", freeze=["backbone"], epochs=2),
        _folder_data(digit_folder),
        folder=tmp_path / "head",
        image_size=16,
        options=TrainerOptions(num_workers=1),
    )
    assert record.cached_features and record.data.residency == "stream"


def test_a_file_that_breaks_while_streaming_is_named(digit_folder, tmp_path):
    import shutil

    copy = tmp_path / "digits"
    shutil.copytree(digit_folder, copy)
    data = _folder_data(copy, verify="header")
    victim = Path(data.split("train").describe(3))
    victim.write_bytes(victim.read_bytes()[:40])  # truncated after the header was checked
    with pytest.raises(HeadstartError) as caught:
        fit_stage(
            digit_network(),
            StageSpec(name="task", epochs=1),
            data,
            folder=tmp_path / "bad",
            image_size=16,
            options=TrainerOptions(num_workers=1),
        )
    assert str(victim) in str(caught.value) and "Traceback" not in str(caught.value)
    assert not (tmp_path / "bad" / "stage.json").exists()


def test_one_code_path_decides_residency(digit_folder):
    arrays = load_digits()
    assert plan_images(arrays).residency == "memory"
    files = _folder_data(digit_folder).split("train")
    assert plan_images(files).residency == "stream"
    held = plan_images(files, prefer="memory")
    assert held.residency == "memory" and held.images.store.images.dtype == torch.uint8
    assert torch.equal(held.images.store.images, files.store.pixels(files.positions))
    cached = _folder_data(digit_folder, cache=True).split("train")
    assert plan_images(cached).residency == "memory"
    with pytest.raises(HeadstartError, match="expected auto, memory or stream"):
        plan_images(files, prefer="disk")


def test_loss_at_init_is_log_of_the_class_count_on_a_real_head():
    images, labels = load_digits().as_tensors()
    losses = []
    for seed in range(3):
        network = digit_network(seed)
        network.replace_head(HeadSpec(outputs=10), labels=DIGITS)
        with torch.no_grad():
            logits = network(network_input(network, images[:256], 16, "cpu"))
            losses.append(F.cross_entropy(logits, labels[:256]).item())
    assert abs(np.mean(losses) - math.log(10)) < 0.15, losses


def test_one_batch_can_be_overfit(tmp_path):
    images, labels = load_digits().as_tensors()
    one_batch = from_arrays(images[:20].numpy(), labels[:20].numpy(), class_names=DIGITS)
    splits = make_splits(one_batch, test_fraction=0.0001, val_fraction=0.0, seed=0)
    splits.train = one_batch  # every one of the 20 images, in one batch
    record = fit_stage(
        digit_network(),
        StageSpec(name="overfit", epochs=60, batch_size=20, optimizer={"lr": 0.01}),
        splits,
        folder=tmp_path / "o",
        image_size=16,
    )
    assert record.history[-1]["train_accuracy"] == 1.0
    assert record.step_losses[-1] < 0.05 < 2.0 < record.step_losses[0]


def test_ctrl_c_from_python_raises_interrupted_and_resume_finishes(tmp_path):
    """Lightning answers Ctrl+C with sys.exit(1) from inside fit(); a stage raises Interrupted instead."""
    data = digit_data(20)
    spec = StageSpec(name="task", epochs=3, batch_size=25)
    with pytest.raises(Interrupted, match="interrupted during stage 'task'"):
        fit_stage(digit_network(), spec, data, folder=tmp_path / "t", image_size=16, callbacks=[ctrl_c_at_epoch(1)])
    assert (tmp_path / "t" / "last.ckpt").is_file() and not (tmp_path / "t" / "stage.json").exists()
    record = fit_stage(digit_network(), spec, data, folder=tmp_path / "t", image_size=16, resume=True)
    assert [row["epoch"] for row in record.history] == [0, 1, 2]


@pytest.mark.parametrize("hook", ["on_validation_end", "on_fit_end", "setup"])
def test_ctrl_c_after_the_last_step_or_before_the_first_is_not_swallowed(tmp_path, hook):
    """A signal with no training step left to stop after (in the final validation, as Lightning
    winds down) or none begun (in Lightning's set-up) still stops the stage with Interrupted,
    instead of being lost (the process would go on as if nobody had pressed Ctrl+C) or meeting
    Lightning's own handler (sys.exit(1), every later Ctrl+C ignored)."""
    from lightning.pytorch.callbacks import Callback

    class CtrlC(Callback):
        def __init__(self):
            self.sent = False

        def send(self, trainer):
            last = trainer.current_epoch == spec.epochs - 1 or hook in ("setup", "on_fit_end")
            if last and not self.sent and not trainer.sanity_checking:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)

    def at(self, trainer, *_, **__):
        self.send(trainer)

    setattr(CtrlC, hook, at)
    data, spec = digit_data(20), StageSpec(name="task", epochs=2, batch_size=25)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match="interrupted during stage 'task'"):
        fit_stage(digit_network(), spec, data, folder=tmp_path / "t", image_size=16, callbacks=[CtrlC()])
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back
    assert not (tmp_path / "t" / "stage.json").exists()
    record = fit_stage(digit_network(), spec, data, folder=tmp_path / "t", image_size=16, resume=True)
    assert [row["epoch"] for row in record.history] == [0, 1]


def test_a_checkpoint_write_that_fails_behind_the_training_stops_the_stage_and_keeps_the_last_good_one(
    tmp_path, monkeypatch
):
    """``last.ckpt`` is written by a thread while the next epoch trains: a disk-full error there
    still ends the stage with that error (at the next save or at the end), leaves a whole
    checkpoint of a finished epoch, never the failed one, and writes no stage record."""
    import errno

    from headstart.engine import trainer as trainer_module

    written = []
    real = trainer_module.atomic_write

    def disk_full_at_the_second_save(path, write):
        written.append(path)
        if len(written) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, write)

    monkeypatch.setattr(trainer_module, "atomic_write", disk_full_at_the_second_save)
    data, spec = digit_data(20), StageSpec(name="task", epochs=3, batch_size=25)
    with pytest.raises(OSError, match="No space left"):
        fit_stage(digit_network(), spec, data, folder=tmp_path / "t", image_size=16)
    assert not (tmp_path / "t" / "stage.json").exists()
    assert [p.name for p in (tmp_path / "t").glob("*.tmp")] == []
    saved = torch.load(tmp_path / "t" / "last.ckpt", weights_only=True)
    assert saved["epoch"] in (0, 2)  # the epoch before the failed save, or the one after it
    monkeypatch.setattr(trainer_module, "atomic_write", real)
    record = fit_stage(digit_network(), spec, data, folder=tmp_path / "t", image_size=16, resume=True)
    assert [row["epoch"] for row in record.history] == [0, 1, 2]


def test_the_schedule_is_an_array_of_the_planned_length():
    from headstart.config import OptimizerSpec

    factors = learning_rate_factors(OptimizerSpec(schedule="cosine", warmup_epochs=1), epochs=3, steps_per_epoch=4)
    assert len(factors) == 3 * 4 + 1
    assert factors[0] == pytest.approx(0.25) and factors[3] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = ScheduleFromArray(optimizer, factors)
    for _ in range(12):
        optimizer.step()
        schedule.step()
    with pytest.raises(RuntimeError, match="more steps than the stage planned"):
        schedule.step()


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_runs_its_fused_kernel_and_steps_as_the_per_tensor_loop_does(name):
    from headstart.config import OptimizerSpec
    from headstart.engine.losses import build_optimizer, parameter_groups

    networks = [digit_network(), digit_network()]
    for network in networks:
        network.replace_head(HeadSpec(outputs=10))
    networks[1].load_state_dict(networks[0].state_dict())
    spec = OptimizerSpec(name=name, lr=1e-2, weight_decay=1e-2, group_lr={"head": 1e-3})
    fused = build_optimizer(networks[0], spec, "task")
    assert all(group["fused"] for group in fused.param_groups)
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    loop = kind(parameter_groups(networks[1], spec), lr=1e-2, weight_decay=1e-2, foreach=False)
    images, labels = torch.rand(8, 1, 16, 16), torch.arange(8)
    for optimizer, network in zip((fused, loop), networks, strict=True):
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(network(images), labels).backward()
            optimizer.step()
    for (key, value), expected in zip(networks[0].state_dict().items(), networks[1].state_dict().values(), strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5, msg=key)
    assert set(fused.state_dict()["state"][0]) == set(loop.state_dict()["state"][0])  # checkpoints resume either way


def test_a_damaged_stage_record_is_refused_naming_the_file(tmp_path):
    record = fit_stage(
        digit_network(),
        StageSpec(name="task", epochs=1),
        TaskData.load({"kind": "digits"}),
        folder=tmp_path / "s",
        image_size=16,
    )
    path = tmp_path / "s" / "stage.json"
    payload = json.loads(path.read_text())
    del payload["head"]
    path.write_text(json.dumps(payload))
    with pytest.raises(HeadstartError, match=r"stage\.json: not a stage record.*head"):
        StageRecord.read(tmp_path / "s")
    assert record.stage_name == "task"


@pytest.mark.parametrize(
    "arguments, named",
    [
        ({"network": torch.nn.Linear(2, 2)}, "network is a Linear"),
        ({"stage": {"name": "x", "epohcs": 3}}, "stage: epohcs: unknown key; did you mean 'epochs'?"),
        ({"stage": "head"}, "stage is a str"),
        ({"data": load_digits()}, "data is a ImageSet; expected a TaskData"),
        ({"image_size": 0}, "image_size=0"),
        ({"options": {"num_workers": -1}}, "options: num_workers"),
        ({"options": 4}, "options is a int"),
    ],
)
def test_fit_stage_names_the_argument_a_user_got_wrong(tmp_path, arguments, named):
    call = {
        "network": digit_network(),
        "stage": {"name": "task", "epochs": 1},
        "data": TaskData.load({"kind": "digits"}),
        "image_size": 16,
        **arguments,
    }
    with pytest.raises(HeadstartError) as caught:
        fit_stage(call.pop("network"), call.pop("stage"), call.pop("data"), folder=tmp_path / "s", **call)
    assert named in str(caught.value)
    assert not (tmp_path / "s").exists()


def test_header_verification_decodes_no_image_before_training(digit_folder, monkeypatch):
    decoded = []
    original = FileStore.decode
    monkeypatch.setattr(
        FileStore, "decode", lambda store, position: decoded.append(position) or original(store, position)
    )
    data = _folder_data(digit_folder, verify="header")
    assert len(data.split("train")) == 300 and decoded == []
