"""Stage 3: the SwAV backbone and a new head, trained on the selected pseudo-labels with mixup.

The backbone may come from elsewhere for ablations (`finetune.init`)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from clup.config import BackboneConfig, ExperimentConfig, OptimizerConfig, PreprocessingConfig
from clup.data.datamodule import DomainDataModule
from clup.mixup import mixup_batch, mixup_cross_entropy
from clup.models.backbones import Backbone, build_backbone
from clup.models.checkpoint import Classifier, load_backbone, load_classifier
from clup.registry import StagePaths
from clup.stages.common import ClassifierModule, fit_and_evaluate, gather_rows, source_checkpoint


class PseudoLabelFinetuner(ClassifierModule):
    """Cross-entropy with mixup; the whole network trains. The last epoch is reported:
    nothing is selected on the target test split."""

    def __init__(self, model: Classifier, classes: list[str], optimizer: OptimizerConfig,
                 mixup_alpha: float, seed: int) -> None:
        super().__init__(model, classes, optimizer)
        self.mixup_alpha = mixup_alpha
        self.generator = torch.Generator().manual_seed(seed)

    def on_train_start(self) -> None:
        """Each rank reads stage 1's table itself: check they all train on one subset."""
        dataset = self.trainer.train_dataloader.dataset
        labels = dataset.table.labels[dataset.indices]
        digest = hashlib.sha256(dataset.indices.tobytes() + labels.tobytes()).digest()
        mine = torch.tensor(int.from_bytes(digest[:7], "big"), device=self.device)
        if (gather_rows(self, mine[None]) != mine).any():
            raise RuntimeError("the ranks read different pseudo-labelled subsets from "
                               "stage 1's table; was it rewritten during stage 3?")

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, pseudo_labels, _ = batch
        mixed = mixup_batch(images, pseudo_labels, self.mixup_alpha, self.generator)
        loss = mixup_cross_entropy(self(mixed.inputs), mixed)
        self.log_train(loss, len(pseudo_labels))
        return loss


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


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Fine-tune into the stage's `model` and write its `metrics`."""
    backbone, backbone_config, preprocessing = initial_backbone(config, paths)
    model = Classifier(backbone, len(config.classes))
    module = PseudoLabelFinetuner(model, config.classes, config.finetune.optimizer,
                                  config.finetune.mixup_alpha, config.seed)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, preprocessing,
        batch_size=config.finetune.batch_size, runtime=config.runtime,
        train_views="pseudo_labels",
        pseudo_labels=paths.input("pseudo_labels"),
        color_jitter=config.finetune.color_jitter, augmentation=config.finetune.augmentation,
    )
    metrics = fit_and_evaluate(config, paths, module, datamodule, config.finetune.epochs,
                               backbone_config)
    return {"target_test_accuracy": metrics["accuracy"]}
