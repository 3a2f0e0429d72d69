"""Two machines, played by two processes on this one: ``headstart run FILE`` under torchrun with
``--nnodes 2`` (gloo on the CPU) ends with the weights of one process with the same global batch,
and each process decodes only its share of the streamed folder."""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from headstart.checkpoint import StageRecord
from headstart.config import load_run_file
from headstart.data import load_digits
from headstart.structure import run
from headstart.weights import load_weights
from helpers import DIGITS, grey_image

RUN = """
name: two-nodes
seed: 5
output: {output}
progress: false
num_workers: 0
devices: 1
num_nodes: {nodes}
data:
  source: {{kind: folder, path: {folder}, image_size: 16, channels: 1, verify: header}}
  splits: {{test_fraction: 0.1, val_fraction: 0.0}}
model: {{name: test_resnet, weights: none, image_size: 16, in_chans: 1}}
stages:
  - name: task
    epochs: 2
    batch_size: {batch}
    bn_policy: frozen
    optimizer: {{name: sgd, lr: 0.05}}
"""

# Imported by every Python process whose PYTHONPATH starts with this hook's folder: each decoded
# file is appended to decoded-<RANK>.txt, so the test sees which process decoded what.
COUNTING_HOOK = """
import os

if os.environ.get("DECODED_FILES_FOLDER"):
    import headstart.data.dataset as dataset

    _decode = dataset.decode_file

    def _counted(path, *arguments, **options):
        name = os.path.join(os.environ["DECODED_FILES_FOLDER"], f"decoded-{os.environ.get('RANK', 'x')}.txt")
        with open(name, "a") as log:
            log.write(f"{path}\\n")
        return _decode(path, *arguments, **options)

    dataset.decode_file = _counted
"""


@pytest.fixture(scope="module")
def digit_jpegs(tmp_path_factory) -> Path:
    """80 of scikit-learn's digits as 24-pixel JPEG files, eight per class."""
    root = tmp_path_factory.mktemp("digit-jpegs")
    pixels, labels = load_digits().as_tensors()
    written = collections.Counter()
    for index in range(len(labels)):
        label = DIGITS[int(labels[index])]
        if written[label] == 8:
            continue
        (root / label).mkdir(exist_ok=True)
        grey_image(pixels[index, 0]).resize((24, 24)).save(root / label / f"{index:04d}.jpg", quality=95)
        written[label] += 1
        if sum(written.values()) == 80:
            break
    return root


# The console script itself (torchrun runs it with this Python); `which headstart` may be a shell
# wrapper, such as a pyenv shim, that Python cannot run.
HEADSTART = str(Path(sys.executable).with_name("headstart"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_file(folder: Path, data: Path, nodes: int, batch: int) -> Path:
    folder.mkdir()
    path = folder / "run.yaml"
    path.write_text(textwrap.dedent(RUN).format(output=folder / "out", folder=data, nodes=nodes, batch=batch))
    return path


def test_two_nodes_on_localhost_match_one_process_and_shard_the_folder(tmp_path, digit_jpegs, monkeypatch):
    # one process, global batch 16, its decodes counted in this process
    decoded_here: list[str] = []
    import headstart.data.dataset as dataset

    original = dataset.decode_file
    monkeypatch.setattr(
        dataset, "decode_file", lambda path, *a, **k: decoded_here.append(str(path)) or original(path, *a, **k)
    )
    reference = _run_file(tmp_path / "one", digit_jpegs, nodes=1, batch=16)
    tested = run(load_run_file(reference)).test
    assert tested is not None
    decoded_here = decoded_here[: len(decoded_here) - tested["count"]]  # the test split is read last

    # two "machines", one process each, 8 images a step each: the same global batch
    config = _run_file(tmp_path / "two", digit_jpegs, nodes=2, batch=8)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(COUNTING_HOOK)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
        "DECODED_FILES_FOLDER": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    port = _free_port()
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *f"--nnodes 2 --nproc-per-node 1 --master-addr 127.0.0.1 --master-port {port}".split(),
    ]
    machines = [
        subprocess.Popen(
            [*torchrun, "--node-rank", str(rank), HEADSTART, "run", str(config)],
            cwd=tmp_path / "two",
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [machine.communicate(timeout=300) for machine in machines]
    for machine, (_, err) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, err[-3000:]

    expected = load_weights(tmp_path / "one" / "out" / "0-task" / "weights.safetensors")
    actual = load_weights(tmp_path / "two" / "out" / "0-task" / "weights.safetensors")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], atol=2e-5, rtol=1e-4, msg=key)
    record = StageRecord.read(tmp_path / "two" / "out" / "0-task")
    assert record.device is not None and (record.device.processes, record.device.num_nodes) == (2, 2)
    steps = StageRecord.read(tmp_path / "one" / "out" / "0-task").steps
    assert record.steps == steps == 2 * ((80 - tested["count"]) // 16)

    # each machine decoded half of every global batch, the two halves never overlapping within a
    # step, and together exactly what the one process decoded; only the first reads the test split
    shares = [(tmp_path / f"decoded-{rank}.txt").read_text().split() for rank in range(2)]
    assert len(shares[1]) == len(decoded_here) // 2 == steps * 8
    assert len(shares[0]) == steps * 8 + tested["count"]
    shares[0] = shares[0][: steps * 8]
    assert collections.Counter(shares[0]) + collections.Counter(shares[1]) == collections.Counter(decoded_here)
    for step in range(len(shares[0]) // 8):
        assert not set(shares[0][step * 8 : step * 8 + 8]) & set(shares[1][step * 8 : step * 8 + 8])
    assert "trains on cpu" in outputs[0][1] and "2 processes on 2 machines" in outputs[0][1]
