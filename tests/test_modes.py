"""headstart.modes.evaluating: evaluation mode for a block, the caller's mode restored afterwards."""

import pytest
import torch
from torch import nn

from headstart.modes import evaluating
from headstart.zoo import load


def test_the_mode_and_gradients_come_back_also_after_an_error():
    module = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)).train()
    with evaluating(module):
        assert not module.training and not module[1].training
        assert not torch.is_grad_enabled()
    assert module.training and module[1].training and torch.is_grad_enabled()
    with pytest.raises(RuntimeError), evaluating(module):
        raise RuntimeError("boom")
    assert module.training
    module.eval()
    with evaluating(module, no_grad=False):
        assert torch.is_grad_enabled()
    assert not module.training


def test_a_network_keeps_its_frozen_batchnorm_layers_in_eval_after_restoring():
    network = load("test_resnet", weights=None, in_chans=1)
    frozen = network.set_bn_policy("frozen")
    network.train()
    with evaluating(network):
        network(torch.zeros(2, 1, 16, 16))
    modules = dict(network.named_modules())
    assert frozen and all(not modules[name].training for name in frozen)
    others = [m for name, m in modules.items() if isinstance(m, nn.BatchNorm2d) and name not in frozen]
    assert network.training and all(m.training for m in others)
