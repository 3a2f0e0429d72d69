"""``headstart compare --workers N``: runs trained at once in worker processes give the results of
one run after another, in dependency order; a killed worker, Ctrl+C and a second command on the same
folder; ``--plan-only``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from headstart.cli import app
from headstart.compare import parse_compare, plan
from headstart.compare import run as run_comparison
from headstart.compare.executor import RunsFailed, jobs
from headstart.compare.lock import LOCK_FILE, comparison_lock
from headstart.errors import HeadstartError

TINY = {"name": "test_resnet", "weights": None, "image_size": 16}
ROTATION = {"name": "rotation", "data": "all", "pretext": {"name": "rotation"}, "epochs": 4, "batch_size": 64}
TASK = {"name": "task", "epochs": 2, "batch_size": 25}


def _spec(output: Path, seeds: int = 2) -> dict:
    """scratch, rotation and rotation+more (which extends rotation: it waits for rotation's stages)."""
    return {
        "name": "parallel",
        "output": str(output),
        "seeds": seeds,
        "data": {"source": {"kind": "digits"}, "splits": {"labels_per_class": 10}},
        "arms": {
            "scratch": {"model": TINY, "stages": [TASK]},
            "rotation": {"model": TINY, "stages": [ROTATION, TASK]},
            "rotation+more": {"model": TINY, "stages": [ROTATION, TASK, {**TASK, "name": "more", "epochs": 1}]},
        },
        "probes": {"enabled": False},
        "attention": {"enabled": False},
    }


def _results(folder: Path) -> dict[str, tuple]:
    """Every run's test accuracy and test predictions, by its folder."""
    found = {}
    for path in sorted(folder.glob("*/seed-*/run.json")):
        record = json.loads(path.read_text())
        assert record["status"] == "finished", path
        found[str(path.parent.relative_to(folder))] = (record["test"]["accuracy"], record["test_predictions"])
    return found


@pytest.fixture(scope="module")
def one_after_another(tmp_path_factory):
    """The reference: the comparison trained one run after another with one thread."""
    folder = tmp_path_factory.mktemp("sequential") / "out"
    run_comparison(_spec(folder), echo=lambda _: None, progress=False, threads=1)
    return _results(folder)


def test_two_workers_give_the_results_of_one_run_after_another(one_after_another, tmp_path):
    lines: list[str] = []
    result = run_comparison(_spec(tmp_path / "out"), echo=lines.append, progress=False, workers=2, threads=1)
    assert _results(result.folder) == one_after_another and len(one_after_another) == 6
    for path in result.folder.glob("*/seed-*/run.json"):
        assert json.loads(path.read_text())["threads"] == 1
    workers = {line.split(" worker ")[1].split()[0] for line in lines if " starts " in line}
    assert workers == {"1", "2"}, lines  # both workers trained
    for seed in (0, 1):  # rotation+more started after rotation's two stages and linked them
        donor, sharer = (result.folder / arm / f"seed-{seed}" for arm in ("rotation", "rotation+more"))
        for stage in ("0-rotation", "1-task"):
            assert (sharer / stage / "weights.safetensors").samefile(donor / stage / "weights.safetensors")
        donor_started = next(i for i, line in enumerate(lines) if f"starts rotation, seed {seed}:" in line)
        started = next(i for i, line in enumerate(lines) if f"starts rotation+more, seed {seed}:" in line)
        assert donor_started < started, lines  # it waited for the stages it links (whose files it shares)
    assert sum(" starts " in line for line in lines) == 6 and not (result.folder / LOCK_FILE).exists()
    assert (result.folder / "report.html").is_file()


def test_the_dag_waits_for_the_donor_chosen_as_the_sequential_loop_chooses_it(tmp_path):
    runs = plan(parse_compare(_spec(tmp_path, seeds=2)))
    planned = jobs(runs, ["fresh"] * len(runs))
    donors = {(job.planned.arm, job.planned.seed): (job.donor, job.shared) for job in planned}
    assert donors[("rotation+more", 0)] == (1, 2) and donors[("rotation+more", 1)] == (4, 2)
    assert donors[("scratch", 1)] == (None, 0) and donors[("rotation", 1)] == (None, 0)
    resumed = jobs(runs, ["fresh", "fresh", "resume", "reuse", "fresh", "fresh"])
    assert resumed[2].donor is None  # a run resumed from its own stages shares nothing


def _kill_when(folder: Path, run: str, pattern: str, lines: list[str]):
    """An echo that, once ``run`` has started on worker N, kills worker N with SIGKILL as soon as a
    file matching ``pattern`` appears in the run's folder (mid-run: an epoch saved, more to come)."""
    import multiprocessing

    def kill(number: str) -> None:
        deadline = time.monotonic() + 60
        while not list((folder / run).glob(pattern)) and time.monotonic() < deadline:
            time.sleep(0.01)
        for child in multiprocessing.active_children():
            if child.name == f"headstart-worker-{number}":
                os.kill(child.pid, signal.SIGKILL)

    def echo(line: str) -> None:
        lines.append(line)
        arm, seed = run.split("/")
        if f" starts {arm}, seed {seed.split('-')[1]}:" in line:
            threading.Thread(target=kill, args=(line.split(" worker ")[1].split()[0],), daemon=True).start()

    return echo


def _seed_zero(results: dict[str, tuple]) -> dict[str, tuple]:
    return {name: result for name, result in results.items() if name.endswith("seed-0")}


def test_a_killed_worker_fails_only_its_runs_and_the_same_command_resumes_them(one_after_another, tmp_path):
    folder = tmp_path / "out"
    lines: list[str] = []
    echo = _kill_when(folder, "rotation/seed-0", "0-rotation/last.ckpt", lines)
    with pytest.raises(RunsFailed) as failure:
        run_comparison(_spec(folder, 1), echo=echo, progress=False, workers=2, threads=1, how_to_continue="AGAIN")
    message = str(failure.value)
    assert "2 of 3 runs did not finish" in message, message
    assert "rotation, seed 0 (worker process killed by SIGKILL)" in message
    assert "rotation+more, seed 0 (not started" in message and message.endswith("resume with: AGAIN")
    record = json.loads((folder / "rotation" / "seed-0" / "run.json").read_text())
    assert (record["status"], record["error"]) == ("failed", "worker process killed by SIGKILL")  # its parent wrote it
    assert set(_results_finished(folder)) == {"scratch/seed-0"}  # the other worker's run went on and finished
    assert not (folder / LOCK_FILE).exists()
    again: list[str] = []
    run_comparison(_spec(folder, 1), echo=again.append, progress=False, workers=2, threads=1)
    assert sum("finished before, reused" in line for line in again) == 1, again
    assert any("starts rotation, seed 0: rotation → task (resuming)" in line for line in again), again
    assert _results(folder) == _seed_zero(one_after_another)


def _results_finished(folder: Path) -> dict[str, float]:
    found = {}
    for path in folder.glob("*/seed-*/run.json"):
        record = json.loads(path.read_text())
        if record["status"] == "finished":
            found[str(path.parent.relative_to(folder))] = record["test"]["accuracy"]
    return found


def _workers(pid: int) -> list[int]:
    """The worker processes of the comparison ``pid`` (spawned children; not multiprocessing's tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return [child for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def _interrupted_comparison(tmp_path: Path, options: list[str], on_start=lambda pid: None) -> tuple[Path, str]:
    """Start ``headstart compare`` (one seed) with ``options``, send the command alone SIGINT (as a
    scheduler would) once rotation has a checkpoint; check the one-line ending and that no lock is
    left. Returns the output folder and the command's standard error."""
    folder = tmp_path / "out"
    file = tmp_path / "parallel.yaml"
    file.write_text(yaml.safe_dump(_spec(folder, seeds=1), sort_keys=False))
    command = [sys.executable, "-m", "headstart", "compare", str(file), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (folder / "rotation" / "seed-0" / "0-rotation" / "last.ckpt").exists():
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.02)
    on_start(process.pid)
    os.kill(process.pid, signal.SIGINT)
    _, errors = process.communicate(timeout=180)
    assert process.returncode == 130, errors
    last = errors.strip().splitlines()[-1]
    assert last.startswith("error: interrupted; every worker stopped"), errors
    assert f"headstart compare {file} {' '.join(options)}" in last and "Traceback" not in errors
    assert not (folder / LOCK_FILE).exists()
    return folder, errors


def _continued(folder: Path, one_after_another: dict, **options) -> None:
    """The same comparison again reuses every run that finished before Ctrl+C and ends with the
    results of one run after another."""
    finished = _results_finished(folder)
    lines: list[str] = []
    run_comparison(_spec(folder, 1), echo=lines.append, progress=False, threads=1, **options)
    assert sum("finished before, reused" in line for line in lines) == len(finished)
    assert _results(folder) == _seed_zero(one_after_another)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads worker processes from /proc")
def test_ctrl_c_stops_every_worker_and_keeps_every_finished_run(one_after_another, tmp_path):
    workers: list[int] = []

    def two_workers(pid: int) -> None:
        workers.extend(_workers(pid))
        assert len(workers) == 2

    folder, _ = _interrupted_comparison(tmp_path, ["--workers", "2", "--threads", "1"], two_workers)
    assert not [pid for pid in workers if _alive(pid)]
    assert json.loads((folder / "rotation" / "seed-0" / "run.json").read_text())["status"] == "interrupted"
    _continued(folder, one_after_another, workers=2)


def test_ctrl_c_under_ray_cancels_every_task_and_keeps_every_finished_run(one_after_another, tmp_path):
    """Ctrl+C to the command that submitted the runs to a local Ray: the training tasks stop after
    their current step, queued ones never start, the command ends in one line with the command that
    continues, and that command (here on this machine) reuses every finished run."""
    pytest.importorskip("ray")
    folder, _ = _interrupted_comparison(tmp_path, ["--threads", "1", "--executor", "ray"])
    statuses = {
        arm: json.loads(path.read_text())["status"] if (path := folder / arm / "seed-0" / "run.json").exists() else None
        for arm in ("scratch", "rotation", "rotation+more")
    }
    # a tiny run may finish in the moment the stop takes to arrive; never all three, never one left running
    assert "running" not in statuses.values() and set(statuses.values()) != {"finished"}, statuses
    _continued(folder, one_after_another)


def test_a_second_command_on_the_same_folder_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "out"
    file = tmp_path / "parallel.yaml"
    file.write_text(yaml.safe_dump(_spec(folder, seeds=1), sort_keys=False))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder.mkdir()
        (folder / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        result = CliRunner().invoke(app, ["compare", str(file), "--workers", "2"])
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (
            f"error: {folder}: another headstart compare (PID {holder.pid}) is training in this folder; wait for it "
            "to finish or choose another output"
        )
        assert sorted(path.name for path in folder.iterdir()) == [LOCK_FILE]  # nothing trained, nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_command_is_taken_over_and_a_live_one_refused(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with comparison_lock(tmp_path) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(HeadstartError, match=r"PID 1 on elsewhere.*remove .*\.headstart-compare\.lock"):
        with comparison_lock(tmp_path):
            pass


def test_plan_only_prints_one_run_command_per_run_in_dependency_order(tmp_path):
    from headstart.config import load_run_file

    folder = tmp_path / "out"
    file = tmp_path / "parallel.yaml"
    file.write_text(yaml.safe_dump(_spec(folder), sort_keys=False))
    result = CliRunner().invoke(app, ["compare", str(file), "--plan-only"])
    assert result.exit_code == 0, result.output
    commands = [line for line in result.output.splitlines() if line.startswith("headstart run ")]
    runs = plan(parse_compare(_spec(folder)))
    assert len(commands) == len(runs) == 6
    for command, planned in zip(commands, runs, strict=True):
        path = command.split()[2]
        assert load_run_file(path).config_hash() == planned.spec.config_hash()
        assert load_run_file(path).output_dir() == planned.folder
    assert "(its first 2 stage(s) equal rotation, seed 0's)" in result.output
    assert not list(folder.glob("*/seed-*"))  # nothing trained


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["compare", "FILE", "--workers", "0"], "error: --workers 0: expected a whole number of at least 1"),
        (["compare", "FILE", "--executor", "dask"], "error: --executor 'dask': expected local or ray"),
        (["compare", "FILE", "--ray-address", "auto"], "error: --ray-address needs --executor ray"),
        (["demo", "--threads", "0"], "error: --threads 0: expected a whole number of at least 1"),
        (["demo", "--data", "FOLDER", "--workers", "2"], "error: --workers and --threads apply to the MNIST demo"),
    ],
)
def test_bad_parallel_options_are_one_line(tmp_path, arguments, message):
    file = tmp_path / "parallel.yaml"
    file.write_text(yaml.safe_dump(_spec(tmp_path / "out"), sort_keys=False))
    arguments = [str(file) if value == "FILE" else str(tmp_path) if value == "FOLDER" else value for value in arguments]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_the_comparison_file_field_sets_the_workers(tmp_path):
    assert parse_compare({**_spec(tmp_path), "workers": 3}).workers == 3
    with pytest.raises(HeadstartError, match="workers"):
        parse_compare({**_spec(tmp_path), "workers": 0})


def test_workers_auto_is_one_per_gpu_on_a_machine_with_several_else_one(monkeypatch):
    """The default (``workers: auto``): GPUs give a run a device each and change no result, so N GPUs
    train N runs at once; a CPU machine trains one run at a time with every core."""
    import torch

    from headstart.compare.executor import default_workers

    spec = parse_compare(_spec(Path("out")))
    assert spec.workers == "auto" and parse_compare({**_spec(Path("out")), "workers": 3}).workers == 3
    assert default_workers(spec) == (torch.cuda.device_count() if torch.cuda.device_count() >= 2 else 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpus, expected in ((8, 8), (2, 2), (1, 1)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda gpus=gpus: gpus)
        assert default_workers(spec) == expected
    assert default_workers(parse_compare({**_spec(Path("out")), "accelerator": "cpu"})) == 1
    for wrong in (0, -2, "many"):
        with pytest.raises(HeadstartError, match="workers"):
            parse_compare({**_spec(Path("out")), "workers": wrong})


def test_ray_tasks_give_the_results_of_one_run_after_another(one_after_another, tmp_path):
    """A local Ray started on the spot (the machine's cores), one CPU and one thread per run; the
    extending arm is submitted with its donor's task as an argument, so Ray starts it after."""
    pytest.importorskip("ray")
    lines: list[str] = []
    result = run_comparison(_spec(tmp_path / "out", 1), echo=lines.append, progress=False, executor="ray", threads=1)
    assert _results(result.folder) == _seed_zero(one_after_another)
    for path in result.folder.glob("*/seed-*/run.json"):
        assert json.loads(path.read_text())["threads"] == 1
    donor, sharer = (result.folder / arm / "seed-0" for arm in ("rotation", "rotation+more"))
    assert (sharer / "1-task" / "weights.safetensors").samefile(donor / "1-task" / "weights.safetensors")
    assert lines[0] == "3 runs submitted to Ray (1 CPU each)" and sum("ray: " in line for line in lines) == 3


def test_a_run_stopped_between_linking_its_donors_stages_and_starting_is_linked_again(tmp_path):
    """Links of a donor's stages are all such a folder holds (no run.json yet): it is cleared and
    linked again, whereas anything else in the way is refused."""
    from headstart.compare.sharing import reuse_or_resume

    sharer = next(p for p in plan(parse_compare(_spec(tmp_path / "out", 1))) if p.arm == "rotation+more")
    (sharer.folder / "0-rotation").mkdir(parents=True)
    (sharer.folder / "0-rotation" / "weights.safetensors").write_bytes(b"a link")
    assert reuse_or_resume(sharer, overwrite=False) == "overwrite"
    (sharer.folder / "notes.txt").write_text("mine")
    with pytest.raises(HeadstartError, match="is not a headstart run"):
        reuse_or_resume(sharer, overwrite=False)


def test_the_commands_pass_workers_and_threads_on_and_the_resume_command_keeps_them(tmp_path, monkeypatch):
    import headstart.compare
    import headstart.demo

    seen: list[dict] = []

    def stand_in(spec, **options):
        seen.append(options)
        raise HeadstartError("stopped here")

    monkeypatch.setattr(headstart.compare, "run", stand_in)
    monkeypatch.setattr(headstart.demo, "run_comparison", stand_in)
    file = tmp_path / "parallel.yaml"
    file.write_text(yaml.safe_dump(_spec(tmp_path / "out"), sort_keys=False))
    result = CliRunner().invoke(app, ["compare", str(file), "--workers", "2", "--threads", "1"])
    assert result.output.strip() == "error: stopped here"
    assert (seen[0]["workers"], seen[0]["threads"], seen[0]["executor"]) == (2, 1, "local")
    assert seen[0]["how_to_continue"] == f"headstart compare {file} --workers 2 --threads 1"
    CliRunner().invoke(app, ["demo", "--workers", "2", "--output", str(tmp_path / "demo")])
    assert (seen[1]["workers"], seen[1]["threads"], seen[1]["how_to_continue"]) == (
        2,
        None,
        "headstart demo --workers 2",
    )
    CliRunner().invoke(app, ["demo", "--output", str(tmp_path / "demo")])  # the default: the comparison's auto
    assert (seen[2]["workers"], seen[2]["how_to_continue"]) == (None, "headstart demo")


def test_ray_tasks_run_on_an_existing_cluster_which_is_left_running(one_after_another, tmp_path):
    """``--ray-address``: the runs go to a cluster started beforehand (here a one-node cluster on this
    machine, as ``ray start --head`` starts one), which the comparison leaves running."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        spec = {**_spec(tmp_path / "out", 1), "arms": {"scratch": _spec(tmp_path)["arms"]["scratch"]}}
        result = run_comparison(
            spec, echo=lambda _: None, progress=False, executor="ray", threads=1, ray_address=cluster.address
        )
        assert _results(result.folder) == {"scratch/seed-0": one_after_another["scratch/seed-0"]}
        assert cluster.head_node.remaining_processes_alive()
    finally:
        cluster.shutdown()
