"""The accelerator bench stays runnable where there is no GPU: ``--tiny`` on a CPU in under a minute."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_accelerator.py"


def test_the_tiny_accelerator_bench_runs_every_side_on_a_cpu_in_under_a_minute(tmp_path):
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--tiny", "--folder-root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    seconds = time.perf_counter() - started
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    for model in ("ResNet50", "EfficientNet-Lite0"):
        assert f"{model}: " in out and "GFLOP per training image" in out
    for side in ("eager", "compile", "device-decode"):
        assert f"  {side} " in out
    assert "waiting for data" in out and "MFU n/a" in out and "compile / eager" in out
    assert seconds < 60, f"{seconds:.0f} s"


def test_peaks_are_matched_by_the_most_specific_name(monkeypatch):
    sys.path.insert(0, str(BENCH.parent))
    import bench_accelerator

    monkeypatch.setattr(bench_accelerator.torch.cuda, "is_available", lambda: True)
    for name, precision, expected in (
        ("NVIDIA H100 PCIe", "bf16-mixed", 756.0),
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989.4),
        ("NVIDIA H200", "32-true", 66.9),
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", 312.0),
        ("NVIDIA A10", "bf16-mixed", 125.0),
        ("NVIDIA L4", "bf16-mixed", 121.0),
        ("Tesla T4", "bf16-mixed", None),
    ):
        monkeypatch.setattr(bench_accelerator.torch.cuda, "get_device_name", lambda index=0, name=name: name)
        assert bench_accelerator.device_peak(precision) == (name, expected), name
