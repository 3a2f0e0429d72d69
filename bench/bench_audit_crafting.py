"""Audit throughput: crafted inputs per second, neurons crafted in batches vs one at a time.

Crafting (Rezaei & Liu 2020: 49 gradient steps on the input per feature neuron) dominates the
audit's cost: 1280 neurons × 49 forward and backward passes of EfficientNet-Lite0. A batch of
neurons shares every pass (the images are independent in evaluation mode), one at a time is the
paper's code. The two sides alternate (bench/_alternate.py), best run of each kept::

    python bench/bench_audit_crafting.py                       # 64 px, 32 neurons per side, 49 steps
    python bench/bench_audit_crafting.py --image-size 224 --neurons 16
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _alternate import alternate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--neurons", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=49)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from headstart.audit import AttackConfig, PublicFeatures, craft, public_backbone

    features = PublicFeatures(public_backbone("EfficientNetLite0"))
    config = AttackConfig(steps=args.steps)
    neurons = torch.arange(args.neurons)

    def side(batch_size: int):
        def run() -> dict:
            started = time.perf_counter()
            crafted = craft(features, neurons, args.image_size, config, batch_size=batch_size)
            seconds = time.perf_counter() - started
            return {"seconds": seconds, "crafted_per_second": len(crafted.neurons) / seconds}

        return run

    print(
        f"EfficientNet-Lite0 (public ImageNet weights), {args.image_size} px, {args.neurons} neurons, "
        f"{args.steps} steps, {args.threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}"
    )
    best = alternate(
        {f"batch {args.batch_size}": side(args.batch_size), "one at a time": side(1)},
        args.repeats,
        key="crafted_per_second",
    )
    batched, single = best[f"batch {args.batch_size}"], best["one at a time"]
    print(
        f"batched: {batched['crafted_per_second']:.2f} crafted inputs/s, one at a time: "
        f"{single['crafted_per_second']:.2f} crafted inputs/s, "
        f"ratio {batched['crafted_per_second'] / single['crafted_per_second']:.1f}x"
    )
    minutes = 1280 * (49 / args.steps) / batched["crafted_per_second"] / 60
    print(f"the whole layer (1280 neurons, 49 steps) batched: about {minutes:.0f} min")


if __name__ == "__main__":
    main()
