"""The accelerator by default, its options checked, and the accelerator path run on the CPU:
device decoding (libjpeg-turbo standing in for nvJPEG), compile, channels-last, one-pixel
convolutions as matrix products, the device record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from headstart.checkpoint import StageRecord
from headstart.compare import parse_compare, plan
from headstart.config import RunSpec, StageSpec, parse_run
from headstart.data import SourceSpec, TaskData
from headstart.data.dataset import FileStore
from headstart.data.encoded import EncodedImages, decode_encoded, read_encoded
from headstart.engine.accelerate import DeviceFeed, FedLoader, OnePixelConv2d, accelerated, is_compiled
from headstart.engine.batches import make_loader
from headstart.engine.trainer import TrainerOptions, check_launch, launcher
from headstart.errors import HeadstartError
from headstart.ranks import is_rank_zero
from headstart.stage import fit_stage
from headstart.zoo import load
from helpers import TINY_RESNET, digit_data, digit_network, digit_run, two_colour_jpeg

STAGE = {"name": "task", "epochs": 1, "batch_size": 32, "optimizer": {"lr": 0.01}}

# --------------------------------------------------------------------------------- the default


def test_auto_is_the_default_of_run_files_options_and_comparisons(tmp_path):
    run = parse_run(digit_run(tmp_path, [STAGE]))
    assert run.accelerator == "auto" and TrainerOptions().accelerator == "auto"
    assert TrainerOptions.from_run(run).accelerator == "auto"
    comparison = parse_compare(
        {
            "data": {"source": {"kind": "digits"}},
            "arms": {"scratch": {"model": {"name": "test_resnet", "weights": None}, "stages": [STAGE]}},
            "seeds": 1,
        }
    )
    assert {planned.spec.accelerator for planned in plan(comparison)} == {"auto"}
    from headstart.demo import demo_arms

    assert {spec.accelerator for spec in demo_arms(str(tmp_path)).values()} == {"auto"}


def test_how_a_run_is_driven_leaves_its_hash_alone_and_the_global_batch_does_not(tmp_path):
    base = digit_run(tmp_path, [STAGE])
    plain = parse_run(base).config_hash()
    for how in (
        {"accelerator": "cpu"},
        {"accelerator": "gpu"},
        {"compile": True},
        {"channels_last": True},
        {"decode": "device"},
        {"prefetch": True},
        {"num_nodes": 1},
    ):
        assert parse_run({**base, **how}).config_hash() == plain, how
    assert parse_run({**base, "stages": [{**STAGE, "compile": True}]}).config_hash() == plain
    assert parse_run({**base, "num_nodes": 2}).config_hash() != plain  # twice the global batch


def test_resume_accepts_a_run_hashed_by_an_earlier_version(tmp_path):
    from headstart.checkpoint import RunRecord
    from headstart.structure import same_configuration

    spec = parse_run(digit_run(tmp_path, [STAGE], accelerator="gpu"))
    old = RunRecord(name="run", config_hash="0123456789abcdef", config=spec.model_dump(mode="json"))
    assert same_configuration(old, parse_run(digit_run(tmp_path, [STAGE])))
    other = parse_run(digit_run(tmp_path, [{**STAGE, "epochs": 2}]))
    assert not same_configuration(old, other)


# --------------------------------------------------------------------------- options, checked


def test_gpu_without_a_gpu_and_device_decoding_without_cuda_name_their_keys(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(HeadstartError, match="accelerator: gpu, but this machine has no GPU.*auto"):
        TrainerOptions(accelerator="gpu").checked()
    with caplog.at_level(logging.WARNING, logger="headstart"):
        checked = TrainerOptions(decode="device", prefetch=True).checked()
    assert checked.decode == "cpu" and "decode: device" in caplog.text and "CUDA" in caplog.text
    assert TrainerOptions(accelerator="auto").device == "cpu"


@pytest.mark.parametrize(
    "environment, devices, nodes, message",
    [
        ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}, 1, 1, "torchrun started 4"),
        ({"SLURM_NTASKS": "8", "SLURM_JOB_NAME": "train", "SLURM_NTASKS_PER_NODE": "4"}, 4, 1, "srun started 8"),
        ({}, 1, 2, "num_nodes: 2, but no launcher"),
    ],
)
def test_a_launch_that_disagrees_with_the_run_file_is_refused_naming_the_keys(
    monkeypatch, environment, devices, nodes, message
):
    for name in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "SLURM_NTASKS", "MASTER_ADDR", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(HeadstartError, match=message) as error:
        check_launch(devices, nodes)
    assert "num_nodes" in str(error.value)


def test_the_launchers_ranks_decide_who_writes(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_NTASKS", "SLURM_PROCID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    assert is_rank_zero() and launcher() is None
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "1")  # torchrun's second machine: local rank 0, global rank 1
    assert not is_rank_zero()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("NODE_RANK", "1")  # Lightning's own launcher on the second machine
    assert not is_rank_zero()
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("NODE_RANK")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert not is_rank_zero() and launcher() == ("srun", 2)


def test_unknown_accelerator_options_name_the_key(tmp_path):
    with pytest.raises(HeadstartError, match="decode: .*'cpu' or 'device'"):
        parse_run(digit_run(tmp_path, [STAGE], decode="gpu"))
    with pytest.raises(HeadstartError, match="num_nodes: .*greater than 0"):
        parse_run(digit_run(tmp_path, [STAGE], num_nodes=0))


# ----------------------------------------------------------------------- the device, recorded


def test_the_device_used_is_printed_and_recorded_and_old_records_still_load(tmp_path, capsys):
    record = fit_stage(digit_network(), {**STAGE, "name": "head"}, digit_data(10), folder=tmp_path / "s", image_size=16)
    assert record.device is not None and record.device.type == "cpu"
    assert (record.device.processes, record.device.precision, record.device.compiled) == (1, "32-true", False)
    assert "stage 'head' trains on cpu (" in capsys.readouterr().err
    written = json.loads((tmp_path / "s" / "stage.json").read_text())
    assert written["device"]["type"] == "cpu"
    del written["device"]  # a stage.json from before the device was recorded
    (tmp_path / "s" / "stage.json").write_text(json.dumps(written))
    assert StageRecord.read(tmp_path / "s").device is None


# ----------------------------------------------------------------- compile and channels-last


def test_compiled_and_channels_last_stages_train_as_the_eager_one(tmp_path, monkeypatch):
    """torch.compile and channels-last give the eager stage's losses; the network comes back
    uncompiled and contiguous. The test compiles with the ``aot_eager`` backend: the graph capture
    and ahead-of-time autograd that inductor starts from, without inductor's C++ generation, which
    works on this CPU (gcc) but takes over a minute for this network on two cores."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    from torch._dynamo.utils import counters

    data = digit_data(10)
    losses = {}
    for name, options in (
        ("eager", {"channels_last": False}),
        ("compiled", {"compile": True, "channels_last": False}),
        ("channels_last", {}),  # auto: on, on the CPU
    ):
        network = digit_network()
        counters.clear()
        record = fit_stage(network, STAGE, data, folder=tmp_path / name, image_size=16, options=options)
        losses[name] = record.step_losses
        assert record.device is not None and record.device.compiled == (name == "compiled")
        assert record.device.channels_last == (name == "channels_last")
        assert record.device.one_pixel_matmul  # the CPU
        assert not any(isinstance(module, OnePixelConv2d) for module in network.modules())
        assert (counters["stats"]["unique_graphs"] > 0) == (name == "compiled")  # compiled code really ran
        assert not is_compiled(network.backbone)
        assert all(p.is_contiguous() for p in network.parameters())
    assert len(losses["eager"]) > 1
    for name in ("compiled", "channels_last"):
        np.testing.assert_allclose(losses[name], losses["eager"], rtol=1e-4, atol=1e-5, err_msg=name)


def test_channels_last_auto_is_on_where_nhwc_convolutions_are_faster(monkeypatch):
    options = TrainerOptions()
    assert options.channels_last == "auto" and options.uses_channels_last("cpu")
    assert not options.uses_channels_last("mps")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (6, 1))  # Pascal: no tensor cores
    assert not options.uses_channels_last("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *device: (9, 0))
    assert options.uses_channels_last("cuda")
    assert not TrainerOptions(channels_last=False).uses_channels_last("cpu")
    assert TrainerOptions(channels_last=True).uses_channels_last("mps")


def test_a_stage_says_whether_it_compiles_over_the_run():
    assert StageSpec(name="x", compile=False).compile is False
    network = digit_network()
    weight = next(p for p in network.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
    with accelerated(network, channels_last=True):
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert weight.is_contiguous()


# ----------------------------------------------------------------- one-pixel convolutions


@pytest.mark.parametrize(
    ("image", "kernel", "stride", "padding", "bias"),
    [
        (1, 3, 1, 1, False),  # resnet's 3x3 convolution on a 1x1 map
        (2, 3, 2, 1, False),  # the stride-2 convolution that makes the 1x1 map
        (1, 1, 1, 0, True),
        (3, 3, 1, 0, True),  # no padding: the whole kernel on the image
        (2, 3, 1, 1, True),  # a 2x2 output: the plain convolution
        (5, 3, 2, 1, False),
    ],
)
def test_one_pixel_convolutions_give_the_convolutions_outputs_and_gradients(image, kernel, stride, padding, bias):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(16, 24, kernel, stride=stride, padding=padding, bias=bias)
    fast = OnePixelConv2d(16, 24, kernel, stride=stride, padding=padding, bias=bias)
    fast.load_state_dict(plain.state_dict())
    inputs = torch.randn(6, 16, image, image)
    for layout in (torch.contiguous_format, torch.channels_last):
        expected_input = inputs.clone().to(memory_format=layout).requires_grad_()
        fast_input = inputs.clone().to(memory_format=layout).requires_grad_()
        expected, got = plain(expected_input), fast(fast_input)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        weights = torch.randn_like(expected)
        (expected * weights).sum().backward()
        (got * weights).sum().backward()
        torch.testing.assert_close(fast_input.grad, expected_input.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.weight.grad, plain.weight.grad, rtol=1e-5, atol=1e-5)
        plain.zero_grad()
        fast.zero_grad()
    one_pixel = expected.shape[-2:] == (1, 1)
    assert (fast._taps_on_image(inputs) is not None) == one_pixel


def test_convolutions_the_matrix_product_does_not_cover_run_as_convolutions():
    inputs = torch.randn(2, 8, 1, 1)
    for layer in (
        OnePixelConv2d(8, 8, 3, padding=1, groups=2),
        OnePixelConv2d(8, 8, 3, padding=2, dilation=2),
        OnePixelConv2d(8, 8, 3, padding="same"),
        OnePixelConv2d(8, 8, 3, padding=1, padding_mode="reflect"),
    ):
        assert layer._taps_on_image(inputs) is None
    with pytest.raises(RuntimeError):  # the convolution's own error: the image is smaller than the kernel
        OnePixelConv2d(8, 8, 3)(inputs)


def test_a_resnet_on_small_images_steps_as_with_plain_convolutions():
    """resnet's last stage sees 1x1 maps at 32 px; with the swap it trains to the same losses, the
    swapped layers really take the matrix product, and plain ``Conv2d`` modules come back."""
    import timm

    losses = {}
    for swap in (False, True):
        torch.manual_seed(0)
        network = timm.create_model("resnet10t", num_classes=10, pretrained=False)
        optimizer = torch.optim.SGD(network.parameters(), lr=0.05)
        seen: list[bool] = []

        def took_the_product(module, args, seen=seen) -> None:
            seen.append(isinstance(module, OnePixelConv2d) and module._taps_on_image(args[0]) is not None)

        hook = network.layer4[0].conv2.register_forward_pre_hook(took_the_product)
        losses[swap] = []
        with accelerated(network, one_pixel_matmul=swap):
            for step in range(3):
                generator = torch.Generator().manual_seed(step)
                images, labels = torch.rand(8, 3, 32, 32, generator=generator), torch.arange(8) % 10
                loss = torch.nn.functional.cross_entropy(network(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses[swap].append(loss.item())
        hook.remove()
        assert seen == [swap] * 3
        assert all(type(module) is not OnePixelConv2d for module in network.modules())
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-4)


# ------------------------------------------------------------------------- device decoding


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Photos as JPEG (colour and grey), one PNG, one EXIF-rotated JPEG: two classes."""
    from skimage import data

    root = tmp_path_factory.mktemp("mixed")
    photos = {"cat": data.chelsea(), "coffee": data.coffee()}
    for name, pixels in photos.items():
        (root / name).mkdir()
        for index in range(5):
            crop = Image.fromarray(pixels[index * 20 : 200 + index * 20, index * 30 : 260 + index * 30])
            crop.save(root / name / f"{index}.jpg", quality=90)
        Image.fromarray(pixels[:150, :150]).convert("L").save(root / name / "grey.jpg")
    Image.fromarray(photos["cat"][:120, :90]).save(root / "cat" / "png.png")
    two_colour_jpeg(root / "coffee" / "rotated.jpg", orientation=6)
    return root


def _store(root: Path, channels: int = 3) -> FileStore:
    data = TaskData.load(SourceSpec(kind="folder", path=str(root), image_size=48, channels=channels), {})
    return data.split("train").store  # every split shares the source's store


@pytest.mark.parametrize("channels", [3, 1])
def test_device_decoding_gives_the_cpu_readers_pixels(mixed_folder, channels):
    store = _store(mixed_folder, channels)
    positions = np.arange(len(store))
    batch = read_encoded(store, positions)
    names = [Path(path).name for path in batch.paths]
    assert "png.png" not in names and "rotated.jpg" not in names and len(names) == len(store) - 2
    decoded = decode_encoded(batch, "cpu")
    expected = store.pixels(positions)
    assert decoded.shape == expected.shape and decoded.dtype == torch.uint8
    cpu_rows = batch.pixel_rows
    assert torch.equal(decoded[cpu_rows], expected[cpu_rows])  # decoded by the CPU reader itself
    difference = (decoded.float() - expected.float()).abs()
    assert difference.mean() < 2.0, difference.mean()  # another decoder and resize: a level or two


def test_a_truncated_jpeg_is_named_when_decoded_on_the_device(tmp_path, mixed_folder):
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    source = (mixed_folder / "cat" / "0.jpg").read_bytes()
    (root / "a" / "good.jpg").write_bytes(source)
    (root / "b" / "cut.jpg").write_bytes(source[: len(source) // 3])
    store = FileStore([root / "a" / "good.jpg", root / "b" / "cut.jpg"], 32, 3)
    batch = read_encoded(store, np.arange(2))
    with pytest.raises(HeadstartError, match="cut.jpg"):
        decode_encoded(batch, "cpu")


def test_the_feed_decodes_each_batch_and_keeps_the_loaders_length_and_order(mixed_folder):
    store = _store(mixed_folder)
    data = TaskData.load(SourceSpec(kind="folder", path=str(mixed_folder), image_size=48), {})
    options = TrainerOptions(num_workers=2)
    plain_plan, fed_plan = options.plan(data.split("train")), options.plan(data.split("train"))
    fed_plan.feed = DeviceFeed("cpu", decode=True)
    plain = make_loader(plain_plan, 4, seed=1, shuffle=True)
    fed = make_loader(fed_plan, 4, seed=1, shuffle=True)
    assert isinstance(fed, FedLoader) and len(fed) == len(plain) and fed.sampler is not None
    for (pixels, labels), (decoded, fed_labels) in zip(plain, fed, strict=True):
        assert torch.equal(labels, fed_labels)
        assert (decoded.float() - pixels.float()).abs().mean() < 2.0
    assert isinstance(read_encoded(store, np.arange(2)), EncodedImages)


def test_workers_are_sent_index_arrays_so_the_training_process_shares_no_tensor(mixed_folder, monkeypatch):
    """A tensor put on a worker's queue is shared by the queue's feeder thread, whose PyTorch call
    starts a second OpenMP team in the training process (5,000 context switches a second, steps
    1.5x as long on two cores). The sampler must hand workers numpy arrays, and the batches must be
    those of the same loader without workers."""
    from multiprocessing.reduction import ForkingPickler

    shared = []
    reduce_tensor = ForkingPickler._extra_reducers[torch.Tensor]
    monkeypatch.setitem(
        ForkingPickler._extra_reducers, torch.Tensor, lambda tensor: (shared.append(tensor), reduce_tensor(tensor))[1]
    )
    data = TaskData.load(SourceSpec(kind="folder", path=str(mixed_folder), image_size=48), {})
    with_workers = TrainerOptions(num_workers=2).plan(data.split("train"))
    in_process = TrainerOptions(num_workers=0).plan(data.split("train"))
    assert (with_workers.residency, with_workers.workers, in_process.workers) == ("stream", 2, 0)
    loader = make_loader(with_workers, 4, seed=3, shuffle=True)
    assert all(isinstance(indices, np.ndarray) for indices in loader.sampler)
    batches = list(loader)
    assert shared == []  # the main process pickled no tensor for its workers
    reference = list(make_loader(in_process, 4, seed=3, shuffle=True))
    assert len(batches) == len(reference) > 1
    for (pixels, labels), (expected, expected_labels) in zip(batches, reference, strict=True):
        assert torch.equal(pixels, expected) and torch.equal(labels, expected_labels)


def test_a_folder_stage_with_device_decoding_trains_on_the_cpu_feed(tmp_path, mixed_folder, monkeypatch):
    """The whole stage with batches decoded by the feed (``DeviceFeed("cpu")`` standing in for CUDA)."""
    original = TrainerOptions.plan

    def fed(options, images):
        plan = original(options, images)
        if plan.residency == "stream":
            plan.feed = DeviceFeed("cpu", decode=True)
        return plan

    monkeypatch.setattr(TrainerOptions, "plan", fed)
    decoded = []
    monkeypatch.setattr(
        "headstart.engine.accelerate.decode_encoded",
        lambda batch, device: decoded.append(len(batch)) or decode_encoded(batch, device),
    )
    data = TaskData.load(SourceSpec(kind="folder", path=str(mixed_folder), image_size=32), {"val_fraction": 0.2})
    network = load(TINY_RESNET, weights=None, include_top=False)
    record = fit_stage(network, {**STAGE, "batch_size": 4}, data, folder=tmp_path / "s", image_size=32)
    assert record.steps > 0 and sum(decoded) >= len(data.split("train"))


def test_run_spec_has_every_option_documented():
    fields = RunSpec.model_fields
    for name in ("accelerator", "num_nodes", "strategy", "compile", "channels_last", "decode", "prefetch"):
        assert fields[name].description, name


def test_the_guides_python_snippets_run_on_a_cpu(tmp_path, monkeypatch):
    """docs/guides/accelerators.md: every ```python block not marked ``<!-- not run: … -->`` runs, in order."""
    import re

    page = Path(__file__).resolve().parent.parent / "docs" / "guides" / "accelerators.md"
    text = page.read_text(encoding="utf-8")
    fence = re.compile(r"^```(?P<language>[\w-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for match in fence.finditer(text):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        if match["language"] != "python" or (before and before[-1].strip().startswith("<!-- not run:")):
            continue
        exec(compile(match["code"], f"{page.name}:{text.count(chr(10), 0, match.start()) + 2}", "exec"), namespace)
        ran += 1
    assert ran >= 2
    assert "not run" in text and "torchrun" in text and "srun" in text
