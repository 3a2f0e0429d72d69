"""Memory of a rank does not grow with the folder: two "machines" under torchrun, small and large folder.

``headstart run FILE`` is started twice by ``torchrun --nnodes 2 --node-rank {0,1} --nproc-per-node 1``
on this machine (gloo on the CPU, or NCCL on a GPU), fine-tuning EfficientNet-Lite0 for a fixed
number of steps from a streamed folder of JPEG photos. Each rank reports its peak resident memory
(its own and its loader workers', ``getrusage``); the run is repeated with a folder ``--scale``
times larger. Streaming holds paths, not pixels, and each rank reads only its share of every
global batch, so the peak per rank should not grow with the folder (target: large / small ≤ 1.1).

The photo folders are ``bench_streaming.make_photo_folder``'s; the larger one is the smaller one
repeated through symbolic links (the same bytes under more names: what grows is the number of files).

    python bench/bench_multinode.py                   # 2,000 and 8,000 photos
    python bench/bench_multinode.py --count 5000 --scale 4 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

RUN = """
name: memory
seed: 0
output: {output}
progress: false
num_workers: {workers}
num_nodes: 2
devices: 1
data:
  source: {{kind: folder, path: {folder}, image_size: {size}, verify: header}}
  splits: {{test_fraction: 0.0, val_fraction: 0.0}}
model: {{name: efficientnet_lite0, weights: none, image_size: {size}}}
stages:
  - name: fine-tune
    epochs: 1
    steps_per_epoch: {steps}
    batch_size: {batch}
    optimizer: {{lr: 0.0001}}
"""

# Loaded by each rank (PYTHONPATH): at exit, write the rank's peak RSS and its reaped workers'.
REPORT_HOOK = """
import atexit, json, os, resource

def _report():
    folder = os.environ.get("PEAK_MEMORY_FOLDER")
    if folder and "RANK" in os.environ:
        peak = {"self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "workers_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
        with open(os.path.join(folder, f"peak-{os.environ['RANK']}.json"), "w") as out:
            json.dump(peak, out)

atexit.register(_report)
"""


def larger_folder(source: Path, scale: int, root: Path) -> Path:
    """``source`` (class folders of files) repeated ``scale`` times through symbolic links."""
    target = root / f"{source.name}-x{scale}"
    marker = target / ".complete"
    if marker.exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    for label in sorted(entry for entry in source.iterdir() if entry.is_dir()):
        (target / label.name).mkdir(parents=True)
        for file in sorted(label.iterdir()):
            for copy in range(scale):
                (target / label.name / f"{copy}-{file.name}").symlink_to(file.resolve())
    marker.write_text("")
    return target


def two_ranks(folder: Path, arguments: argparse.Namespace, scratch: Path) -> list[dict]:
    """Peak memory of each of the two ranks of one run over ``folder``."""
    work = Path(tempfile.mkdtemp(dir=scratch))
    config = work / "run.yaml"
    config.write_text(
        textwrap.dedent(RUN).format(
            output=work / "out",
            folder=folder,
            workers=arguments.workers,
            size=arguments.image_size,
            steps=arguments.steps,
            batch=arguments.batch_size,
        )
    )
    (work / "sitecustomize.py").write_text(REPORT_HOOK)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(work), os.environ.get("PYTHONPATH", "")]),
        "PEAK_MEMORY_FOLDER": str(work),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2)),
    }
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    headstart = str(Path(sys.executable).with_name("headstart"))  # the script, not a shell wrapper (pyenv shim)
    ranks = [
        subprocess.Popen(
            [*command, "--node-rank", str(rank), headstart, "run", str(config)],
            cwd=work,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for rank in ranks:
        _, err = rank.communicate()
        if rank.returncode != 0:
            raise RuntimeError(f"a rank failed:\n{err[-3000:]}")
    return [json.loads((work / f"peak-{rank}.json").read_text()) for rank in range(2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="photos in the small folder")
    parser.add_argument("--scale", type=int, default=4, help="the large folder holds scale × count files")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16, help="per rank")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per rank")
    parser.add_argument("--folder-root", type=Path, default=Path(tempfile.gettempdir()) / "headstart-bench")
    arguments = parser.parse_args()

    from bench_streaming import photo_folder

    small = photo_folder(arguments.folder_root, arguments.count)
    large = larger_folder(small, arguments.scale, arguments.folder_root)
    print(
        f"two ranks (torchrun --nnodes 2, one process each), EfficientNet-Lite0 {arguments.image_size} px, "
        f"batch {arguments.batch_size} per rank, {arguments.steps} steps, {arguments.workers} worker(s) per rank",
        flush=True,
    )
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as scratch:
        for folder, count in ((small, arguments.count), (large, arguments.count * arguments.scale)):
            started = time.perf_counter()
            ranks = two_ranks(folder, arguments, Path(scratch))
            peaks[count] = [rank["self_mib"] + rank["workers_mib"] for rank in ranks]
            described = ", ".join(
                f"rank {index} {rank['self_mib']:.0f} + workers {rank['workers_mib']:.0f} MiB"
                for index, rank in enumerate(ranks)
            )
            print(f"  {count:6d} files: {described} ({time.perf_counter() - started:.0f} s)", flush=True)
    small_count, large_count = arguments.count, arguments.count * arguments.scale
    for rank in range(2):
        ratio = peaks[large_count][rank] / peaks[small_count][rank]
        verdict = "ok" if ratio <= 1.1 else "MISSED"
        print(f"  rank {rank}: peak memory {large_count}/{small_count} files = {ratio:.3f} (target <= 1.1) {verdict}")


if __name__ == "__main__":
    main()
