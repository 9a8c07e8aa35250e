"""Cluster-level pseudo-labels from a source model's embeddings and predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from clup.clustering.kmeans import fit_kmeans
from clup.clustering.pseudo_labels import (
    agreeing_members,
    assign_pseudo_labels,
    cluster_purity,
    select_by_threshold,
    select_top_ratio,
)
from clup.clustering.scores import check_rule, ranking_scores
from clup.errors import ConfigError


@dataclass(frozen=True)
class PseudoLabels:
    """Stage 1's result, one entry per target train image; `score` is what the selection
    ranked (and thresholded)."""

    cluster: np.ndarray
    source_pred: np.ndarray
    source_conf: np.ndarray
    cluster_label: np.ndarray
    purity: np.ndarray
    score: np.ndarray
    pseudo_label: np.ndarray
    selected: np.ndarray
    inertia: float
    kmeans_backend: str


def cluster_pseudo_labels(
    embeddings: np.ndarray,
    probs: np.ndarray,
    *,
    num_clusters: int,
    selection_ratio: float = 0.1,
    labels: Literal["cluster", "instance"] = "cluster",
    score: str = "purity",
    drop_disagreeing: bool = False,
    purity_threshold: float | None = None,
    seed: int = 0,
    kmeans_backend: str = "auto",
    kmeans_init: str = "k-means++",
    kmeans_max_iter: int = 300,
    kmeans_n_init: int = 2,
    progress: bool = False,
) -> PseudoLabels:
    """Cluster the normalised embeddings [N, D] with k-means, label every image with its
    cluster's majority source prediction (`labels: instance`: its own prediction), score it
    by the rule `score` names (`clup.clustering.scores.SCORES`; `purity`: its cluster's
    purity, `confidence`: its own softmax maximum), and keep per class the best-scored
    `selection_ratio` (or every score above `purity_threshold`), optionally only members
    whose own prediction agrees. `probs` [N, C] are the source model's softmax outputs.
    Seeded: the same inputs and seed give the same labels."""
    check_rule(score)
    num_classes = probs.shape[1]
    if num_clusters > len(embeddings):
        raise ConfigError(
            f"cluster_labeler.num_clusters ({num_clusters}) exceeds the number of "
            f"target train images ({len(embeddings)})"
        )
    predictions = probs.argmax(axis=1)
    kmeans = fit_kmeans(embeddings, num_clusters, seed=seed, backend=kmeans_backend,
                        init=kmeans_init, max_iter=kmeans_max_iter, n_init=kmeans_n_init,
                        progress=progress)
    clusters = kmeans.assignments
    votes = cluster_purity(clusters, predictions, num_clusters, num_classes)
    cluster_label, purity = assign_pseudo_labels(clusters, votes)
    confidence = probs.max(axis=1)
    pseudo = cluster_label if labels == "cluster" else predictions
    scores = ranking_scores(score, clusters, probs, cluster_label, purity, pseudo)
    eligible = agreeing_members(predictions, pseudo) if drop_disagreeing else None
    if purity_threshold is None:
        selected = select_top_ratio(pseudo, scores, selection_ratio, num_classes, eligible)
    else:
        selected = select_by_threshold(scores, purity_threshold, eligible)
    return PseudoLabels(cluster=clusters, source_pred=predictions, source_conf=confidence,
                        cluster_label=cluster_label, purity=purity, score=scores,
                        pseudo_label=pseudo, selected=selected, inertia=kmeans.inertia,
                        kmeans_backend=kmeans.backend)
