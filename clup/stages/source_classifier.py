"""The source model: supervised training on a labelled source domain."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clup.config import ExperimentConfig, OptimizerConfig
from clup.data.datamodule import DomainDataModule
from clup.models.backbones import build_backbone
from clup.models.checkpoint import Classifier, load_pretrained
from clup.registry import StagePaths
from clup.stages.common import ClassifierModule, fit_and_evaluate


class SourceClassifier(ClassifierModule):
    """Cross-entropy with label smoothing on the source labels."""

    def __init__(self, model: Classifier, classes: list[str], optimizer: OptimizerConfig,
                 label_smoothing: float) -> None:
        super().__init__(model, classes, optimizer)
        self.label_smoothing = label_smoothing

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels, _ = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log_train(loss, len(labels), accuracy=accuracy)
        return loss


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Train the source model into its `model`; report source test accuracy."""
    source = config.source
    if source.data is None:
        raise ValueError("source.data is required to train a source model")
    datamodule = DomainDataModule(
        source.data, config.classes, source.preprocessing,
        batch_size=source.batch_size, runtime=config.runtime,
        color_jitter=source.color_jitter, key="source.data",
    )
    backbone = build_backbone(source.backbone)
    if source.pretrained:
        ignored = load_pretrained(backbone, source.pretrained, source.pretrained_prefix)
        print(f"[clup] backbone initialised from {source.pretrained}"
              + (f"; head keys ignored: {', '.join(ignored)}" if ignored else ""), flush=True)
    model = Classifier(backbone, len(config.classes), head=source.head)
    module = SourceClassifier(model, config.classes, source.optimizer, source.label_smoothing)
    metrics = fit_and_evaluate(config, paths, module, datamodule, source.epochs,
                               source.backbone)
    return {"source_test_accuracy": metrics["accuracy"]}
