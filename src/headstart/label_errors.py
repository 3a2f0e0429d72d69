"""Suspected label errors among the labelled images, found after training by confident learning.

Confident learning (Northcutt, Jiang & Chuang 2021, "Confident learning: estimating uncertainty in
dataset labels", JAIR 70; the ``cleanlab`` library) needs one thing per labelled image: class
probabilities that did not see that image's label. headstart gets them from the features it already
computes for the k-NN probe (:mod:`headstart.probe`): each labelled image is voted on by its
``k`` nearest *other* labelled images under cosine similarity, each neighbour voting
``exp(similarity / temperature)`` for its class (Wu et al. 2018; the probe's own rule, leave-one-out),
and the votes, normalised, are the probabilities. Then:

* ``cleanlab.rank.get_label_quality_scores`` (self-confidence: the probability of the given label)
  ranks the images, lowest first: the top of the list is what to look at;
* ``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``) flags the images it estimates to
  be mislabelled from the confident joint of given and predicted labels;
* the suggested label is the class with the highest probability.

Measured on scikit-learn's 1,797 real digits with 5% of the labels flipped to another class (three
draws; ``tests/test_label_errors.py`` asserts the floor): on the pixels, the flipped images fill 96-97%
of a top list as long as the number flipped, and cleanlab flags them with precision 0.93-0.94 and
recall 0.86-0.93. Cross-validated logistic regression (5 folds), the other usual source of
out-of-sample probabilities, did worse on the same draws (top list 0.87-0.90, precision
0.69-0.74). On the features of a small network trained on the flipped labels until it fits all of
them, the ranking held (top list 0.97-0.98) while cleanlab's flags fell to recall 0.49-0.56: a
network that memorised a wrong label pulls the image towards that class, so read the ranked
list, not only the flags. With 10 labels per class, one suspect is a tenth of its class.
"""

from __future__ import annotations

import base64
import io
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import Tensor

from headstart.errors import HeadstartError
from headstart.files import atomic_write_json, read_json

LABEL_ISSUES_FILE = "label-issues.json"
TOP_SUSPECTS = 12
"""Suspects kept per record (the lowest label-quality scores), flagged or not."""
THUMBNAIL_SIDE = 64
"""Longer side, in pixels, of the thumbnail stored with each suspect (the report reads only files)."""


class Suspect(BaseModel):
    """One labelled image whose label may be wrong."""

    position: int
    """Index of the image in the labelled split (``ImageSet`` order)."""
    name: str
    """The file path, or ``<dataset>[index]`` for an in-memory dataset."""
    given: str
    suggested: str
    score: float
    """cleanlab's label-quality score (self-confidence): the out-of-sample probability of the given
    label, 0 (surely wrong) to 1."""
    flagged: bool
    """``cleanlab.filter.find_label_issues`` counts it among the likely mislabelled."""
    thumbnail: str | None = None
    """A PNG data URL, at most :data:`THUMBNAIL_SIDE` pixels a side."""


class LabelIssues(BaseModel):
    """The content of ``label-issues.json``: the ranked suspects of one backbone on one labelled split."""

    source: str
    split: str
    images: int
    classes: list[str]
    flagged: int
    """Images cleanlab flags, of ``images``."""
    suspects: list[Suspect]
    settings: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


def leave_one_out_probabilities(
    features: Tensor, labels: Tensor | np.ndarray, num_classes: int, *, k: int = 20, temperature: float = 0.07
) -> np.ndarray:
    """Class probabilities ``[n, num_classes]`` of each image from the weighted k-NN vote of the
    ``k`` nearest *other* images (cosine similarity, votes ``exp(similarity / temperature)``,
    normalised to sum to 1): out of sample, as confident learning requires."""
    if k < 1:
        raise HeadstartError(f"label errors k={k}: expected at least 1 neighbour")
    if temperature <= 0:
        raise HeadstartError(f"label errors temperature={temperature}: expected a positive value")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if len(features) != len(labels) or len(labels) < 2:
        raise HeadstartError(
            f"label errors: {len(features)} feature rows for {len(labels)} labels; expected the same number, at least 2"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise HeadstartError(
            f"label errors: labels from {int(labels.min())} to {int(labels.max())}; expected 0 to {num_classes - 1} "
            f"({num_classes} classes)"
        )
    normalised = torch.nn.functional.normalize(features.detach().float().cpu(), dim=1)
    k = min(k, len(labels) - 1)
    votes = torch.zeros(len(labels), num_classes)
    for start in range(0, len(labels), 1024):
        part = normalised[start : start + 1024]
        similarity = part @ normalised.T
        rows = torch.arange(len(part))
        similarity[rows, rows + start] = -torch.inf  # never its own neighbour
        nearest, index = similarity.topk(k, dim=1)
        # subtracting the row's largest similarity keeps exp() finite at any temperature; the
        # normalised vote is unchanged
        weights = ((nearest - nearest[:, :1]) / temperature).exp()
        votes[start : start + len(part)].scatter_add_(1, labels[index], weights)
    return (votes / votes.sum(1, keepdim=True)).double().numpy()


def rank_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab on out-of-sample ``probabilities``: ``(order, scores, flagged)``, where ``order``
    lists the images from the lowest label-quality score up, ``scores`` is that score per image and
    ``flagged`` marks the images ``find_label_issues`` estimates to be mislabelled."""
    import cleanlab.filter
    import cleanlab.rank

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = cleanlab.rank.get_label_quality_scores(labels, probabilities, method="self_confidence")
    if len(np.unique(labels)) < 2:
        flagged = np.zeros(len(labels), dtype=bool)  # one class: nothing to confuse it with
    else:
        with warnings.catch_warnings():
            # "may not flag all label issues in class k, it has too few examples": at 10 labels per
            # class every class is small, and the ranked list is what the report leads with
            warnings.filterwarnings("ignore", message="May not flag all label issues", category=UserWarning)
            flagged = np.asarray(
                cleanlab.filter.find_label_issues(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1),
                dtype=bool,
            )
    order = np.lexsort((np.arange(len(labels)), scores))  # lowest score first; ties in image order
    return order, np.asarray(scores, dtype=np.float64), flagged


def _thumbnail(image: Tensor) -> str:
    """A 0..1 image ``[C, H, W]`` as a PNG data URL at most :data:`THUMBNAIL_SIDE` pixels a side."""
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1).mul(255).round().byte().cpu()).numpy()
    picture = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)[..., :3])
    scale = THUMBNAIL_SIDE / max(picture.size)
    picture = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def suspect_labels(
    features: Tensor,
    images,
    class_names: list[str],
    *,
    source: str,
    split: str = "train",
    k: int = 20,
    temperature: float = 0.07,
    top: int = TOP_SUSPECTS,
    thumbnails: bool = True,
) -> LabelIssues:
    """The ``top`` labelled images of ``images`` (an ``ImageSet``; ``features`` are its rows, in its
    order) whose labels look most wrong (module docstring)."""
    started = time.perf_counter()
    labels = np.asarray(images.labels, dtype=np.int64)
    if (labels < 0).any():
        raise HeadstartError(f"label errors: split '{split}' holds unlabelled images; they need labels")
    probabilities = leave_one_out_probabilities(features, labels, len(class_names), k=k, temperature=temperature)
    order, scores, flagged = rank_label_issues(labels, probabilities)
    suggested = probabilities.argmax(1)
    suspects = [
        Suspect(
            position=int(index),
            name=images.describe(int(index)),
            given=class_names[labels[index]],
            suggested=class_names[suggested[index]],
            score=float(scores[index]),
            flagged=bool(flagged[index]),
            thumbnail=_thumbnail(images[int(index)][0]) if thumbnails else None,
        )
        for index in order[: max(0, top)]
    ]
    return LabelIssues(
        source=source,
        split=split,
        images=len(labels),
        classes=list(class_names),
        flagged=int(flagged.sum()),
        suspects=suspects,
        settings={
            "probabilities": f"leave-one-out weighted k-NN, k={min(k, len(labels) - 1)}, cosine, "
            f"vote exp(similarity / {temperature})",
            "score": "cleanlab.rank.get_label_quality_scores, self_confidence",
            "flags": "cleanlab.filter.find_label_issues, prune_by_noise_rate",
        },
        seconds=time.perf_counter() - started,
    )


def write_label_issues(folder: str | Path, record: LabelIssues) -> Path:
    """Write ``record`` as ``label-issues.json`` in ``folder`` (atomic); return its path."""
    path = Path(folder) / LABEL_ISSUES_FILE
    atomic_write_json(path, record.model_dump(mode="json"))
    return path


def read_label_issues(folder: str | Path) -> LabelIssues | None:
    """The suspects stored in a stage folder, or ``None`` when it was never checked."""
    path = Path(folder) / LABEL_ISSUES_FILE
    if not path.is_file():
        return None
    try:
        return LabelIssues.model_validate(read_json(path))
    except ValueError as error:
        raise HeadstartError(f"{path}: not a label-issues record ({error})") from None


__all__ = [
    "LABEL_ISSUES_FILE",
    "LabelIssues",
    "Suspect",
    "leave_one_out_probabilities",
    "rank_label_issues",
    "suspect_labels",
    "write_label_issues",
    "read_label_issues",
]
