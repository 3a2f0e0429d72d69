"""Fine-tuning from a folder of JPEGs on the accelerator: images/s, time waiting for data, MFU.

For ResNet50 and EfficientNet-Lite0 (random init, full fine-tune at ``--image-size``, batch
``--batch-size``), each through a headstart ``fit_stage`` streaming a folder of JPEG photos written
offline from scikit-image's bundled samples (``bench_streaming.make_photo_folder``), it prints:

* images/s over the steps after ``--warmup`` (compilation and loader start-up left out);
* the share of step time spent waiting for data: the time from the end of one step to the start
  of the next (the loader's ``next()`` and the copy to the device) over the whole step;
* model FLOP utilisation: training FLOPs per image (3 × the forward FLOPs counted by
  ``torch.utils.flop_counter.FlopCounterMode``) × images/s ÷ the device's dense peak for the
  precision, from :data:`PEAK_TFLOPS` (vendors' datasheets). On the CPU: not applicable.

Sides, run alternately (``_alternate.alternate``): eager against ``compile: true``, and CPU
decoding (Pillow in loader workers) against device decoding (nvJPEG, ``decode: device``). On a
GPU the runs use bf16-mixed, channels-last and prefetching; ``--precision 32-true`` to compare.

    python bench/bench_accelerator.py                    # on a GPU machine
    python bench/bench_accelerator.py --tiny             # the same code paths on a CPU in < 1 min

``--tiny`` runs both models at 64 px, batch 4, two measured steps, 2 workers; ``compile`` there
uses the ``eager`` backend (TorchDynamo's graph capture of the same code, run eagerly: inductor
would spend minutes generating C++ on a small CPU) and device decoding is played by the CPU
(``DeviceFeed("cpu")``: libjpeg-turbo through torchvision instead of nvJPEG). Tiny figures say the
paths run; they measure nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _alternate import alternate  # noqa: E402

MODELS = {"resnet50": "ResNet50", "efficientnet_lite0": "EfficientNet-Lite0"}

PEAK_TFLOPS: dict[str, dict[str, float]] = {
    # Dense (no sparsity) tensor-core bf16 and plain fp32 peaks, TFLOP/s, from NVIDIA's datasheets.
    # Matched against torch.cuda.get_device_name() in this order (the first name contained wins).
    "B200": {"bf16": 2250.0, "fp32": 80.0},
    "H200": {"bf16": 989.4, "fp32": 66.9},
    "GH200": {"bf16": 989.4, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "fp32": 60.0},
    "H100": {"bf16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp32": 30.3},
    "A10": {"bf16": 125.0, "fp32": 31.2},
}


def device_peak(precision: str) -> tuple[str, float | None]:
    """The device's name and its dense peak TFLOP/s for ``precision`` (``None``: not in the table, or a CPU)."""
    if not torch.cuda.is_available():
        return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", None
    name = torch.cuda.get_device_name(0)
    kind = "bf16" if precision.startswith(("bf16", "16")) else "fp32"
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return name, peaks[kind]
    return name, None


def training_flops_per_image(model_name: str, image_size: int) -> float:
    """Training FLOPs of one image through ``model_name`` (timm): 3 × the forward FLOPs counted by
    PyTorch (the backward pass costs about twice the forward: gradients of the inputs and of the
    weights; Kaplan et al. 2020, the convention of MFU figures). The counter's own backward count
    is not used: it overcounts grouped (depthwise) convolutions, tenfold for EfficientNet-Lite0."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    model = timm.create_model(model_name, pretrained=False, num_classes=10).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, image_size, image_size))
    return 3.0 * counter.get_total_flops()


class StepClock:
    """A Lightning callback timing each step's wait for data and its compute (CUDA synchronised)."""

    def __init__(self) -> None:
        import lightning.pytorch as pl

        clock = self

        class _Clock(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_index):
                clock.started(batch_index)

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
                clock.ended()

        self.callback = _Clock()
        self.waits: list[float] = []
        self.steps: list[float] = []
        self.last_end: float | None = None
        self.start = 0.0

    def started(self, batch_index: int) -> None:
        now = time.perf_counter()
        self.waits.append(now - self.last_end if self.last_end is not None else 0.0)
        self.start = now

    def ended(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.last_end = time.perf_counter()
        self.steps.append(self.last_end - self.start)


@contextlib.contextmanager
def cpu_device_decoding() -> Iterator[None]:
    """On a machine without CUDA: plans of streamed folders get ``DeviceFeed("cpu", decode=True)``,
    the device-decoding path with the CPU in nvJPEG's place."""
    from headstart.engine.accelerate import DeviceFeed
    from headstart.engine.trainer import TrainerOptions

    original = TrainerOptions.plan

    def plan(options, images):
        result = original(options, images)
        if result.residency == "stream":
            result.feed = DeviceFeed("cpu", decode=True)
        return result

    TrainerOptions.plan = plan  # type: ignore[method-assign]
    try:
        yield
    finally:
        TrainerOptions.plan = original  # type: ignore[method-assign]


@contextlib.contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """``torch.compile`` with ``backend`` while the block runs (``None``: PyTorch's default, inductor)."""
    if backend is None:
        yield
        return
    original = torch.compile
    torch.compile = functools.partial(original, backend=backend)  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.compile = original


def fine_tune(arguments: argparse.Namespace, data, model: str, *, compile: bool, decode: str, output: str) -> dict:
    """One side: a headstart fine-tuning stage streaming the folder; steady-state figures."""
    from headstart.stage import TrainerOptions, fit_stage
    from headstart.zoo import load

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    network = load(model, weights=None, include_top=False)
    options = TrainerOptions(
        num_workers=arguments.workers,
        progress=False,
        precision=arguments.precision,
        compile=compile,
        channels_last=cuda,
        decode="device" if decode == "device" and cuda else "cpu",
        prefetch=cuda,
        loggers=["csv"],
    )
    clock = StepClock()
    stage = {
        "name": "fine-tune",
        "epochs": 1,
        "steps_per_epoch": arguments.warmup + arguments.steps,
        "batch_size": arguments.batch_size,
        "optimizer": {"name": "sgd", "lr": 0.01},
    }
    with contextlib.ExitStack() as stack:
        if decode == "device" and not cuda:
            stack.enter_context(cpu_device_decoding())
        if compile:
            stack.enter_context(compile_backend(arguments.backend))
        started = time.perf_counter()
        fit_stage(
            network,
            stage,
            data,
            folder=output,
            image_size=arguments.image_size,
            options=options,
            callbacks=[clock.callback],
        )
        seconds = time.perf_counter() - started
    waits, steps = clock.waits[arguments.warmup :], clock.steps[arguments.warmup :]
    total = sum(waits) + sum(steps)
    return {
        "images_per_second": len(steps) * arguments.batch_size / total,
        "seconds": seconds,
        "waiting": sum(waits) / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="64 px, batch 4, 2 steps: the code paths on a CPU")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps before measuring (compilation, loader start)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per side")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on a GPU, 32-true on a CPU")
    parser.add_argument("--backend", default=None, help="torch.compile backend (default: inductor; tiny: eager)")
    parser.add_argument("--sides", nargs="+", default=["eager", "compile", "device-decode"])
    parser.add_argument("--folder-root", type=Path, default=Path(tempfile.gettempdir()) / "headstart-bench")
    arguments = parser.parse_args()
    if arguments.tiny:
        arguments.image_size, arguments.batch_size, arguments.steps, arguments.warmup = 64, 4, 2, 1
        arguments.workers, arguments.backend = 2, arguments.backend or "eager"
    cuda = torch.cuda.is_available()
    arguments.precision = arguments.precision or ("bf16-mixed" if cuda else "32-true")

    from bench_streaming import photo_folder
    from headstart.data import SourceSpec, TaskData

    count = (arguments.warmup + arguments.steps) * arguments.batch_size * 102 // 100 + 8  # 1% held out
    folder = photo_folder(arguments.folder_root, max(count, 64))
    name, peak = device_peak(arguments.precision)
    print(
        f"device: {name}; torch {torch.__version__}; {os.cpu_count()} CPUs; {arguments.workers} loader workers; "
        f"{arguments.precision}; {arguments.image_size} px, batch {arguments.batch_size}, "
        f"{arguments.steps} steps after {arguments.warmup}; peak {f'{peak:.0f} TFLOP/s' if peak else 'n/a'}",
        flush=True,
    )
    data = TaskData.load(
        SourceSpec(kind="folder", path=str(folder), image_size=arguments.image_size, verify="header"),
        {"test_fraction": 0.01, "val_fraction": 0.0},
    )
    sides = {
        "eager": dict(compile=False, decode="cpu"),
        "compile": dict(compile=True, decode="cpu"),
        "device-decode": dict(compile=False, decode="device"),
    }
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as scratch:
        for model in arguments.models:
            flops = training_flops_per_image(model, arguments.image_size)
            print(f"\n{MODELS[model]}: {flops / 1e9:.2f} GFLOP per training image at {arguments.image_size} px")
            runs = iter(range(10_000))
            best = alternate(
                {
                    side: (
                        lambda how=sides[side], model=model, runs=runs: fine_tune(
                            arguments, data, model, output=f"{scratch}/{model}-{next(runs)}", **how
                        )
                    )
                    for side in arguments.sides
                },
                arguments.repeats,
            )
            for side, result in best.items():
                utilisation = (
                    f"{100 * result['images_per_second'] * flops / (peak * 1e12):.1f}% MFU" if peak else "MFU n/a"
                )
                print(
                    f"  {side:<14} {result['images_per_second']:9.1f} images/s  "
                    f"waiting for data {100 * result['waiting']:5.1f}% of step time  {utilisation}"
                )
            if "eager" in best:
                for side in best:
                    if side != "eager":
                        ratio = best[side]["images_per_second"] / best["eager"]["images_per_second"]
                        print(f"  {side} / eager = {ratio:.2f}")
            gc.collect()


if __name__ == "__main__":
    main()
