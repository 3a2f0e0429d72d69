"""headstart's SimCLR, BYOL and DINO stages against lightly's own example loops, at equal wall time.

Both sides pretrain a randomly initialised ``resnet10t`` at 32 px on the demo's unlabelled pool
(MNIST-5k training pool, 3,750 digits, labels hidden) in batches of :data:`RECIPES`'s size.
headstart's side is a ``pretext`` stage through ``fit_stage`` with the recipe of :data:`RECIPES`
(the pretext guide's "Recipes for small grey images") for ``--epochs`` passes; its wall time,
setup and per-epoch validation included, becomes the budget of lightly's side. lightly's side is
its example loop as written (``examples/pytorch/simclr.py``, ``byol.py``, ``dino.py``: its heads,
losses, optimizers, ``update_momentum`` and ``cosine_schedule``), with its own transforms applied
per image in the ``DataLoader`` (no worker processes: two cores) at ``input_size=32``, flips off
(digits must not be mirrored) and blur off (as lightly's own CIFAR-10 benchmark does for 32-px
images); it keeps its own augmentations otherwise (no turns), so the k-NN difference is recipe and
speed together. It times its first steps (again after 20, at the steady pace), plans as many steps
as fit in the budget (its momentum and teacher-temperature schedules span them) and stops there.

Measured per side: pretraining images/s (images seen / wall seconds) and the k-NN probe of the
pooled features (k = 20, cosine, votes exp(sim/0.07); bank = the 100 labelled training digits,
queries = the 1,000 test digits). The sides alternate (headstart first at even seeds, lightly first
at odd ones) and run one after the other, never in parallel; ratios are headstart / lightly.

    python bench/bench_ssl_vs_lightly.py --methods simclr byol dino --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from headstart.config import DataSpec
from headstart.data import TaskData
from headstart.demo import DATA
from headstart.imageops import normalize, to_unit_range
from headstart.probe import knn_probe

MODEL = "resnet10t"
SIZE = 32
LIGHTLY_MEAN, LIGHTLY_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # lightly's default normalisation

RECIPES: dict[str, dict] = {
    "simclr": {
        "pretext": {"name": "simclr", "temperature": 0.2, "rotate": 25},
        "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.06, "momentum": 0.9, "schedule": "cosine"},
    },
    "byol": {
        "pretext": {"name": "byol", "rotate": 25},
        "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.06, "momentum": 0.9, "weight_decay": 0.0005, "schedule": "cosine"},
    },
    "dino": {
        "pretext": {"name": "dino", "rotate": 25, "warmup_teacher_temperature": 0.04, "teacher_temperature": 0.07},
        "batch_size": 64,
        "optimizer": {"name": "adamw", "lr": 0.0005, "weight_decay": 0.04, "schedule": "cosine"},
    },
}
"""headstart's side: the stage each method runs (pretext options, batch, optimizer)."""


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


def headstart_side(method: str, data: TaskData, epochs: int, seed: int, probe_sets) -> dict:
    from headstart.stage import fit_stage
    from headstart.zoo import load

    torch.manual_seed(seed)
    network = load(MODEL, weights=None, include_top=False, in_chans=3)
    stage = {"name": method, "data": "all", "epochs": epochs, **copy.deepcopy(RECIPES[method])}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        fit_stage(
            network, stage, data, folder=Path(folder) / method, seed=seed, image_size=SIZE, options={"progress": False}
        )
    seconds = time.perf_counter() - started
    network.eval()
    knn = _knn(network.encoder(SIZE).pooled, *probe_sets)
    images = epochs * (len(data.split("all")) // stage["batch_size"]) * stage["batch_size"]
    return {"seconds": seconds, "images_per_second": images / seconds, "knn": knn, "steps": None}


# ------------------------------------------------------------------------------ lightly's loops


class _Method:
    """One of lightly's example loops: a model, a per-image transform, and a training step."""

    def __init__(self, method: str, backbone: torch.nn.Module, width: int) -> None:
        from lightly.loss import DINOLoss, NegativeCosineSimilarity, NTXentLoss
        from lightly.models.modules import (
            BYOLPredictionHead,
            BYOLProjectionHead,
            DINOProjectionHead,
            SimCLRProjectionHead,
        )
        from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform, DINOTransform
        from lightly.transforms.simclr_transform import SimCLRTransform

        self.method = method
        self.backbone = backbone
        if method == "simclr":  # examples/pytorch/simclr.py
            self._projection_args: tuple = (width, width, 128)
            self.heads = torch.nn.ModuleDict({"projection": SimCLRProjectionHead(*self._projection_args)})
            self.transform = SimCLRTransform(input_size=SIZE, hf_prob=0.0, vf_prob=0.0, rr_prob=0.0)
            self.criterion = NTXentLoss()
            parameters = [*backbone.parameters(), *self.heads.parameters()]
            self.optimizer = torch.optim.SGD(parameters, lr=0.06)
        elif method == "byol":  # examples/pytorch/byol.py
            self._projection_args = (width, 1024, 256)
            self.heads = torch.nn.ModuleDict(
                {
                    "projection": BYOLProjectionHead(*self._projection_args),
                    "prediction": BYOLPredictionHead(256, 1024, 256),
                }
            )
            views = {"input_size": SIZE, "hf_prob": 0.0, "gaussian_blur": 0.0}
            self.transform = BYOLTransform(
                view_1_transform=BYOLView1Transform(**views), view_2_transform=BYOLView2Transform(**views)
            )
            self.criterion = NegativeCosineSimilarity()
            parameters = [*backbone.parameters(), *self.heads.parameters()]
            self.optimizer = torch.optim.SGD(parameters, lr=0.06)
        else:  # examples/pytorch/dino.py, its transform at lightly's CIFAR-10 benchmark's 32-px settings
            self._projection_args = (width, 512, 64, 2048)
            projection = DINOProjectionHead(*self._projection_args, freeze_last_layer=1)
            self.heads = torch.nn.ModuleDict({"projection": projection})
            self.transform = DINOTransform(global_crop_size=SIZE, n_local_views=0, hf_prob=0.0, gaussian_blur=(0, 0, 0))
            self.criterion = DINOLoss(output_dim=2048, warmup_teacher_temp_epochs=5)
            parameters = [*backbone.parameters(), *self.heads.parameters()]
            self.optimizer = torch.optim.Adam(parameters, lr=0.001)
        # the teacher: a copy of the backbone and a projection built again (as lightly's examples do:
        # a weight-normalised layer, DINO's last, cannot be deep-copied)
        projection = type(self.heads["projection"])(*self._projection_args)
        projection.load_state_dict(self.heads["projection"].state_dict())
        self.teacher = torch.nn.ModuleDict({"backbone": copy.deepcopy(backbone), "projection": projection})
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def step(self, views: list[torch.Tensor], progress: float, epoch: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        if self.method != "simclr":
            momentum = cosine_schedule(int(progress * 10_000), 10_000, 0.996, 1)
            update_momentum(self.backbone, self.teacher["backbone"], m=momentum)
            update_momentum(self.heads["projection"], self.teacher["projection"], m=momentum)
        student = [self.heads["projection"](self.backbone(view)) for view in views]
        if self.method == "simclr":
            loss = self.criterion(*student)
        else:
            with torch.no_grad():
                teacher = [self.teacher["projection"](self.teacher["backbone"](view)) for view in views[:2]]
            if self.method == "byol":
                p0, p1 = (self.heads["prediction"](z) for z in student)
                loss = 0.5 * (self.criterion(p0, teacher[1]) + self.criterion(p1, teacher[0]))
            else:
                loss = self.criterion(teacher, student, epoch=epoch)
        loss.backward()
        if self.method == "dino":
            self.heads["projection"].cancel_last_layer_gradients(current_epoch=epoch)
        self.optimizer.step()
        self.optimizer.zero_grad()


def lightly_side(method: str, data: TaskData, budget: float, seed: int, probe_sets, batch: int) -> dict:
    """lightly's example loop for ``method`` on the same images and backbone for ``budget`` seconds."""
    import timm
    from PIL import Image

    torch.manual_seed(seed)
    backbone = timm.create_model(MODEL, pretrained=False, num_classes=0, in_chans=3)
    loop = _Method(method, backbone, backbone.num_features)
    pool = data.split("all")
    pixels = (to_unit_range(pool.store.load(pool.positions))[:, 0].numpy() * 255).round().astype(np.uint8)

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(pixels)

        def __getitem__(self, index):
            return loop.transform(Image.fromarray(pixels[index]).convert("RGB"))

    loader = torch.utils.data.DataLoader(
        Views(), batch_size=batch, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    per_epoch = len(loader)
    started = time.perf_counter()
    planned, steps, epoch, timed = None, 0, 0, 0.0
    backbone.train()
    while planned is None or steps < planned:
        for views in loader:
            loop.step(list(views), steps / (planned or 10**9), epoch)
            steps += 1
            elapsed = time.perf_counter() - started
            if steps == 3:  # plan the schedules over the steps that fit the budget
                planned, timed = max(steps, int(budget / (elapsed / steps))), elapsed
            elif steps == 20:  # and again at the steady pace, without the first steps' warm-up
                planned = max(steps, steps + int((budget - elapsed) / ((elapsed - timed) / (steps - 3))))
            if (planned is not None and steps >= planned) or elapsed >= budget:
                break
        epoch += 1
        if time.perf_counter() - started >= budget:
            break
    seconds = time.perf_counter() - started
    backbone.eval()

    def embed(images01: torch.Tensor) -> torch.Tensor:
        return backbone(normalize(images01.expand(-1, 3, -1, -1), LIGHTLY_MEAN, LIGHTLY_STD))

    knn = _knn(embed, *probe_sets)
    return {
        "seconds": seconds,
        "images_per_second": steps * batch / seconds,
        "knn": knn,
        "steps": steps,
        "epochs": steps / per_epoch,
    }


def _spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def compare(method: str, data: TaskData, epochs: int, seeds: list[int], probe_sets) -> None:
    batch = RECIPES[method]["batch_size"]
    results: dict[str, list[dict]] = {"headstart": [], "lightly": []}
    for number, seed in enumerate(seeds):
        runs: dict[str, Callable[[float], dict]] = {
            "headstart": lambda budget, seed=seed: headstart_side(method, data, epochs, seed, probe_sets),
            "lightly": lambda budget, seed=seed: lightly_side(method, data, budget, seed, probe_sets, batch),
        }
        # the budget is headstart's wall time: measured first at even seeds, the previous seed's at odd ones
        order = ["headstart", "lightly"] if number % 2 == 0 or not results["headstart"] else ["lightly", "headstart"]
        budget = results["headstart"][-1]["seconds"] if results["headstart"] else 0.0
        for name in order:
            result = runs[name](budget)
            if name == "headstart":
                budget = result["seconds"]
            results[name].append(result)
            done = f"  {result['epochs']:.1f} epochs" if result.get("epochs") is not None else f"  {epochs} epochs"
            print(
                f"  {method:<6} seed {seed}  {name:<9} {result['images_per_second']:7.1f} images/s"
                f"  ({result['seconds']:6.1f} s){done}  k-NN {result['knn']:.3f}",
                flush=True,
            )
    for name, runs_ in results.items():
        print(
            f"{method:<6} {name:<9}  images/s {_spread([r['images_per_second'] for r in runs_])}  "
            f"k-NN {_spread([r['knn'] for r in runs_])}"
        )
    pairs = list(zip(results["headstart"], results["lightly"], strict=True))
    speed = [ours["images_per_second"] / peer["images_per_second"] for ours, peer in pairs]
    knn = [ours["knn"] - peer["knn"] for ours, peer in pairs]
    print(
        f"{method:<6} headstart / lightly at equal wall time: images/s {_spread(speed)}×; "
        f"k-NN difference (paired by seed) {_spread(knn)}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(RECIPES), default=sorted(RECIPES))
    parser.add_argument("--epochs", type=int, default=20, help="headstart's passes; lightly gets the same wall time")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)  # lightly's DINO head uses torch's older weight_norm
    # one labelled draw for every seed (the demo's draws per seed): both sides of a seed score on the same bank
    data = TaskData.from_spec(DataSpec(**{**DATA, "splits": {**DATA["splits"], "labelled_draw": "fixed"}}))
    bank, bank_labels = _split_images(data, "train")
    queries, query_labels = _split_images(data, "test")
    probe_sets = (bank, bank_labels, queries, query_labels)
    print(
        f"{MODEL} at {SIZE} px, {len(data.split('all'))} unlabelled digits, headstart {args.epochs} epochs, lightly "
        f"the same wall time; k-NN probe: {len(bank)} labelled bank, {len(queries)} test queries; "
        f"{args.threads} thread(s)"
    )
    for method in args.methods:
        compare(method, data, args.epochs, args.seeds, probe_sets)


if __name__ == "__main__":
    main()
