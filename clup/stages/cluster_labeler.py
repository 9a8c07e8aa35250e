"""Stage 1: cluster-level pseudo-labels from the source model (CluP).

The source model embeds and predicts every target train image with evaluation
transforms; K-means clusters the normalised embeddings; each cluster is labelled
by majority vote and scored by its purity; per class the purest samples are kept.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from sklearn.cluster import KMeans

from clup.config import ClusterLabelerConfig, ExperimentConfig, OptimizerConfig
from clup.data.datamodule import DomainDataModule
from clup.data.manifest import ImageTable
from clup.diagnostics import plot_diagnostics, pseudo_label_diagnostics
from clup.errors import ConfigError
from clup.io import write_json, write_text
from clup.models.checkpoint import Classifier, LoadedClassifier, load_classifier
from clup.pipeline import stage_dir
from clup.pseudo_labels import (
    agreeing_members,
    assign_pseudo_labels,
    cluster_purity,
    normalize_embeddings,
    pseudo_label_summary,
    select_by_threshold,
    select_top_ratio,
)
from clup.stages.common import ClassifierModule, collect, evaluate, finish_loggers, make_trainer


@dataclass(frozen=True)
class PseudoLabels:
    """Stage 1's result, one entry per target train image."""

    cluster: np.ndarray
    source_pred: np.ndarray
    source_conf: np.ndarray
    cluster_label: np.ndarray
    purity: np.ndarray
    pseudo_label: np.ndarray
    selected: np.ndarray
    inertia: float


class ClusterLabeler(L.LightningModule):
    def __init__(self, model: Classifier, config: ClusterLabelerConfig, seed: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.seed = seed

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        images, _, index = batch
        embedding, logits = self.model(images)
        return {
            "index": index.cpu(),
            "embedding": embedding.float().cpu(),
            "probs": torch.softmax(logits.float(), dim=1).cpu(),
        }

    def pseudo_label(self, embeddings: np.ndarray, probs: np.ndarray) -> PseudoLabels:
        config = self.config
        num_classes = probs.shape[1]
        if config.num_clusters > len(embeddings):
            raise ConfigError(
                f"cluster_labeler.num_clusters ({config.num_clusters}) exceeds the number of "
                f"target train images ({len(embeddings)})"
            )
        predictions = probs.argmax(axis=1)
        features = normalize_embeddings(embeddings, append_one=config.append_one)
        kmeans = KMeans(n_clusters=config.num_clusters, n_init=config.kmeans_n_init,
                        max_iter=config.kmeans_max_iter, random_state=self.seed)
        clusters = kmeans.fit_predict(features).astype(np.int64)
        votes = cluster_purity(clusters, predictions, config.num_clusters, num_classes)
        cluster_label, purity = assign_pseudo_labels(clusters, votes)
        confidence = probs.max(axis=1)
        pseudo = cluster_label if config.labels == "cluster" else predictions
        scores = purity if config.score == "purity" else confidence
        eligible = agreeing_members(predictions, pseudo) if config.drop_disagreeing else None
        if config.purity_threshold is None:
            selected = select_top_ratio(pseudo, scores, config.selection_ratio, num_classes,
                                        eligible)
        else:
            selected = select_by_threshold(scores, config.purity_threshold, eligible)
        return PseudoLabels(clusters, predictions, confidence, cluster_label, purity, pseudo,
                            selected, float(kmeans.inertia_))


def pseudo_label_csv(table: ImageTable, labels: PseudoLabels) -> str:
    """The pseudo-label table; purity is written exactly (shortest round-trip repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_truth = table.has_labels
    header = ["index", "path", "cluster", "source_pred", "source_conf", "pseudo_label",
              "purity", "selected"]
    writer.writerow(header + (["true_label"] if with_truth else []))
    for i, path in enumerate(table.paths):
        row = [i, str(path), int(labels.cluster[i]), int(labels.source_pred[i]),
               f"{labels.source_conf[i]:.6f}", int(labels.pseudo_label[i]),
               repr(float(labels.purity[i])), int(labels.selected[i])]
        writer.writerow(row + ([int(table.labels[i])] if with_truth else []))
    return buffer.getvalue()


def run(config: ExperimentConfig, run_dir: Path) -> dict[str, Any]:
    """Write `stage1/pseudo_labels.csv`, `summary.json` and the source model's target metrics."""
    stage_dir = run_dir / "stage1"
    source = load_source(config, run_dir)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, source.preprocessing,
        eval_batch_size=config.cluster_labeler.batch_size,
        num_workers=config.runtime.num_workers,
    )
    datamodule.prepare_data()
    datamodule.setup()
    labeler = ClusterLabeler(source.model, config.cluster_labeler, config.seed)
    trainer = make_trainer(config, stage_dir, "stage1")
    outputs = trainer.predict(labeler, datamodule=datamodule)
    order = np.argsort(collect(outputs, "index"))
    labels = labeler.pseudo_label(collect(outputs, "embedding")[order],
                                  collect(outputs, "probs")[order])
    table = datamodule.train_table
    write_text(stage_dir / "pseudo_labels.csv", pseudo_label_csv(table, labels))
    summary = pseudo_label_summary(labels.pseudo_label, labels.selected, len(config.classes),
                                   table.labels if table.has_labels else None)
    summary.update(num_clusters=config.cluster_labeler.num_clusters,
                   kmeans_inertia=labels.inertia,
                   empty_clusters=int(config.cluster_labeler.num_clusters
                                      - len(np.unique(labels.cluster))))
    if table.has_labels:
        summary.update(_diagnose(labels, table.labels, len(config.classes), stage_dir))
    write_json(stage_dir / "summary.json", summary)

    source_eval = ClassifierModule(source.model, config.classes, OptimizerConfig())
    source_on_target = evaluate(trainer, source_eval, datamodule)
    write_json(stage_dir / "source_on_target.json", source_on_target)
    plot = stage_dir / "pseudo_labels.png"
    for logger in trainer.loggers:
        logger.log_metrics({f"stage1/{k}": v for k, v in summary.items()
                            if isinstance(v, int | float)})
        if isinstance(logger, WandbLogger) and plot.is_file():
            logger.log_image(key="stage1/pseudo_labels", images=[str(plot)])
    finish_loggers(trainer)
    return {
        "pseudo_label_accuracy": summary.get("pseudo_label_accuracy"),
        "selected_accuracy": summary.get("selected_accuracy"),
        "num_selected": summary["num_selected"],
        "source_on_target_accuracy": source_on_target["accuracy"],
    }


def _diagnose(labels: PseudoLabels, truth: np.ndarray, num_classes: int, stage_dir: Path
              ) -> dict[str, Any]:
    """Purity vs confidence as rankings of correct pseudo-labels; writes `pseudo_labels.png`."""
    diagnostics = pseudo_label_diagnostics(
        {"cluster label, purity": (labels.cluster_label, labels.purity),
         "instance label, confidence": (labels.source_pred, labels.source_conf)},
        truth, num_classes,
    )
    plot_diagnostics(diagnostics, stage_dir / "pseudo_labels.png",
                     "Stage 1 pseudo-labels on the target train split")
    return {
        "auc_purity": diagnostics["cluster label, purity"]["auc"],
        "auc_confidence": diagnostics["instance label, confidence"]["auc"],
        "diagnostics": diagnostics,
    }


def source_checkpoint(config: ExperimentConfig, run_dir: Path) -> Path:
    """The experiment's source model, or the one the driver trained into the run folder."""
    if config.source.checkpoint:
        return Path(config.source.checkpoint)
    return stage_dir(config, run_dir, "source") / "model.ckpt"


def load_source(config: ExperimentConfig, run_dir: Path) -> LoadedClassifier:
    """The source model, checked to predict the experiment's classes."""
    source = load_classifier(source_checkpoint(config, run_dir))
    if source.classes != list(config.classes):
        raise ConfigError(
            f"the source model's classes {source.classes} differ from the experiment's "
            f"classes {config.classes}"
        )
    return source
