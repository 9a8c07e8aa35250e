"""Stage 1: cluster-level pseudo-labels from the source model (CluP).

The source model embeds and predicts every target train image with evaluation
transforms; K-means clusters the normalised embeddings (the classifier's input, whatever
the head); each cluster is labelled by majority vote and scored by its purity; per class
the purest samples are kept.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger

from clup import features
from clup.config import ClusterLabelerConfig, ExperimentConfig, OptimizerConfig
from clup.data.datamodule import DomainDataModule
from clup.data.manifest import ImageTable
from clup.diagnostics import plot_diagnostics, pseudo_label_diagnostics
from clup.errors import ConfigError
from clup.io import write_json, write_text
from clup.kmeans import fit_kmeans
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
from clup.stages.common import ClassifierModule, evaluate, finish_loggers, make_trainer


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
    kmeans_backend: str


class ClusterLabeler(L.LightningModule):
    """The predict pass writes each image's normalised embedding (the classifier's input,
    `Classifier.features`) and softmax to disk (`clup.features`), in index order whichever
    rank saw it; `pseudo_label` then clusters and labels them."""

    def __init__(self, model: Classifier, config: ClusterLabelerConfig, seed: int,
                 feature_dir: Path, num_samples: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.seed = seed
        self.feature_dir = feature_dir
        self.num_samples = num_samples
        self.num_classes = model.num_classes
        self.feature_dim = model.feature_dim + int(config.append_one)
        self._shard: features.ShardWriter | None = None

    @property
    def features_complete(self) -> bool:
        return features.is_complete(self.feature_dir, self.num_samples, self.feature_dim,
                                    self.num_classes)

    def on_predict_start(self) -> None:
        self._shard = features.ShardWriter(self.feature_dir, self.global_rank)

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        images, _, index = batch
        classifier_input, logits = self.model(images)
        assert self._shard is not None
        self._shard.append(
            index.cpu().numpy(),
            normalize_embeddings(classifier_input.float().cpu().numpy(), self.config.append_one),
            torch.softmax(logits.float(), dim=1).cpu().numpy(),
        )

    def on_predict_end(self) -> None:
        assert self._shard is not None
        self._shard.close()
        self.trainer.strategy.barrier("stage1 features written")
        if self.trainer.is_global_zero:
            features.assemble(self.feature_dir, self.trainer.world_size, self.num_samples,
                              self.feature_dim, self.num_classes)
        self.trainer.strategy.barrier("stage1 features assembled")

    def pseudo_label(self, embeddings: np.ndarray, probs: np.ndarray) -> PseudoLabels:
        """Cluster the normalised embeddings [N, D] and label every image from its cluster."""
        config = self.config
        num_classes = probs.shape[1]
        if config.num_clusters > len(embeddings):
            raise ConfigError(
                f"cluster_labeler.num_clusters ({config.num_clusters}) exceeds the number of "
                f"target train images ({len(embeddings)})"
            )
        predictions = probs.argmax(axis=1)
        kmeans = fit_kmeans(embeddings, config.num_clusters, seed=self.seed,
                            backend=config.kmeans_backend, init=config.kmeans_init,
                            max_iter=config.kmeans_max_iter, n_init=config.kmeans_n_init,
                            progress=True)
        clusters = kmeans.assignments
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
                            selected, kmeans.inertia, kmeans.backend)


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
    """Write `stage1/pseudo_labels.csv`, `summary.json` and the source model's target metrics.

    Every rank embeds its share of the images; rank 0 clusters and writes the tables."""
    folder = stage_dir(config, run_dir, "stage1")
    source = load_source(config, run_dir)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, source.preprocessing,
        eval_batch_size=config.cluster_labeler.batch_size,
        runtime=config.runtime,
    )
    datamodule.prepare_data()
    datamodule.setup()
    table = datamodule.train_table
    labeler = ClusterLabeler(source.model, config.cluster_labeler, config.seed,
                             folder / "features", len(table))
    trainer = make_trainer(config, folder, "stage1")
    if not labeler.features_complete:
        trainer.predict(labeler, datamodule=datamodule, return_predictions=False)
    source_eval = ClassifierModule(source.model, config.classes, OptimizerConfig())
    source_on_target = evaluate(trainer, source_eval, datamodule)
    if not trainer.is_global_zero:
        # The last collective is behind: rank 0 alone clusters, the others need not wait.
        finish_loggers(trainer)
        return {}
    summary = _label_and_write(config, labeler, table, folder)
    write_json(folder / "source_on_target.json", source_on_target)
    plot = folder / "pseudo_labels.png"
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


def _label_and_write(config: ExperimentConfig, labeler: ClusterLabeler, table: ImageTable,
                     stage_dir: Path) -> dict[str, Any]:
    """Cluster, label and select; write `pseudo_labels.csv` and `summary.json`."""
    begin = time.perf_counter()
    embeddings, probs = features.load(labeler.feature_dir)
    labels = labeler.pseudo_label(embeddings, probs)
    seconds = time.perf_counter() - begin
    write_text(stage_dir / "pseudo_labels.csv", pseudo_label_csv(table, labels))
    summary = pseudo_label_summary(labels.pseudo_label, labels.selected, len(config.classes),
                                   table.labels if table.has_labels else None)
    summary.update(num_clusters=config.cluster_labeler.num_clusters,
                   kmeans_inertia=labels.inertia, kmeans_backend=labels.kmeans_backend,
                   labelling_seconds=round(seconds, 2),
                   empty_clusters=int(config.cluster_labeler.num_clusters
                                      - len(np.unique(labels.cluster))))
    if table.has_labels:
        summary.update(_diagnose(labels, table.labels, len(config.classes), stage_dir))
    write_json(stage_dir / "summary.json", summary)
    return summary


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
