"""A stage of a run file: its data, head or pretext, freezing, BatchNorm policy, optimizer and length."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from headstart.config.strict import Strict
from headstart.errors import HeadstartError
from headstart.heads import HeadSpec


class OptimizerSpec(Strict):
    """Optimizer and learning rates. ``group_lr`` gives discriminative rates per layer group.

    ``group_lr`` maps a selector (a group name such as ``stem``, ``blocks[:3]``, ``head``, or
    ``re:<regex>`` on parameter names) to its learning rate; parameters not matched use ``lr``.
    fastai's ``fine_tune`` uses ``slice(lr/100, lr)``: e.g. ``{stem: 1e-5, "blocks[:3]": 1e-4}``
    with ``lr: 1e-3``.

    ``lr: find`` sweeps the rate first with this stage's freezing, BatchNorm policy, data and head
    (the LR range test of :mod:`headstart.lrfind`), records the sweep in the stage folder and trains
    with its suggestion.

    Adam and AdamW run PyTorch's fused kernel (one pass over every tensor of a step) wherever every
    trainable parameter is on the CPU or a CUDA device (:func:`headstart.engine.losses.fusable`).
    """

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0)] | Literal["find"] = Field(
        1e-3, description='learning rate, or "find": sweep first and train with the suggestion (headstart.lrfind)'
    )
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    group_lr: dict[str, float] = Field(default_factory=dict)
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0)


class EarlyStoppingSpec(Strict):
    """Stop when the validation metric has not improved for ``patience`` epochs (Keras' EarlyStopping)."""

    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(3, gt=0)
    min_delta: float = Field(0.0, ge=0)
    restore_best_weights: bool = True


class PretextSpec(BaseModel):
    """A pretext task by name, with its options (see ``headstart.pretext``)."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class SemiSupervisedSpec(Strict):
    """FixMatch (Sohn et al., NeurIPS 2020): a task stage that also learns from unlabelled images.

    Each step reads a labelled batch (``batch_size``, the stage's ``augment``) and ``ratio`` times as
    many unlabelled images. The network's prediction on a weakly augmented copy (the stage's
    ``augment``) becomes the target for a strongly augmented copy (RandAugment + Cutout,
    :func:`headstart.engine.augment.strong_augment`) when its confidence reaches ``threshold``;
    the loss is ``labelled cross-entropy + weight × mean over unlabelled images of the masked
    cross-entropy``. The share of unlabelled images above the threshold is logged every epoch
    (``unlabelled_used``). The paper's defaults: ratio (μ) 7, threshold (τ) 0.95, weight (λu) 1;
    CIFAR-10 with 25 labels per class 94.93% (250 labels: 94.93 ± 0.65), 4 labels per class 88.61%.

    The paper counts its budget in steps (2^20) with the unlabelled data driving them; here an epoch
    is one pass over the unlabelled images (``epoch: unlabelled``, ``ceil(images / (ratio ×
    batch_size))`` steps) and the labelled batches cycle, so 30 epochs are 30 passes whether the
    stage has 10 labels or 1,000. ``epoch: labelled`` counts passes over the labelled split instead
    (at 10 labels and a batch of 25, one step per epoch).

    ``method: freematch`` (Wang et al., ICLR 2023) replaces the fixed threshold by self-adaptive
    ones (:mod:`headstart.engine.freematch`): a global threshold that follows the network's mean
    confidence on unlabelled images, scaled per class by its mean prediction, plus a fairness term
    (weight ``fairness_weight``) that keeps the pseudo-labels spread over the classes; ``momentum``
    is the memory of those running averages. ``threshold`` and ``distribution_alignment`` belong to
    FixMatch only.
    """

    method: Literal["fixmatch", "freematch"] = "fixmatch"
    unlabelled: Literal["all", "unlabelled"] = Field(
        "all",
        description="images used without labels: all of the training pool (FixMatch's choice, the labelled "
        "images included) or only the unlabelled rest",
    )
    epoch: Literal["unlabelled", "labelled"] = Field(
        "unlabelled",
        description="what one of the stage's epochs passes over: the unlabelled images (the labelled batches "
        "cycle, so the budget does not shrink with the number of labels) or the labelled split",
    )
    ratio: int = Field(7, gt=0, description="unlabelled images per labelled image in a step (μ)")
    threshold: float = Field(0.95, gt=0, le=1, description="confidence a pseudo-label needs (τ)")
    weight: float = Field(1.0, ge=0, description="weight of the unlabelled loss (λu)")
    strong_ops: int = Field(2, ge=0, le=4, description="RandAugment operations per strongly augmented image")
    cutout: float = Field(0.5, ge=0, lt=1, description="side of the Cutout square, as a fraction of the image's side")
    distribution_alignment: bool = Field(
        False,
        description="align the pseudo-labels' class marginal with the labelled split's (ReMixMatch): helps with "
        "very few labels per class, where the first confident pseudo-labels crowd into a few classes",
    )
    momentum: float = Field(
        0.999,
        ge=0,
        lt=1,
        description="freematch: momentum of the running confidence, class prediction and class histogram "
        "(the paper's 0.999 remembers ~1,000 steps; a stage of a few hundred steps wants ~0.99)",
    )
    fairness_weight: float = Field(
        0.01, ge=0, description="freematch: weight of the self-adaptive fairness term (the paper's w_f)"
    )

    @model_validator(mode="after")
    def _check_method(self) -> SemiSupervisedSpec:
        # a setting of the other method is refused when it differs from its default (a spec dumped with
        # every field, defaults included, validates again)
        other = (
            ("threshold", "distribution_alignment") if self.method == "freematch" else ("momentum", "fairness_weight")
        )
        changed = [name for name in other if getattr(self, name) != type(self).model_fields[name].default]
        if changed and self.method == "freematch":
            raise ValueError(
                f"semi_supervised.{changed[0]} is FixMatch's; freematch adapts its thresholds itself "
                "(its options: momentum, fairness_weight)"
            )
        if changed:
            raise ValueError(f"semi_supervised.{changed[0]} belongs to method: freematch, not {self.method}")
        return self


DataChoice = Literal["train", "unlabelled", "all", "general"]
"""``train``: the labelled training split; ``unlabelled``: the rest of the training pool (labels
hidden); ``all``: both, labels hidden (for pretext stages); ``general``: the general dataset."""

LABEL_FREE_DATA = ("all", "general")
"""Stage data that is the same whichever images of the training pool are labelled: the whole pool
with labels hidden, or the general dataset (``unlabelled`` is the pool *minus* the labelled images)."""


class StageSpec(Strict):
    """One stage of a run. See the module docstring for the YAML form."""

    name: str
    data: DataChoice = "train"
    pretext: PretextSpec | None = None
    head: HeadSpec | Literal["keep", "new"] | None = Field(
        None, description='"keep" the previous head, "new" default head, or a head spec; default: keep when compatible'
    )
    loss: Literal["cross_entropy", "binary_cross_entropy", "mse", "huber"] = "cross_entropy"
    class_weights: Literal["none", "balanced"] | list[Annotated[float, Field(gt=0)]] | None = Field(
        None,
        description="weigh each class in the task loss: balanced = labelled images / (classes × images of the "
        "class) over the stage's labelled training split (scikit-learn's compute_class_weight), so a class of 40 "
        "images beside one of 900 counts as much; or one positive weight per class, in class order; default none",
    )
    freeze: list[str] = Field(default_factory=list, description="selectors frozen for this stage (others trainable)")
    bn_policy: Literal["frozen", "train"] | None = Field(
        None, description="default: frozen when anything is frozen, else train"
    )
    optimizer: OptimizerSpec = OptimizerSpec()
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    augment: Literal["none", "crop", "flip", "crop_flip"] = "none"
    early_stopping: EarlyStoppingSpec | None = None
    steps_per_epoch: int | None = Field(
        None, gt=0, description="cap on optimizer steps per epoch (Keras' steps_per_epoch); default: the whole split"
    )
    cache_features: bool | None = Field(
        None, description="default: on when the whole backbone is frozen, BN frozen and no augmentation"
    )
    semi_supervised: SemiSupervisedSpec | None = Field(
        None, description="also learn from the unlabelled images: {method: fixmatch, ratio: 7, threshold: 0.95}"
    )
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="end the stage with an exponential moving average of its weights, this decay per step "
        "(FixMatch evaluates with 0.999; short stages want about 1 − 10/steps); default: the last step's weights",
    )
    compile: bool | None = Field(
        None, description="torch.compile the backbone for this stage; default: the run's compile"
    )

    @field_validator("class_weights")
    @classmethod
    def _no_weights(cls, value: str | list[float] | None) -> str | list[float] | None:
        if isinstance(value, list) and not value:
            raise ValueError("give one weight per class, or balanced, or none")
        return None if value == "none" else value

    @model_validator(mode="after")
    def _check(self) -> StageSpec:
        if self.pretext is not None and self.class_weights is not None:
            raise ValueError("class_weights weigh the task's classes; a pretext stage has none: remove one of them")
        if self.pretext is not None and isinstance(self.head, HeadSpec):
            raise ValueError("a pretext stage brings its own head; remove `head` or `pretext`")
        if self.pretext is not None:
            from headstart.pretext import check_batch_size

            try:  # a batch too small for the task fails with the file, not after the earlier stages trained
                check_batch_size(self.pretext.name, self.batch_size, f"stage {self.name!r}")
            except HeadstartError as error:
                raise ValueError(str(error)) from None
        if self.ema is not None and self.early_stopping is not None and self.early_stopping.restore_best_weights:
            raise ValueError(
                "ema and early_stopping.restore_best_weights both choose the weights the stage ends with: keep one"
            )
        if self.semi_supervised is not None:
            if self.pretext is not None:
                raise ValueError(
                    "semi_supervised trains the task's head on pseudo-labels; a pretext stage has no "
                    "task labels: remove `semi_supervised` or `pretext`"
                )
            if self.data != "train":
                raise ValueError(
                    f"semi_supervised needs data: train (the labelled split; the unlabelled images are "
                    f"chosen by semi_supervised.unlabelled), not {self.data!r}"
                )
            if self.cache_features:
                raise ValueError("semi_supervised augments every image; it cannot train on cached features")
        return self


__all__ = [
    "LABEL_FREE_DATA",
    "DataChoice",
    "EarlyStoppingSpec",
    "OptimizerSpec",
    "PretextSpec",
    "SemiSupervisedSpec",
    "StageSpec",
]
