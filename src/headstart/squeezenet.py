"""SqueezeNet (Iandola et al. 2016) from torchvision, behind timm's model interface.

timm has no SqueezeNet; :mod:`headstart.zoo` builds ``SqueezeNet`` (version 1.1) and
``SqueezeNet1_0`` (the version the chapter instantiates in listing 2-14) from this wrapper, so that
freezing by name, head swapping, summaries and ImageNet decoding work on it as on any timm model.
"""

from __future__ import annotations

import torch
from torch import nn

from headstart.errors import HeadstartError

SQUEEZENET_CONFIG = {
    # torchvision's ImageNet evaluation pipeline (resize 256, crop 224, bilinear) in timm's terms;
    # the same for both versions, "architecture" set per version
    "architecture": "squeezenet1_1",
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "crop_pct": 0.875,
    "crop_mode": "center",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "num_classes": 1000,
    "first_conv": "features.0",
    "classifier": "classifier.1",
}


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet 1.0 or 1.1 (Iandola et al. 2016) answering timm's model interface.

    timm has no SqueezeNet; this wraps ``torchvision.models.squeezenet1_0`` (96 7×7 stem kernels,
    1.25M parameters, the chapter's listing 2-14) or ``squeezenet1_1`` (64 3×3 stem kernels, 1.24M
    parameters, 2.4× less computation at the same accuracy) so that
    ``forward_features`` (the ``features`` stack, 512 channels), ``forward_head``,
    ``get_classifier``, ``reset_classifier``, ``group_matcher`` and ``pretrained_cfg`` behave as on
    a timm model. The classifier is torchvision's: dropout, a 1×1 convolution to the classes, ReLU
    and global average pooling, so its logits are non-negative. Parameter names equal
    torchvision's, so its state dicts load unchanged.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, version: str = "1_1") -> None:
        super().__init__()
        from torchvision import models

        if version not in ("1_0", "1_1"):
            raise HeadstartError(f"SqueezeNet version={version!r}: expected '1_0' or '1_1'")
        base = getattr(models, f"squeezenet{version}")(weights=None, num_classes=max(num_classes, 1))
        self.features = base.features
        if in_chans != 3:
            stem = self.features[0]
            self.features[0] = nn.Conv2d(in_chans, stem.out_channels, kernel_size=stem.kernel_size, stride=stem.stride)
        self.num_features = 512
        self.num_classes = num_classes
        self.classifier: nn.Module = base.classifier if num_classes > 0 else nn.Identity()
        self.pretrained_cfg = {**SQUEEZENET_CONFIG, "architecture": f"squeezenet{version}"}
        self.default_cfg = self.pretrained_cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits or self.num_classes == 0:
            return x.mean(dim=(2, 3))
        return self.classifier(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if num_classes == 0:
            self.classifier = nn.Identity()
        else:
            self.classifier = nn.Sequential(
                nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
            )

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"}


__all__ = ["SQUEEZENET_CONFIG", "SqueezeNet"]
