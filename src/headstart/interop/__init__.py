"""Moving networks between frameworks, each move checked by running both sides on real images.

The chapter converts a PyTorch SqueezeNet to Keras with ``pytorch2keras`` (listings 2-15 and 2-16,
``pytorch_to_keras(model, input_var, [(3, None, None)])``) and says the path goes through ONNX.
``pytorch2keras`` has had no release since 2020; here the same three moves use maintained tools:

* :func:`export_onnx` — ``torch.onnx.export`` (the ``torch.export``-based exporter, which needs
  ``onnxscript``), batch dynamic and, where the model allows, height and width too (listing 2-16's
  ``(3, None, None)``). The file carries the network's preprocessing, labels and output kind as
  ONNX ``metadata_props`` (keys ``headstart.*``), so whoever runs it knows how to prepare images
  and read the outputs.
* :func:`import_onnx` — an ONNX model from any framework becomes a headstart backbone through
  ``onnx2torch``: cut before its classifier (or at a named tensor), with a new head on top it trains
  in a stage like a zoo model, and freezing works by parameter name.
* :func:`export_keras` — ONNX → Keras through ``onnx2tf`` (a ``tf_keras`` functional model saved as
  ``.keras``; channels-last input as Keras users expect, or channels-first on request).
  ``onnx2tf`` was chosen over ``nobuco`` (direct PyTorch → Keras) by measurement: nobuco 0.17
  needs Keras 2 inside TensorFlow ≤ 2.15, hence numpy < 2, which conflicts with this project's
  numpy 2 stack, and even there it stops on timm's fused ``BatchNormAct2d`` (EfficientNet-Lite0),
  while onnx2tf converts EfficientNet-Lite0 with ImageNet weights within 1.6e-5 of PyTorch.

Every export runs the original network and the exported file on the same real photographs
(scikit-image's sample images, preprocessed by the network's own pipeline) and reports the largest
absolute difference of the outputs; beyond ``tolerance`` (default 1e-4) it fails and writes nothing.
Files are written atomically (:mod:`headstart.files`: a temporary name, ``fsync``, ``os.replace``), so a failed export
never leaves a half-written file.
"""

from headstart.interop.common import (
    FORMATS,
    SAMPLE_IMAGES,
    TOLERANCE,
    ExportReport,
    ParityCheck,
    as_network,
    read_metadata,
    sample_batch,
)
from headstart.interop.export import KERAS_INSTALL, SUFFIXES, export, export_format, export_keras, export_onnx
from headstart.interop.onnx_import import OnnxBackbone, import_onnx, load_imported_stage

__all__ = [
    "FORMATS",
    "KERAS_INSTALL",
    "SAMPLE_IMAGES",
    "SUFFIXES",
    "TOLERANCE",
    "ExportReport",
    "OnnxBackbone",
    "ParityCheck",
    "as_network",
    "export",
    "export_format",
    "export_keras",
    "export_onnx",
    "import_onnx",
    "load_imported_stage",
    "read_metadata",
    "sample_batch",
]
