"""headstart's SimCLR stage against lightly's own SimCLR example loop: same backbone, data, epochs.

Both sides pretrain a randomly initialised ``resnet10t`` at 32 px on the demo's unlabelled pool
(MNIST-5k training pool, 3,750 digits, labels hidden) for the same number of epochs, batch 256,
SGD at lr 0.06 with momentum 0.9 (lightly's example: ``examples/pytorch/simclr.py``, its
``SimCLRProjectionHead`` and ``NTXentLoss``). lightly's side is that loop as written, its
``SimCLRTransform`` at ``input_size=32`` applied per image in the ``DataLoader`` (flips off: digits
must not be mirrored; its colour jitter and grey conversion left as they are); headstart's side is a
``pretext: {name: simclr}`` stage through ``fit_stage`` (views drawn per batch on the device).

Measured per side: pretraining images/s (pool images × epochs / wall seconds) and the k-NN probe of
the pooled features (k = 20, cosine, votes exp(sim/0.07); bank = the 100 labelled training digits,
queries = the 1,000 test digits). The sides alternate (headstart first at even seeds, lightly
first at odd ones) and run one after the other, never in parallel; ratios are headstart / lightly.

    python bench/bench_simclr_vs_lightly.py --epochs 5 --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from headstart.config import DataSpec  # noqa: E402
from headstart.data import TaskData  # noqa: E402
from headstart.demo import DATA  # noqa: E402
from headstart.imageops import normalize, to_unit_range  # noqa: E402
from headstart.probe import knn_probe  # noqa: E402

MODEL = "resnet10t"
SIZE = 32
BATCH = 256
LR = 0.06


def _features(embed, images: torch.Tensor) -> torch.Tensor:
    """Pooled features of 0..1 images [N, C, H, W] in eval mode, in chunks."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 500):
            out.append(embed(images[start : start + 500]))
    return torch.cat(out)


def _knn(embed, bank, bank_labels, queries, query_labels) -> float:
    return float(
        knn_probe(_features(embed, bank), bank_labels, _features(embed, queries), query_labels, k=20, temperature=0.07)
    )


def _split_images(data: TaskData, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    split = data.split(name)
    images = to_unit_range(split.store.load(split.positions))
    images = torch.nn.functional.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return images, torch.from_numpy(np.asarray(split.labels)).long()


def headstart_side(data: TaskData, epochs: int, seed: int, probe_sets) -> dict:
    from headstart.stage import fit_stage
    from headstart.zoo import load

    torch.manual_seed(seed)
    network = load(MODEL, weights=None, include_top=False, in_chans=3)
    stage = {
        "name": "simclr",
        "data": "all",
        "pretext": {"name": "simclr"},
        "epochs": epochs,
        "batch_size": BATCH,
        "optimizer": {"name": "sgd", "lr": LR, "momentum": 0.9},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        fit_stage(
            network,
            stage,
            data,
            folder=Path(folder) / "simclr",
            seed=seed,
            image_size=SIZE,
            options={"progress": False},
        )
    seconds = time.perf_counter() - started
    network.eval()
    encoder = network.encoder(SIZE)
    knn = _knn(encoder.pooled, *probe_sets)
    return {"seconds": seconds, "images_per_second": epochs * len(data.split("all")) / seconds, "knn": knn}


def lightly_side(data: TaskData, epochs: int, seed: int, probe_sets) -> dict:
    """lightly's ``examples/pytorch/simclr.py`` loop on the same images and backbone."""
    import timm
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms.simclr_transform import SimCLRTransform
    from PIL import Image

    torch.manual_seed(seed)
    backbone = timm.create_model(MODEL, pretrained=False, num_classes=0, in_chans=3)
    model = torch.nn.Sequential()
    model.backbone = backbone
    model.projection_head = SimCLRProjectionHead(backbone.num_features, backbone.num_features, 128)
    transform = SimCLRTransform(input_size=SIZE, hf_prob=0.0, vf_prob=0.0, rr_prob=0.0)
    pool = data.split("all")
    pixels = (to_unit_range(pool.store.load(pool.positions))[:, 0].numpy() * 255).round().astype(np.uint8)

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(pixels)

        def __getitem__(self, index):
            return transform(Image.fromarray(pixels[index]).convert("RGB"))

    loader = torch.utils.data.DataLoader(
        Views(),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        for x0, x1 in loader:
            z0 = model.projection_head(model.backbone(x0))
            z1 = model.projection_head(model.backbone(x1))
            loss = criterion(z0, z1)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    seconds = time.perf_counter() - started
    backbone.eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # lightly's default normalisation
    knn = _knn(lambda images01: backbone(normalize(images01.expand(-1, 3, -1, -1), mean, std)), *probe_sets)
    return {"seconds": seconds, "images_per_second": epochs * len(pool) / seconds, "knn": knn}


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = TaskData.from_spec(DataSpec(**DATA))
    bank, bank_labels = _split_images(data, "train")
    queries, query_labels = _split_images(data, "test")
    probe_sets = (bank, bank_labels, queries, query_labels)
    print(
        f"SimCLR, {MODEL} at {SIZE} px, {len(data.split('all'))} unlabelled digits, {args.epochs} epochs, "
        f"batch {BATCH}, SGD {LR}; k-NN probe: {len(bank)} labelled bank, {len(queries)} test queries; "
        f"{args.threads} thread(s)"
    )
    results: dict[str, list[dict]] = {"headstart": [], "lightly": []}
    sides = {"headstart": headstart_side, "lightly": lightly_side}
    for number, seed in enumerate(args.seeds):
        order = ["headstart", "lightly"] if number % 2 == 0 else ["lightly", "headstart"]
        for name in order:
            result = sides[name](data, args.epochs, seed, probe_sets)
            results[name].append(result)
            print(
                f"  seed {seed}  {name:<9}  {result['images_per_second']:7.1f} images/s  ({result['seconds']:6.1f} s)"
                f"  k-NN {result['knn']:.3f}",
                flush=True,
            )
    for name, runs in results.items():
        print(
            f"{name:<9}  images/s {_spread([r['images_per_second'] for r in runs])}  "
            f"k-NN {_spread([r['knn'] for r in runs])}"
        )
    pairs = list(zip(results["headstart"], results["lightly"], strict=True))
    speed = [ours["images_per_second"] / peer["images_per_second"] for ours, peer in pairs]
    knn = [ours["knn"] - peer["knn"] for ours, peer in pairs]
    print(f"ratio headstart / lightly: images/s {_spread(speed)}×; k-NN difference (paired by seed) {_spread(knn)}")


if __name__ == "__main__":
    main()
