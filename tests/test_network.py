"""Network: real predictions, freezing by name, BatchNorm policy through training, summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from headstart import zoo
from headstart.errors import HeadstartError
from headstart.heads import HeadSpec
from headstart.preprocess import decode_predictions, normalize, preprocess_input
from helpers import CATS
from helpers import TINY_EFFICIENTNET as TINY

EXPECTED = {"chelsea": CATS, "coffee": {"espresso"}, "rocket": {"missile", "projectile, missile"}}
LITE0_PARAMETERS = 4_652_008
LITE0_CLASSIFIER = 1280 * 1000 + 1000


def _top1(network, images) -> list[str]:
    probabilities = network.predict(preprocess_input(images, network.preprocessing))
    return [row[0][0] for row in decode_predictions(probabilities, network.labels, top=1)]


def test_pretrained_lite0_recognises_the_sample_images(lite0, sample_images):
    names = list(EXPECTED)
    for name, label in zip(names, _top1(lite0, [sample_images[name] for name in names]), strict=True):
        assert label in EXPECTED[name], (name, label)


def test_predict_returns_probabilities_and_decode_matches(lite0, sample_images):
    x = preprocess_input([sample_images["coffee"]], lite0.preprocessing)
    assert x.shape == (1, 3, 224, 224)
    probabilities = lite0.predict(x)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(1), atol=1e-5)
    decoded = lite0.decode(lite0(x), top=3)[0]
    assert decoded[0][0] == "espresso" and decoded[0][1] == pytest.approx(probabilities.max().item(), abs=1e-5)
    assert decoded[0][1] >= decoded[1][1] >= decoded[2][1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_image_modes_of_chelsea_still_predict_a_cat(lite0, sample_images, tmp_path, mode):
    image = Image.open(sample_images["chelsea"]).convert(mode)
    path = tmp_path / f"chelsea-{mode}.png"
    image.save(path)
    assert _top1(lite0, [path])[0] in CATS
    assert _top1(lite0, [image])[0] in CATS


def test_numpy_arrays_uint8_and_float_give_the_same_batch(lite0, sample_images):
    array = np.asarray(Image.open(sample_images["chelsea"]))
    from_uint8 = preprocess_input([array], lite0.preprocessing)
    from_float = preprocess_input([array.astype(np.float32) / 255.0], lite0.preprocessing)
    assert torch.allclose(from_uint8, from_float, atol=1e-6)
    with pytest.raises(HeadstartError, match=r"image array of shape \(2, 2, 5\)"):
        preprocess_input([np.zeros((2, 2, 5), np.uint8)], lite0.preprocessing)


def test_single_channel_network_recognises_a_grey_cat(sample_images):
    grey = zoo.load("EfficientNetLite0", in_chans=1)
    assert _top1(grey, [sample_images["chelsea"]])[0] in CATS


def test_normalize_matches_the_pretrained_transform(lite0):
    x01 = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(lite0.preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(lite0.preprocessing.std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x01, lite0.preprocessing), (x01 - mean) / std)
    with pytest.raises(HeadstartError, match="has 1 channels, the preprocessing expects 3"):
        normalize(torch.rand(2, 1, 8, 8), lite0.preprocessing)


def test_trainable_counts_before_and_after_freezing_the_backbone():
    network = zoo.load("EfficientNetLite0")

    def trainable():
        return sum(parameter.numel() for _, parameter in network.trainable_parameters())

    assert trainable() == LITE0_PARAMETERS and network.frozen_parameter_names() == []
    preview = network.preview_freeze("backbone")
    assert trainable() == LITE0_PARAMETERS  # a dry run changes nothing
    changed = network.freeze("backbone")
    assert changed == preview and len(changed) == len(network.frozen_parameter_names())
    assert trainable() == LITE0_CLASSIFIER
    assert sorted(name for name, _ in network.trainable_parameters()) == [
        "backbone.classifier.bias",
        "backbone.classifier.weight",
    ]
    report = network.summary(input_size=64)
    assert f"Total params: {LITE0_PARAMETERS:,}" in report
    assert f"Trainable params: {LITE0_CLASSIFIER:,}" in report
    assert f"Non-trainable params: {LITE0_PARAMETERS - LITE0_CLASSIFIER:,}" in report
    assert network.preview_freeze("backbone") == []
    network.unfreeze("blocks[-1]")
    last_block = network.param_groups()["blocks[15]"]
    assert trainable() == LITE0_CLASSIFIER + sum(
        parameter.numel() for name, parameter in network.named_parameters() if name in last_block
    )


def test_inceptionv3_counts_match_the_keras_listing_and_top_blocks_unfreeze_by_name():
    """Keras' InceptionV3(include_top=False).summary(): Total 21,802,784, Trainable 21,768,352,
    Non-trainable 34,432. Keras BatchNorm there has no scale (gamma) and counts moving mean and
    variance as parameters; timm's has gamma and keeps the statistics as buffers."""
    network = zoo.load("InceptionV3", weights=None, include_top=False)
    total = sum(parameter.numel() for parameter in network.parameters())
    gammas = sum(module.weight.numel() for module in network.modules() if isinstance(module, nn.BatchNorm2d))
    assert total - gammas == 21_768_352 and 2 * gammas == 34_432
    # the Keras fine-tuning guide trains "the top 2 inception blocks" (mixed9, mixed10)
    network.freeze("backbone")
    network.unfreeze("blocks[-2:]")
    trainable = network.trainable_parameters()
    assert {name.split(".")[1] for name, _ in trainable} == {"Mixed_7b", "Mixed_7c"}
    assert sum(parameter.numel() for _, parameter in trainable) == 5_044_608 + 6_076_800
    report = network.summary(input_size=96, depth=1)
    assert "backbone.Mixed_7c (InceptionE)" in report and "(None, 2048, 1, 1)" in report
    assert f"Trainable params: {5_044_608 + 6_076_800:,}" in report


def test_frozen_backbone_training_changes_neither_weights_nor_batchnorm_statistics(seeded):
    network = zoo.load("EfficientNetLite0", include_top=False, head=HeadSpec(outputs=3), weights="imagenet")
    network.freeze("backbone")
    frozen_batchnorm = network.set_bn_policy("frozen")
    assert len(frozen_batchnorm) == 49 and all(name.startswith("backbone.") for name in frozen_batchnorm)
    network.train()
    modules = dict(network.named_modules())
    assert all(not modules[name].training for name in frozen_batchnorm) and network.head.training
    before = {name: tensor.clone() for name, tensor in network.state_dict().items()}
    trainable = network.trainable_parameters()
    optimizer = torch.optim.SGD([parameter for _, parameter in trainable], lr=0.5, momentum=0.9)
    held = {id(parameter) for group in optimizer.param_groups for parameter in group["params"]}
    assert held == {id(parameter) for parameter in network.parameters() if parameter.requires_grad}
    assert [name for name, _ in trainable] == ["head.output.weight", "head.output.bias"]
    images, targets = torch.randn(4, 3, 64, 64) * 2, torch.tensor([0, 1, 2, 0])
    for _ in range(3):
        network.train()  # a trainer calls this every epoch; the policy must survive it
        optimizer.zero_grad()
        nn.functional.cross_entropy(network(images), targets).backward()
        optimizer.step()
    after = network.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"head.output.weight", "head.output.bias"}


def test_without_the_frozen_policy_the_statistics_do_drift(seeded):
    """The control of the test above: the same steps under policy "train" move running stats."""
    network = zoo.load(TINY, weights=None, include_top=False, num_classes=2)
    network.freeze("backbone")
    network.train()
    before = network.backbone.bn1.running_mean.clone()
    network(torch.randn(4, 3, 64, 64))
    assert not torch.equal(before, network.backbone.bn1.running_mean)
    assert network.bn_policy == "train" and network.bn_selectors == ()


def test_bn_policy_survives_train_and_can_be_lifted():
    network = zoo.load(TINY, weights=None, include_top=False, head=HeadSpec(hidden=[8], batch_norm=True, outputs=2))
    names = network.set_bn_policy("frozen", selectors=("stem",))
    assert names == ["backbone.bn1"]
    network.train()
    assert not network.backbone.bn1.training and network.backbone.bn2.training and network.head.norm0.training
    network.eval().train()
    assert not network.backbone.bn1.training and network.bn_policy == "frozen"
    network.set_bn_policy("train")
    assert network.backbone.bn1.training and network.frozen_batchnorm_names() == []
    network.set_bn_policy("frozen", selectors=("all",))
    assert "head.norm0" in network.frozen_batchnorm_names()
    network.replace_head(HeadSpec(hidden=[4], batch_norm=True, outputs=2))
    network.train()
    assert not network.head.norm0.training  # the policy is re-applied to the new head
    with pytest.raises(HeadstartError, match="BatchNorm policy 'freeze'"):
        network.set_bn_policy("freeze")


def test_param_groups_partition_the_parameters_and_name_selectors():
    network = zoo.load(TINY, weights=None, include_top=False, num_classes=2)
    groups = network.param_groups()
    keys = list(groups)
    assert keys[0] == "stem" and keys[-1] == "head" and keys[1] == "blocks[0]"
    everything = [name for names in groups.values() for name in names]
    assert sorted(everything) == sorted(name for name, _ in network.named_parameters())
    assert len(everything) == len(set(everything))
    assert network.select("blocks[:2]") == groups["blocks[0]"] + groups["blocks[1]"]
    stem = ["backbone.conv_stem.weight", "backbone.bn1.weight", "backbone.bn1.bias"]
    assert network.select("stem") == groups["stem"] == stem
    stages = network.select("stages[:2]")
    assert stages and {name.split(".")[2] for name in stages} == {"0", "1"}
    assert network.select("re:^head\\.") == groups["head"]
    assert set(network.select("backbone", "head")) == set(everything) == set(network.select("all"))


def test_bad_selectors_are_explained():
    network = zoo.load(TINY, weights=None, include_top=False, num_classes=2)
    with pytest.raises(HeadstartError, match="unknown selector 'stme'.*did you mean stem"):
        network.freeze("stme")
    with pytest.raises(HeadstartError, match=r"blocks\[99\]'.*has \d+ blocks"):
        network.freeze("blocks[99]")
    with pytest.raises(HeadstartError, match="selects no parameters"):
        network.freeze("re:^nothing_here")
    with pytest.raises(HeadstartError, match="invalid regular expression"):
        network.freeze("re:(")
    with pytest.raises(HeadstartError, match="no selector given"):
        network.freeze()
    assert network.frozen_parameter_names() == []


def test_replace_head_with_labels_decodes_to_them():
    network = zoo.load(TINY, weights=None, include_top=False)
    network.replace_head(HeadSpec(outputs=3, output="sigmoid"), labels=["rot=0", "rot=90", "rot=180"])
    logits = network(torch.randn(2, 3, 64, 64))
    decoded = network.decode(logits, top=2)
    assert len(decoded) == 2 and {label for label, _ in decoded[0]} <= {"rot=0", "rot=90", "rot=180"}
    black = torch.zeros(1, 3, 64, 64)
    assert torch.allclose(network.predict(black), torch.sigmoid(network.eval()(black)))
    with pytest.raises(HeadstartError, match="2 labels for a head of 3 outputs"):
        network.replace_head(HeadSpec(outputs=3), labels=["a", "b"])
    custom = nn.Linear(network.num_features, 4)
    assert network.replace_head(custom) is custom and network.labels is None
    assert network(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_predict_restores_training_mode_and_metadata_is_json(lite0):
    lite0.train()
    lite0.predict(torch.randn(1, 3, 64, 64))
    assert lite0.training
    lite0.eval()
    metadata = json.loads(json.dumps(lite0.metadata()))
    assert metadata["model_name"] == "EfficientNetLite0" and metadata["include_top"] is True
    assert metadata["preprocessing"]["input_size"] == [3, 224, 224] and len(metadata["labels"]) == 1000


def test_summary_depth_controls_the_rows(lite0):
    shallow = lite0.summary(input_size=64, depth=1)
    deep = lite0.summary(input_size=64, depth=2)
    assert "backbone.blocks (Sequential)" in shallow and "backbone.blocks.6 (Sequential)" in deep
    assert len(deep.splitlines()) > len(shallow.splitlines())
    assert "backbone.conv_head (Conv2d)" in deep and "(None, 1280, 2, 2)" in deep
    with pytest.raises(HeadstartError, match="depth=0"):
        lite0.summary(depth=0)
