"""Crafting inputs from the public backbone alone (Rezaei & Liu, ICLR 2020, section 4).

For feature neuron ``i`` of the pretrained backbone's output, the attacker looks for an image whose
feature vector is ``a·e_i`` — neuron ``i`` very large, every other neuron zero. Whatever head the
victim trained on those features then sees a one-neuron input and is pushed towards the class that
neuron's weights favour most. The paper's code (github.com/shrezaei/Target-Agnostic-Attack,
``attack.py``) minimises ``Σ_j (f_j(x) − t_j)²`` with ``t = 1e5 · e_i`` by plain gradient descent on
the input, ``x ← x − 0.1·∇x``, 49 steps, from a blank image (every pixel 100 of 255).

Here the image lives in 0..255 pixel units, as in that code, and the network sees it through the
backbone's own normalisation; neurons are crafted in batches (the images of one batch are
independent: the backbone is in evaluation mode, so the summed loss has per-image gradients).
``clip=True`` keeps every pixel in 0..255 after each step, so the crafted inputs are images a
real system would accept; the paper's code does not clip.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from headstart.imageops import normalize


@dataclass(frozen=True)
class AttackConfig:
    """The attack's knobs, defaulting to Rezaei & Liu's code."""

    target_value: float = 1e5
    """Value asked of the chosen neuron (the paper's code: one-hot × 1e5; every other neuron: 0)."""
    steps: int = 49
    """Gradient steps per neuron (the paper's ``for i in range(1, epoch)`` with ``epoch = 50``)."""
    step_size: float = 0.1
    """``alpha`` of the paper, in 0..255 pixel units."""
    start_value: float = 100.0
    """Grey level of the blank starting image (the paper's ``initImage=2``: ``ones × 100``)."""
    clip: bool = True
    """Keep pixels in 0..255 after every step (the paper's code does not)."""
    break_confidence: float = 0.99
    """Confidence at which a crafted input "breaks" its class (the paper's ``confidenceLevel``)."""


@dataclass
class CraftedInputs:
    """Crafted images (0..255 pixel units, ``[N, C, H, W]``) and what the backbone made of them."""

    neurons: torch.Tensor
    """Feature neuron each image was crafted for, ``[N]``."""
    pixels: torch.Tensor
    target_activation: torch.Tensor
    """The chosen neuron's pooled feature value after crafting, ``[N]``."""
    largest_other: torch.Tensor
    """The largest other feature value, ``[N]`` (the attack wants it near zero)."""
    output_target: torch.Tensor | None = None
    """The chosen neuron in the pooled features a head reads (after the backbone's last activation), ``[N]``.

    Equal to :attr:`target_activation` when crafting reads the output; below a capped activation
    (EfficientNet-Lite0's ReLU6) it stays at most 6 however large the pre-activation grows."""
    output_largest_other: torch.Tensor | None = None
    """The largest other pooled feature a head reads, ``[N]``."""
    seconds: float = 0.0
    batch_size: int = 0
    config: AttackConfig = field(default_factory=AttackConfig)

    @property
    def per_second(self) -> float:
        return len(self.neurons) / self.seconds if self.seconds else float("nan")


def craft_batch(
    features, neurons: torch.Tensor, image_shape: tuple[int, int, int], mean, std, config: AttackConfig = AttackConfig()
) -> tuple[torch.Tensor, torch.Tensor]:
    """Craft one batch: an image for each neuron in ``neurons``; returns ``(pixels, features)``.

    ``features(normalised_batch) -> [B, D]`` is the public backbone's pooled output.
    """
    device = neurons.device
    pixels = torch.full((len(neurons), *image_shape), float(config.start_value), device=device)
    targets = torch.zeros(len(neurons), 1, device=device)
    for _ in range(config.steps):
        pixels.requires_grad_(True)
        values = features(normalize(pixels / 255.0, mean, std))
        if targets.shape[1] != values.shape[1]:
            targets = torch.zeros_like(values)
            targets[torch.arange(len(neurons), device=device), neurons] = config.target_value
        loss = (values - targets).square().sum()
        (gradient,) = torch.autograd.grad(loss, pixels)
        with torch.no_grad():
            pixels = pixels - config.step_size * gradient
            if config.clip:
                pixels = pixels.clamp_(0.0, 255.0)
    with torch.no_grad():
        values = features(normalize(pixels / 255.0, mean, std))
    return pixels.detach(), values.detach()


def read_out(features, pixels: torch.Tensor, neurons: torch.Tensor, mean, std) -> dict[str, torch.Tensor]:
    """Crafted images as the backbone sees them: the chosen neuron and the largest other, in the crafted layer
    (``target``, ``other``) and in the pooled features a head reads (``output_target``, ``output_other``)."""
    with torch.no_grad():
        values = features(normalize(pixels / 255.0, mean, std))
        output = features.last_output if features.last_output is not None else values
    rows = torch.arange(len(neurons), device=values.device)
    found = {}
    for name, tensor in (("", values), ("output_", output)):
        found[f"{name}target"] = tensor[rows, neurons].cpu()
        masked = tensor.clone()
        masked[rows, neurons] = float("-inf")
        found[f"{name}other"] = masked.max(dim=1).values.cpu()
    return found


_ACTIVATIONS = (
    torch.nn.ReLU,
    torch.nn.ReLU6,
    torch.nn.SiLU,
    torch.nn.GELU,
    torch.nn.Hardswish,
    torch.nn.LeakyReLU,
    torch.nn.ELU,
    torch.nn.Mish,
)


class PublicFeatures:
    """The public pretrained backbone as the attacker uses it: images in, pooled features out.

    ``layer="pre-activation"`` (default) reads the pooled input of the backbone's last activation
    when that activation produces the feature map — the paper crafts on VGG-Face's ``fc7`` before its
    ReLU (``layers[-4]``) for the same reason: below a ReLU (here EfficientNet-Lite0's ReLU6) a
    neuron that is zero everywhere has no gradient and can never be switched on. ``layer="output"``
    reads the pooled features themselves. The backbone's parameters never need gradients.

    Works on its own copy of ``network``: the caller's module keeps its mode, its ``requires_grad``
    flags and its hooks (a hook left on a shared backbone would keep capturing, graph attached, for
    every later forward pass).
    """

    def __init__(self, network, layer: str = "pre-activation") -> None:
        self.network = copy.deepcopy(network).eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.layer = "output"
        self._captured: list[torch.Tensor] = []
        self.last_output: torch.Tensor | None = None
        if layer == "pre-activation":
            last = None
            for module in self.network.backbone.modules():
                if isinstance(module, _ACTIVATIONS):
                    last = module
            if last is not None and self._produces_features(last):
                self.layer = "pre-activation"
                # a pre-hook, cloning: timm's activations work in place
                last.register_forward_pre_hook(lambda _module, inputs: self._captured.append(inputs[0].clone()))
        self.num_features = network.num_features

    def _produces_features(self, activation) -> bool:
        seen: list[torch.Tensor] = []
        handle = activation.register_forward_hook(lambda _m, _i, output: seen.append(output))
        try:
            size = self.network.preprocessing.input_size
            with torch.no_grad():
                features = self.network.forward_features(torch.zeros(1, *size, device=self._device()))
        finally:
            handle.remove()
        return bool(seen) and seen[-1].shape == features.shape and torch.equal(seen[-1], features)

    def _device(self) -> torch.device:
        return next(self.network.parameters()).device

    def __call__(self, normalised: torch.Tensor) -> torch.Tensor:
        self._captured.clear()
        pooled = self.network.pooled(normalised)
        self.last_output = pooled
        if self.layer == "output":
            return pooled
        return self.network.pool(self._captured[-1])
