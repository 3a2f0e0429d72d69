"""The comparison file: arms, seeds, label budgets, probe and attention options — and the runs it plans."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from headstart.config import (
    DataSpec,
    ModelSpec,
    RunSpec,
    StageSpec,
    load_run_file,
    parse_run,
    read_yaml_file,
    resolve_data_paths,
)
from headstart.config.strict import Strict
from headstart.errors import HeadstartError
from headstart.metrics import IMBALANCE_RATIO
from headstart.validation import validate

INIT_PROBE_FILE = "init-probe.json"
ATTENTION_FILE = "attention.npz"


class ArmSpec(Strict):
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


class ProbeOptions(Strict):
    """Linear and k-NN probes of every stage's backbone (:mod:`headstart.probe`)."""

    enabled: bool = True
    k: int = Field(20, gt=0, description="neighbours of the k-NN probe (20, as DINO and lightly report)")
    temperature: float = Field(0.07, gt=0, description="k-NN vote weight exp(similarity / temperature)")
    c: float = Field(1.0, gt=0, description="inverse L2 strength of the linear probe (scikit-learn's C)")
    bank_split: str = "train"
    probe_split: str = "test"


class LabelErrorOptions(Strict):
    """Suspected label errors among each run's labelled images, from its final backbone's features
    (leave-one-out k-NN with the probes' ``k`` and temperature, then cleanlab:
    :mod:`headstart.label_errors`). Needs the probes, with the labelled split as their bank."""

    enabled: bool = True
    top: int = Field(12, ge=1, le=100, description="suspects kept per run, lowest label-quality score first")


class AttentionOptions(Strict):
    """Attention maps of each arm's final network for a few test images (Gidaris et al. 2018, fig. 3).

    The images are one per class while classes last (:func:`attention_picks`), drawn with the
    comparison's first seed, so the figure shows different classes and the same images every time."""

    enabled: bool = True
    images: int = Field(4, gt=0, le=16)
    power: float = Field(1.0, gt=0, description="map = mean over channels of |activation|^power")
    layers: dict[str, list[str]] = Field(
        default_factory=dict, description="arm → module names (e.g. backbone.layer3); default: last 3 feature stages"
    )


class Contrast(Strict):
    """Two arms judged against each other at every label budget, paired by seed: is ``arm`` better
    than ``against``, worse, or not resolved (:mod:`headstart.verdict`)? E.g. ``{arm: rotation+fixmatch, against:
    scratch+fixmatch}`` asks whether the pretraining *before* FixMatch adds anything once FixMatch runs."""

    arm: str
    against: str


class CompareSpec(Strict):
    """A comparison: arms × seeds × label budgets on one task (module docstring)."""

    name: str = "comparison"
    output: str | None = Field(None, description="default: comparisons/<name>")
    data: DataSpec
    arms: dict[str, ArmSpec] = Field(min_length=1)
    seeds: list[int] | int = Field([0, 1, 2], description="seeds, or how many (3 → 0, 1, 2)")
    label_budgets: list[int] | None = Field(None, description="labels per class; one comparison per budget")
    baseline: str | None = Field(None, description="the arm gains are measured against; default: the first")
    contrasts: list[Contrast] = Field(
        default_factory=list,
        description="pairs of arms judged against each other at every budget (paired by seed), beside the baseline",
    )
    target: float | None = Field(
        None,
        gt=0,
        le=1,
        description=(
            "validation accuracy that counts as converged; default: the lowest of the baseline's best "
            "validation accuracies over seeds (what every seed of the baseline reached)"
        ),
    )
    metric: Literal["auto", "accuracy", "balanced_accuracy", "macro_f1"] = Field(
        "auto",
        description=(
            "what the final metric and every verdict judge on the test split: accuracy, balanced_accuracy (the "
            "mean of the per-class recalls), macro_f1; auto: balanced_accuracy when the largest labelled training "
            f"class has more than {IMBALANCE_RATIO:g} times the images of the smallest (headstart.verdict), "
            "else accuracy"
        ),
    )
    probes: ProbeOptions = ProbeOptions()
    label_errors: LabelErrorOptions = LabelErrorOptions()
    attention: AttentionOptions = AttentionOptions()
    progress: bool | None = Field(None, description="progress bars; default: when the output is a terminal")
    workers: int | Literal["auto"] = Field(
        "auto",
        description=(
            "runs trained at once, each in its own process with its share of the CPU cores (or its own GPU); "
            "a run that shares stages with another waits for them (headstart.compare.executor). auto: one "
            "per GPU on a machine with several, else 1"
        ),
    )
    num_workers: int | str | None = None
    accelerator: Literal["cpu", "gpu", "auto"] | None = Field(
        None, description="overrides every arm's; default: each arm's own (auto: the GPU when there is one)"
    )
    devices: int | None = None
    precision: str | None = None

    @field_validator("workers")
    @classmethod
    def _whole_workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"workers: {value}: expected a whole number of at least 1, or auto")
        return value

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
        for index, contrast in enumerate(self.contrasts):
            for key in ("arm", "against"):
                named = getattr(contrast, key)
                if named not in self.arms:
                    raise ValueError(f"contrasts[{index}].{key} {named!r} is not an arm; arms: {', '.join(self.arms)}")
            if contrast.arm == contrast.against:
                raise ValueError(f"contrasts[{index}] compares {contrast.arm!r} with itself")
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
