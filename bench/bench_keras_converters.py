"""PyTorch → Keras converters compared on the zoo: coverage and output parity on real images.

Candidates for the chapter's PyTorch → Keras path (listings 2-15/2-16, ``pytorch2keras``, whose last
release is from 2020): ``onnx2tf`` (through ONNX, as the chapter describes) and ``nobuco`` (direct
tracing of PyTorch). Each converter runs in the environment it installs into — nobuco needs Keras 2
inside TensorFlow ≤ 2.15 (so numpy < 2), onnx2tf works with TensorFlow 2.21 and ``tf-keras`` — so run
this script once per environment; it converts whatever it can import::

    python bench/bench_keras_converters.py                 # the converters importable here
    python bench/bench_keras_converters.py --models EfficientNetLite0 resnet18

EfficientNet-Lite0 carries its real ImageNet weights (offline package); the other models are
randomly initialised (no download), which tests the conversion of every layer just as well.
Parity is max |PyTorch − Keras| on scikit-image photographs preprocessed by each model's pipeline.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

MODELS = [
    "EfficientNetLite0",
    "ResNet50",
    "MobileNetV2",
    "MobileNetV3Small",
    "DenseNet121",
    "SqueezeNet",
    "InceptionV3",
    "vit_tiny_patch16_224",
]


def _onnx2tf(network, batch):
    import tempfile

    from headstart import interop

    with tempfile.TemporaryDirectory() as scratch:
        report = interop.export_keras(network, f"{scratch}/model.keras", tolerance=float("inf"))
    return report.max_abs_difference


def _nobuco(network, batch):
    import nobuco
    from nobuco import ChannelOrder

    keras_model = nobuco.pytorch_to_keras(
        network, args=[batch], inputs_channel_order=ChannelOrder.TENSORFLOW, outputs_channel_order=ChannelOrder.PYTORCH
    )
    output = np.asarray(keras_model(batch.permute(0, 2, 3, 1).numpy()))
    with torch.no_grad():
        reference = network(batch).numpy()
    return float(np.abs(output - reference).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    import timm.models  # noqa: F401
    import torchvision.models  # noqa: F401

    from headstart.interop import sample_batch  # before TensorFlow: torchvision imported after it segfaults
    from headstart.zoo import load

    converters = {}
    for name, convert in (("onnx2tf", _onnx2tf), ("nobuco", _nobuco)):
        try:
            __import__(name)
            converters[name] = convert
        except Exception as error:  # noqa: BLE001 - report what cannot be imported and why
            print(f"{name}: not importable here ({type(error).__name__}: {str(error).splitlines()[0]})")
    import tensorflow as tf

    print(f"torch {torch.__version__}, tensorflow {tf.__version__}, numpy {np.__version__}")
    for model in args.models:
        network = load(model, weights="imagenet" if model == "EfficientNetLite0" else None).eval()
        batch = sample_batch(network.preprocessing, count=3)
        for name, convert in converters.items():
            started = time.perf_counter()
            try:
                difference = convert(network, batch)
                outcome = f"max abs difference {difference:.3g}" + ("" if difference <= 1e-4 else "  (above 1e-4)")
            except Exception as error:  # noqa: BLE001 - a converter failing on a model is the measurement
                outcome = f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
            print(f"{model:<22} {name:<8} {outcome}  ({time.perf_counter() - started:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
