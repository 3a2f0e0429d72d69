"""The Lightning glue of a stage, split by concept.

* :mod:`~headstart.engine.batches` — which images sit in memory and which stream from disk, batch
  order, distributed batches;
* :mod:`~headstart.engine.augment` — weak and strong (RandAugment + Cutout) batched augmentation;
* :mod:`~headstart.engine.module` — the ``LightningModule`` that trains one stage;
* :mod:`~headstart.engine.losses` — task losses, the optimizer and the learning-rate schedule;
* :mod:`~headstart.engine.callbacks` — clean interruption, per-epoch history;
* :mod:`~headstart.engine.passes` — whole-set passes: cached features, test metrics.
"""

from headstart.engine.augment import augment, strong_augment
from headstart.engine.batches import EpochBatches, ImagePlan, make_loader, plan_images
from headstart.engine.callbacks import EpochHistory, InterruptOnSignal, NonFiniteLoss, RunInterrupted
from headstart.engine.losses import learning_rate_factors, parameter_groups, task_loss
from headstart.engine.module import StageData, StageModule
from headstart.engine.passes import compute_features, evaluate

__all__ = [
    "EpochBatches",
    "EpochHistory",
    "ImagePlan",
    "InterruptOnSignal",
    "NonFiniteLoss",
    "RunInterrupted",
    "StageData",
    "StageModule",
    "augment",
    "compute_features",
    "evaluate",
    "learning_rate_factors",
    "make_loader",
    "parameter_groups",
    "plan_images",
    "strong_augment",
    "task_loss",
]
