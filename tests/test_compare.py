"""``headstart compare``: arms × seeds × label budgets on real digits, reuse and resume, time to
target counted from what the runs wrote, bad comparison files, and the report rebuilt from disk."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy import stats
from typer.testing import CliRunner

from headstart.cli import _print_comparison, app
from headstart.compare import attention_picks, parse_compare, plan
from headstart.compare import run as run_comparison
from headstart.errors import HeadstartError
from headstart.report.summary import labels_per_class_text, mean_std, reach, run_outcome, summarise
from headstart.report.verdicts import contrast_lines, summary_line
from headstart.verdict import over_seeds
from helpers import digit_run

TINY = {"name": "test_resnet", "weights": None, "image_size": 16}
DATA = {"source": {"kind": "digits"}, "splits": {"labels_per_class": 10}}


def _test_labels(run_folder: Path) -> np.ndarray:
    from headstart.probe import run_data

    data, _ = run_data(run_folder)
    return data.split("test").labels


def _arms(task_epochs: int = 4) -> dict:
    return {
        "scratch": {"model": TINY, "stages": [{"name": "task", "epochs": task_epochs, "batch_size": 25}]},
        "rotation": {
            "model": TINY,
            "stages": [
                {"name": "rotation", "data": "all", "pretext": {"name": "rotation"}, "epochs": 1, "batch_size": 64},
                {"name": "task", "epochs": task_epochs, "batch_size": 25},
            ],
        },
    }


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare") / "digits"
    spec = {
        "name": "digits",
        "output": str(folder),
        "seeds": 2,
        "data": DATA,
        "arms": _arms(),
        "contrasts": [{"arm": "scratch", "against": "rotation"}],
        "attention": {"images": 2},
    }
    lines: list[str] = []
    result = run_comparison(spec, echo=lines.append, progress=False)
    return spec, result, lines


def test_every_arm_runs_at_every_seed_on_the_same_splits(comparison):
    spec, result, lines = comparison
    folder = result.folder
    for arm in ("scratch", "rotation"):
        for seed in (0, 1):
            record = json.loads((folder / arm / f"seed-{seed}" / "run.json").read_text())
            assert record["status"] == "finished" and record["config"]["seed"] == seed
            assert record["config"]["data"]["splits"]["labels_per_class"] == 10
            assert record["hardware"]["cpu_cores"] == (os.cpu_count() or 1)
            assert sum(map(sum, record["test_confusion"])) == record["test"]["count"]
    table = json.loads((folder / "comparison.json").read_text())
    budget = table["budgets"][0]
    assert [arm["name"] for arm in budget["arms"]] == ["scratch", "rotation"]
    for arm in budget["arms"]:
        assert arm["test_accuracy"]["n"] == 2
        runs = [json.loads((folder / arm["name"] / f"seed-{s}" / "run.json").read_text()) for s in (0, 1)]
        values = [run["test"]["accuracy"] for run in runs]
        assert arm["test_accuracy"]["values"] == values
        assert arm["test_accuracy"]["mean"] == pytest.approx(sum(values) / 2)
    rotation = budget["arms"][1]
    scratch_tests = budget["arms"][0]["test_accuracy"]["values"]
    gains = [r - s for r, s in zip(rotation["test_accuracy"]["values"], scratch_tests, strict=True)]
    assert rotation["gain"]["values"] == pytest.approx(gains)
    (judged,) = budget["contrasts"]  # scratch against rotation: the baseline's gain, reversed
    verdict = judged["verdict"]
    assert (judged["arm"], judged["against"], verdict["n"], verdict["method"]) == ("scratch", "rotation", 2, "paired t")
    assert verdict["mean"] == pytest.approx(-sum(gains) / 2)
    # the interval is Student's t over the two paired differences (one degree of freedom)
    low, high = stats.ttest_1samp([-g for g in gains], 0.0).confidence_interval(0.95)
    if np.ptp(gains) > 0:
        assert (verdict["low"], verdict["high"]) == (pytest.approx(low), pytest.approx(high))
    assert verdict["word"] in ("better", "worse", "not resolved")
    assert rotation["verdict"]["n"] == 2 and rotation["verdict"]["mean"] == pytest.approx(sum(gains) / 2)
    line = contrast_lines(summarise(folder, write=False)["budgets"][0])[0]
    assert line.startswith(f"scratch against rotation: {verdict['word']}") and "95% CI" in line
    assert "paired t, 2 seeds" in line
    page = (folder / "report.html").read_text()
    assert 'id="effects-0"' in page and "forest plot" in page
    assert line in (folder / "report.html").read_text()
    assert any("[4/4] rotation, seed 1" in line for line in lines)
    assert (folder / "report.html").stat().st_size > 50_000
    with np.load(folder / "attention.npz") as attention:
        meta = json.loads(str(attention["meta"]))
        assert len(attention["images"]) == 2
    assert len(set(meta["labels"])) == 2  # two classes, not the first two test images
    assert meta["indices"] == attention_picks(_test_labels(folder / "scratch" / "seed-0"), 2, seed=0)
    for arm in ("scratch", "rotation"):
        assert (folder / arm / "seed-0" / "init-probe.json").is_file()
        assert (folder / arm / "seed-0" / f"{1 if arm == 'rotation' else 0}-task" / "probe.json").is_file()
    assert result.verdicts and ("against scratch:" in result.verdicts[0] and "95% CI" in result.verdicts[0])


def test_each_run_ranks_its_labelled_images_and_the_report_shows_the_winners_suspects(comparison):
    from headstart.checkpoint import load_backbone
    from headstart.label_errors import read_label_issues, suspect_labels
    from headstart.probe import probe_features, run_data

    _, result, lines = comparison
    folder = result.folder
    for arm, final in (("scratch", "0-task"), ("rotation", "1-task")):
        for seed in (0, 1):
            run = folder / arm / f"seed-{seed}"
            record = read_label_issues(run / final)
            assert record is not None and record.images == 100 and len(record.suspects) == 12
            assert record.classes == [str(digit) for digit in range(10)]
            data, _ = run_data(run)
            labelled = data.split("train")
            # the same ranking again, from the final stage's own bank features: the 12 lowest scores of all 100
            features = probe_features(load_backbone(run / final), data, image_size=16)
            every = suspect_labels(features[0], labelled, data.class_names, source="x", top=100, thumbnails=False)
            assert [s.position for s in record.suspects] == [s.position for s in every.suspects[:12]]
            assert [s.score for s in record.suspects] == pytest.approx([s.score for s in every.suspects[:12]])
            assert record.suspects[-1].score <= every.suspects[50].score  # the doubtful end of the ranking
            for suspect in record.suspects:  # the run's own labelled draw, with its given labels
                assert suspect.name == labelled.describe(suspect.position)
                assert suspect.given == str(labelled.labels[suspect.position])
            assert not (run / "0-rotation" / "label-issues.json").exists()  # label-free stages are not asked
    assert sum("label check: cleanlab flags" in line for line in lines) == 4
    page = (folder / "report.html").read_text()
    assert 'id="label-issues"' in page and "Suspected label errors" in page
    assert page.count("data:image/png;base64,") > 12


def test_the_winner_is_handed_over_at_its_best_validation_seed_with_a_model_card(comparison):
    import yaml

    from headstart.checkpoint import load_network
    from headstart.compare.handover import hand_over, kept_val_accuracy

    _, result, _ = comparison
    folder = result.folder
    best = folder / "best"
    assert result.best == [best]
    record = json.loads((best / "best.json").read_text())
    table = json.loads((folder / "comparison.json").read_text())
    assert record["arm"] == table["budgets"][0]["winner"]["arm"]
    vals = {seed: kept_val_accuracy(folder / record["arm"] / f"seed-{seed}") for seed in (0, 1)}
    chosen = max(vals, key=lambda seed: (vals[seed], -seed))
    assert record["seed"] == chosen and record["source"] == f"{record['arm']}/seed-{chosen}"
    assert [entry["val_accuracy"] for entry in record["seeds"]] == [vals[0], vals[1]]
    assert "validation" in record["rule"] and "test split plays no part" in record["rule"]
    # best/ is a run folder: the network loads and answers as the run it came from
    source = load_network(folder / record["source"])
    handed = load_network(best)
    images = torch.rand(3, 3, 16, 16)
    assert torch.equal(handed.predict(images), source.predict(images))
    card = (best / "MODEL_CARD.md").read_text()
    _, front, body = card.split("---\n", 2)
    metadata = yaml.safe_load(front)
    assert metadata["library_name"] == "headstart" and metadata["pipeline_tag"] == "image-classification"
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    for heading in (
        "## Model details",
        "## Intended use",
        "## Training data and splits",
        "## Training procedure",
        "## Evaluation",
        "## How this seed was chosen",
        "## Limitations",
        "## Security audit",
    ):
        assert heading in body
    assert "95% CI" in body and "| class | recall |" in body and f"seed {chosen}" in body
    assert 'href="best/MODEL_CARD.md"' in (folder / "report.html").read_text()
    # handing over again replaces the folder whole
    (best / "stray").write_text("x")
    assert hand_over(folder, summarise(folder, write=False)) == [best]
    assert not (best / "stray").exists() and not list(folder.glob(".best*"))


def test_the_seed_is_picked_by_validation_never_by_test(monkeypatch):
    from headstart.compare import handover

    runs = [
        {"seed": 0, "folder": "a", "test_accuracy": 0.99},
        {"seed": 1, "folder": "b", "test_accuracy": 0.90},
        {"seed": 2, "folder": "c", "test_accuracy": 0.95},
    ]
    monkeypatch.setattr(handover, "kept_val_accuracy", {"a": 0.80, "b": 0.85, "c": 0.85}.get)
    run, seeds = handover.pick_seed(runs)
    assert run["seed"] == 1  # the best validation accuracy, the lower seed of a tie; not the best test
    assert [entry["val_accuracy"] for entry in seeds] == [0.80, 0.85, 0.85]


def test_a_backbone_met_again_is_probed_once(tmp_path):
    """A head stage on a frozen backbone hands on the backbone it started from: its probe is the
    start's, computed once (the demo's ImageNet arm); a changed backbone is probed anew."""
    spec = {
        "output": str(tmp_path / "frozen"),
        "seeds": 1,
        "data": DATA,
        "arms": {
            "frozen": {
                "model": TINY,
                "stages": [
                    {"name": "head", "freeze": ["backbone"], "epochs": 1, "batch_size": 25},
                    {"name": "task", "epochs": 1, "batch_size": 25},
                ],
            }
        },
        "attention": {"enabled": False},
    }
    lines: list[str] = []
    run_comparison(spec, echo=lines.append, progress=False)
    assert any("probes of 3 backbones (1 met before)" in line for line in lines), lines
    run = tmp_path / "frozen" / "frozen" / "seed-0"
    start, head, task = (
        json.loads(path.read_text())
        for path in (run / "init-probe.json", run / "0-head" / "probe.json", run / "1-task" / "probe.json")
    )
    assert head["source"].endswith("0-head") and start["source"] == "init"
    assert {**head, "source": "init"} == start
    assert task["source"].endswith("1-task") and task["seconds"] != start["seconds"]  # computed anew


def test_time_to_target_counts_head_start_seconds_and_steps_from_the_stage_records(comparison):
    _, result, _ = comparison
    folder = result.folder / "rotation" / "seed-0"
    outcome = run_outcome(folder)
    rotation = json.loads((folder / "0-rotation" / "stage.json").read_text())
    task = json.loads((folder / "1-task" / "stage.json").read_text())
    assert outcome["head_start_seconds"] == pytest.approx(rotation["seconds"])
    assert outcome["head_start_steps"] == rotation["steps"]
    assert [point["val_accuracy"] for point in outcome["timeline"]] == [row["val_accuracy"] for row in task["history"]]
    assert [point["full_steps"] for point in outcome["timeline"]] == [row["steps"] for row in task["history"]]
    first = outcome["timeline"][0]
    assert first["seconds"] > rotation["seconds"]  # the head start is part of the wall time
    assert outcome["timeline"][-1]["seconds"] <= rotation["seconds"] + task["seconds"] + 1e-6
    assert reach(outcome["timeline"], 0.0)["epoch"] == 1
    assert reach(outcome["timeline"], 1.01) is None


def test_cached_head_steps_are_not_counted_as_full_steps(tmp_path):
    from headstart.config import parse_run
    from headstart.structure import run

    spec = parse_run(
        digit_run(
            tmp_path / "run",
            [
                {"name": "head", "freeze": ["backbone"], "epochs": 2, "batch_size": 25},
                {"name": "fine-tune", "epochs": 2, "batch_size": 25},
            ],
        )
    )
    run(spec)
    outcome = run_outcome(tmp_path / "run")
    head = json.loads((tmp_path / "run" / "0-head" / "stage.json").read_text())
    assert head["cached_features"] is True
    assert [(p["full_steps"], p["cached_steps"]) for p in outcome["timeline"]] == [(0, 4), (0, 8), (4, 8), (8, 8)]
    assert outcome["head_start_steps"] == 0


def test_a_rerun_reuses_finished_runs_and_resumes_an_interrupted_one(comparison, tmp_path):
    spec, result, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(result.folder, copy)
    interrupted = copy / "rotation" / "seed-1"
    record = json.loads((interrupted / "run.json").read_text())
    record.update(status="interrupted", finished_stages=record["finished_stages"][:1], test=None)
    (interrupted / "run.json").write_text(json.dumps(record))
    shutil.rmtree(interrupted / "1-task")
    untouched = (copy / "scratch" / "seed-0" / "0-task" / "weights.safetensors").stat().st_mtime_ns
    lines: list[str] = []
    again = run_comparison({**spec, "output": str(copy)}, echo=lines.append, progress=False)
    assert sum("finished before, reused" in line for line in lines) == 3
    assert any("rotation, seed 1: rotation → task (resuming)" in line for line in lines)
    assert (copy / "scratch" / "seed-0" / "0-task" / "weights.safetensors").stat().st_mtime_ns == untouched
    assert json.loads((interrupted / "run.json").read_text())["status"] == "finished"
    assert again.table["budgets"][0]["arms"][1]["test_accuracy"]["n"] == 2


def test_a_changed_arm_is_refused_unless_overwritten(comparison, tmp_path):
    spec, result, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(result.folder, copy)
    changed = {**spec, "output": str(copy), "seeds": [0], "arms": {**_arms(task_epochs=2)}}
    with pytest.raises(HeadstartError, match="different configuration.*--overwrite"):
        run_comparison(changed, echo=lambda _: None, progress=False)
    lines: list[str] = []
    run_comparison(changed, overwrite=True, echo=lines.append, progress=False)
    assert len(json.loads((copy / "scratch" / "seed-0" / "0-task" / "stage.json").read_text())["history"]) == 2


def test_label_budgets_get_a_folder_and_a_table_each(tmp_path, capsys):
    spec = {
        "name": "budgets",
        "output": str(tmp_path / "budgets"),
        "seeds": [3],
        "label_budgets": [1, 20],
        "data": DATA,
        "arms": {"scratch": _arms(2)["scratch"]},
        "probes": {"enabled": False},
        "attention": {"enabled": False},
    }
    lines: list[str] = []
    result = run_comparison(spec, echo=lines.append, progress=False)
    for budget, labelled in ((1, 10), (20, 200)):
        record = json.loads(
            (tmp_path / "budgets" / f"labels-{budget}" / "scratch" / "seed-3" / "0-task" / "stage.json").read_text()
        )
        assert record["history"][0]["steps"] == -(-labelled // 25)
    assert [b["labels_per_class"] for b in result.table["budgets"]] == [1, 20]
    report = (tmp_path / "budgets" / "report.html").read_text()
    assert "label budgets" in report
    # one verdict per budget, in order (one arm: it is the baseline and wins); one label is singular
    assert [line.split(": ")[0] for line in result.verdicts] == ["1 label per class", "20 labels per class"]
    assert all("the baseline scratch had the best test accuracy" in line for line in result.verdicts)
    assert "Comparison — 1 label per class</h2>" in report and "Comparison — 20 labels per class</h2>" in report
    assert any(line.startswith("[1/2] scratch, seed 3, 1 label per class:") for line in lines), lines
    _print_comparison(result)
    printed = capsys.readouterr().out
    assert "budgets, 1 label per class" in printed and "budgets, 20 labels per class" in printed
    assert "1 labels" not in printed + report + "\n".join(lines)


def test_one_label_per_class_is_singular():
    assert labels_per_class_text(1) == "1 label per class"
    assert [labels_per_class_text(n) for n in (2, 10)] == ["2 labels per class", "10 labels per class"]


def test_attention_images_are_one_per_class_and_fixed_by_the_seed():
    labels = np.repeat(np.arange(10), 30)  # sorted by class: the first four images are all zeros
    picks = attention_picks(labels, 4, seed=0)
    assert len(picks) == 4 and len(set(labels[picks].tolist())) == 4
    assert picks == attention_picks(labels, 4, seed=0)
    assert [attention_picks(labels, 4, seed) for seed in (1, 2, 3)] != [picks] * 3  # the seed draws them
    assert labels[attention_picks(labels, 10, seed=0)].tolist() == list(range(10))
    few = np.array([0, 0, 0, 1, 1])  # more images asked than classes: every class first, then again
    assert sorted(few[attention_picks(few, 3, seed=0)].tolist()) == [0, 0, 1]
    assert sorted(attention_picks(few, 9, seed=0)) == [0, 1, 2, 3, 4]


def test_an_arm_can_be_a_run_file_next_to_the_comparison_file(tmp_path):
    (tmp_path / "scratch.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "ignored",
                "seed": 99,
                "data": {"source": {"kind": "digits"}},
                "model": TINY,
                "stages": [{"name": "task", "epochs": 1, "batch_size": 50}],
            }
        )
    )
    (tmp_path / "compare.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "from-files",
                "output": str(tmp_path / "out"),
                "seeds": 1,
                "data": DATA,
                "arms": {"scratch": {"run": "scratch.yaml"}},
                "probes": {"enabled": False},
                "attention": {"enabled": False},
            }
        )
    )
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "compare.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "scratch" / "seed-0" / "run.json").read_text())
    assert record["config"]["seed"] == 0 and record["config"]["data"]["splits"]["labels_per_class"] == 10
    assert "report:" in result.stdout and "scratch" in result.stdout
    # more seeds and other label budgets from the command line: seed 0 is reused, seed 1 trains
    more = CliRunner().invoke(
        app, ["compare", str(tmp_path / "compare.yaml"), "--no-progress", "--seeds", "2", "--label-budgets", "5"]
    )
    assert more.exit_code == 0, more.output
    assert (tmp_path / "out" / "labels-5" / "scratch" / "seed-1" / "run.json").is_file()
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["seeds"] == [0, 1]
    listed = CliRunner().invoke(app, ["compare", str(tmp_path / "compare.yaml"), "--seeds", "0,1", "--no-progress"])
    assert listed.exit_code == 0 and "[2/2] scratch, seed 1: scratch" not in listed.output
    only = CliRunner().invoke(app, ["compare", str(tmp_path / "compare.yaml"), "--arms", "scratch", "--no-progress"])
    assert only.exit_code == 0 and "finished before, reused" in only.output, only.output
    for option, value in (
        ("--seeds", "two"),
        ("--label-budgets", "1,x"),
        ("--label-budgets", "0"),
        ("--arms", "scratch,ghost"),
    ):
        bad = CliRunner().invoke(app, ["compare", str(tmp_path / "compare.yaml"), option, value])
        assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output
        assert option in bad.output or "positive numbers of labels" in bad.output


@pytest.mark.parametrize(
    "change, message",
    [
        ({"arms": {"a": {"model": TINY}}}, "needs `run`"),
        ({"arms": {"a": {"run": "x.yaml", "model": TINY, "stages": [{"name": "t"}]}}}, "not both"),
        ({"baseline": "nobody"}, "baseline 'nobody' is not an arm"),
        ({"seeds": [1, 1]}, "seeds repeat"),
        ({"label_budgets": [0]}, "positive numbers of labels"),
        ({"probe": {}}, "probe: unknown key; did you mean 'probes'"),
        ({"attention": {"layers": {"ghost": ["backbone.layer1"]}}}, "ghost"),
        ({"contrasts": [{"arm": "a", "against": "b"}]}, r"contrasts\[0\].against 'b' is not an arm"),
        ({"contrasts": [{"arm": "a", "against": "a"}]}, "compares 'a' with itself"),
        ({"contrasts": [{"arm": "a"}]}, "against"),
    ],
)
def test_bad_comparison_files_name_the_key(change, message):
    base = {"data": DATA, "arms": {"a": {"model": TINY, "stages": [{"name": "t"}]}}}
    with pytest.raises(HeadstartError, match=message):
        parse_compare({**base, **change}, "cmp.yaml")


def test_a_spec_of_the_wrong_type_is_named():
    with pytest.raises(HeadstartError, match="spec=int: expected a CompareSpec, a mapping or the path"):
        run_comparison(3, echo=lambda _: None)


def test_bad_comparison_file_on_the_command_line_is_one_line(tmp_path):
    path = tmp_path / "cmp.yaml"
    path.write_text("data: {source: {kind: digits}}\narms: {}\n")
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 2 and "cmp.yaml: arms" in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2 and "no such comparison file" in missing.output


def test_a_folder_in_the_way_is_refused_before_anything_trains(tmp_path):
    keep = tmp_path / "out" / "scratch" / "seed-0" / "thesis.tex"
    keep.parent.mkdir(parents=True)
    keep.write_text("precious")
    spec = {"output": str(tmp_path / "out"), "seeds": [0, 1], "data": DATA, "arms": {"scratch": _arms()["scratch"]}}
    with pytest.raises(HeadstartError, match="is not a headstart run"):
        run_comparison(spec, echo=lambda _: None, progress=False)
    assert keep.read_text() == "precious" and not (tmp_path / "out" / "scratch" / "seed-1").exists()


def test_report_command_rebuilds_the_report_from_files_alone(comparison, tmp_path):
    _, result, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(result.folder, copy)
    (copy / "report.html").unlink()
    (copy / "comparison.json").unlink()
    rebuilt = CliRunner().invoke(app, ["report", str(copy)])
    assert rebuilt.exit_code == 0, rebuilt.output
    page = (copy / "report.html").read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert (copy / "report.html").stat().st_mode & 0o777 == 0o666 & ~mask  # readable like any file the user writes
    assert page.count("<tr>") > 8 and "seed-1" in page and "against scratch:" in rebuilt.stdout
    # the same tables as Markdown, for a document: levels, arms with verdicts, effects
    markdown = CliRunner().invoke(app, ["report", str(copy), "--markdown"])
    assert markdown.exit_code == 0, markdown.output
    assert "| arm | test accuracy |" in markdown.stdout and "| `rotation` | " in markdown.stdout
    assert "| rotation − scratch | " in markdown.stdout and "95% interval" in markdown.stdout
    not_markdown = CliRunner().invoke(app, ["report", str(copy), "--refresh"])
    assert not_markdown.exit_code == 2 and "expects a Markdown file" in not_markdown.output
    assert summarise(copy, write=False)["budgets"][0]["arms"][0]["test_accuracy"]["n"] == 2
    # a single run folder is a report of its own
    single = CliRunner().invoke(app, ["report", str(copy / "rotation" / "seed-0")])
    assert single.exit_code == 0, single.output
    assert (copy / "rotation" / "seed-0" / "report.html").is_file()
    nothing = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert nothing.exit_code == 2 and "neither a comparison" in nothing.output


def test_plan_and_summary_arithmetic():
    spec = parse_compare({"output": "o", "seeds": 2, "label_budgets": [5], "data": DATA, "arms": _arms()})
    runs = plan(spec)
    assert [(r.arm, r.seed) for r in runs] == [("scratch", 0), ("rotation", 0), ("scratch", 1), ("rotation", 1)]
    assert runs[0].folder == Path("o/labels-5/scratch/seed-0")
    assert runs[0].spec.data.splits.labels_per_class == 5
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
    assert mean_std([4.0]) == (4.0, 0.0) and mean_std([]) == (None, None)
    verdict = over_seeds([0.001, 0.008, 0.015]).as_dict()
    summary = {
        "budgets": [
            {
                "labels_per_class": None,
                "baseline": "a",
                "winner": {"arm": "b", "verdict": verdict},
                "arms": [{"name": "b", "test_accuracy": {"mean": 0.9, "std": 0.03, "n": 3}}],
            }
        ]
    }
    line = summary_line(summary)[0]
    assert line.startswith("b had the best mean, test accuracy 0.9000 ± 0.0300 (n=3); against a: not resolved")
    assert "95% CI -0.009 to +0.025" in line and "about 9 seeds" in line
    assert os.sep not in spec.baseline_arm


def test_an_audit_in_the_folder_goes_into_the_report(comparison, tmp_path):
    """An audit from before audit-report.json (only its audit.md) is shown verbatim beside the
    comparison, with a note saying so; a folder holding only the audit gets a report of its own.
    (The audit section built from audit-report.json is tested in test_report_audit.py.)"""
    from headstart.report.html import render

    _, result, _ = comparison
    copy = tmp_path / "copy"
    shutil.copytree(result.folder, copy)
    assert "predates audit-report.json" not in render(copy)
    (copy / "audit.md").write_text(
        "# Target-agnostic attack\n\nCrafted on the public backbone.\n\n"
        "| classes | NABAC |\n|---|---|\n| 5 | 48.2 ± 3.0 |\n"
    )
    page = render(copy)
    assert "predates audit-report.json" in page and "| 5 | 48.2 ± 3.0 |" in page
    assert page.count("<tr>") > 8 and "seed-1" in page  # the comparison is still all there
    alone = tmp_path / "audit-only"
    alone.mkdir()
    shutil.copy(copy / "audit.md", alone / "audit.md")
    rebuilt = CliRunner().invoke(app, ["report", str(alone)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "48.2 ± 3.0" in (alone / "report.html").read_text()


def test_an_arm_that_extends_another_shares_its_stages_and_reports_what_the_extra_stage_added(tmp_path):
    """rotation+more = rotation's stages + one: the shared stages are the same files (hard links), the
    wall time counts them, the weights equal a run trained alone, and the table says what the
    extra stage added over rotation, paired by seed."""
    from safetensors.torch import load_file

    from headstart.compare import extends
    from headstart.report.verdicts import step_lines
    from headstart.structure import run as run_structure

    arms = _arms(task_epochs=2)
    extra = {"name": "more", "epochs": 2, "batch_size": 25, "optimizer": {"lr": 3e-4}}
    arms["rotation+more"] = {"model": TINY, "stages": arms["rotation"]["stages"] + [extra]}
    spec = {
        "name": "extends",
        "output": str(tmp_path / "c"),
        "seeds": [0],
        "data": DATA,
        "arms": arms,
        "probes": {"enabled": False},
        "attention": {"enabled": False},
    }
    lines: list[str] = []
    result = run_comparison(spec, echo=lines.append, progress=False)
    assert extends(plan(parse_compare(spec))) == {"rotation+more": "rotation"}
    assert any("0-rotation, 1-task shared with rotation, seed 0" in line for line in lines)
    donor, sharer = result.folder / "rotation" / "seed-0", result.folder / "rotation+more" / "seed-0"
    for stage in ("0-rotation", "1-task"):
        assert (sharer / stage / "weights.safetensors").samefile(donor / stage / "weights.safetensors")
    run = json.loads((sharer / "run.json").read_text())
    stage_seconds = sum(json.loads((donor / s / "stage.json").read_text())["seconds"] for s in ("0-rotation", "1-task"))
    assert run["earlier_seconds"] == pytest.approx(stage_seconds)
    budget = result.table["budgets"][0]
    arm = next(a for a in budget["arms"] if a["name"] == "rotation+more")
    rotation = next(a for a in budget["arms"] if a["name"] == "rotation")
    assert arm["seconds"]["mean"] > stage_seconds and arm["extends"] == "rotation"
    gain = arm["test_accuracy"]["mean"] - rotation["test_accuracy"]["mean"]
    assert arm["step_gain"]["values"] == pytest.approx([gain])
    assert step_lines(budget)[0].startswith("more after rotation (rotation+more): ")
    assert "one seed: McNemar exact" in step_lines(budget)[0]  # one seed: the test images' predictions
    assert arm["step_verdict"]["method"] == "McNemar exact"
    # the same three stages trained alone end with the same weights
    alone = plan(parse_compare({**spec, "output": str(tmp_path / "alone")}))[2].spec
    run_structure(alone, progress=False)
    shared, trained = (
        load_file(sharer / "2-more" / "weights.safetensors"),
        load_file(tmp_path / "alone" / "rotation+more" / "seed-0" / "2-more" / "weights.safetensors"),
    )
    assert shared.keys() == trained.keys() and all(torch.equal(shared[key], trained[key]) for key in trained)


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "examples" / "compare").glob("*.yaml")),
    ids=lambda path: path.name,
)
def test_example_comparison_files_plan_and_name_known_pretexts(path):
    from headstart import pretext
    from headstart.compare import extends, load_compare_file

    spec, base = load_compare_file(path)
    runs = plan(spec, base)
    assert {run.seed for run in runs} == set(spec.seeds)
    assert len(runs) == len(spec.seeds) * len(spec.arms) * len(spec.budgets)
    for run in runs:
        for stage in run.spec.stages:
            if stage.pretext is not None:
                pretext.get(stage.pretext.name, **stage.pretext.options())
    parents = extends(runs)
    assert all(parent in spec.arms for parent in parents.values())


def test_a_pretext_stage_on_the_whole_pool_is_trained_once_for_every_label_budget(tmp_path):
    """The pretext reads the training pool with labels hidden, the same images at 1 and 4 labels per
    class: the second budget links its weights instead of training it again; the task stage (and
    the probes, which read the budget's labels) are the budget's own."""
    arms = _arms(1)
    arms["rotation"]["stages"][0]["epochs"] = 1
    spec = {
        "name": "shared-pretext",
        "output": str(tmp_path / "out"),
        "seeds": [0],
        "label_budgets": [1, 4],
        "data": DATA,
        "arms": {"rotation": arms["rotation"]},
        "attention": {"enabled": False},
    }
    lines: list[str] = []
    run_comparison(spec, echo=lines.append, progress=False)
    one, four = (tmp_path / "out" / f"labels-{n}" / "rotation" / "seed-0" for n in (1, 4))
    assert any(
        "0-rotation shared with rotation, seed 0, 1 label per class (these stages read no labels)" in line
        for line in lines
    ), lines
    weights = "0-rotation/weights.safetensors"
    assert (one / weights).read_bytes() == (four / weights).read_bytes()
    assert (one / weights).stat().st_ino == (four / weights).stat().st_ino  # linked, not trained again
    assert (one / "1-task/weights.safetensors").read_bytes() != (four / "1-task/weights.safetensors").read_bytes()
    for folder, labelled in ((one, 10), (four, 40)):
        for probe in ("0-rotation/probe.json", "1-task/probe.json", "init-probe.json"):
            assert json.loads((folder / probe).read_text())["bank_size"] == labelled, (folder, probe)
    plans = plan(parse_compare({**spec, "arms": _arms(1)}))
    rotation = [p.spec for p in plans if p.arm == "rotation"]
    scratch = [p.spec for p in plans if p.arm == "scratch"]
    assert rotation[0].prefix_key(1) == rotation[1].prefix_key(1) and rotation[0].prefix_key(2) != rotation[
        1
    ].prefix_key(2)
    assert scratch[0].prefix_key(1) != scratch[1].prefix_key(1)  # the task stage reads the labels
