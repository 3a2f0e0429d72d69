"""The chapter's Keras calls, typed as a Keras user types them, through the Python API.

Each test names the chapter listing it ports. Real data: scikit-image's sample photographs and the
real EfficientNet-Lite0 ImageNet weights (offline package). Every misuse of ``predict``,
``freeze``, ``replace_head``, ``load`` and ``preprocess_input`` must raise a one-line
:class:`HeadstartError` that names the argument and says what was expected.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from headstart import pretext, zoo
from headstart.config import parse_run
from headstart.errors import HeadstartError
from headstart.heads import HeadSpec
from headstart.preprocess import decode_predictions, imagenet_synsets, normalize, preprocess_input
from helpers import TINY_EFFICIENTNET as TINY

CATS = {"n02123045", "n02123159", "n02124075", "n02123394", "n02123597"}  # tabby, tiger, Egyptian, Persian, Siamese


@pytest.fixture(scope="module")
def chelsea():
    from skimage import data

    return data.chelsea()  # 300 × 451 × 3 uint8, a tabby cat


# ------------------------------------------------------------------ listing 2-4: predict(np.array([im]))


def test_predict_takes_the_chapters_numpy_batch(lite0, chelsea):
    """``print(decode_predictions(model.predict(np.array([im]))))`` — listing 2-4, word for word."""
    probabilities = lite0.predict(np.array([chelsea]))
    assert probabilities.shape == (1, 1000)
    decoded = decode_predictions(probabilities, style="keras")
    assert len(decoded) == 1 and len(decoded[0]) == 5 and decoded[0][0][0] in CATS
    x = preprocess_input([chelsea], lite0.preprocessing)
    assert torch.allclose(probabilities, lite0.predict(x))
    # the same image as floats: 0..1 by default, Keras' 0..255 with float_scale=255
    as_unit = preprocess_input(np.array([chelsea], dtype=np.float32) / 255.0, lite0)
    as_keras = preprocess_input(np.array([chelsea], dtype=np.float32), lite0, float_scale=255)
    assert torch.allclose(as_unit, x, atol=1e-5) and torch.allclose(as_keras, x, atol=1e-5)


def test_a_batch_of_photographs_in_chunks_matches_one_by_one(lite0):
    from skimage import data

    batch = np.stack([data.chelsea()[:300, :400], data.coffee()[:300, :400]])
    together = lite0.predict(batch)
    alone = lite0.predict(batch, batch_size=1)
    assert torch.allclose(together, alone, atol=1e-5)
    top = [row[0] for row in decode_predictions(together, top=1, style="keras")]
    assert top[0][0] in CATS and top[1][1] == "espresso"


def test_preprocess_input_accepts_nhwc_batches_of_every_dtype(lite0, chelsea):
    from_list = preprocess_input([chelsea, chelsea[:, ::-1]], lite0.preprocessing)
    batch = np.stack([chelsea, chelsea[:, ::-1]])
    assert torch.equal(preprocess_input(batch, lite0), from_list)  # the network itself works as the pipeline
    assert torch.allclose(preprocess_input(batch.astype(np.float64) / 255.0, lite0.preprocessing), from_list, atol=1e-6)
    assert torch.allclose(preprocess_input(batch.astype(np.int64), lite0.preprocessing), from_list)
    grey = np.asarray(Image.fromarray(chelsea).convert("L"))
    assert torch.equal(
        preprocess_input(grey[None, :, :, None], lite0.preprocessing), preprocess_input([grey], lite0.preprocessing)
    )
    rgba = np.concatenate([chelsea, np.full(chelsea.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert torch.equal(preprocess_input(rgba[None], lite0.preprocessing), from_list[:1])


# ------------------------------------------------------------------ listing 2-3: Resizing(299, 299)


def test_resize_stretch_squashes_the_whole_image_like_keras_resizing(lite0, chelsea):
    """Keras' ``Resizing(h, w)`` scales both sides (nothing cut); the pretrained pipeline crops."""
    stretched = preprocess_input(np.array([chelsea]), lite0.preprocessing, resize="stretch")
    squashed = Image.fromarray(chelsea).resize((224, 224), Image.Resampling.BICUBIC)
    expected = normalize(
        torch.from_numpy(np.asarray(squashed).copy()).permute(2, 0, 1)[None].float() / 255.0, lite0.preprocessing
    )
    assert stretched.shape == (1, 3, 224, 224)
    assert torch.allclose(stretched, expected, atol=1e-5)
    cropped = preprocess_input(np.array([chelsea]), lite0.preprocessing)
    assert (cropped - stretched).abs().max() > 0.5  # the default really differs
    stretched_top = decode_predictions(lite0.predict(np.array([chelsea]), resize="stretch"), top=1, style="keras")
    assert stretched_top[0][0][0] in CATS


# ------------------------------------------------------------------ listing 2-5: (id, name, probability)


def test_decode_predictions_keras_form_reproduces_the_chapters_listing():
    """Listing 2-5's five rows, from a probability vector with the listing's values."""
    listing = [
        ("n02129165", "lion", 0.91112673),
        ("n02112137", "chow", 0.008575964),
        ("n02130308", "cheetah", 0.0024228022),
        ("n04328186", "stopwatch", 0.00097137265),
        ("n02106030", "collie", 0.00083191396),
    ]
    index_of = {wnid: index for index, (wnid, _, _) in enumerate(imagenet_synsets())}
    probabilities = np.zeros((1, 1000), np.float32)
    for wnid, _, value in listing:
        probabilities[0, index_of[wnid]] = value
    decoded = decode_predictions(probabilities, top=5, style="keras")
    assert [(wnid, name) for wnid, name, _ in decoded[0]] == [(wnid, name) for wnid, name, _ in listing]
    assert [value for *_, value in decoded[0]] == pytest.approx([value for *_, value in listing])
    # the pair form stays what it was: (description, probability)
    pairs = decode_predictions(probabilities, [row[2] for row in imagenet_synsets()], top=1)
    assert pairs[0][0][0] == "lion, king of beasts, Panthera leo" and len(pairs[0][0]) == 2


def test_keras_form_on_the_network_and_on_a_new_head(lite0, chelsea):
    x = preprocess_input(np.array([chelsea]), lite0.preprocessing)
    triple = lite0.decode(lite0(x), top=2, style="keras")[0][0]
    assert (
        len(triple) == 3
        and triple[0] in CATS
        and triple[1] == dict((wnid, name) for wnid, name, _ in imagenet_synsets())[triple[0]]
    )
    network = zoo.load(TINY, weights=None, include_top=False)
    network.replace_head(HeadSpec(outputs=3), labels=["cat", "dog", "bird"])
    decoded = network.decode(network(torch.randn(1, 3, 64, 64)), top=3, style="keras")[0]
    assert {(index, name) for index, name, _ in decoded} == {("0", "cat"), ("1", "dog"), ("2", "bird")}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"style": "tf"}, "style='tf'; expected 'pairs' or 'keras'"),
        ({"labels": "cat"}, "labels='cat' is one string"),
        ({"top": 0}, "top=0"),
        ({"top": 2.5}, "top=2.5"),
        ({"probabilities": "lion"}, "probabilities of type str"),
        ({"probabilities": np.zeros((1, 2, 3))}, r"shape \(1, 2, 3\), expected \[batch, classes\]"),
        ({"labels": ["a"]}, "1 labels for 4 outputs"),
    ],
)
def test_decode_predictions_misuse(arguments, message):
    given = {"probabilities": np.full((1, 4), 0.25), **arguments}
    with pytest.raises(HeadstartError, match=message):
        decode_predictions(given.pop("probabilities"), **given)


# ------------------------------------------------------------------ misuse: preprocess_input


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (
            np.zeros((1, 8, 8, 5), np.uint8),
            r"images is a batch of shape \(1, 8, 8, 5\); expected \(batch, height, width",
        ),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first: pass array.transpose"),
        ([np.zeros((8, 8, 5), np.uint8)], r"images\[0\] is an image array of shape \(8, 8, 5\)"),
        (np.zeros((3, 16, 16), np.float32), "channels-first"),
        (np.zeros((1, 1, 8, 8, 3), np.uint8), r"images is an array of shape \(1, 1, 8, 8, 3\)"),
        (np.zeros(8, np.uint8), r"images is an array of shape \(8,\)"),
        (np.full((1, 8, 8, 3), 200.0, np.float32), "float values from 200 to 200; expected 0..1.*float_scale=255"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite"),
        (np.full((8, 8, 3), -3, np.int16), "int16 has values from -3 to -3; expected 0..255"),
        (np.zeros((8, 8, 3), bool), "dtype bool; expected uint8"),
        (np.zeros((8, 8, 3), np.complex64), "dtype complex64"),
        (torch.zeros(1, 3, 8, 8), "images is a torch tensor.*normalize"),
        (42, "images is of type int"),
        ([42], r"images\[0\] is of type int"),
        (np.zeros((0, 8, 8, 3), np.uint8), "got no images"),
        ([], "got no images"),
        (np.zeros((0, 8, 3), np.uint8), "at least 1×1"),
    ],
)
def test_preprocess_input_misuse(lite0, images, message):
    with pytest.raises(HeadstartError, match=message):
        preprocess_input(images, lite0.preprocessing)


def test_preprocess_input_misused_options(lite0, chelsea):
    with pytest.raises(HeadstartError, match="preprocessing is of type dict; expected a network's pipeline"):
        preprocess_input([chelsea], {"mean": (0.5,)})
    with pytest.raises(HeadstartError, match="resize='squash'; expected 'crop' or 'stretch'"):
        preprocess_input([chelsea], lite0.preprocessing, resize="squash")
    with pytest.raises(HeadstartError, match="float_scale=0"):
        preprocess_input([chelsea], lite0.preprocessing, float_scale=0)


# ------------------------------------------------------------------ misuse: predict


@pytest.fixture(scope="module")
def tiny():
    return zoo.load(TINY, weights=None, include_top=False, num_classes=3)


@pytest.mark.parametrize(
    ("x", "options", "message"),
    [
        (torch.zeros(1, 5, 32, 32), {}, r"x of shape \(1, 5, 32, 32\) has 5 channels; test_efficientnet reads 3"),
        (torch.zeros(1, 32, 32, 3), {}, "looks channels-last.*permute"),
        (torch.zeros(3, 32, 32), {}, r"is one image; expected a batch.*unsqueeze\(0\)"),
        (torch.zeros(32, 32), {}, r"expected a batch \[batch, 3, height, width\]"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), {}, "dtype torch.uint8; a tensor must hold normalised floats"),
        (torch.zeros(0, 3, 32, 32), {}, "holds no images"),
        (torch.zeros(1, 3, 32, 32), {"batch_size": 0}, "batch_size=0"),
        (np.zeros((1, 32, 32, 3), np.uint8), {"resize": "squash"}, "resize='squash'"),
        (np.zeros((1, 32, 32, 7), np.uint8), {}, r"images is a batch of shape \(1, 32, 32, 7\)"),
        ("missing.jpg", {}, "missing.jpg"),
        (3.5, {}, "images is of type float"),
    ],
)
def test_predict_misuse(tiny, x, options, message):
    with pytest.raises(HeadstartError, match=message):
        tiny.predict(x, **options)


def test_predict_converts_dtype_and_names_an_input_too_small():
    squeezenet = zoo.load("SqueezeNet", weights=None)
    probabilities = squeezenet.predict(torch.zeros(2, 3, 64, 64, dtype=torch.float64))
    assert probabilities.dtype == torch.float32 and probabilities.shape == (2, 1000)
    with pytest.raises(HeadstartError, match="images of 8×8 pixels do not fit SqueezeNet \\(made for 224×224"):
        squeezenet.predict(torch.zeros(1, 3, 8, 8))


# ------------------------------------------------------------------ misuse: freeze, trainable


@pytest.mark.parametrize(
    ("selectors", "message"),
    [
        ((3,), r"selector 3 \(int\): expected a name such as 'backbone'"),
        ((None,), r"selector None \(NoneType\)"),
        (("",), r"selector '' \(str\)"),
        (("stme",), "unknown selector 'stme'.*did you mean stem"),
        ((["backbone", 7],), r"selector 7 \(int\)"),
        (("blocks[99]",), r"has \d+ blocks"),
        ((), "no selector given"),
    ],
)
def test_freeze_misuse(selectors, message):
    network = zoo.load(TINY, weights=None, include_top=False, num_classes=2)
    with pytest.raises(HeadstartError, match=message):
        network.freeze(*selectors)
    with pytest.raises(HeadstartError, match=message):
        network.unfreeze(*selectors)
    assert network.frozen_parameter_names() == []


def test_freeze_takes_a_list_as_a_run_file_writes_it():
    network = zoo.load(TINY, weights=None, include_top=False, num_classes=2)
    assert network.freeze(["stem", "blocks[:2]"]) == network.select("stem", "blocks[:2]")


def test_trainable_is_keras_model_trainable_for_the_whole_network():
    """Listing 2-13's ``.trainable = False``: every weight frozen, BatchNorm in inference mode."""
    network = zoo.load(TINY, weights=None, include_top=False, head=HeadSpec(hidden=[4], batch_norm=True, outputs=2))
    network.trainable = False
    assert not network.trainable and network.trainable_parameters() == []
    network.train()
    batch_norms = [module for module in network.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert batch_norms and not any(module.training for module in batch_norms)
    network.trainable = True
    assert network.frozen_parameter_names() == [] and network.bn_policy == "train"
    with pytest.raises(HeadstartError, match="trainable='no': expected True or False"):
        network.trainable = "no"


# ------------------------------------------------------------------ misuse: replace_head


@pytest.mark.parametrize(
    ("head", "labels", "message"),
    [
        (3, None, "replace_head: head of type int: expected an nn.Module, a HeadSpec or a mapping"),
        ("dense", None, "head of type str"),
        ({"outputs": 0}, None, "head: outputs: Input should be greater than 0"),
        ({"output_units": 3}, None, "head: output_units: unknown key; did you mean .outputs."),
        (nn.Linear(7, 3), None, r"cannot read this network's features, \[batch, \d+\] \(avg-pooled features\)"),
        (nn.Conv2d(3, 3, 1), None, "cannot read this network's features"),
        (nn.Unflatten(1, (-1, 1, 1)), None, r"returns \(2, \d+, 1, 1\).*expected logits \[batch, outputs\]"),
        ("linear3", ["a", "b", "c", "d"], "4 labels for a head of 3 outputs"),
        ("linear3", "abc", "labels='abc'; expected a list of class names"),
        ("linear3", 3, "labels=3; expected a list"),
        (HeadSpec(outputs=3), ["a", "b"], "2 labels for a head of 3 outputs"),
    ],
)
def test_replace_head_misuse(head, labels, message):
    network = zoo.load(TINY, weights=None, include_top=False)
    if head == "linear3":
        head = nn.Linear(network.num_features, 3)
    with pytest.raises(HeadstartError, match=message):
        network.replace_head(head, labels=labels)
    assert isinstance(network.head, nn.Identity)


def test_replace_head_accepts_fitting_modules_and_refuses_dense_on_a_map():
    network = zoo.load(TINY, weights=None, include_top=False)
    head = nn.Sequential(nn.Linear(network.num_features, 4), nn.ReLU(), nn.Linear(4, 1))
    assert network.replace_head(head, labels=["no", "yes"]) is head and network.labels == ["no", "yes"]
    mapped = zoo.load(TINY, weights=None, include_top=False, pooling=None)
    with pytest.raises(HeadstartError, match="pooling='none' keeps the 4-D feature map"):
        mapped.replace_head(HeadSpec(outputs=2))
    convolutional = nn.Conv2d(mapped.num_features, 2, 1)  # a head that reads the map is the user's choice
    assert mapped.replace_head(convolutional) is convolutional


# ------------------------------------------------------------------ load: Keras arguments and misuse


def test_pooling_none_returns_the_4d_map_keras_returns():
    """Keras' ``InceptionV3(include_top=False)`` (pooling=None) outputs the feature map, listing 2-7."""
    x = torch.randn(2, 3, 64, 64)
    keras_like = zoo.load(TINY, weights=None, include_top=False, pooling=None).eval()
    assert keras_like.pooling == "none"
    out = keras_like(x)
    assert out.ndim == 4 and torch.equal(out, keras_like.backbone.forward_features(x))
    assert zoo.load(TINY, weights=None, include_top=False).eval()(x).shape == (2, out.shape[1])  # headstart's avg


def test_classes_is_keras_name_for_the_full_classifier_size():
    """Listing 2-21: ``EfficientNetB4(weights=None, classes=100)`` + ``Dense(4)`` on its outputs."""
    network = zoo.load(TINY, weights=None, classes=100, head={"outputs": 4}).eval()
    assert network.backbone.num_classes == 100 and network.head.output.in_features == 100
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(network(x), network.head(network.backbone(x))) and network(x).shape == (2, 4)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": 3}, "model name 3: expected a Keras alias"),
        ({"name": "EfficentNetB0"}, "did you mean.*EfficientNetB0"),
        ({"weights": "imagnet"}, "weights='imagnet'; expected 'imagenet', None.*did you mean 'imagenet'"),
        ({"weights": 3}, "weights of type int"),
        ({"weights": {"conv.weight": torch.zeros(1)}}, "weights of type dict"),
        ({"weights": "missing/model.safetensors"}, "missing/model.safetensors: no such weights file"),
        ({"include_top": "False"}, "include_top='False'; expected True"),
        ({"pooling": "mean"}, "pooling='mean': expected one of avg, max, flatten, none"),
        ({"in_chans": True}, "in_chans=True"),
        ({"in_chans": "3"}, "in_chans='3'"),
        ({"num_classes": 0}, "num_classes=0"),
        ({"classes": 2.5}, "classes=2.5"),
        ({"classes": 10, "num_classes": 5}, "num_classes=5 and classes=10 disagree"),
        ({"input_shape": (32, 32, 3)}, "input_shape is a Keras argument.*in_chans="),
        ({"input_tensor": None}, "input_tensor is a Keras argument"),
        ({"poolng": "avg"}, "unknown argument poolng='avg'; did you mean pooling"),
        ({"stem_adaptation": "mean"}, "stem_adaptation='mean'"),
        ({"head": 3}, "head of type int"),
        ({"include_top": False, "pooling": None, "num_classes": 2}, "pooling='none' keeps the 4-D feature map"),
    ],
)
def test_load_misuse(arguments, message):
    given = {"name": TINY, "weights": None, **arguments}
    with pytest.raises(HeadstartError, match=message):
        zoo.load(given.pop("name"), **given)


# ------------------------------------------------------------------ listing 2-14: squeezenet1_0


def test_squeezenet1_0_is_torchvisions_architecture(tmp_path):
    """``models.squeezenet1_0(pretrained=True)``: the same network behind the zoo's interface."""
    from safetensors.torch import save_file
    from torchvision import models

    torch.manual_seed(0)
    reference = models.squeezenet1_0(weights=None).eval()
    path = tmp_path / "squeezenet1_0.safetensors"
    save_file({key: value.contiguous() for key, value in reference.state_dict().items()}, str(path))
    for name in ("SqueezeNet1_0", "squeezenet1_0"):
        entry = zoo.resolve(name)
        assert (entry.alias, entry.provider, entry.parameters) == ("SqueezeNet1_0", "torchvision", 1_248_424)
    network = zoo.load("squeezenet1_0", weights=path)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(network(x), reference(x), atol=1e-5)
    assert network.backbone.features[0].kernel_size == (7, 7) and len(network.labels) == 1000
    assert zoo.resolve("SqueezeNet").timm_name == "squeezenet1_1"  # the 1.1 alias is unchanged
    grey = zoo.load("SqueezeNet1_0", weights=path, in_chans=1, include_top=False)
    assert torch.allclose(grey.backbone.features[0].weight, reference.features[0].weight.sum(dim=1, keepdim=True))


def test_squeezenet1_0_imagenet_offline_says_how_to_pass_a_file(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(
            HeadstartError,
            match=r"SqueezeNet1_0: ImageNet weights are not in .*"
            r'weights="path/to/squeezenet1_0-[0-9a-f]+\.pth"',
        ):
            zoo.load("SqueezeNet1_0", weights="imagenet")
    finally:
        torch.hub.set_dir(previous)


# ------------------------------------------------------------------ listing 2-18: noise level labels


def test_noise_level_options_give_the_chapters_labels():
    images = torch.zeros(4, 3, 32, 32)
    images[:, :, :, 16:] = 1.0  # half black, half white: clipping removes half of every change
    generator = torch.Generator().manual_seed(0)
    drawn_task = pretext.get("noise_level")
    altered, drawn = drawn_task.alter(images, generator)
    generator.manual_seed(0)
    remaining_task = pretext.get("noise_level", target="remaining")
    same_altered, remaining = remaining_task.alter(images, generator)
    assert torch.equal(altered, same_altered)
    measured = (altered - images).square().flatten(1).mean(dim=1, keepdim=True).sqrt()
    assert torch.allclose(remaining, measured)
    assert (remaining < 0.8 * drawn).all()  # clipping left well under the σ drawn
    # the chapter's listing 2-18: no clipping, so the noise left is the σ drawn
    generator.manual_seed(0)
    unclipped, left = pretext.get("noise_level", clip=False, target="remaining").alter(images, generator)
    assert unclipped.min() < 0 and unclipped.max() > 1
    assert torch.equal(altered, unclipped.clamp(0, 1))  # the same draws, clipped to the pixel range
    assert torch.allclose(left, drawn, rtol=0.05)
    with pytest.raises(HeadstartError, match="target='left'"):
        pretext.get("noise_level", target="left")


# ------------------------------------------------------------------ listing 2-21 from a run file


RUN_FILE = {
    "name": "full-classifier",
    "seed": 0,
    "data": {"source": {"kind": "digits", "image_size": 16}, "splits": {"labels_per_class": 5}},
    "model": {"name": "test_resnet", "weights": None, "image_size": 16, "include_top": True, "classes": 8},
    "stages": [
        {
            "name": "rotation",
            "data": "all",
            "pretext": {"name": "rotation"},
            "epochs": 1,
            "steps_per_epoch": 3,
            "batch_size": 32,
        },
        {"name": "task", "epochs": 1, "batch_size": 25, "freeze": ["re:^backbone\\."]},
    ],
}


def test_run_file_with_include_top_puts_each_head_on_the_classifier(tmp_path):
    """``include_top: true, classes: 8``: the rotation head reads the classifier's 8 outputs, then
    the task head replaces it there (listings 2-21 and 2-23), through ``headstart run``."""
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from headstart.checkpoint import load_network
    from headstart.cli import app
    from headstart.data import TaskData
    from headstart.stage import evaluate_split

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(RUN_FILE), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", str(path), "--output", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    rotation = json.loads((tmp_path / "out" / "0-rotation" / "stage.json").read_text())
    task = json.loads((tmp_path / "out" / "1-task" / "stage.json").read_text())
    assert rotation["model"]["include_top"] is True and rotation["model"]["classes"] == 8
    rotation_weights = load_file(str(tmp_path / "out" / "0-rotation" / "weights.safetensors"))
    assert rotation_weights["head.weight"].shape == (4, 8)  # Dense(4) on the 8 classifier outputs
    assert rotation_weights["backbone.fc.weight"].shape[0] == 8  # the full classifier is kept and trained
    assert task["cached_features"] is True  # the whole backbone, classifier included, frozen: outputs cached
    network = load_network(tmp_path / "out")
    assert network.include_top and network.head.output.in_features == 8 and network.labels[0] == "0"
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    spec = parse_run({**RUN_FILE, "output": str(tmp_path / "out")})
    again = evaluate_split(network, TaskData.from_spec(spec.data), "test", image_size=16)
    assert again["accuracy"] == pytest.approx(run["test"]["accuracy"]) and again["count"] == run["test"]["count"]


def test_classes_without_include_top_is_refused_and_old_hashes_are_kept():
    model = {"name": "test_resnet", "weights": None, "classes": 8}
    with pytest.raises(HeadstartError, match="model: .*classes sizes the full classifier; set include_top: true"):
        parse_run({**RUN_FILE, "model": model})
    # runs written before include_top and classes existed keep their hash: the code of the commit
    # before them (5ca247d^) hashed this run file, model without the two keys, to d6213f9c5a5bf037;
    # at their defaults, written or not, the keys are left out of what is hashed
    plain = {"name": "test_resnet", "weights": None, "image_size": 16}
    assert parse_run({**RUN_FILE, "model": plain}).config_hash() == "d6213f9c5a5bf037"
    assert parse_run({**RUN_FILE, "model": {**plain, "include_top": False, "classes": None}}).config_hash() == (
        "d6213f9c5a5bf037"
    )
    # set, they change what is trained and so the hash
    variants = ({}, {"include_top": True}, {"include_top": True, "classes": 8}, {"include_top": True, "classes": 9})
    hashes = {parse_run({**RUN_FILE, "model": {**plain, **keys}}).config_hash() for keys in variants}
    assert len(hashes) == 4
