"""Streaming images from disk: headstart against a plain timm + torchvision ImageFolder loop.

What it measures, on a folder of JPEG photos (ImageFolder layout, ~500×375 px, made once from
scikit-image's bundled sample photos and reused):

* throughput: EfficientNet-Lite0 (random init) fine-tuned for ``--steps`` optimizer steps by
  (a) the loop a PyTorch user writes (ImageFolder + Resize/CenterCrop/ToTensor/Normalize,
  DataLoader, Adam, cross-entropy) and (b) a headstart ``fit_stage`` on the same folder with the
  same batch size, workers, image size and learning rate. Images per second counts the
  optimizer steps × batch size over the wall time of the call, loader start-up included on both
  sides. Target: headstart / plain ≥ 0.95.
* memory: peak resident memory of a child process (its own plus its reaped DataLoader workers')
  that streams the folder (``stream``: a few fine-tuning steps) or trains a frozen-backbone head
  on cached features (``cached-head``: one epoch over every image), for a 5,000- and a
  20,000-image folder. If images are streamed rather than held in memory, peak RSS does not grow
  with the folder. Target: peak RSS 20k / 5k ≤ 1.2 for each kind.

The two speed sides run alternately, A B A B … (``--repeats`` pairs), in one process and never in
parallel, and the best run of each side is kept, so load from other processes on the machine
cannot land on one side only.

    python bench/bench_streaming.py                      # both parts, folders under /tmp/headstart-bench
    python bench/bench_streaming.py --skip-memory --steps 20 --repeats 3
    python bench/bench_streaming.py --bf16 --batch-size 128 --workers 8   # on a GPU

The first run writes the photo folders (the 20,000-image one takes a few minutes on two cores);
later runs find the ``.complete-<count>`` marker and reuse them.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from _alternate import alternate

DEFAULT_FOLDER_ROOT = Path("/tmp/headstart-bench")
MODEL = "efficientnet_lite0"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# scikit-image sample photos that ship with the wheel (no pooch download); grey ones become RGB.
# Class names are the sample names. Any that fail to load offline are skipped.
SAMPLE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "coins",
    "camera",
    "grass",
    "clock",
    "moon",
)
WIDTHS, HEIGHTS = (400, 640), (300, 480)
JPEG_QUALITY = 85
CHUNK = 250


# --------------------------------------------------------------------------------------------------
# The photo folder
# --------------------------------------------------------------------------------------------------

_photos: dict[str, object] | None = None  # per process: sample name → PIL image


def _sample_photos() -> dict[str, object]:
    """Load the bundled sample photos once per process, as RGB PIL images, in a fixed order."""
    global _photos
    if _photos is None:
        import skimage.data
        from PIL import Image

        photos = {}
        for name in SAMPLE_PHOTOS:
            loader = getattr(skimage.data, name, None)
            if loader is None:
                continue
            try:
                array = np.asarray(loader())
            except Exception:  # needs a download (pooch) or the data is absent: skip it
                continue
            if array.dtype != np.uint8:
                array = (array.astype(np.float64) / max(float(array.max()), 1.0) * 255).astype(np.uint8)
            if array.ndim == 2:
                array = np.repeat(array[:, :, None], 3, axis=2)
            photos[name] = Image.fromarray(np.ascontiguousarray(array[:, :, :3]))
        if len(photos) < 8:
            raise RuntimeError(f"only {len(photos)} scikit-image sample photos load offline: {sorted(photos)}")
        _photos = photos
    return _photos


def _write_chunk(target: str, seed: int, start: int, stop: int) -> int:
    """Write images ``start … stop-1``; each image's randomness comes from (seed, index) alone."""
    from PIL import Image

    photos = _sample_photos()
    names = list(photos)
    for index in range(start, stop):
        rng = np.random.default_rng([seed, index])
        name = names[index % len(names)]  # balanced classes: every class present once count ≥ classes
        source = photos[name]
        width, height = int(rng.integers(WIDTHS[0], WIDTHS[1] + 1)), int(rng.integers(HEIGHTS[0], HEIGHTS[1] + 1))
        # Random crop with the target's aspect ratio, 35–100 % of the largest such crop, anywhere.
        aspect = width / height
        full_w = min(source.width, source.height * aspect)
        scale = float(rng.uniform(0.35, 1.0))
        crop_w = max(8.0, full_w * scale)
        crop_h = crop_w / aspect
        left = float(rng.uniform(0, source.width - crop_w))
        top = float(rng.uniform(0, source.height - crop_h))
        image = source.resize((width, height), Image.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        # Colour jitter: contrast about the mean, brightness, per-channel gain.
        pixels = np.asarray(image, dtype=np.float32)
        mean = pixels.mean()
        pixels = (pixels - mean) * rng.uniform(0.7, 1.3) + mean * rng.uniform(0.7, 1.3)
        pixels *= rng.uniform(0.85, 1.15, size=3).astype(np.float32)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        folder = Path(target) / name
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{index:06d}.jpg", quality=JPEG_QUALITY)
    return stop - start


def make_photo_folder(root: Path, count: int, seed: int = 0) -> Path:
    """A torchvision ImageFolder of ``count`` JPEG photos, ``root/<sample name>/<index>.jpg``.

    Deterministic in ``seed``. An existing complete folder (marker ``root/.complete-<count>``) is
    returned at once. The images are written into a sibling temporary folder by two worker
    processes and moved into place when all are written, so an interrupted run never leaves a
    half-written ``root`` behind.
    """
    root = Path(root)
    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists without {marker.name}; remove it or pick another --folder-root")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.partial-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    partial.mkdir()
    _sample_photos()  # fail early here, not inside a worker, if too few photos load
    size = min(CHUNK, max(1, -(-count // 8)))  # at least 8 chunks, so both workers stay busy
    chunks = [(start, min(start + size, count)) for start in range(0, count, size)]
    started = time.perf_counter()
    try:
        with ProcessPoolExecutor(max_workers=2) as pool:
            written = sum(pool.map(_write_chunk, *zip(*[(str(partial), seed, a, b) for a, b in chunks], strict=True)))
        assert written == count, (written, count)
        (partial / marker.name).write_text(json.dumps({"count": count, "seed": seed}) + "\n")
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(partial, root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    print(f"wrote {count} photos to {root} in {seconds:.1f} s ({count / seconds:.0f} images/s)", flush=True)
    return root


def photo_folder(folder_root: Path, count: int) -> Path:
    return make_photo_folder(Path(folder_root) / f"photos-{count}", count)


# --------------------------------------------------------------------------------------------------
# The two training loops
# --------------------------------------------------------------------------------------------------


def plain_loop(
    folder: Path, *, steps: int, batch_size: int, workers: int, image_size: int = 224, bf16: bool = False
) -> dict:
    """What a PyTorch user writes: timm model, torchvision ImageFolder, DataLoader, Adam."""
    import timm
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    classes = sum(1 for entry in Path(folder).iterdir() if entry.is_dir())
    torch.manual_seed(0)
    model = timm.create_model(MODEL, pretrained=False, num_classes=classes)
    started = time.perf_counter()
    memory_format = torch.channels_last if cuda and bf16 else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    model.train()
    dataset = datasets.ImageFolder(
        str(folder),
        transform=transforms.Compose(
            [
                transforms.Resize(image_size),
                transforms.CenterCrop(image_size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=cuda,
        drop_last=True,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_function = torch.nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for images, labels in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and bf16):
                loss = loss_function(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    if cuda:
        torch.cuda.synchronize()
    del loader  # shuts the persistent workers down, inside the timed call as on the other side
    gc.collect()
    seconds = time.perf_counter() - started
    return {"images_per_second": steps * batch_size / seconds, "seconds": seconds}


def _headstart_stage(folder: Path, stage: dict, *, workers: int, image_size: int, output: str, bf16: bool):
    """One headstart stage streaming the folder; returns its record and the wall time of fit_stage."""
    from headstart.data import SourceSpec, TaskData
    from headstart.stage import TrainerOptions, fit_stage
    from headstart.zoo import load

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    network = load(MODEL, weights=None, include_top=False)
    data = TaskData.load(
        SourceSpec(kind="folder", path=str(folder), image_size=image_size, verify="header"),
        splits={"test_fraction": 0.01, "val_fraction": 0.0},
    )
    options = TrainerOptions(
        num_workers=workers,
        progress=False,
        accelerator="gpu" if cuda else "cpu",
        precision="bf16-mixed" if bf16 else "32-true",
    )
    started = time.perf_counter()
    record = fit_stage(network, stage, data, folder=output, image_size=image_size, options=options)
    return record, time.perf_counter() - started


def headstart_loop(
    folder: Path, *, steps: int, batch_size: int, workers: int, image_size: int = 224, output: str, bf16: bool = False
) -> dict:
    """The same fine-tuning as a headstart stage streaming the folder."""
    stage = {
        "name": "fine-tune",
        "epochs": 1,
        "steps_per_epoch": steps,
        "batch_size": batch_size,
        "optimizer": {"lr": 1e-4},
    }
    record, seconds = _headstart_stage(folder, stage, workers=workers, image_size=image_size, output=output, bf16=bf16)
    return {"images_per_second": steps * batch_size / seconds, "seconds": seconds, "residency": record.data.residency}


def headstart_cached_head(
    folder: Path,
    *,
    batch_size: int,
    workers: int,
    image_size: int = 224,
    epochs: int = 3,
    output: str,
    bf16: bool = False,
) -> dict:
    """A frozen-backbone head stage on every image of the folder; headstart caches the features."""
    stage = {
        "name": "head",
        "freeze": ["backbone"],
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": {"lr": 1e-3},
    }
    record, seconds = _headstart_stage(folder, stage, workers=workers, image_size=image_size, output=output, bf16=bf16)
    return {"seconds": seconds, "cached_features": record.cached_features, "residency": record.data.residency}


# --------------------------------------------------------------------------------------------------
# Speed: alternate the two sides
# --------------------------------------------------------------------------------------------------


def speed(arguments: argparse.Namespace, folder: Path) -> float:
    common = dict(
        steps=arguments.steps,
        batch_size=arguments.batch_size,
        workers=arguments.workers,
        image_size=arguments.image_size,
        bf16=arguments.bf16,
    )
    print(
        f"\nthroughput: {MODEL} {arguments.image_size}px, batch {arguments.batch_size}, {arguments.steps} steps, "
        f"{arguments.workers} workers, {folder}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as scratch:
        runs = itertools.count()
        best = alternate(
            {
                "plain": lambda: plain_loop(folder, **common),
                "headstart": lambda: headstart_loop(folder, output=f"{scratch}/run-{next(runs)}", **common),
            },
            arguments.repeats,
        )
    ratio = best["headstart"]["images_per_second"] / best["plain"]["images_per_second"]
    print(
        f"  best: plain {best['plain']['images_per_second']:.1f} images/s, "
        f"headstart {best['headstart']['images_per_second']:.1f} images/s, "
        f"ratio headstart/plain = {ratio:.3f} (target >= 0.95)",
        flush=True,
    )
    return ratio


# --------------------------------------------------------------------------------------------------
# Memory: peak RSS of a child process
# --------------------------------------------------------------------------------------------------


def _peak_rss_mib() -> dict:
    """Peak RSS in MiB of this process and of its largest reaped child (ru_maxrss is KiB on Linux).

    A forked worker's RSS includes the copy-on-write pages it shares with this process, so the sum
    over-counts shared memory; it is an upper bound, and both terms grow if the data is held in memory.
    """
    unit = 1 / 1024 / 1024 if sys.platform == "darwin" else 1 / 1024  # macOS reports bytes
    self_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
    children_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit
    return {"self_mib": self_mib, "children_mib": children_mib, "peak_rss_mib": self_mib + children_mib}


def child(arguments: argparse.Namespace) -> None:
    """Run one memory measurement; print the result as JSON on the last stdout line."""
    folder = photo_folder(arguments.folder_root, arguments.count)
    common = dict(batch_size=arguments.batch_size, workers=arguments.workers, bf16=arguments.bf16)
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as scratch:
        if arguments.child == "stream":
            result = headstart_loop(
                folder, steps=arguments.child_steps, image_size=arguments.image_size, output=f"{scratch}/run", **common
            )
        else:
            result = headstart_cached_head(
                folder, epochs=1, image_size=arguments.head_image_size, output=f"{scratch}/run", **common
            )
    gc.collect()  # let DataLoader workers be joined, so RUSAGE_CHILDREN includes them
    result.update(_peak_rss_mib(), kind=arguments.child, count=arguments.count)
    print(json.dumps(result, default=str), flush=True)


def peak_rss(kind: str, count: int, arguments: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--count",
        str(count),
        "--folder-root",
        str(arguments.folder_root),
        "--batch-size",
        str(arguments.batch_size),
        "--workers",
        str(arguments.workers),
        "--image-size",
        str(arguments.image_size),
        "--head-image-size",
        str(arguments.head_image_size),
        "--child-steps",
        str(arguments.child_steps),
    ]
    if arguments.bf16:
        command.append("--bf16")
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        sys.stdout.write(completed.stdout)
        raise RuntimeError(f"child {kind} {count} failed with exit status {completed.returncode}")
    return json.loads(lines[-1])


def memory(arguments: argparse.Namespace) -> dict[str, float]:
    counts = sorted(arguments.counts)
    print(
        f"\npeak RSS (child process + its reaped workers), folders of {' and '.join(map(str, counts))} photos; "
        f"stream: {arguments.child_steps} steps at {arguments.image_size}px; "
        f"cached-head: 1 epoch at {arguments.head_image_size}px",
        flush=True,
    )
    ratios = {}
    for kind in ("stream", "cached-head"):
        peaks, own = {}, {}
        for count in counts:
            result = peak_rss(kind, count, arguments)
            peaks[count], own[count] = result["peak_rss_mib"], result["self_mib"]
            detail = "".join(f"  {key} {result[key]}" for key in ("residency", "cached_features") if key in result)
            print(
                f"  {kind:<11} {count:6d} images: {result['peak_rss_mib']:8.1f} MiB "
                f"(self {result['self_mib']:.1f} + workers {result['children_mib']:.1f}), "
                f"{result['seconds']:.1f} s{detail}",
                flush=True,
            )
        ratios[kind] = peaks[counts[-1]] / peaks[counts[0]]
        print(
            f"  {kind}: peak RSS {counts[-1]}/{counts[0]} = {ratios[kind]:.3f} (target <= 1.2); "
            f"main process alone {own[counts[-1]] / own[counts[0]]:.3f}",
            flush=True,
        )
    return ratios


# --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per speed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2, help="alternating run pairs per speed comparison")
    parser.add_argument(
        "--counts",
        type=int,
        nargs="+",
        default=[5000, 20000],
        help="folder sizes; speed uses the smallest, memory compares the largest to the smallest",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast and channels_last on a GPU")
    parser.add_argument(
        "--folder-root",
        type=Path,
        default=DEFAULT_FOLDER_ROOT,
        help="the photo folders are <folder-root>/photos-<count>",
    )
    parser.add_argument("--child-steps", type=int, default=4, help="steps of the 'stream' memory child")
    parser.add_argument("--head-image-size", type=int, default=96, help="image size of the 'cached-head' memory child")
    parser.add_argument("--child", choices=("stream", "cached-head"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    if arguments.child:
        child(arguments)
        return

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}; CUDA device: {cuda}"
        f"{'; bf16' if arguments.bf16 else ''}",
        flush=True,
    )
    counts = sorted(arguments.counts)
    folders = {
        count: photo_folder(arguments.folder_root, count) for count in (counts[:1] if arguments.skip_memory else counts)
    }
    summary = []
    if not arguments.skip_speed:
        ratio = speed(arguments, folders[counts[0]])
        verdict = "ok" if ratio >= 0.95 else "MISSED"
        summary.append(f"throughput headstart/plain = {ratio:.3f} (target >= 0.95) {verdict}")
    if not arguments.skip_memory and len(counts) > 1:
        for kind, ratio in memory(arguments).items():
            summary.append(
                f"peak RSS {kind} {counts[-1]}/{counts[0]} = {ratio:.3f} (target <= 1.2) "
                f"{'ok' if ratio <= 1.2 else 'MISSED'}"
            )
    print("\nsummary:")
    for line in summary:
        print(f"  {line}")


if __name__ == "__main__":
    main()
