"""The ranking scores of CluP stage 1: which pseudo-labelled samples of a class come first.

`SCORES` is the one table of rules, and the `cluster_labeler.score` setting's values. Every
rule maps (clusters [N], probs [N, C], cluster_label [N], purity [N], pseudo_label [N]) to
[N] scores, where `cluster_label` and `purity` are each member's cluster majority vote and
purity (`clup.clustering.pseudo_labels`), and `pseudo_label` is the label the sample is
given: its cluster's (`labels: cluster`) or its own prediction (`labels: instance`). A
member's own factor, `p_i(pseudo_label_i)`, thus ranks a member that disagrees with its
cluster low, and is the sample's confidence under `labels: instance`. A cluster-level factor
(purity, soft purity) always reads the cluster's label, whatever `labels` says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from clup.clustering.pseudo_labels import (
    check_range,
    check_same_length,
    int_vector,
    score_vector,
)

ScoreRule = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _probability_of(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each sample's softmax probability of its entry of `labels`: [N]."""
    return probs[np.arange(len(labels)), labels]


def _soft_purity_of(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray
                    ) -> np.ndarray:
    """Each member's cluster's mean softmax probability of the cluster's label: [N]; one
    weighted bincount over the N samples."""
    agreement = _probability_of(probs, cluster_label)
    num_clusters = int(clusters.max()) + 1 if len(clusters) else 0
    total = np.bincount(clusters, weights=agreement, minlength=num_clusters)
    size = np.bincount(clusters, minlength=num_clusters)
    # Every cluster indexed here holds at least the member that indexes it.
    return total[clusters] / size[clusters]


def _purity(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray,
            purity: np.ndarray, pseudo_label: np.ndarray) -> np.ndarray:
    """CluP's: the cluster's purity (Conti et al., "Cluster-level pseudo-labelling for
    source-free cross-domain facial expression recognition", BMVC 2022)."""
    return purity


def _confidence(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray,
                purity: np.ndarray, pseudo_label: np.ndarray) -> np.ndarray:
    """Instance-level pseudo-labelling's: the sample's own softmax maximum."""
    return probs.max(axis=1)


def _purity_confidence(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray,
                       purity: np.ndarray, pseudo_label: np.ndarray) -> np.ndarray:
    """clup's own: purity times the member's probability of its pseudo-label."""
    return purity * _probability_of(probs, pseudo_label)


def _soft_purity(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray,
                 purity: np.ndarray, pseudo_label: np.ndarray) -> np.ndarray:
    """clup's own: the mean, over the cluster's members, of their probability of the
    cluster's (hard majority) label; the soft version of purity's share of votes."""
    return _soft_purity_of(clusters, probs, cluster_label)


def _soft_purity_confidence(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray,
                            purity: np.ndarray, pseudo_label: np.ndarray) -> np.ndarray:
    """clup's own: soft purity times the member's probability of its pseudo-label."""
    return _soft_purity_of(clusters, probs, cluster_label) * _probability_of(probs, pseudo_label)


SCORES: dict[str, ScoreRule] = {
    "purity": _purity,
    "confidence": _confidence,
    "purity_confidence": _purity_confidence,
    "soft_purity": _soft_purity,
    "soft_purity_confidence": _soft_purity_confidence,
}


def check_rule(rule: str) -> None:
    """Refuse a ranking rule that `SCORES` does not hold."""
    if rule not in SCORES:
        raise ValueError(f"score must be one of {list(SCORES)}, got {rule!r}.")


def ranking_scores(rule: str, clusters: Any, probs: Any, cluster_label: Any, purity: Any,
                   pseudo_label: Any) -> np.ndarray:
    """The [N] float64 scores of `rule` (a key of `SCORES`), inputs as the module says."""
    check_rule(rule)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D array [N, C], got shape {probs.shape}.")
    clusters = int_vector(clusters, "clusters")
    if clusters.size and clusters.min() < 0:
        raise ValueError(f"clusters must be non-negative, got {clusters.min()}.")
    purity = score_vector(purity, "purity")
    cluster_label = int_vector(cluster_label, "cluster_label")
    pseudo_label = int_vector(pseudo_label, "pseudo_label")
    for name, values in (("clusters", clusters), ("cluster_label", cluster_label),
                         ("purity", purity), ("pseudo_label", pseudo_label)):
        check_same_length(probs, "probs", values, name)
    check_range(cluster_label, "cluster_label", probs.shape[1])
    check_range(pseudo_label, "pseudo_label", probs.shape[1])
    return np.asarray(SCORES[rule](clusters, probs, cluster_label, purity, pseudo_label),
                      dtype=np.float64)
