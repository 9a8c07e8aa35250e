"""The `finetune` section: stage 3, training on the selected pseudo-labels."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from clup.config.loader import check_fraction, check_non_negative, check_positive
from clup.config.optimizer import OptimizerConfig
from clup.errors import ConfigError


@dataclass
class FinetuneConfig:
    """Stage 3: a new head on a backbone, trained on the selected pseudo-labels.

    `init`: the network stage 3 starts from: `swav` (CluP, stage 2's backbone and a new
    head), `source` (the source model's backbone and input size and a new head, an ablation
    without stage 2), `source_classifier` (the whole source model, input size and head too,
    of whichever kind: SHOT's bottleneck and weight-normalised classifier with `source.head:
    shot`; SHOT, Liang et al., ICML 2020, keeps the source classifier too, frozen, where
    here it trains with the rest) or `scratch`.
    `augmentation`: `standard`, a mild random resized crop, flip and `color_jitter`; or
    `reference`, the CluP release's: flip, RandomAffine(35 degrees, translate 0.15),
    ColorJitter(brightness, contrast, saturation 0.5-1.5, hue +-0.5), then the resize
    (altndrr/clup src/data/image.py:78-101); `color_jitter` is not read then.
    `pseudo_labels`: `selected` (CluP) trains on the images stage 1 selected; `weighted`
    on every target train image of stage 1's table, each image's cross-entropy weighted by
    its stage-1 ranking score (the table's `score`), mixed by mixup's lam like the images
    and normalised by the batch's sum of weights (clup.mixup.mixup_cross_entropy): a soft
    version of stage 1's hard cut, this project's variant, not the CluP paper's.
    `unlabelled_loss`: `none` (CluP); or `im`, semi-supervised: the selected images stay
    the labelled data and SHOT's information maximisation (Liang et al., ICML 2020; mean
    per-sample entropy minus the entropy of the batch-mean prediction) is added, times
    `unlabelled_weight`, on a batch of the images stage 1 did not select, drawn beside each
    labelled batch with the same augmentation; an epoch stays one pass over the selected
    images. `unlabelled_weight` is not read with `none`.
    `rounds`: self-training rounds, this project's variant, not the CluP paper's: in the
    spirit of class-balanced self-training (CBST, Zou et al., ECCV 2018), whose selected
    portion per class grows each round. 1 (CluP): stage 3 as above. With N > 1, round 1 is
    that training; before each later round the model trained so far embeds and predicts
    every target train image as stage 1's source model does (evaluation transforms, the
    classifier's normalised input), the experiment's `cluster_labeler` settings recluster
    and label them, and per class the best-scored share is selected, a share growing
    linearly from `cluster_labeler.selection_ratio` (round 1) to `final_selection_ratio`
    (round N); the model then trains `epochs` more epochs on the new table, from its
    current weights with a fresh optimiser and schedule, with the same mixup, augmentation,
    `pseudo_labels` and `unlabelled_loss`. `final_selection_ratio` is not read with 1.
    """

    init: Literal["swav", "source", "source_classifier", "scratch"] = "swav"
    augmentation: Literal["standard", "reference"] = "standard"
    pseudo_labels: Literal["selected", "weighted"] = "selected"
    unlabelled_loss: Literal["none", "im"] = "none"
    unlabelled_weight: float = 1.0
    rounds: int = 1
    final_selection_ratio: float = 0.5
    epochs: int = 50
    batch_size: int = 32
    mixup_alpha: float = 0.2
    color_jitter: float = 0.4
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def validate(self, key: str) -> None:
        check_fraction(self.color_jitter, f"{key}.color_jitter")
        check_positive(self.rounds, f"{key}.rounds")
        if not 0 < self.final_selection_ratio <= 1:
            raise ConfigError(f"{key}.final_selection_ratio must be in (0, 1], "
                              f"got {self.final_selection_ratio}")
        check_positive(self.epochs, f"{key}.epochs")
        check_positive(self.batch_size, f"{key}.batch_size")
        check_non_negative(self.mixup_alpha, f"{key}.mixup_alpha")
        if not (math.isfinite(self.unlabelled_weight) and self.unlabelled_weight >= 0):
            raise ConfigError(f"{key}.unlabelled_weight must be a finite number >= 0, "
                              f"got {self.unlabelled_weight}")
        if self.unlabelled_loss != "none" and self.pseudo_labels == "weighted":
            raise ConfigError(
                f"{key}.unlabelled_loss: {self.unlabelled_loss} trains on the images stage 1 "
                f"did not select, but {key}.pseudo_labels: weighted leaves none out; set "
                f"{key}.unlabelled_loss: none or {key}.pseudo_labels: selected"
            )
