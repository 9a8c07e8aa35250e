"""Stage 1: cluster-level pseudo-labels from the source model (CluP).

The source model embeds and predicts every target train image with evaluation
transforms; K-means clusters the normalised embeddings (the classifier's input, whatever
the head); each cluster is labelled by majority vote and scored by its purity (or another
rule of `clup.clustering.scores`); per class the best-scored samples are kept. With
`cluster_labeler.features: swav` K-means clusters stage 2's SwAV embeddings of the same images
instead, and the source model's predictions still vote.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import nn

from clup.clustering import PseudoLabels, cluster_pseudo_labels, features
from clup.clustering.diagnostics import plot_diagnostics, score_diagnostics
from clup.clustering.pseudo_labels import normalize_embeddings, pseudo_label_summary
from clup.config import ClusterLabelerConfig, ExperimentConfig, OptimizerConfig
from clup.data.datamodule import DomainDataModule
from clup.data.manifest import ImageTable
from clup.io import write_json, write_text
from clup.models.backbones import Backbone
from clup.models.checkpoint import Classifier, load_backbone
from clup.registry import StagePaths
from clup.stages.common import (
    ClassifierModule,
    evaluate,
    finish_loggers,
    load_source,
    make_trainer,
)
from clup.validators import label_free_measures


class ClusterLabeler(L.LightningModule):
    """The predict pass writes each image's normalised embedding (the classifier's input,
    `Classifier.features`) and softmax to disk (`clup.clustering.features`), in index order
    whichever rank saw it; `pseudo_label` then clusters and labels them
    (`clup.clustering.cluster_pseudo_labels`)."""

    def __init__(self, model: Classifier | SwAVEmbedder, config: ClusterLabelerConfig, seed: int,
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
        self.trainer.strategy.barrier("stage 1 features written")
        if self.trainer.is_global_zero:
            features.assemble(self.feature_dir, self.trainer.world_size, self.num_samples,
                              self.feature_dim, self.num_classes)
        self.trainer.strategy.barrier("stage 1 features assembled")

    def pseudo_label(self, embeddings: np.ndarray, probs: np.ndarray) -> PseudoLabels:
        """Cluster the normalised embeddings [N, D] and label every image from its cluster."""
        c = self.config
        return cluster_pseudo_labels(
            embeddings, probs, num_clusters=c.num_clusters, selection_ratio=c.selection_ratio,
            labels=c.labels, score=c.score, drop_disagreeing=c.drop_disagreeing,
            purity_threshold=c.purity_threshold, seed=self.seed,
            kmeans_backend=c.kmeans_backend, kmeans_init=c.kmeans_init,
            kmeans_max_iter=c.kmeans_max_iter, kmeans_n_init=c.kmeans_n_init, progress=True)


class SwAVEmbedder(nn.Module):
    """Stage 2's SwAV backbone in the shape `ClusterLabeler` reads, (embedding, logits), for
    `cluster_labeler.features: swav`; its logits are zeros (the cache holds their uniform
    softmax) and never read: the votes are the source model's predictions."""

    def __init__(self, backbone: Backbone, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.num_classes = num_classes
        self.feature_dim = backbone.out_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.backbone(images)
        return embedding, embedding.new_zeros(len(embedding), self.num_classes)


def pseudo_label_csv(table: ImageTable, labels: PseudoLabels) -> str:
    """The pseudo-label table; purity and `score` (what the selection ranked, whatever the
    rule) are written exactly (shortest round-trip repr)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_truth = table.has_labels
    header = ["index", "path", "cluster", "source_pred", "source_conf", "pseudo_label",
              "purity", "selected", "score"]
    writer.writerow(header + (["true_label"] if with_truth else []))
    for i, path in enumerate(table.paths):
        row = [i, str(path), int(labels.cluster[i]), int(labels.source_pred[i]),
               f"{labels.source_conf[i]:.6f}", int(labels.pseudo_label[i]),
               repr(float(labels.purity[i])), int(labels.selected[i]),
               repr(float(labels.score[i]))]
        writer.writerow(row + ([int(table.labels[i])] if with_truth else []))
    return buffer.getvalue()


def run(config: ExperimentConfig, paths: StagePaths) -> dict[str, Any]:
    """Write the stage's `pseudo_labels`, `summary` and the source model's target metrics
    (`source_on_target`).

    Every rank embeds its share of the images; rank 0 clusters and writes the tables."""
    source = load_source(config, paths)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, source.preprocessing,
        eval_batch_size=config.cluster_labeler.batch_size,
        runtime=config.runtime,
    )
    datamodule.prepare_data()
    datamodule.setup()
    table = datamodule.train_table
    labeler = ClusterLabeler(source.model, config.cluster_labeler, config.seed,
                             paths.output("feature_cache"), len(table))
    trainer = make_trainer(config, paths.folder, paths.name)
    if not labeler.features_complete:
        trainer.predict(labeler, datamodule=datamodule, return_predictions=False)
    clustered = labeler
    if config.cluster_labeler.features == "swav":
        clustered = _swav_features(config, paths, trainer, len(table))
    source_eval = ClassifierModule(source.model, config.classes, OptimizerConfig())
    source_on_target = evaluate(trainer, source_eval, datamodule)
    if not trainer.is_global_zero:
        # The last collective is behind: rank 0 alone clusters, the others need not wait.
        finish_loggers(trainer)
        return {}
    summary = _label_and_write(config, labeler, clustered, table, paths)
    write_json(paths.output("source_on_target"), source_on_target)
    plot = paths.output("plot")
    for logger in trainer.loggers:
        logger.log_metrics({f"{paths.name}/{k}": v for k, v in summary.items()
                            if isinstance(v, int | float)})
        if isinstance(logger, WandbLogger) and plot.is_file():
            logger.log_image(key=f"{paths.name}/pseudo_labels", images=[str(plot)])
    finish_loggers(trainer)
    return {
        "pseudo_label_accuracy": summary.get("pseudo_label_accuracy"),
        "selected_accuracy": summary.get("selected_accuracy"),
        "num_selected": summary["num_selected"],
        "source_on_target_accuracy": source_on_target["accuracy"],
    }


def _swav_features(config: ExperimentConfig, paths: StagePaths, trainer: L.Trainer,
                   num_samples: int) -> ClusterLabeler:
    """The predict pass of stage 2's backbone over the target train images, at stage 2's
    input settings, into the `swav_feature_cache`."""
    backbone = load_backbone(paths.input("backbone"), config.backbone)
    datamodule = DomainDataModule(
        config.require_target(), config.classes, config.preprocessing,
        eval_batch_size=config.cluster_labeler.batch_size, runtime=config.runtime,
    )
    datamodule.prepare_data()
    datamodule.setup()
    embedder = ClusterLabeler(SwAVEmbedder(backbone, len(config.classes)),
                              config.cluster_labeler, config.seed,
                              paths.output("swav_feature_cache"), num_samples)
    if not embedder.features_complete:
        trainer.predict(embedder, datamodule=datamodule, return_predictions=False)
    return embedder


def _label_and_write(config: ExperimentConfig, labeler: ClusterLabeler,
                     clustered: ClusterLabeler, table: ImageTable, paths: StagePaths
                     ) -> dict[str, Any]:
    """Cluster `clustered`'s embeddings, label and select by `labeler`'s (the source
    model's) predictions; write the `pseudo_labels` table and the `summary`."""
    begin = time.perf_counter()
    _, probs = features.load(labeler.feature_dir)
    embeddings = features.load(clustered.feature_dir)[0]
    labels = labeler.pseudo_label(embeddings, probs)
    seconds = time.perf_counter() - begin
    write_text(paths.output("pseudo_labels"), pseudo_label_csv(table, labels))
    summary = pseudo_label_summary(labels.pseudo_label, labels.selected, len(config.classes),
                                   table.labels if table.has_labels else None)
    summary.update(num_clusters=config.cluster_labeler.num_clusters,
                   kmeans_inertia=labels.inertia, kmeans_backend=labels.kmeans_backend,
                   labelling_seconds=round(seconds, 2),
                   empty_clusters=int(config.cluster_labeler.num_clusters
                                      - len(np.unique(labels.cluster))),
                   source_train_split=source_train_split(probs, table))
    if table.has_labels:
        summary.update(_diagnose(labels, probs, table.labels, len(config.classes),
                                 paths.output("plot")))
    write_json(paths.output("summary"), summary)
    return summary


def source_train_split(probs: np.ndarray, table: ImageTable) -> dict[str, Any]:
    """The source model on the target train split, as stage 3 and the baselines measure
    their adapted models there (`clup.stages.common.evaluate_train_split`)."""
    accuracy = (float((probs.argmax(axis=1) == table.labels).mean()) if table.has_labels
                else None)
    return {"accuracy": accuracy, "count": len(probs), **label_free_measures(probs)}


def _diagnose(labels: PseudoLabels, probs: np.ndarray, truth: np.ndarray, num_classes: int,
              plot: Path) -> dict[str, Any]:
    """Every ranking rule (purity, confidence, ...) as a ranking of correct pseudo-labels;
    plots them into `plot`."""
    result = score_diagnostics(labels.cluster, probs, labels.cluster_label, labels.purity,
                               truth, num_classes)
    plot_diagnostics(result["diagnostics"], plot,
                     "Stage 1 pseudo-labels on the target train split")
    return result
