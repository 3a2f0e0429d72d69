"""Two augmented views of every image, drawn per batch on the training device (SimCLR, BYOL, DINO).

Joint-embedding methods learn by making the features of two random views of the same image agree.
Chen et al. (SimCLR, ICML 2020, fig. 5 and table 1) found the composition of random cropping and
colour distortion the one that matters: crop alone or colour alone leave the network a shortcut
(matching colour histograms). Which distortions make sense depends on the data, so the defaults
here follow the images:

* random resized crop (area ``crop_scale``, aspect 3/4..4/3) — always; ``(0.2, 1.0)`` by default,
  the lower bound used for 32-px images (lightly's CIFAR-10 settings; SimCLR's ImageNet crops go
  down to 0.08 of the area);
* horizontal flip — ``flip="auto"``: on for colour images, off for grey ones (digits and text
  change meaning when mirrored);
* colour jitter (brightness, contrast, saturation, strength 0.5 with probability 0.8) and random
  greyscale (0.2) — only for colour images: grey images (one channel, or three equal ones) get
  brightness and contrast jitter alone, as there is no colour to distort; hue is left out (a hue
  rotation needs an HSV round trip per pixel for little gain at this size);
* Gaussian blur — off by default (SimCLR leaves it out for 32-px CIFAR images), ``blur=p`` turns it
  on with probability p;
* a random turn of each crop — off by default (SimCLR has none), ``rotate=d`` turns each crop by
  up to ±d degrees. With turns of up to 25° (τ 0.2, batches of 64, 10 epochs) SimCLR on the demo's
  3,750 unlabelled digits reaches a k-NN probe of 0.855 ± 0.010 and a linear probe of 0.917 ±
  0.003 (seeds 0–2); the pretext guide's "Recipes for small grey images" has the single-seed
  tuning trail that singles out the turn.

Why not lightly's transforms: lightly's ``SimCLRTransform`` is a torchvision pipeline applied to
one PIL image at a time in the ``DataLoader``; headstart alters whole batches on the training
device from a seeded generator, like every pretext task. Measured with
``python bench/bench_ssl_views.py`` (two views of 256 MNIST digits at 32 px, 2 threads, the sides
alternating, best of 3): headstart 52,800 images/s on the CPU, lightly 1,120 images/s — 47× — so
lightly's per-image pipeline would need dozens of worker processes to keep a small network fed,
where the batched views cost about 5 ms a step. lightly's losses, heads and momentum utilities are
used as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from headstart.errors import HeadstartError
from headstart.imageops import convert_channels
from headstart.pretext.base import require


def is_grey(images: Tensor) -> bool:
    """One channel, or three channels equal everywhere."""
    if images.shape[1] == 1:
        return True
    return bool((images - images.mean(dim=1, keepdim=True)).abs().amax() < 1e-6)


def _uniform(count: int, low: float, high: float, generator: torch.Generator, device) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def random_resized_crop(
    images: Tensor,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    degrees: float = 0.0,
) -> Tensor:
    """A crop of random area (``scale``, fraction of the image) and aspect ratio per image, turned
    by a random angle in ``±degrees`` (none by default), resized back to the image's size
    (bilinear), in one ``grid_sample``."""
    batch = images.shape[0]
    device = images.device
    area = _uniform(batch, scale[0], scale[1], generator, device)
    log_ratio = _uniform(batch, math.log(ratio[0]), math.log(ratio[1]), generator, device)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * (1 - width)
    centre_y = (torch.rand(batch, generator=generator, device=device) * 2 - 1) * (1 - height)
    theta = torch.zeros(batch, 2, 3, device=device, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = width, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    if degrees > 0:  # the crop's sampling grid turned about its centre
        angle = _uniform(batch, -math.radians(degrees), math.radians(degrees), generator, device).to(images.dtype)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta[:, 0, 0], theta[:, 0, 1] = width * cos, -height * sin
        theta[:, 1, 0], theta[:, 1, 1] = width * sin, height * cos
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _factor(batch: int, strength: float, apply: Tensor, generator: torch.Generator, device) -> Tensor:
    factor = _uniform(batch, 1 - strength, 1 + strength, generator, device)
    return torch.where(apply, factor, torch.ones_like(factor)).view(-1, 1, 1, 1)


def _grey(images: Tensor) -> Tensor:
    """The BT.601 grey image (:func:`headstart.imageops.convert_channels`) in as many channels as ``images``."""
    return convert_channels(images, 1).expand_as(images)


def colour_jitter(
    images: Tensor, strength: float, probability: float, generator: torch.Generator, *, colour: bool
) -> Tensor:
    """Brightness, contrast (and saturation when ``colour``) factors in ``1 ± 0.8·strength``
    (SimCLR's ``ColorJitter(0.8s, 0.8s, 0.8s)``), all applied to a share ``probability`` of the images."""
    batch, device = images.shape[0], images.device
    apply = torch.rand(batch, generator=generator, device=device) < probability
    spread = 0.8 * strength
    images = images * _factor(batch, spread, apply, generator, device)
    mean = _grey(images).mean(dim=(-3, -2, -1), keepdim=True)
    images = mean + (images - mean) * _factor(batch, spread, apply, generator, device)
    if colour:
        grey = _grey(images)
        images = grey + (images - grey) * _factor(batch, spread, apply, generator, device)
    return images.clamp(0, 1)


def gaussian_blur(
    images: Tensor, probability: float, generator: torch.Generator, sigma: tuple[float, float] = (0.1, 2.0)
) -> Tensor:
    """Blur a share ``probability`` of the images with a Gaussian of random σ (in pixels at 32 px,
    scaled with the side), kernel ~10% of the side as in SimCLR; one grouped convolution."""
    batch, channels, height, width = images.shape
    device = images.device
    apply = torch.rand(batch, generator=generator, device=device) < probability
    sigmas = _uniform(batch, sigma[0], sigma[1], generator, device) * min(height, width) / 32.0
    radius = max(1, int(0.05 * min(height, width)))
    offsets = torch.arange(-radius, radius + 1, device=device, dtype=images.dtype)
    kernel = torch.exp(-(offsets[None] ** 2) / (2 * sigmas[:, None] ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    kernel = kernel.repeat_interleave(channels, 0)  # one per (image, channel)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=batch * channels)
    blurred = flat.view(batch, channels, height, width)
    return torch.where(apply.view(-1, 1, 1, 1), blurred, images)


def area_range(value: object, option: str, task: str) -> tuple[float, float]:
    """``(low, high)`` shares of an image's area, ``0 < low <= high <= 1``; anything else is refused
    naming ``task`` and ``option``."""
    try:
        low, high = (float(bound) for bound in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise HeadstartError(f"{task}: {option} {value!r}: expected two numbers [low, high]") from None
    require(0 < low <= high <= 1, f"{task}: {option} {(low, high)}: expected 0 < low <= high <= 1")
    return low, high


def _in_range(value: object, low: float, high: float) -> bool:
    return isinstance(value, int | float) and low <= value <= high


@dataclass(kw_only=True)
class ViewOptions:
    """How the two views are drawn (module docstring for the defaults and why)."""

    crop_scale: tuple[float, float] = (0.2, 1.0)
    flip: bool | str = "auto"
    colour_jitter: float = 0.5
    """Strength s of the colour distortion (SimCLR's appendix A: 0.5 for CIFAR-10, 1.0 for ImageNet)."""
    jitter_probability: float = 0.8
    greyscale: float = 0.2
    blur: float = 0.0
    rotate: float = 0.0
    """Largest angle (degrees) of a random turn of each crop; 0: none (SimCLR's default). Digits and
    handwriting tolerate small turns (a few degrees of slant) that a convolution does not undo."""

    def __post_init__(self) -> None:
        self.check("views")

    def check(self, task: str) -> None:
        self.crop_scale = area_range(self.crop_scale, "crop_scale", task)
        require(self.flip in (True, False, "auto"), f"{task}: flip {self.flip!r}: expected true, false or auto")
        for name in ("jitter_probability", "greyscale", "blur"):
            value = getattr(self, name)
            require(_in_range(value, 0, 1), f"{task}: {name} {value!r}: expected a probability in 0..1")
        require(_in_range(self.colour_jitter, 0, 1), f"{task}: colour_jitter {self.colour_jitter!r}: expected 0..1")
        require(_in_range(self.rotate, 0, 180), f"{task}: rotate {self.rotate!r}: expected 0..180 degrees")

    def view(self, images: Tensor, generator: torch.Generator, crop_scale: tuple[float, float] | None = None) -> Tensor:
        """One random view of every image (crops of area ``crop_scale``, the options' own by default)."""
        grey = is_grey(images)
        out = random_resized_crop(images, crop_scale or self.crop_scale, generator, degrees=self.rotate)
        if self.flip is True or (self.flip == "auto" and not grey):
            flip = torch.rand(out.shape[0], generator=generator, device=out.device) < 0.5
            out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
        if self.colour_jitter > 0:
            out = colour_jitter(out, self.colour_jitter, self.jitter_probability, generator, colour=not grey)
        if not grey and self.greyscale > 0:
            drop = torch.rand(out.shape[0], generator=generator, device=out.device) < self.greyscale
            out = torch.where(drop.view(-1, 1, 1, 1), _grey(out), out)
        if self.blur > 0:
            out = gaussian_blur(out, self.blur, generator)
        return out

    def two_views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.view(images, generator), self.view(images, generator)


__all__ = ["ViewOptions", "area_range", "colour_jitter", "gaussian_blur", "is_grey", "random_resized_crop"]
