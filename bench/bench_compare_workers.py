"""One worker with every core against a worker per core: ``headstart demo`` and the label-budget comparison.

Measured (the default): each comparison is trained twice, one after the other in this script, into
fresh folders: ``--workers 1 --threads C`` (one run at a time with all C cores; on a 2-core machine
1 × 2) and ``--workers C --threads 1`` (C runs at once, one core each). It prints each side's wall
time, the ratio (one worker's seconds over the workers', above 1: the workers are faster) and every
arm's test accuracies side by side with the largest difference between the sides. At equal threads
per run the sides give equal results (``tests/test_compare_parallel.py``); here the thread counts
differ, so reductions round differently, and the gap that round-off opens after many steps is what
the last line shows (on tiny, barely trained runs it reached 0.04). The label-budget comparison runs
at one budget (``examples/compare/label-budgets.yaml --label-budgets 1``).

    python bench/bench_compare_workers.py [--seeds 3] [--only demo|budgets] [--quick] [--keep DIR]

``--seeds N`` runs seeds 0..N-1 of either comparison (the label-budget one at one seed: 11 runs a side).

Simulated (``--simulate``, seconds): the wall time of the whole label-budget grid
(``examples/compare/label-budgets.yaml``: every arm × 4 budgets × 3 seeds; and its first 108-run form,
without the two ``-9`` arms) on 1, 8 and 4 × 8 GPUs, one run per GPU, given the order runs depend on
each other (an arm extending another waits for its shared stages; the rotation stage, which reads no
labels, is trained once per seed for every budget). Stage times come from measured runs: the mean
wall time per run of each arm at each budget in ``--times`` (a ``comparison.json``; default the
pretraining-before-semi-supervised results, six of the file's arms on a 2-core CPU), split into
stages by differences between arms (rotation = rotation − scratch, FixMatch = scratch+fixmatch −
scratch, ...). Arms it lacks are estimated from those (stated in the output). Every stage on a GPU
is assumed the same factor faster, so the speed-ups do not depend on it; the absolute figures are
in the measured CPU's seconds. Workers pick the first ready run in plan order (as
``headstart compare --workers`` does); on 4 × 8 GPUs through Ray a run waits for its donor's whole
run (``--executor ray``), which is simulated too.

    python bench/bench_compare_workers.py --simulate [--times docs/results/demo.json]
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL_BUDGETS = ROOT / "examples" / "compare" / "label-budgets.yaml"
MEASURED = ROOT / "docs" / "results" / "pretraining-before-semi-supervised.json"


# ------------------------------------------------------------------------------------- measured


def _accuracies(folder: Path) -> dict[str, float]:
    """Every finished run's test accuracy, by its folder inside the comparison."""
    found = {}
    for path in sorted(folder.rglob("seed-*/run.json")):  # not best/, the winner's copy
        record = json.loads(path.read_text())
        if record.get("status") == "finished" and record.get("test"):
            found[str(path.parent.relative_to(folder))] = record["test"]["accuracy"]
    return found


def _side(command: list[str], folder: Path, workers: int, threads: int) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    full = command + ["--output", str(folder), "--workers", str(workers), "--threads", str(threads), "--no-progress"]
    print(f"$ {' '.join(full)}", flush=True)
    subprocess.run(full, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, _accuracies(folder)


def measure(name: str, command: list[str], cores: int, keep: Path | None) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="bench-workers-")) if keep is None else keep
    try:
        one_seconds, one = _side(command, scratch / f"{name}-1x{cores}", 1, cores)
        many_seconds, many = _side(command, scratch / f"{name}-{cores}x1", cores, 1)
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{name}: 1 worker × {cores} threads {one_seconds:.0f} s, {cores} workers × 1 thread {many_seconds:.0f} s")
    print(f"ratio (1 × {cores} seconds / {cores} × 1 seconds): {one_seconds / many_seconds:.2f}")
    arms: dict[str, list[tuple[float, float]]] = {}
    for run, accuracy in one.items():
        arm = str(Path(run).parent)
        arms.setdefault(arm, []).append((accuracy, many.get(run, float("nan"))))
    print(f"{'arm':40s} {'1 × ' + str(cores):>24s} {str(cores) + ' × 1':>24s}")
    for arm, pairs in arms.items():
        left = ", ".join(f"{a:.4f}" for a, _ in pairs)
        right = ", ".join(f"{b:.4f}" for _, b in pairs)
        print(f"{arm:40s} {left:>24s} {right:>24s}")
    largest = max((abs(a - b) for pairs in arms.values() for a, b in pairs), default=float("nan"))
    print(f"largest difference in a run's test accuracy: {largest:.4f} (runs: {len(one)} and {len(many)})\n")


# ------------------------------------------------------------------------------------ simulated


def _arm_seconds(path: Path) -> dict[tuple[str, int | None], float]:
    """Mean wall time per run of each arm at each label budget, from a comparison.json."""
    table = json.loads(path.read_text())
    return {
        (arm["name"], budget["labels_per_class"]): arm["seconds"]["mean"]
        for budget in table["budgets"]
        for arm in budget["arms"]
        if arm.get("seconds", {}).get("mean") is not None
    }


def stage_times(measured: dict[tuple[str, int | None], float], budgets: list[int]) -> tuple[dict, list[str]]:
    """Seconds of each stage kind at each budget, and the assumptions made for those not measured."""
    notes = []
    times: dict[tuple[str, int], float] = {}
    for budget in budgets:

        def arm(name: str, fallback: float | None = None, budget: int = budget) -> float:
            value = measured.get((name, budget))
            if value is None:
                if fallback is None:
                    raise SystemExit(f"--times has no {name} at {budget} labels per class")
                return fallback
            return value

        scratch = arm("scratch")
        times["task", budget] = scratch
        times["task-after", budget] = scratch  # the same epochs on the same labelled images
        times["rotation", budget] = max(arm("rotation") - scratch, 0.0)
        fixmatch = max(arm("scratch+fixmatch") - scratch, 0.0)
        times["fixmatch", budget] = fixmatch
        times["fixmatch-da", budget] = fixmatch
        freematch_9 = max(arm("scratch+freematch-9", scratch + fixmatch * 1.5) - scratch, 0.0)
        times["freematch-9", budget] = freematch_9
        times["freematch", budget] = freematch_9 * 6 / 9  # 132 of 198 steps
        imagenet = measured.get(("imagenet", budget), measured.get(("imagenet", 10), 16.2))
        times["head", budget], times["fine-tune", budget] = imagenet / 2, imagenet / 2
    notes.append("FixMatch + DA takes FixMatch's time; FreeMatch (6 passes) 6/9 of FreeMatch with 9 passes")
    notes.append("ImageNet head + fine-tune: the demo's imagenet arm (16.2 s, docs/results/demo.json) at every budget")
    notes.append("ImageNet's FixMatch: FixMatch's time at 32 px (Lite0 at 64 px is slower: this flatters that arm)")
    return times, notes


def _kind(arm: str, stage: str) -> str:
    if stage == "task" and arm.startswith("rotation"):
        return "task-after"
    if stage == "fixmatch" and arm.endswith("+da"):
        return "fixmatch-da"
    if stage == "freematch" and arm.endswith("-9"):
        return "freematch-9"
    return stage


def simulate(planned_jobs: list, times: dict, gpus: int, whole_donor: bool) -> float:
    """Makespan of the jobs on ``gpus`` workers, each picking the first ready job in plan order; a
    job waits for its donor's shared stages (its whole run with ``whole_donor``)."""
    pending = [job for job in planned_jobs]
    stage_end: dict[tuple[int, int], float] = {}
    run_end: dict[int, float] = {}
    free = [(0.0, worker) for worker in range(gpus)]
    heapq.heapify(free)
    while pending:
        now, worker = heapq.heappop(free)

        def available(job) -> float | None:
            if job.donor is None:
                return 0.0
            if whole_donor:
                return run_end.get(job.donor)
            return stage_end.get((job.donor, job.shared - 1))

        starts = [(max(now, ready), job) for job in pending if (ready := available(job)) is not None]
        ready_now = [job for at, job in starts if at <= now]
        if ready_now:
            job, begin = ready_now[0], now
        else:
            begin, job = min(starts, key=lambda pair: pair[0])
        pending.remove(job)
        clock = begin
        stages = job.planned.spec.stages
        for index in range(job.shared):
            stage_end[job.index, index] = stage_end[job.donor, index]
        for index in range(job.shared, len(stages)):
            clock += times[_kind(job.planned.arm, stages[index].name), job.planned.budget]
            stage_end[job.index, index] = clock
        run_end[job.index] = clock
        heapq.heappush(free, (clock, worker))
    return max(run_end.values())


def run_simulation(times_file: Path) -> None:
    from headstart.compare import load_compare_file, parse_compare, plan
    from headstart.compare.executor import jobs

    spec, base = load_compare_file(LABEL_BUDGETS)
    times, notes = stage_times(_arm_seconds(times_file), list(spec.label_budgets or []))
    print(f"stage times from {times_file.relative_to(ROOT) if times_file.is_relative_to(ROOT) else times_file}:")
    for budget in spec.label_budgets or []:
        kinds = sorted({kind for kind, at in times if at == budget})
        print(f"  {budget:>2} labels per class: " + ", ".join(f"{kind} {times[kind, budget]:.0f} s" for kind in kinds))
    for note in notes:
        print(f"  ({note})")
    without_9 = {name: arm for name, arm in spec.arms.items() if not name.endswith("-9")}
    contrasts = [c for c in spec.contrasts if c.arm in without_9 and c.against in without_9]
    grids = {
        "the file": spec,
        "its 108-run form (no -9 arms)": parse_compare(
            {
                **spec.model_dump(mode="json"),
                "arms": {k: v.model_dump(mode="json") for k, v in without_9.items()},
                "contrasts": [c.model_dump() for c in contrasts],
            },
            "label-budgets",
        ),
    }
    for title, grid in grids.items():
        runs = plan(grid, base)
        planned = jobs(runs, ["fresh"] * len(runs))
        alone = sum(
            times[_kind(job.planned.arm, stage.name), job.planned.budget]
            for job in planned
            for stage in job.planned.spec.stages[job.shared :]
        )
        print(
            f"\n{title}: {len(runs)} runs ({len(grid.arms)} arms × {len(grid.budgets)} budgets × {len(grid.seed_list)} "
            f"seeds), {sum(job.donor is not None for job in planned)} of them start from a donor's stages"
        )
        one = simulate(planned, times, 1, whole_donor=False)
        print(f"  1 GPU (one run after another): {one / 3600:.2f} h (sum of stages trained {alone / 3600:.2f} h)")
        for gpus, whole, how in (
            (8, False, "8 GPUs, one machine (--workers 8)"),
            (32, False, "4 × 8 GPUs, waiting for shared stages"),
            (32, True, "4 × 8 GPUs through Ray (waits for the donor's whole run)"),
        ):
            wall = simulate(planned, times, gpus, whole_donor=whole)
            print(
                f"  {how}: {wall / 60:.1f} min, {one / wall:.1f}× faster than 1 GPU "
                f"({one / wall / gpus:.0%} of {gpus} GPUs busy)"
            )
        longest = max(
            sum(times[_kind(job.planned.arm, stage.name), job.planned.budget] for stage in job.planned.spec.stages)
            for job in planned
        )
        print(f"  (the longest single run, all its stages: {longest / 60:.1f} min — no number of GPUs goes below it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulate", action="store_true", help="Simulate the label-budget grid on 8 and 32 GPUs.")
    parser.add_argument("--times", type=Path, default=MEASURED, help="A comparison.json with measured run times.")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds of each comparison (3, as the README measures it).")
    parser.add_argument("--only", choices=("demo", "budgets"), help="Measure one comparison only.")
    parser.add_argument("--quick", action="store_true", help="The demo's quick epochs (a smoke test of the bench).")
    parser.add_argument("--keep", type=Path, help="Keep the comparisons' folders here.")
    arguments = parser.parse_args()
    if arguments.simulate:
        run_simulation(arguments.times)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    headstart = [sys.executable, "-m", "headstart"]
    if arguments.only in (None, "demo"):
        demo = headstart + ["demo", "--seeds", str(arguments.seeds)] + (["--quick"] if arguments.quick else [])
        measure("demo", demo, cores, arguments.keep)
    if arguments.only in (None, "budgets"):
        budgets = headstart + ["compare", str(LABEL_BUDGETS), "--label-budgets", "1", "--seeds", str(arguments.seeds)]
        measure("label budgets at 1 label per class", budgets, cores, arguments.keep)


if __name__ == "__main__":
    main()
