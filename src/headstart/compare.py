"""Did pretraining help? Arms × seeds × label budgets on one task, judged by both promised gains.

The chapter judges a pretraining strategy by comparison with the same task trained from a random
start, and names two gains: less time to converge and a better final metric. It also warns that a
pretraining which makes things worse must be re-thought. One seed cannot say which: on MNIST with
10 labels per class the spread between seeds is as large as some gains. A comparison therefore runs
every *arm* (a list of stages: scratch, ImageNet transfer, rotation self-supervision, both, …) on
the same task data, the same splits and the same label budget, over several seeds, then writes a
report (:mod:`headstart.report.html`) built only from what the runs wrote on disk.

A comparison file (``headstart compare FILE``)::

    name: mnist-10-labels
    output: comparisons/mnist
    seeds: [0, 1, 2]              # or a count: 3 → seeds 0, 1, 2
    label_budgets: [5, 10, 50]    # labels per class; default: the data's own splits
    baseline: scratch             # default: the first arm
    data:                         # every arm trains on this task (an arm's own data is replaced)
      source: {kind: mnist5k}
      splits: {test_fraction: 0.2, val_fraction: 0.05, labels_per_class: 10}
    arms:
      scratch: {run: scratch.yaml}                  # a run file, relative to this file
      rotation:                                     # or the model and stages inline
        model: {name: resnet10t, image_size: 32}
        stages:
          - {name: rotation, data: all, pretext: {name: rotation}, epochs: 12}
          - {name: task, epochs: 40}
    probes: {k: 20}               # linear and k-NN probes of every stage's backbone
    attention: {images: 4, power: 1}

Each run lands in ``OUTPUT/[labels-N/]ARM/seed-S`` as an ordinary run folder. A rerun reuses the
runs that finished with the same configuration and resumes the interrupted one, so a long
comparison survives Ctrl+C; a folder written by a different configuration is refused unless
``overwrite``. An arm whose first stages equal another arm's (same model, data, seed and stage
settings) starts from that arm's finished stages instead of training them again — they would
come out the same — and counts their wall time as its own; the report says what the extra stages
added (the paired gain over the shorter arm). The splits are the same for every seed
(``data.splits.seed``): seeds vary the initialisation, the order of batches and the augmentations,
which is the spread a user will see.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from headstart.checkpoint import RunRecord, StageRecord, load_backbone, stage_folder
from headstart.config import (
    DataSpec,
    ModelSpec,
    RunSpec,
    StageSpec,
    _Strict,
    load_run_file,
    parse_run,
    read_yaml_file,
    resolve_data_paths,
)
from headstart.errors import HeadstartError
from headstart.files import atomic_write_bytes, atomic_write_json, hardware, is_run, versions
from headstart.report.summary import MANIFEST_FILE, labels_per_class_text
from headstart.seeds import derive
from headstart.stage import Interrupted
from headstart.structure import prepare_run
from headstart.validation import validate

INIT_PROBE_FILE = "init-probe.json"
ATTENTION_FILE = "attention.npz"


class ArmSpec(_Strict):
    """One arm: a run file, or a model with its stages written inline."""

    run: str | None = Field(None, description="a YAML run file; its data, seed and output are replaced")
    model: ModelSpec | None = None
    stages: list[StageSpec] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_form(self) -> ArmSpec:
        if self.run is not None and (self.model is not None or self.stages is not None):
            raise ValueError("give either `run` (a run file) or `model` and `stages`, not both")
        if self.run is None and (self.model is None or self.stages is None):
            raise ValueError("an arm needs `run` (a run file) or both `model` and `stages`")
        return self


class ProbeOptions(_Strict):
    """Linear and k-NN probes of every stage's backbone (:mod:`headstart.probe`)."""

    enabled: bool = True
    k: int = Field(20, gt=0, description="neighbours of the k-NN probe (20, as DINO and lightly report)")
    temperature: float = Field(0.07, gt=0, description="k-NN vote weight exp(similarity / temperature)")
    c: float = Field(1.0, gt=0, description="inverse L2 strength of the linear probe (scikit-learn's C)")
    bank_split: str = "train"
    probe_split: str = "test"


class AttentionOptions(_Strict):
    """Attention maps of each arm's final network for a few test images (Gidaris et al. 2018, fig. 3).

    The images are one per class while classes last (:func:`attention_picks`), drawn with the
    comparison's first seed, so the figure shows different classes and the same images every time."""

    enabled: bool = True
    images: int = Field(4, gt=0, le=16)
    power: float = Field(1.0, gt=0, description="map = mean over channels of |activation|^power")
    layers: dict[str, list[str]] = Field(
        default_factory=dict, description="arm → module names (e.g. backbone.layer3); default: last 3 feature stages"
    )


class CompareSpec(_Strict):
    """A comparison: arms × seeds × label budgets on one task (module docstring)."""

    name: str = "comparison"
    output: str | None = Field(None, description="default: comparisons/<name>")
    data: DataSpec
    arms: dict[str, ArmSpec] = Field(min_length=1)
    seeds: list[int] | int = Field([0, 1, 2], description="seeds, or how many (3 → 0, 1, 2)")
    label_budgets: list[int] | None = Field(None, description="labels per class; one comparison per budget")
    baseline: str | None = Field(None, description="the arm gains are measured against; default: the first")
    target: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "validation accuracy that counts as converged; default: the lowest of the baseline's best "
            "validation accuracies over seeds (what every seed of the baseline reached)"
        ),
    )
    probes: ProbeOptions = ProbeOptions()
    attention: AttentionOptions = AttentionOptions()
    progress: bool | None = Field(None, description="progress bars; default: when the output is a terminal")
    num_workers: int | str | None = None
    accelerator: str | None = None
    devices: int | None = None
    precision: str | None = None

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int] | int) -> list[int]:
        seeds = list(range(value)) if isinstance(value, int) else list(value)
        if not seeds:
            raise ValueError("at least one seed is needed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds repeat: {seeds}")
        return seeds

    @field_validator("label_budgets")
    @classmethod
    def _budgets(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or any(budget <= 0 for budget in value) or len(set(value)) != len(value)):
            raise ValueError(f"expected distinct positive numbers of labels per class, got {value}")
        return value

    @model_validator(mode="after")
    def _check_arms(self) -> CompareSpec:
        for name in self.arms:
            if not name or "/" in name or name.startswith(".") or name.startswith("labels-"):
                raise ValueError(f"arm name {name!r}: use a plain folder name")
        if self.baseline is not None and self.baseline not in self.arms:
            raise ValueError(f"baseline {self.baseline!r} is not an arm; arms: {', '.join(self.arms)}")
        unknown = sorted(set(self.attention.layers) - set(self.arms))
        if unknown:
            raise ValueError(f"attention.layers names arms that do not exist: {unknown}")
        return self

    @property
    def baseline_arm(self) -> str:
        return self.baseline or next(iter(self.arms))

    @property
    def seed_list(self) -> list[int]:
        """:attr:`seeds` after validation, which turns a count into the list of seeds."""
        assert isinstance(self.seeds, list), "CompareSpec._seeds returns a list"
        return self.seeds

    @property
    def budgets(self) -> list[int | None]:
        """:attr:`label_budgets`, or ``[None]`` (the data's own splits) when none are given."""
        return list(self.label_budgets) if self.label_budgets else [None]

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("comparisons") / self.name


def parse_compare(data: Any, source: str = "<compare>") -> CompareSpec:
    """Validate a mapping (from YAML or Python) into a :class:`CompareSpec`."""
    if not isinstance(data, dict):
        raise HeadstartError(f"{source}: expected a mapping with keys data, arms; got {type(data).__name__}")
    return validate(CompareSpec, data, source)


def load_compare_file(path: str | Path) -> tuple[CompareSpec, Path]:
    """Read a YAML comparison file; returns the spec and the folder its relative paths start from."""
    path = Path(path)
    spec = parse_compare(read_yaml_file(path, "comparison file"), str(path))
    resolve_data_paths(spec.data, path.parent)
    return spec, path.parent


@dataclass
class PlannedRun:
    """One run of a comparison: an arm at a seed and a label budget."""

    arm: str
    seed: int
    budget: int | None
    spec: RunSpec

    @property
    def folder(self) -> Path:
        return self.spec.output_dir()


def plan(spec: CompareSpec, base: Path = Path(".")) -> list[PlannedRun]:
    """Every run of the comparison, seeds outermost (a comparison cut short still has whole seeds)."""
    root = spec.output_dir()
    overrides = {
        key: getattr(spec, key)
        for key in ("num_workers", "accelerator", "devices", "precision")
        if getattr(spec, key) is not None
    }
    arms: dict[str, dict[str, Any]] = {}
    for name, arm in spec.arms.items():
        if arm.run is not None:
            path = Path(arm.run) if Path(arm.run).is_absolute() else base / arm.run
            arms[name] = load_run_file(path).model_dump(mode="json", exclude={"name", "seed", "output", "data"})
        else:
            assert arm.model is not None and arm.stages is not None, "ArmSpec._one_form requires both"
            arms[name] = {
                "model": arm.model.model_dump(mode="json"),
                "stages": [stage.model_dump(mode="json") for stage in arm.stages],
            }
    runs = []
    for budget in spec.budgets:
        data = spec.data.model_dump(mode="json")
        if budget is not None:
            data["splits"] = {**data["splits"], "labels_per_class": budget, "labelled_fraction": None}
        for seed in spec.seed_list:
            for name, arm_fields in arms.items():
                folder = root / (f"labels-{budget}" if budget is not None else "") / name / f"seed-{seed}"
                run_spec = parse_run(
                    {**arm_fields, **overrides, "name": name, "seed": seed, "output": str(folder), "data": data},
                    f"arms.{name}",
                )
                runs.append(PlannedRun(name, seed, budget, run_spec))
    return runs


def _reuse_or_resume(planned: PlannedRun, overwrite: bool) -> str:
    """``fresh``, ``reuse`` (finished with this configuration), ``resume`` or ``overwrite``."""
    folder = planned.folder
    if not is_run(folder):
        if folder.exists() and any(folder.iterdir()):
            raise HeadstartError(f"{folder}: exists and is not a headstart run; choose another output")
        return "fresh"
    record = RunRecord.read(folder)
    if record.config_hash != planned.spec.config_hash():
        if overwrite:
            return "overwrite"
        raise HeadstartError(
            f"{folder}: holds a run of a different configuration (hash {record.config_hash}, this "
            f"arm {planned.spec.config_hash()}); pass --overwrite or choose another output"
        )
    return "reuse" if record.status == "finished" else "resume"


def common_stages(first: RunSpec, second: RunSpec) -> int:
    """How many leading stages two runs share with everything that fixes their weights (model,
    data, seed, stage settings) — equal weights after them on a deterministic device."""
    count = 0
    for index in range(1, min(len(first.stages), len(second.stages)) + 1):
        if first.prefix_key(index) != second.prefix_key(index):
            break
        count = index
    return count


def shared_stages(planned: PlannedRun, finished: list[PlannedRun]) -> tuple[PlannedRun, int] | None:
    """The finished run (same seed and label budget) sharing the most leading stages with
    ``planned``, and how many; ``None`` when none shares any."""
    candidates = [
        (common_stages(donor.spec, planned.spec), donor)
        for donor in finished
        if donor.seed == planned.seed and donor.budget == planned.budget
    ]
    if not candidates:
        return None
    count, donor = max(candidates, key=lambda pair: pair[0])
    return (donor, count) if count else None


def _link_stages(donor: PlannedRun, planned: PlannedRun, count: int) -> list[str]:
    """Hard-link (copy where links fail) the donor's first ``count`` finished stage folders into
    ``planned``'s folder, training checkpoints left out; the run then resumes after them."""
    names = []
    for index, stage in enumerate(planned.spec.stages[:count]):
        source = stage_folder(donor.folder, index, stage.name)
        target = stage_folder(planned.folder, index, stage.name)
        for path in source.rglob("*"):
            if path.is_dir() or path.suffix == ".ckpt":
                continue
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                destination.hardlink_to(path)
            except OSError:
                shutil.copy2(path, destination)
        names.append(target.name)
    if (donor.folder / INIT_PROBE_FILE).is_file() and not (planned.folder / INIT_PROBE_FILE).exists():
        shutil.copy2(donor.folder / INIT_PROBE_FILE, planned.folder / INIT_PROBE_FILE)
    return names


def extends(runs: list[PlannedRun]) -> dict[str, str]:
    """For each arm whose stages start with all of another arm's (same model and settings), that
    other arm — the longest such: what the extra stages added is the paired gain over it."""
    first_seed: dict[str, PlannedRun] = {}
    for planned in runs:
        first_seed.setdefault(planned.arm, planned)
    parents = {}
    for name, planned in first_seed.items():
        candidates = [
            (len(other.spec.stages), other.arm)
            for other in first_seed.values()
            if other.arm != name
            and len(other.spec.stages) < len(planned.spec.stages)
            and common_stages(other.spec, planned.spec) == len(other.spec.stages)
        ]
        if candidates:
            parents[name] = max(candidates)[1]
    return parents


def _probe_run(planned: PlannedRun, options: ProbeOptions, echo: Callable[[str], None]) -> None:
    """Probe the backbone the run starts from and each finished stage's; skip those already probed."""
    from headstart.probe import PROBE_FILE, probe_network, probe_stage, run_data

    folder = planned.folder
    stages = RunRecord.read(folder).finished_stages
    pending = [name for name in stages if not (folder / name / PROBE_FILE).is_file()]
    if (folder / INIT_PROBE_FILE).is_file() and not pending:
        return
    started = time.perf_counter()
    data, spec = run_data(folder)
    if not (folder / INIT_PROBE_FILE).is_file():
        start = prepare_run(spec, data=data)
        record = probe_network(
            start.network,
            data,
            image_size=start.image_size,
            source="init",
            k=options.k,
            temperature=options.temperature,
            c=options.c,
            bank_split=options.bank_split,
            probe_split=options.probe_split,
        )
        atomic_write_json(folder / INIT_PROBE_FILE, record.model_dump(mode="json"))
    for name in pending:
        probe_stage(
            folder / name,
            data=data,
            k=options.k,
            temperature=options.temperature,
            c=options.c,
            bank_split=options.bank_split,
            probe_split=options.probe_split,
        )
    echo(f"    probes of {1 + len(pending)} backbones in {time.perf_counter() - started:.1f} s")


def attention_picks(labels: np.ndarray, count: int, seed: int) -> list[int]:
    """Indices (into ``labels``) of ``count`` images for the attention figure, spread over the classes.

    Each class's images are shuffled and the classes taken in a shuffled order, one image each,
    then a second image each, and so on: with at least ``count`` classes every image shows another
    class. Drawn from :func:`headstart.seeds.derive` ``(seed, "attention")``, so the same seed picks
    the same images; returned in class order (then in the order drawn)."""
    labels = np.asarray(labels).reshape(-1)
    count = min(int(count), len(labels))
    generator = np.random.default_rng(derive(seed, "attention"))
    classes = generator.permutation(np.unique(labels))
    queues = [generator.permutation(np.flatnonzero(labels == label)).tolist() for label in classes]
    picks: list[int] = []
    for depth in range(max((len(queue) for queue in queues), default=0)):
        picks.extend(queue[depth] for queue in queues if depth < len(queue))
        if len(picks) >= count:
            break
    picks = picks[:count]
    return sorted(picks, key=lambda index: (int(labels[index]), picks.index(index)))


def _attention(spec: CompareSpec, runs: list[PlannedRun], echo: Callable[[str], None]) -> None:
    """Maps of every arm's final network at the first seed (and first budget), for the same test images."""
    import io
    import json

    from headstart.probe import attention_maps, run_data

    first = [run for run in runs if run.seed == spec.seed_list[0] and run.budget == spec.budgets[0]]
    data, _ = run_data(first[0].folder)
    test = data.split(spec.probes.probe_split if spec.probes.probe_split != "train" else "test")
    count = min(spec.attention.images, len(test))
    if count == 0:
        return
    picks = attention_picks(test.labels, count, spec.seed_list[0])
    images = test.store.load(test.positions[picks])
    arrays: dict[str, Any] = {"images": images.numpy()}
    meta: list[dict[str, Any]] = []
    for planned in first:
        stages = RunRecord.read(planned.folder).finished_stages
        stage_folder = planned.folder / stages[-1]
        network = load_backbone(stage_folder)
        record = StageRecord.read(stage_folder)
        maps = attention_maps(
            network,
            images,
            layers=spec.attention.layers.get(planned.arm) or None,
            power=spec.attention.power,
            image_size=record.model.image_size,
        )
        for layer, values in maps.items():
            key = f"map{len(meta)}"
            arrays[key] = values.numpy()
            meta.append(
                {"key": key, "arm": planned.arm, "layer": layer, "stage": stages[-1], "shape": list(values.shape[1:])}
            )
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        meta=np.array(
            json.dumps(
                {
                    "maps": meta,
                    "power": spec.attention.power,
                    "seed": spec.seed_list[0],
                    "labels": [test.class_names[int(test.labels[index])] for index in picks],
                    "indices": picks,
                }
            )
        ),
        **arrays,
    )
    atomic_write_bytes(spec.output_dir() / ATTENTION_FILE, buffer.getvalue())
    echo(f"attention maps of {len(first)} arms × {count} images written")


@dataclass
class CompareResult:
    """What a comparison wrote: its folder, the summary table and the report's path."""

    folder: Path
    table: dict[str, Any]
    report: Path
    seconds: float

    @property
    def verdicts(self) -> list[str]:
        """One line per label budget: which arm won, by how much, and whether it beats the spread."""
        from headstart.report.summary import summary_line

        return summary_line(self.table)


def run(
    spec: CompareSpec | dict | str | Path,
    *,
    base: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    echo: Callable[[str], None] = print,
    how_to_continue: str = "headstart.compare.run",
) -> CompareResult:
    """Run (or reuse) every planned run, probe the backbones, draw attention maps, write the report.

    ``spec`` is a :class:`CompareSpec`, a mapping, or the path of a comparison file (whose folder
    then resolves relative paths, like ``base``).
    """
    from headstart.report.html import write_report
    from headstart.report.summary import summarise
    from headstart.structure import run as run_structure

    if isinstance(spec, (str, Path)):
        spec, folder = load_compare_file(spec)
        base = base or folder
    elif isinstance(spec, dict):
        spec = parse_compare(spec)
    elif not isinstance(spec, CompareSpec):
        raise HeadstartError(
            f"compare.run spec={type(spec).__name__}: expected a CompareSpec, a mapping or the path "
            "of a comparison file"
        )
    base = Path(base or ".")
    started = time.perf_counter()
    runs = plan(spec, base)
    decisions = [_reuse_or_resume(planned, overwrite) for planned in runs]  # refuse before training anything
    root = spec.output_dir()
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "baseline": spec.baseline_arm,
        "arms": list(spec.arms),
        "seeds": spec.seeds,
        "label_budgets": spec.label_budgets,
        "runs": [
            {"arm": p.arm, "seed": p.seed, "budget": p.budget, "folder": str(p.folder.relative_to(root))} for p in runs
        ],
        "extends": extends(runs),
        "hardware": hardware(),
        "versions": versions(),
    }
    atomic_write_json(root / MANIFEST_FILE, manifest)
    show_bars = (
        progress if progress is not None else (spec.progress if spec.progress is not None else sys.stderr.isatty())
    )
    finished: list[PlannedRun] = []
    for number, (planned, decision) in enumerate(zip(runs, decisions, strict=True), start=1):
        budget = f", {labels_per_class_text(planned.budget)}" if planned.budget is not None else ""
        stages = " → ".join(stage.name for stage in planned.spec.stages)
        prefix = f"[{number}/{len(runs)}] {planned.arm}, seed {planned.seed}{budget}"
        if decision == "reuse":
            echo(f"{prefix}: finished before, reused")
        else:
            echo(f"{prefix}: {stages}" + (" (resuming)" if decision == "resume" else ""))
            if decision == "overwrite":
                shutil.rmtree(planned.folder)
            resume = decision == "resume"
            shared = shared_stages(planned, finished) if decision in ("fresh", "overwrite") else None
            if shared is not None:
                donor, count = shared
                names = _link_stages(donor, planned, count)
                echo(
                    f"    {', '.join(names)} shared with {donor.arm}, seed {donor.seed} (same model, data, seed and "
                    "stage settings)"
                )
                resume = True
            try:
                result = run_structure(planned.spec, resume=resume, progress=show_bars)
            except Interrupted as interruption:
                raise Interrupted(
                    interruption.folder,
                    interruption.stage,
                    f"the same command again ({how_to_continue}); finished runs are reused",
                ) from None
            echo(
                f"    test accuracy {result.test['accuracy']:.4f} in {result.seconds:.1f} s"
                if result.test
                else f"    finished in {result.seconds:.1f} s"
            )
        finished.append(planned)
        if spec.probes.enabled:
            _probe_run(planned, spec.probes, echo)
    if spec.attention.enabled:
        _attention(spec, runs, echo)
    table = summarise(root)
    report = write_report(root)
    return CompareResult(root, table, report, time.perf_counter() - started)
