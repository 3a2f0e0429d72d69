"""Load on ``headstart serve``: many requests, some bad, bounded concurrency, the server's memory watched.

Starts ``python -m headstart serve MODEL --port 0`` as a child process, then an asyncio client
(httpx) sends ``--requests`` requests from ``--concurrency`` coroutines, at most ``--time-limit``
seconds. A fraction ``--bad-fraction`` are bad requests, spread at random (seeded) over six kinds:

``no-file``       a POST without a body (no multipart at all)
``wrong-field``   a good JPEG in multipart field ``image`` instead of ``file``
``text``          a text file uploaded as ``notes.jpg``
``truncated``     a JPEG cut after two thirds of its bytes
``bomb``          a PNG declaring 20000 × 20000 pixels (refused from its header)
``oversize``      ``--oversize-mb`` MB of random bytes (50 by default; the limit is 20)

The good ones upload one of scikit-image's ``chelsea``, ``coffee`` and ``rocket`` as a JPEG. Every
answer is checked: a good request must get 200 with the same top label as the first answer for that
photo, a bad one a 4xx; a 5xx or a dropped connection is counted as a failure. The report gives
requests per second, p50 and p99 latency (all requests, and good ones), the status codes per kind,
and the server's resident memory (``VmRSS`` of ``/proc/PID/status``) when it started, after the
warm-up requests and at the end.

    python bench/bench_serve_load.py                                   # 10,000 requests, EfficientNet-Lite0
    python bench/bench_serve_load.py --requests 300 --model runs/digits --json   # what the CI test runs

Measured on the 2-core CPU (client and server on the same two cores), EfficientNet-Lite0 with its
ImageNet weights, ``python bench/bench_serve_load.py`` (10,000 requests, 16 at a time): 260 s,
38.5 requests/s, p50 407 ms, p99 757 ms; 9,500 good requests answered 200 with a stable label,
the 500 bad ones 400 (bomb, text, truncated, wrong field), 413 (oversize) or 415 (no file); no
5xx, no failed connection. Server RSS 794 MB at start, 826 MB after the warm-up, 912 MB at the
end, between 910 and 1,010 MB in every 2-s sample, quarter means 946, 946, 961, 957 MB. An earlier
run while another job shared the cores: 22.9 requests/s, p50 749 ms, p99 1,098 ms, 955 MB at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

BAD_KINDS = ("no-file", "wrong-field", "text", "truncated", "bomb", "oversize")
PHOTOS = ("chelsea", "coffee", "rocket")


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A valid 1×1 PNG whose header is patched to declare ``width`` × ``height`` (CRC recomputed)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def payloads(oversize_mb: float) -> dict[str, dict]:
    """httpx arguments per kind of request (``good-<photo>`` and the bad kinds)."""
    from skimage import data

    photos = {name: jpeg_bytes(getattr(data, name)()) for name in PHOTOS}
    chelsea = photos["chelsea"]
    noise = np.random.default_rng(0).integers(0, 256, int(oversize_mb * 1_000_000), dtype=np.uint8).tobytes()
    kinds: dict[str, dict] = {
        f"good-{name}": {"files": {"file": (f"{name}.jpg", body)}} for name, body in photos.items()
    }
    kinds.update(
        {
            "no-file": {},
            "wrong-field": {"files": {"image": ("chelsea.jpg", chelsea)}},
            "text": {"files": {"file": ("notes.jpg", b"these are notes, not a picture\n" * 4)}},
            "truncated": {"files": {"file": ("half.jpg", chelsea[: len(chelsea) * 2 // 3])}},
            "bomb": {"files": {"file": ("bomb.png", declared_png(20_000, 20_000))}},
            "oversize": {"files": {"file": ("noise.bin", noise)}},
        }
    )
    return kinds


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def start_server(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "headstart", "serve", model, "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert process.stdout is not None
    for line in process.stdout:
        found = re.search(r"on (http://[\d.]+:\d+)", line)
        if found:
            return process, found.group(1)
        print(line, end="", file=sys.stderr)
    raise SystemExit(f"the server exited with code {process.wait()} before listening")


async def load(url: str, schedule: list[str], kinds: dict[str, dict], concurrency: int, time_limit: float) -> dict:
    """Send the requests of ``schedule`` (kind names) with ``concurrency`` coroutines; check each answer."""
    statuses: dict[str, Counter] = defaultdict(Counter)
    latencies: dict[str, list[float]] = defaultdict(list)
    first_label: dict[str, str] = {}
    wrong_answers: Counter = Counter()
    failures: Counter = Counter()
    queue = iter(schedule)
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for kind in queue:
            if time.perf_counter() - started > time_limit:
                return
            sent = time.perf_counter()
            try:
                response = await client.post(f"{url}/predict", **kinds[kind])
            except httpx.HTTPError as exc:
                failures[f"{kind}: {type(exc).__name__}"] += 1
                continue
            latencies[kind].append(time.perf_counter() - sent)
            statuses[kind][response.status_code] += 1
            body = response.json()
            if kind.startswith("good"):
                if response.status_code != 200:
                    continue
                label = body["results"][0]["predictions"][0]["label"]
                if first_label.setdefault(kind, label) != label:
                    wrong_answers[kind] += 1
            elif set(body) != {"error"} or "\n" in body["error"]:
                wrong_answers[kind] += 1

    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    every = [value for values in latencies.values() for value in values]
    good = [value for kind, values in latencies.items() if kind.startswith("good") for value in values]
    server_errors = sum(count for kind in statuses.values() for code, count in kind.items() if code >= 500)
    bad_not_4xx = sum(
        count
        for kind, codes in statuses.items()
        if not kind.startswith("good")
        for code, count in codes.items()
        if not 400 <= code < 500
    )
    good_not_200 = sum(
        count
        for kind, codes in statuses.items()
        if kind.startswith("good")
        for code, count in codes.items()
        if code != 200
    )
    return {
        "requests": len(every) + sum(failures.values()),
        "answered": len(every),
        "seconds": seconds,
        "requests_per_second": len(every) / seconds,
        "p50_ms": 1000 * float(np.percentile(every, 50)),
        "p99_ms": 1000 * float(np.percentile(every, 99)),
        "good_p50_ms": 1000 * float(np.percentile(good, 50)) if good else None,
        "good_p99_ms": 1000 * float(np.percentile(good, 99)) if good else None,
        "statuses": {
            kind: {str(code): count for code, count in sorted(codes.items())} for kind, codes in statuses.items()
        },
        "top_labels": first_label,
        "server_errors": server_errors,
        "bad_not_4xx": bad_not_4xx,
        "good_not_200": good_not_200,
        "wrong_answers": dict(wrong_answers),
        "failures": dict(failures),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="EfficientNetLite0", help="zoo name, or a stage, run or best/ folder")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad-fraction", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=50, help="good requests before the first memory reading")
    parser.add_argument("--time-limit", type=float, default=1800, help="seconds; requests not sent by then are dropped")
    parser.add_argument("--oversize-mb", type=float, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line at the end")
    parser.add_argument("server_options", nargs="*", help="after --: options for headstart serve")
    args = parser.parse_args()
    kinds = payloads(args.oversize_mb)
    rng = random.Random(args.seed)
    goods = [f"good-{name}" for name in PHOTOS]
    bad_count = round(args.requests * args.bad_fraction)
    schedule = [BAD_KINDS[index % len(BAD_KINDS)] for index in range(bad_count)]
    schedule += [goods[index % len(goods)] for index in range(args.requests - bad_count)]
    rng.shuffle(schedule)
    process, url = start_server(args.model, args.server_options)
    try:
        rss_start = rss_bytes(process.pid)
        asyncio.run(load(url, [goods[index % len(goods)] for index in range(args.warmup)], kinds, 4, 600))
        rss_warm = rss_bytes(process.pid)
        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:  # the server's memory every 2 s while the load runs
            started = time.perf_counter()
            while not stop.wait(2.0):
                samples.append((time.perf_counter() - started, rss_bytes(process.pid) / 2**20))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report = asyncio.run(load(url, schedule, kinds, args.concurrency, args.time_limit))
        stop.set()
        sampler.join()
        rss_end = rss_bytes(process.pid)
        report.update(
            model=args.model,
            concurrency=args.concurrency,
            scheduled=len(schedule),
            rss_start_mb=rss_start / 2**20,
            rss_after_warmup_mb=rss_warm / 2**20,
            rss_end_mb=rss_end / 2**20,
            rss_samples_mb=[round(value, 1) for _, value in samples],
            rss_max_mb=max([value for _, value in samples] + [rss_end / 2**20]),
            health=httpx.get(f"{url}/health").json(),
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(
        f"{report['answered']:,} of {report['scheduled']:,} requests answered in {report['seconds']:.1f} s: "
        f"{report['requests_per_second']:.1f} requests/s, p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms "
        f"(good requests: p50 {report['good_p50_ms']:.0f} ms, p99 {report['good_p99_ms']:.0f} ms)"
    )
    for kind, codes in sorted(report["statuses"].items()):
        print(f"  {kind:<14} " + ", ".join(f"{code}: {count:,}" for code, count in codes.items()))
    wrong, failures = sum(report["wrong_answers"].values()), sum(report["failures"].values())
    print(
        f"5xx: {report['server_errors']}, bad not 4xx: {report['bad_not_4xx']}, "
        f"good not 200: {report['good_not_200']}, wrong answers: {wrong}, connection failures: {failures}"
    )
    print(
        f"server RSS: {report['rss_start_mb']:.0f} MB at start, {report['rss_after_warmup_mb']:.0f} MB after "
        f"{args.warmup} warm-up requests, {report['rss_end_mb']:.0f} MB at the end "
        f"({report['rss_end_mb'] - report['rss_after_warmup_mb']:+.0f} MB), at most {report['rss_max_mb']:.0f} MB; "
        f"batches: {report['health']}"
    )
    quarters = np.array_split(np.array(report["rss_samples_mb"] or [report["rss_end_mb"]]), 4)
    print(
        "server RSS by quarter of the run (mean MB): "
        + ", ".join(f"{part.mean():.0f}" for part in quarters if part.size)
    )
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
