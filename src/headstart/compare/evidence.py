"""Evidence beside the test accuracy: probes of every backbone a run passes through, and attention
maps of every arm's final network on the same test images, one per class."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from headstart.checkpoint import RunRecord, StageRecord, load_backbone
from headstart.compare.spec import ATTENTION_FILE, INIT_PROBE_FILE, CompareSpec, PlannedRun, ProbeOptions
from headstart.files import atomic_write_bytes, atomic_write_json
from headstart.seeds import derive
from headstart.structure import prepare_run


def probe_run(planned: PlannedRun, options: ProbeOptions, echo: Callable[[str], None]) -> None:
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
