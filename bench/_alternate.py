"""Side-by-side timing for the benchmarks: alternate the sides, keep each side's best run.

Running side A to the end and then side B lets load from other processes land on one side only
(two runs of the old one-after-the-other stage bench gave 0.82× and 1.48× on a busy machine).
Alternating A B A B … and keeping the best of each spreads such load over both.
"""

from __future__ import annotations

import gc
from collections.abc import Callable


def alternate(sides: dict[str, Callable[[], dict]], repeats: int, *, key: str = "images_per_second") -> dict[str, dict]:
    """Run each side ``repeats`` times, alternating A B A B …; keep each side's best run by ``key``.

    Every side returns a dict holding at least ``key`` and ``seconds``; each run is printed.
    """
    best: dict[str, dict] = {}
    for repeat in range(repeats):
        for name, side in sides.items():
            result = side()
            gc.collect()
            extra = f"  residency {result['residency']}" if "residency" in result else ""
            print(
                f"  run {repeat + 1}/{repeats}  {name:<10} {result[key]:8.1f} {key.replace('_', ' ')}  "
                f"({result['seconds']:6.2f} s){extra}",
                flush=True,
            )
            if name not in best or result[key] > best[name][key]:
                best[name] = result
    return best
