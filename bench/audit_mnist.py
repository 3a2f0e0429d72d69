"""The audit experiment: EfficientNet-Lite0 (ImageNet) transferred to MNIST-5k, attacked target-agnostically.

Rezaei & Liu (ICLR 2020) broke all 5 classes of a VGG-Face → LFW model in 48.25 ± 42.5 attempts
with 91.68% (95%) / 87.82% (99%) effectiveness. This runs the same attack on victims built from
the offline EfficientNet-Lite0 weights: 5 and 10 digit classes × 1, 2, 3 new dense layers with the
backbone frozen (several victims per cell), the same victims with features clipped to the
training range, and whole-network fine-tuning; crafting runs once on the public backbone and every
victim is queried as a black box::

    nice -n 5 python bench/audit_mnist.py                         # 256 of the 1280 neurons, 64 px
    python bench/audit_mnist.py --neurons 1280 --fine-tune-seeds 5  # the whole layer (hours on 2 CPU cores)

Writes ``audit-mnist/audit-report.json`` (the tables and facts the HTML report is built from),
``audit-mnist/audit.md`` rendered from it (+ PNG figures), ``audit-mnist/report.html`` and
``audit-mnist/audit.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--neurons",
        type=int,
        default=256,
        help="feature neurons attacked, drawn at random (EfficientNet-Lite0 has 1280)",
    )
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=49)
    parser.add_argument("--clip", action="store_true", help="keep crafted pixels in 0..255 (the paper does not)")
    parser.add_argument("--classes", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, default=5, help="frozen-backbone victims per cell")
    parser.add_argument("--fine-tune-seeds", type=int, default=1, help="of those, fully fine-tuned too")
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument("--output", type=Path, default=Path("audit-mnist"))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 unless the cores are yours alone: on 2 cores "
        "shared with another job, 2 threads ran a fine-tuning step 2.5x (64 px) to 15x (32 px) slower",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from headstart.audit.craft import AttackConfig
    from headstart.audit.experiment import VictimConfig, run_experiment, victim_costs
    from headstart.checkpoint import atomic_write_json
    from headstart.report.html import write_audit_report

    victims = VictimConfig(
        image_size=args.image_size,
        class_counts=tuple(args.classes),
        layer_counts=tuple(args.layers),
        seeds=args.seeds,
        fine_tune_seeds=args.fine_tune_seeds,
        fine_tune_epochs=args.fine_tune_epochs,
    )
    experiment = run_experiment(
        neurons=args.neurons,
        victims=victims,
        config=AttackConfig(steps=args.steps, clip=args.clip),
        echo=lambda line: print(line, flush=True),
    )
    args.output.mkdir(parents=True, exist_ok=True)
    path = write_audit_report(experiment, args.output)
    costs = victim_costs(experiment["results"])
    crafted = experiment["crafted"]
    atomic_write_json(
        args.output / "audit.json",
        {
            "command": " ".join(sys.argv),
            "seconds": experiment["seconds"],
            "hardware": platform.processor() or platform.machine(),
            "threads": args.threads,
            "torch": torch.__version__,
            "neurons": experiment["neurons"],
            "crafting_seconds": crafted.seconds,
            "feature_seconds": experiment["feature_seconds"],
            "seconds_per_victim": costs,
            "victim_config": victims.__dict__,
            "cells": [cell.to_dict() for cell in experiment["cells"]],
            "victims": [
                {
                    "name": entry["victim"].name,
                    "defence": entry["victim"].defence,
                    "seed": entry["victim"].seed,
                    "digits": entry["victim"].digits,
                    "clean_accuracy": entry["victim"].clean_accuracy,
                    "seconds": entry["victim"].seconds,
                    **entry["result"].to_dict(),
                }
                for entry in experiment["results"]
            ],
        },
    )
    print(
        f"total {experiment['seconds']:.0f} s; crafting {crafted.seconds:.0f} s; seconds per victim: "
        + ", ".join(f"{name} {value:.1f}" for name, value in costs.items())
    )
    print(f"report: {path}")


if __name__ == "__main__":
    main()
