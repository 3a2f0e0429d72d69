"""SimpleEncoder: the Encoder protocol around any image → feature-map module."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from headstart.errors import HeadstartError
from headstart.pretext import Encoder, SimpleEncoder


class Spy(nn.Module):
    def forward(self, images):
        self.seen = images
        return images[:, :, ::2, ::2]


def test_simple_encoder_follows_the_protocol_and_average_pools():
    encoder = SimpleEncoder(Spy(), 3, 3)
    assert isinstance(encoder, Encoder)
    images = torch.rand(2, 3, 8, 8)
    assert encoder.feature_map(images).shape == (2, 3, 4, 4)
    assert torch.allclose(encoder.pooled(images), images[:, :, ::2, ::2].mean(dim=(2, 3)))


def test_channels_are_adapted_and_normalised_inside():
    spy = Spy()
    encoder = SimpleEncoder(spy, 3, 3, in_channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    grey = torch.rand(2, 1, 4, 4)
    encoder.pooled(grey)
    assert spy.seen.shape == (2, 3, 4, 4)
    assert torch.allclose(spy.seen, ((grey - 0.5) / 0.25).expand(-1, 3, -1, -1))
    single = SimpleEncoder(spy, 1, 1, in_channels=1)
    colour = torch.rand(2, 3, 4, 4)
    single.pooled(colour)
    # one conversion everywhere: BT.601 luminance, as the data layer and the stages use
    expected = 0.299 * colour[:, 0:1] + 0.587 * colour[:, 1:2] + 0.114 * colour[:, 2:3]
    assert torch.allclose(spy.seen, expected)


def test_half_a_normalisation_is_refused():
    with pytest.raises(HeadstartError, match="both mean and std"):
        SimpleEncoder(Spy(), 3, 3, mean=(0.5,))


@pytest.mark.parametrize("model_name, width", [("test_resnet", 96), ("test_efficientnet", 256)])
def test_timm_backbones_give_their_width_and_stride(model_name, width):
    backbone = timm.create_model(model_name, num_classes=0, global_pool="")
    encoder = SimpleEncoder(backbone, backbone.num_features, backbone.num_features)
    assert encoder.reduction == 32
    assert encoder.pooled(torch.rand(2, 3, 64, 64)).shape == (2, width)
    assert encoder.feature_map(torch.rand(2, 3, 64, 64)).shape == (2, width, 2, 2)
