"""Evidence beside the test accuracy: probes of every backbone a run passes through, and attention
maps of every arm's final network on the same test images, one per class."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from headstart.checkpoint import RunRecord, StageRecord, load_backbone
from headstart.compare.spec import (
    ATTENTION_FILE,
    INIT_PROBE_FILE,
    CompareSpec,
    LabelErrorOptions,
    PlannedRun,
    ProbeOptions,
)
from headstart.files import atomic_write_bytes, atomic_write_json
from headstart.seeds import derive
from headstart.structure import prepare_run


class ProbeMemo:
    """Probes already computed in one comparison, by what decides their scores: the backbone's
    weights and buffers (a digest of every tensor), the run's data block and labelled draw, the
    image size and the probe options. A backbone met again is not probed again: the ImageNet arm starts from the same
    weights at every seed, and a head stage on a frozen backbone hands on the backbone it started
    from (the demo's ImageNet arm: nine probes of three backbones each, four of them distinct)."""

    def __init__(self) -> None:
        self.records: dict[str, Any] = {}
        self.label_issues: dict[str, Any] = {}

    @staticmethod
    def key(network: Any, data_block: str, image_size: int | None, options: ProbeOptions) -> str:
        """What decides a probe's scores, as a digest: the backbone's tensors (every tensor of a
        network without a ``backbone``), the data block, the image size and the probe options."""
        digest = hashlib.blake2b(digest_size=16)
        state = network.state_dict()
        backbone = {name: tensor for name, tensor in state.items() if name.startswith("backbone.")}
        for name, tensor in (backbone or state).items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(f"{data_block}|{image_size}|{options.model_dump_json()}".encode())
        return digest.hexdigest()


def probe_run(
    planned: PlannedRun,
    options: ProbeOptions,
    echo: Callable[[str], None],
    memo: ProbeMemo | None = None,
    label_errors: LabelErrorOptions | None = None,
) -> None:
    """Probe the backbone the run starts from and each finished stage's; skip those already probed
    (on disk, or in ``memo`` for the same weights, data and options). With ``label_errors`` enabled
    and the labelled split as the bank, the final stage's bank features also rank the labelled
    images whose labels look wrong (``label-issues.json`` in that stage's folder)."""
    from headstart.checkpoint import load_backbone
    from headstart.label_errors import LABEL_ISSUES_FILE
    from headstart.probe import PROBE_FILE, run_data

    memo = memo if memo is not None else ProbeMemo()
    folder = planned.folder
    stages = RunRecord.read(folder).finished_stages
    pending = [name for name in stages if not (folder / name / PROBE_FILE).is_file()]
    final = stages[-1] if stages and len(stages) == len(planned.spec.stages) else None
    check_labels = (
        label_errors is not None
        and label_errors.enabled
        and options.bank_split == "train"
        and final is not None
        and not (folder / final / LABEL_ISSUES_FILE).is_file()
    )
    if check_labels and final is not None and final not in pending:
        pending.append(final)
    if (folder / INIT_PROBE_FILE).is_file() and not pending:
        return
    started = time.perf_counter()
    data, spec = run_data(folder)  # with the run's seed: a per-seed draw's bank is this run's labelled images
    data_block = f"{spec.data.model_dump_json()}|draw {data.splits.draw_seed}"
    targets: list[tuple[str, Any, int | None, Path]] = []
    if not (folder / INIT_PROBE_FILE).is_file():
        start = prepare_run(spec, data=data)
        targets.append(("init", start.network, start.image_size, folder / INIT_PROBE_FILE))
    for name in pending:
        targets.append(
            (
                str(folder / name),
                load_backbone(folder / name),
                StageRecord.read(folder / name).model.image_size,
                folder / name / PROBE_FILE,
            )
        )
    computed = 0
    for source, network, image_size, path in targets:
        key = ProbeMemo.key(network, data_block, image_size, options)
        suspects = check_labels and final is not None and path.parent == folder / final
        if key not in memo.records or (suspects and key not in memo.label_issues):
            computed += _probe_once(
                network, data, image_size, source, key, options, memo, label_errors if suspects else None
            )
        record = memo.records[key].model_copy(update={"source": source})
        atomic_write_json(path, record.model_dump(mode="json"))
        if suspects:
            issues = memo.label_issues[key].model_copy(update={"source": source})
            atomic_write_json(path.parent / LABEL_ISSUES_FILE, issues.model_dump(mode="json"))
    again = f" ({len(targets) - computed} met before)" if computed < len(targets) else ""
    backbones = "1 backbone" if len(targets) == 1 else f"{len(targets)} backbones"
    echo(f"    probes of {backbones}{again} in {time.perf_counter() - started:.1f} s")
    if check_labels and final is not None:
        echo(f"    {suspects_line(folder / final)}")


def suspects_line(stage_folder: Path) -> str:
    """One line on a stage's suspected label errors: how many cleanlab flags, and the first suspect."""
    from headstart.label_errors import read_label_issues

    record = read_label_issues(stage_folder)
    if record is None:
        return "label check: not run"
    line = f"label check: cleanlab flags {record.flagged} of {record.images} labelled images"
    if record.suspects:
        first = record.suspects[0]
        if first.suggested != first.given:
            line += f"; most doubtful: {first.name} (given {first.given}, looks like {first.suggested}"
            line += f", {first.score:.3f})"
        else:
            line += f"; every label agrees with its neighbours' vote (lowest score {first.score:.3f})"
    return line


def _probe_once(
    network: Any,
    data: Any,
    image_size: int | None,
    source: str,
    key: str,
    options: ProbeOptions,
    memo: ProbeMemo,
    label_errors: LabelErrorOptions | None,
) -> int:
    """Compute the bank and probe features of ``network`` once, the probe record (unless ``memo``
    has it) and, with ``label_errors``, the suspected label errors of the bank; store them in
    ``memo`` under ``key``. Returns 1 when a probe record was computed."""
    from headstart.label_errors import suspect_labels
    from headstart.probe import probe_features, probe_network

    features = probe_features(
        network, data, image_size=image_size, bank_split=options.bank_split, probe_split=options.probe_split
    )
    computed = 0
    if key not in memo.records:
        memo.records[key] = probe_network(
            network,
            data,
            image_size=image_size,
            source=source,
            k=options.k,
            temperature=options.temperature,
            c=options.c,
            bank_split=options.bank_split,
            probe_split=options.probe_split,
            features=features,
        )
        computed = 1
    if label_errors is not None:
        memo.label_issues[key] = suspect_labels(
            features[0],
            data.split(options.bank_split),
            data.class_names,
            source=source,
            split=options.bank_split,
            k=options.k,
            temperature=options.temperature,
            top=label_errors.top,
        )
    return computed


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


def attention_maps_of_arms(spec: CompareSpec, runs: list[PlannedRun], echo: Callable[[str], None]) -> None:
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
