"""The audit experiment: EfficientNet-Lite0 (ImageNet) fine-tuned on MNIST-5k, attacked target-agnostically.

Rezaei & Liu (ICLR 2020) broke all 5 classes of a VGG-Face → LFW model in 48.25 ± 42.5 attempts
with 91.68% (95%) / 87.82% (99%) effectiveness. This runs the same attack on victims built from
the offline EfficientNet-Lite0 weights: 5 and 10 digit classes × 1, 2, 3 new dense layers with the
backbone frozen, plus two defences (whole backbone fine-tuned; features clipped to the training
range), crafting once on the public backbone and querying every victim as a black box::

    nice -n 10 python bench/audit_mnist.py                      # 256 of the 1280 neurons, 32 px
    python bench/audit_mnist.py --neurons 1280 --image-size 64  # the whole layer (hours on 2 CPU cores)

Writes ``audit-mnist/audit.md`` (+ PNG figures) and ``audit-mnist/audit.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=256, help="feature neurons attacked (EfficientNet-Lite0 has 1280)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=49)
    parser.add_argument("--clip", action="store_true", help="keep crafted pixels in 0..255 (the paper does not)")
    parser.add_argument("--fine-tune-epochs", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("audit-mnist"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from headstart.audit.craft import AttackConfig
    from headstart.audit.experiment import run_experiment
    from headstart.checkpoint import atomic_write_json
    from headstart.report.audit import write_audit_report

    experiment = run_experiment(neurons=args.neurons, image_size=args.image_size,
                                config=AttackConfig(steps=args.steps, clip=args.clip),
                                fine_tune_epochs=args.fine_tune_epochs, echo=lambda line: print(line, flush=True))
    args.output.mkdir(parents=True, exist_ok=True)
    path = write_audit_report(experiment, args.output)
    atomic_write_json(args.output / "audit.json", {
        "command": " ".join(sys.argv), "seconds": experiment["seconds"], "hardware": platform.processor() or platform.machine(),
        "threads": args.threads, "torch": torch.__version__,
        "victims": [{"name": entry["victim"].name, "clean_accuracy": entry["victim"].clean_accuracy,
                     **entry["result"].to_dict()} for entry in experiment["results"]]})
    print(f"report: {path}")


if __name__ == "__main__":
    main()
