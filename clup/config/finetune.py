"""The `finetune` section: stage 3, training on the selected pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clup.config.loader import check_fraction, check_non_negative, check_positive
from clup.config.optimizer import OptimizerConfig


@dataclass
class FinetuneConfig:
    """Stage 3: a new head on a backbone, trained on the selected pseudo-labels.

    `init`: the backbone stage 3 starts from: `swav` (CluP, stage 2's), `source` (the
    source model's backbone and input size, an ablation without stage 2) or `scratch`.
    `augmentation`: `standard`, a mild random resized crop, flip and `color_jitter`; or
    `reference`, the CluP release's: flip, RandomAffine(35 degrees, translate 0.15),
    ColorJitter(brightness, contrast, saturation 0.5-1.5, hue +-0.5), then the resize
    (altndrr/clup src/data/image.py:78-101); `color_jitter` is not read then.
    """

    init: Literal["swav", "source", "scratch"] = "swav"
    augmentation: Literal["standard", "reference"] = "standard"
    epochs: int = 50
    batch_size: int = 32
    mixup_alpha: float = 0.2
    color_jitter: float = 0.4
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def validate(self, key: str) -> None:
        check_fraction(self.color_jitter, f"{key}.color_jitter")
        check_positive(self.epochs, f"{key}.epochs")
        check_positive(self.batch_size, f"{key}.batch_size")
        check_non_negative(self.mixup_alpha, f"{key}.mixup_alpha")
