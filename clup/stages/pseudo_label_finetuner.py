"""Stage 3: the SwAV backbone and a new head, trained on the selected pseudo-labels with mixup.

The network may come from elsewhere for ablations (`finetune.init`); the variants of what it
trains on (`finetune.pseudo_labels`, `finetune.unlabelled_loss`) are switches of this stage."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from clup.config import BackboneConfig, ExperimentConfig, OptimizerConfig, PreprocessingConfig
from clup.data.datamodule import LABELLED_STREAM, UNLABELLED_STREAM, DomainDataModule
from clup.losses import information_maximization
from clup.mixup import mixup_batch, mixup_cross_entropy
from clup.models.backbones import Backbone, build_backbone
from clup.models.checkpoint import Classifier, load_backbone, load_classifier
from clup.registry import StagePaths
from clup.stages.common import (
    ClassifierModule,
    fit_and_evaluate,
    gather_rows,
    load_source,
    source_checkpoint,
)


class PseudoLabelFinetuner(ClassifierModule):
    """Cross-entropy with mixup; the whole network trains. The last epoch is reported:
    nothing is selected on the target test split.

    A batch with a fourth item (per-sample weights) gets the weighted cross-entropy of
    `mixup_cross_entropy`. With `unlabelled_loss="im"` a batch is a dict of a `labelled` and
    an `unlabelled` batch, and `unlabelled_weight` times SHOT's information maximisation on
    the unlabelled images (their own forward pass, unmixed) is added to the loss.
    """

    def __init__(self, model: Classifier, classes: list[str], optimizer: OptimizerConfig,
                 mixup_alpha: float, seed: int, unlabelled_loss: str = "none",
                 unlabelled_weight: float = 1.0) -> None:
        super().__init__(model, classes, optimizer)
        self.mixup_alpha = mixup_alpha
        self.generator = torch.Generator().manual_seed(seed)
        self.unlabelled_loss = unlabelled_loss
        self.unlabelled_weight = unlabelled_weight

    def on_train_start(self) -> None:
        """Each rank reads stage 1's table itself: check they all train on one subset."""
        loaders = self.trainer.train_dataloader
        dataset = (loaders[LABELLED_STREAM] if isinstance(loaders, dict) else loaders).dataset
        labels = dataset.table.labels[dataset.indices]
        read = dataset.indices.tobytes() + labels.tobytes()
        if dataset.weights is not None:
            read += dataset.weights[dataset.indices].tobytes()
        digest = hashlib.sha256(read).digest()
        mine = torch.tensor(int.from_bytes(digest[:7], "big"), device=self.device)
        if (gather_rows(self, mine[None]) != mine).any():
            raise RuntimeError("the ranks read different pseudo-labelled subsets from "
                               "stage 1's table; was it rewritten during stage 3?")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        labelled = batch if self.unlabelled_loss == "none" else batch[LABELLED_STREAM]
        images, pseudo_labels = labelled[0], labelled[1]
        weights = labelled[3] if len(labelled) > 3 else None
        mixed = mixup_batch(images, pseudo_labels, self.mixup_alpha, self.generator, weights)
        loss = mixup_cross_entropy(self(mixed.inputs), mixed)
        if self.unlabelled_loss == "none":
            self.log_train(loss, len(pseudo_labels))
            return loss
        unlabelled = information_maximization(self(batch[UNLABELLED_STREAM][0]))
        total = loss + self.unlabelled_weight * unlabelled
        self.log_train(total, len(pseudo_labels), cross_entropy=loss, im=unlabelled)
        return total


def initial_backbone(config: ExperimentConfig, paths: StagePaths
                     ) -> tuple[Backbone, BackboneConfig, PreprocessingConfig]:
    """The backbone stage 3 starts from, with its architecture and input settings."""
    if config.finetune.init == "swav":
        backbone = load_backbone(paths.input("backbone"), config.backbone)
        return backbone, config.backbone, config.preprocessing
    if config.finetune.init == "source":
        source = load_classifier(source_checkpoint(config, paths))
        return source.model.backbone, source.backbone, source.preprocessing
    return build_backbone(config.backbone), config.backbone, config.preprocessing


def initial_model(config: ExperimentConfig, paths: StagePaths
                  ) -> tuple[Classifier, BackboneConfig, PreprocessingConfig]:
    """The network stage 3 starts from: the whole source model (`source_classifier`), or
    the backbone of `initial_backbone` under a new linear head."""
    if config.finetune.init == "source_classifier":
        source = load_source(config, paths)  # its head predicts the experiment's classes
        return source.model, source.backbone, source.preprocessing
    backbone, backbone_config, preprocessing = initial_backbone(config, paths)
    return Classifier(backbone, len(config.classes)), backbone_config, preprocessing


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Fine-tune into the stage's `model` and write its `metrics`."""
    finetune = config.finetune
    model, backbone_config, preprocessing = initial_model(config, paths)
    module = PseudoLabelFinetuner(model, config.classes, finetune.optimizer,
                                  finetune.mixup_alpha, config.seed, finetune.unlabelled_loss,
                                  finetune.unlabelled_weight)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, preprocessing,
        batch_size=finetune.batch_size, runtime=config.runtime,
        train_views="pseudo_labels",
        pseudo_labels=paths.input("pseudo_labels"),
        pseudo_label_rows=finetune.pseudo_labels,
        unselected_stream=finetune.unlabelled_loss != "none",
        color_jitter=finetune.color_jitter, augmentation=finetune.augmentation,
    )
    metrics = fit_and_evaluate(config, paths, module, datamodule, finetune.epochs,
                               backbone_config, train_split=True)
    return {"target_test_accuracy": metrics["accuracy"]}
