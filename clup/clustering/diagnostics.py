"""How good are pseudo-labels, and does the score rank the right ones first?

The paper's mechanism: a cluster's purity should separate correct from wrong
pseudo-labels better than a sample's own confidence. With target labels
available (for diagnosis only; no method reads them), stage 1 measures every
ranking rule of `clup.clustering.scores.SCORES` on the same source model: the
ROC AUC of each score for "this pseudo-label is correct", and the accuracy of
the kept subset as the selection ratio grows, with the per-class selection the
method itself uses.

The baselines' diagnostics, also for diagnosis only: how often NRC's and AaD's
neighbours share a sample's true label, and the share of the target each class
receives as an adapter trains (a collapse onto few classes shows at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from clup.clustering.pseudo_labels import select_top_ratio
from clup.clustering.scores import SCORES, ranking_scores

CURVE_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def ranking_auc(scores: np.ndarray, correct: np.ndarray) -> float | None:
    """ROC AUC of `scores` for `correct`; None when all labels are right or all wrong."""
    correct = np.asarray(correct, dtype=bool)
    if correct.all() or not correct.any():
        return None
    return float(roc_auc_score(correct, np.asarray(scores, dtype=np.float64)))


def selection_curve(pseudo_labels: np.ndarray, scores: np.ndarray, true_labels: np.ndarray,
                    num_classes: int, ratios: Sequence[float] = CURVE_RATIOS
                    ) -> list[dict[str, Any]]:
    """Accuracy of the selected pseudo-labels at each per-class selection ratio."""
    curve = []
    for ratio in ratios:
        selected = select_top_ratio(pseudo_labels, scores, ratio, num_classes)
        count = int(selected.sum())
        accuracy = float((pseudo_labels[selected] == true_labels[selected]).mean()) \
            if count else None
        curve.append({"ratio": ratio, "selected": count, "accuracy": accuracy})
    return curve


def pseudo_label_diagnostics(labelings: dict[str, tuple[np.ndarray, np.ndarray]],
                             true_labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Per labeling (name -> (pseudo-labels, scores)): accuracy, score AUC, selection curve."""
    result = {}
    for name, (pseudo, scores) in labelings.items():
        correct = pseudo == true_labels
        result[name] = {
            "accuracy": float(correct.mean()),
            "auc": ranking_auc(scores, correct),
            "curve": selection_curve(pseudo, scores, true_labels, num_classes),
        }
    return result


def score_diagnostics(clusters: np.ndarray, probs: np.ndarray, cluster_label: np.ndarray,
                      purity: np.ndarray, true_labels: np.ndarray, num_classes: int
                      ) -> dict[str, Any]:
    """Every rule of `SCORES` ranking the labels it ranks in the paper's contrast: `confidence`
    the instance-level baseline's own predictions, every other rule the cluster labels
    (`cluster_label`, `purity`: each member's cluster vote). Returns `auc_<rule>` per rule and
    `diagnostics`, `pseudo_label_diagnostics` keyed `"<cluster|instance> label, <rule>"`."""
    predictions = probs.argmax(axis=1)
    labelings, names = {}, {}
    for rule in SCORES:
        kind, pseudo = ("instance", predictions) if rule == "confidence" \
            else ("cluster", cluster_label)
        names[rule] = f"{kind} label, {rule.replace('_', ' ')}"
        labelings[names[rule]] = (
            pseudo, ranking_scores(rule, clusters, probs, cluster_label, purity, pseudo))
    diagnostics = pseudo_label_diagnostics(labelings, true_labels, num_classes)
    return {**{f"auc_{rule}": diagnostics[name]["auc"] for rule, name in names.items()},
            "diagnostics": diagnostics}


def plot_diagnostics(diagnostics: dict[str, Any], path: Path, title: str) -> None:
    """Selected pseudo-label accuracy against the number kept, one line per labeling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clup.io import atomic_path

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for name, entry in diagnostics.items():
        points = [(p["selected"], p["accuracy"]) for p in entry["curve"] if p["accuracy"]]
        auc = "n/a" if entry["auc"] is None else f"{entry['auc']:.3f}"
        axis.plot(*zip(*points, strict=True), marker="o", label=f"{name} (AUC {auc})")
    axis.set_xlabel("pseudo-labelled samples kept (per-class top ratio)")
    axis.set_ylabel("accuracy of the kept pseudo-labels")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)


def knn_label_agreement(features: torch.Tensor, labels: torch.Tensor, k: int,
                        chunk: int = 1024) -> float:
    """Share of each sample's `k` nearest neighbours (cosine similarity, the sample itself
    excluded) that carry its true label: how much a neighbourhood method (NRC, AaD) can
    learn from its neighbours. Rows are compared `chunk` at a time, so the memory is
    `chunk x len(features)` however large the target."""
    if not 0 < k < len(features):
        raise ValueError(f"k must be in [1, {len(features) - 1}], got {k}")
    normed = torch.nn.functional.normalize(features.float(), dim=1)
    labels = labels.to(normed.device)
    agreeing = 0
    for start in range(0, len(normed), chunk):
        rows = torch.arange(start, min(start + chunk, len(normed)), device=normed.device)
        similarity = normed[rows] @ normed.T
        similarity[torch.arange(len(rows)), rows] = -float("inf")
        neighbours = similarity.topk(k, dim=1).indices
        agreeing += int((labels[neighbours] == labels[rows, None]).sum())
    return agreeing / (len(normed) * k)


def class_shares(predictions: torch.Tensor, num_classes: int) -> list[float]:
    """The fraction of the samples predicted as each class; a collapse shows as one share
    near 1."""
    counts = torch.bincount(predictions.flatten().long().cpu(), minlength=num_classes)
    return (counts.double() / max(int(counts.sum()), 1)).tolist()
