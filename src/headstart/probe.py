"""Probes of what a backbone learned, without fine-tuning it: linear, k-NN, attention maps.

A pretraining stage is judged twice: by the task stage that follows it (``headstart compare``), and
by how much its frozen features already know. The probes here measure the second:

* **linear probe** — multinomial logistic regression on frozen, pooled features (the standard
  evaluation of self-supervised representations since Zhang et al. 2016 and Kolesnikov et al.
  2019): scikit-learn's ``LogisticRegression`` with its defaults (L2 penalty, ``C = 1``, intercept
  not penalised, the ``lbfgs`` solver) fitted in float64 on the CPU, ``max_iter`` raised to 1,000
  so it converges; features are standardised with the training bank's mean and standard deviation
  first.
* **k-NN probe** — weighted k nearest neighbours under cosine similarity, ``k = 20``, each
  neighbour voting ``exp(similarity / 0.07)`` for its class: the protocol of Wu et al. 2018 that
  DINO (Caron et al. 2021, ``eval_knn.py``) and lightly (``knn_predict``) report.
* **attention maps** — for a layer's activation ``A`` (channels × h × w), the spatial map
  ``mean_c |A_c|^p`` (Zagoruyko & Komodakis 2017; the maps of Gidaris et al. 2018, figure 3, with
  ``p`` = 1, 2 or 4): where in the image the layer responds.

Features are computed once per split in ``eval()`` mode (BatchNorm on running statistics, no
dropout), streamed like every pass. By default the labelled training split is the bank (the images
a user has labels for) and the test split is probed; the settings are stored with the score in
``probe.json`` beside the stage's weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, Field
from torch import Tensor

from headstart.errors import HeadstartError
from headstart.files import RUN_FILE, atomic_write_json, is_run, read_json
from headstart.heads import accuracy, predicted_classes
from headstart.modes import evaluating

if TYPE_CHECKING:
    from headstart.engine.batches import ResidencyChoice

PROBE_FILE = "probe.json"
KNN_K = 20
KNN_TEMPERATURE = 0.07
LINEAR_C = 1.0
LINEAR_MAX_ITER = 1000
"""L-BFGS iterations allowed to the linear probe (scikit-learn's default of 100 stops short on
standardised network features; 1,000 leaves a wide margin: 1,280 features of 200 digits converge
in about 100)."""


class ProbeRecord(BaseModel):
    """The content of ``probe.json``: scores and every setting that produced them."""

    source: str
    """Stage folder (or ``init`` for the weights a run starts from) whose backbone was probed."""
    linear_accuracy: float
    knn_accuracy: float
    bank_split: str
    probe_split: str
    bank_size: int
    probe_size: int
    num_features: int
    image_size: int | None
    settings: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


def standardize(bank: Tensor, *others: Tensor) -> tuple[Tensor, ...]:
    """Scale every feature to zero mean and unit variance over ``bank`` and apply the same to ``others``:
    scikit-learn's ``StandardScaler`` (a feature constant over the bank is only centred), float64 on the CPU."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(bank.detach().double().cpu().numpy())
    return tuple(
        torch.from_numpy(scaler.transform(features.detach().double().cpu().numpy())) for features in (bank, *others)
    )


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, *, c: float = LINEAR_C, max_iter: int = LINEAR_MAX_ITER
) -> tuple[Tensor, Tensor]:
    """scikit-learn's ``LogisticRegression(C=c, max_iter=max_iter)`` (L2, ``lbfgs``, multinomial) fitted
    on ``features`` as given, in float64 on the CPU; returns its weights ``(outputs, features)`` and
    intercepts as logits in :mod:`headstart.heads`' layout: one column per class, or one column (the
    log-odds of class 1) for two classes. A class absent from ``labels`` gets an intercept of
    ``−∞`` (never predicted). scikit-learn warns (``ConvergenceWarning``) when ``max_iter`` is too few."""
    from sklearn.linear_model import LogisticRegression

    if c <= 0:
        raise HeadstartError(f"linear probe C={c}: expected a positive inverse regularisation strength")
    present = torch.unique(labels.cpu()).long()
    if len(present) < 2:
        raise HeadstartError(f"linear probe: the bank holds one class ({present.tolist()}); it needs two or more")
    model = LogisticRegression(C=c, max_iter=max_iter).fit(
        features.detach().double().cpu().numpy(), labels.cpu().numpy()
    )
    coef = torch.from_numpy(model.coef_)
    intercept = torch.from_numpy(model.intercept_)
    if num_classes == 2 and len(present) == 2:
        return coef, intercept  # scikit-learn's binary model: one log-odds of class 1
    if len(present) == 2:  # the log-odds of the second present class against the first
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weights = torch.zeros(num_classes, coef.shape[1], dtype=torch.float64)
    bias = torch.full((num_classes,), -torch.inf, dtype=torch.float64)
    weights[present], bias[present] = coef, intercept
    return weights, bias


def linear_probe(
    bank: Tensor,
    bank_labels: Tensor,
    probe: Tensor,
    probe_labels: Tensor,
    *,
    c: float = LINEAR_C,
    num_classes: int | None = None,
    max_iter: int = LINEAR_MAX_ITER,
) -> float:
    """Accuracy on ``probe`` of logistic regression fitted on standardised ``bank`` features."""
    num_classes = num_classes or int(max(bank_labels.max(), probe_labels.max())) + 1
    bank, probe = standardize(bank, probe)
    weights, bias = fit_logistic_regression(bank, bank_labels, num_classes, c=c, max_iter=max_iter)
    return float(accuracy(probe @ weights.T + bias, probe_labels.cpu()))


def knn_votes(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> Tensor:
    """Votes ``[queries, max(2, num_classes)]`` of the weighted k-NN under cosine similarity (Wu et al.
    2018; DINO, lightly): each of the ``k`` nearest bank features votes ``exp(similarity / temperature)``
    for its class. Scores per class, read like logits (:func:`headstart.heads.predicted_classes`)."""
    if k < 1:
        raise HeadstartError(f"k-NN probe k={k}: expected at least 1 neighbour")
    if temperature <= 0:
        raise HeadstartError(f"k-NN probe temperature={temperature}: expected a positive value")
    bank = torch.nn.functional.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    columns = max(2, num_classes)  # never one column: that would read as one sigmoid output
    votes = [torch.zeros(0, columns, device=queries.device)]
    for start in range(0, len(queries), chunk):
        part = torch.nn.functional.normalize(queries[start : start + chunk].float(), dim=1)
        similarity, index = (part @ bank.T).topk(k, dim=1)
        part_votes = torch.zeros(len(part), columns, device=part.device)
        part_votes.scatter_add_(1, bank_labels[index].long(), (similarity / temperature).exp())
        votes.append(part_votes)
    return torch.cat(votes)


def knn_predict(
    bank: Tensor,
    bank_labels: Tensor,
    queries: Tensor,
    num_classes: int,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk: int = 1024,
) -> Tensor:
    """Class of each query by weighted k-NN under cosine similarity (:func:`knn_votes`)."""
    return predicted_classes(
        knn_votes(bank, bank_labels, queries, num_classes, k=k, temperature=temperature, chunk=chunk)
    )


def knn_probe(
    bank: Tensor,
    bank_labels: Tensor,
    probe: Tensor,
    probe_labels: Tensor,
    *,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
) -> float:
    """Accuracy on ``probe`` of the weighted k-NN vote over ``bank`` (:func:`knn_votes`)."""
    num_classes = num_classes or int(max(bank_labels.max(), probe_labels.max())) + 1
    votes = knn_votes(bank, bank_labels, probe, num_classes, k=k, temperature=temperature)
    return float(accuracy(votes, probe_labels))


def probe_features(
    network,
    data,
    *,
    image_size: int | None,
    bank_split: str = "train",
    probe_split: str = "test",
    device: str = "cpu",
    residency: ResidencyChoice = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(bank, bank_labels, probe, probe_labels)``: ``network``'s pooled backbone features, in eval
    mode, of two labelled splits of ``data`` (a TaskData), in each split's order."""
    from headstart.engine.batches import plan_images
    from headstart.engine.passes import compute_features

    sets = {name: data.split(name) for name in (bank_split, probe_split)}
    for name, images in sets.items():
        if len(images) == 0:
            raise HeadstartError(f"probe: split '{name}' holds no images")
        if images.labels is None or (images.labels < 0).any():
            raise HeadstartError(f"probe: split '{name}' has no labels; the bank and the probed split need them")
    bank, bank_labels = compute_features(
        network, plan_images(sets[bank_split], prefer=residency), image_size=image_size, device=device
    )
    probe, probe_labels = compute_features(
        network, plan_images(sets[probe_split], prefer=residency), image_size=image_size, device=device
    )
    return bank, bank_labels, probe, probe_labels


def probe_network(
    network,
    data,
    *,
    image_size: int | None,
    source: str,
    bank_split: str = "train",
    probe_split: str = "test",
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    c: float = LINEAR_C,
    device: str = "cpu",
    residency: ResidencyChoice = "auto",
    features: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
) -> ProbeRecord:
    """Both probes of ``network``'s pooled backbone features on two splits of ``data`` (a TaskData);
    ``features`` when :func:`probe_features` already computed them."""
    started = time.perf_counter()
    bank, bank_labels, probe, probe_labels = features or probe_features(
        network,
        data,
        image_size=image_size,
        bank_split=bank_split,
        probe_split=probe_split,
        device=device,
        residency=residency,
    )
    num_classes = len(data.class_names)
    return ProbeRecord(
        source=source,
        linear_accuracy=linear_probe(bank, bank_labels, probe, probe_labels, c=c, num_classes=num_classes),
        knn_accuracy=knn_probe(
            bank, bank_labels, probe, probe_labels, k=k, temperature=temperature, num_classes=num_classes
        ),
        bank_split=bank_split,
        probe_split=probe_split,
        bank_size=len(bank),
        probe_size=len(probe),
        num_features=int(bank.shape[1]),
        image_size=image_size,
        settings={
            "features": "pooled backbone output, eval mode",
            "linear": {
                "C": c,
                "standardized": True,
                "solver": "scikit-learn lbfgs, float64",
                "max_iter": LINEAR_MAX_ITER,
            },
            "knn": {"k": min(k, len(bank)), "metric": "cosine", "vote": f"exp(similarity / {temperature})"},
        },
        seconds=time.perf_counter() - started,
    )


def run_data(run_folder: Path):
    """The task data of the run that wrote ``run_folder`` (its ``run.json`` configuration, and its seed:
    with a per-seed labelled draw, ``train`` is that run's own labelled images)."""
    from headstart.config import parse_run
    from headstart.data.task import TaskData
    from headstart.structure import RunRecord

    record = RunRecord.read(run_folder)
    spec = parse_run(record.config, str(Path(run_folder) / RUN_FILE))
    return TaskData.from_spec(spec.data, model_name=spec.model.name, run_seed=spec.seed), spec


def probe_stage(
    folder: str | Path,
    *,
    data=None,
    bank_split: str = "train",
    probe_split: str = "test",
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    c: float = LINEAR_C,
    device: str = "cpu",
    write: bool = True,
    label_errors: int = 0,
) -> ProbeRecord:
    """Probe the backbone a finished stage wrote (any stage: pretext heads are ignored) and store the
    result in ``probe.json`` in that folder. ``data`` defaults to the run's own data (``run.json``
    in the parent folder). With ``label_errors`` > 0 and the labelled split as the bank, the same
    bank features also rank that many suspected label errors (:mod:`headstart.label_errors`),
    stored in ``label-issues.json`` beside it."""
    from headstart.checkpoint import load_backbone
    from headstart.label_errors import suspect_labels, write_label_issues
    from headstart.stage import StageRecord

    folder = Path(folder)
    record = StageRecord.read(folder)
    if data is None:
        if not is_run(folder.parent):
            raise HeadstartError(
                f"{folder}: not inside a run folder (no {RUN_FILE} beside it), so its data is "
                "unknown; "
                "from Python pass data=TaskData.load(...)"
            )
        data, _ = run_data(folder.parent)
    if label_errors > 0 and bank_split != "train":
        raise HeadstartError(
            f"label errors rank the labelled training images; the bank is '{bank_split}', expected 'train'"
        )
    network = load_backbone(folder)
    features = probe_features(
        network,
        data,
        image_size=record.model.image_size,
        bank_split=bank_split,
        probe_split=probe_split,
        device=device,
    )
    result = probe_network(
        network,
        data,
        image_size=record.model.image_size,
        source=str(folder),
        bank_split=bank_split,
        probe_split=probe_split,
        k=k,
        temperature=temperature,
        c=c,
        device=device,
        features=features,
    )
    if write:
        atomic_write_json(folder / PROBE_FILE, result.model_dump(mode="json"))
    if label_errors > 0:
        issues = suspect_labels(
            features[0],
            data.split(bank_split),
            data.class_names,
            source=str(folder),
            split=bank_split,
            k=k,
            temperature=temperature,
            top=label_errors,
        )
        if write:
            write_label_issues(folder, issues)
    return result


def read_probe(folder: str | Path) -> ProbeRecord | None:
    """The probe stored in a folder, or ``None`` when it was never probed."""
    path = Path(folder) / PROBE_FILE
    if not path.is_file():
        return None
    try:
        return ProbeRecord.model_validate(read_json(path))
    except ValueError as error:
        raise HeadstartError(f"{path}: not a probe record ({error})") from None


# ----------------------------------------------------------------------------- attention maps


def default_attention_layers(network) -> list[str]:
    """Every feature stage of the backbone (timm's ``feature_info``), by module name."""
    info = getattr(network.backbone, "feature_info", None)
    modules = dict(network.named_modules())
    names: list[str] = []
    for entry in info or []:
        if isinstance(entry, dict) and entry.get("module"):
            name = f"backbone.{entry['module']}"
            if name in modules:
                names.append(name)
    if not names:
        raise HeadstartError(
            f"{network.model_name}: no feature stages known; name the layers for attention maps "
            f"(e.g. {[n for n, _ in network.backbone.named_children()][-3:]})"
        )
    return names


ATTENTION_LAYERS = 3
MIN_MAP_SIDE = 4


@torch.no_grad()
def attention_maps(
    network, images01: Tensor, *, layers: Sequence[str] | None = None, power: float = 1.0, image_size: int | None = None
) -> dict[str, Tensor]:
    """``mean_c |A_c|^power`` of each named layer for 0..1 images ``(n, c, h, w)``: ``{layer: (n, h', w')}``,
    each map scaled to 0..1 per image (Zagoruyko & Komodakis 2017; Gidaris et al. 2018, figure 3).

    Without ``layers``: the last three feature stages whose maps are at least 4 × 4 at this input
    size (a 1 × 1 map shows nothing), or the three largest when none is."""
    from headstart.imageops import resize

    if power <= 0:
        raise HeadstartError(f"attention power={power}: expected a positive exponent (1 = mean absolute activation)")
    chosen = layers
    layers = list(layers or default_attention_layers(network))
    modules = dict(network.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        known = [name for name, _ in network.backbone.named_children()]
        raise HeadstartError(
            f"attention layers {unknown}: not modules of {network.model_name}; "
            f"its backbone's blocks are backbone.{{{', '.join(known)}}}"
        )
    captured: dict[str, Tensor] = {}
    hooks = [
        modules[name].register_forward_hook(lambda _m, _i, output, name=name: captured.__setitem__(name, output))
        for name in layers
    ]
    try:
        with evaluating(network):
            device = next(network.parameters()).device
            inputs = network.encoder(image_size).prepare(resize(images01.to(device), image_size, "stretch"))
            network.forward_features(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    maps = {}
    for name in layers:
        activation = captured[name]
        if activation.ndim != 4:
            raise HeadstartError(
                f"attention layer {name}: output of shape {tuple(activation.shape)}, "
                "expected a (batch, channels, height, width) map"
            )
        strength = activation.float().abs().pow(power).mean(1)
        low = strength.flatten(1).min(1).values[:, None, None]
        high = strength.flatten(1).max(1).values[:, None, None]
        maps[name] = ((strength - low) / (high - low).clamp_min(1e-12)).cpu()
    if not chosen:
        large = [name for name in layers if min(maps[name].shape[1:]) >= MIN_MAP_SIDE]
        keep = (
            large[-ATTENTION_LAYERS:]
            if large
            else sorted(layers, key=lambda name: -maps[name].shape[1] * maps[name].shape[2])[:ATTENTION_LAYERS]
        )
        maps = {name: maps[name] for name in layers if name in keep}
    return maps


__all__ = [
    "ProbeRecord",
    "standardize",
    "fit_logistic_regression",
    "linear_probe",
    "knn_votes",
    "knn_predict",
    "knn_probe",
    "probe_features",
    "probe_network",
    "run_data",
    "probe_stage",
    "read_probe",
    "default_attention_layers",
    "attention_maps",
]
