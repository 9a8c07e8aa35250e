"""Cluster-level pseudo-labels: the arithmetic of CluP stage 1.

Every sample of a k-means cluster receives the cluster's majority source prediction as its
pseudo-label and the cluster's purity (the fraction of members agreeing with that majority)
as its score; the best-scored samples of each class are then kept for fine-tuning.
All functions take and return numpy arrays and are deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

# ratio * N_c in float can land just below an integer (0.29 * 100 == 28.999999999999996).
# The slack restores the exact floor for any ratio with a short decimal expansion and any
# N_c below about 10**6, without rounding up a genuinely fractional product.
_FLOOR_SLACK = 1e-9


@dataclass(frozen=True, eq=False)
class ClusterVotes:
    """Majority vote of the source predictions inside each of K clusters over C classes.

    label: [K] int64 majority class, ties going to the lowest class id; -1 for empty clusters.
    purity: [K] float64 majority count divided by cluster size; 0.0 for empty clusters.
    size: [K] int64 number of members.
    counts: [K, C] int64 number of members predicted as each class.
    """

    label: np.ndarray
    purity: np.ndarray
    size: np.ndarray
    counts: np.ndarray


def int_vector(values: Any, name: str) -> np.ndarray:
    """`values` as a 1-D int64 array, refusing other shapes and non-integers (named `name`)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}.")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}.")
    return array.astype(np.int64, copy=False)


def score_vector(values: Any, name: str) -> np.ndarray:
    """`values` as a 1-D float64 array, refusing other shapes, non-reals and NaN."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {array.shape}.")
    if array.size and not (np.issubdtype(array.dtype, np.number) and array.dtype.kind != "c"):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64, copy=False)
    if np.isnan(array).any():
        raise ValueError(f"{name} must not contain NaN.")
    return array


def _bool_mask(values: Any, name: str, length: int) -> np.ndarray:
    if values is None:
        return np.ones(length, dtype=bool)
    array = np.asarray(values)
    if array.shape != (length,) or array.dtype != bool:
        raise ValueError(
            f"{name} must be a boolean array of shape ({length},), "
            f"got {array.dtype} array of shape {array.shape}."
        )
    return array


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_range(array: np.ndarray, name: str, upper: int) -> None:
    """Refuse an `array` with a value outside [0, upper)."""
    if array.size and (array.min() < 0 or array.max() >= upper):
        raise ValueError(
            f"{name} must lie in [0, {upper}), got values in [{array.min()}, {array.max()}]."
        )


def check_same_length(first: np.ndarray, first_name: str, other: np.ndarray, name: str) -> None:
    """Refuse an `other` that has not one entry per entry of `first`."""
    if len(first) != len(other):
        raise ValueError(
            f"{name} must have one entry per entry of {first_name} ({len(first)}), "
            f"got {len(other)}."
        )


def _vote_inputs(
    clusters: Any, predictions: Any, num_clusters: Any, num_classes: Any
) -> tuple[np.ndarray, np.ndarray, int, int]:
    num_clusters = positive_int(num_clusters, "num_clusters")
    num_classes = positive_int(num_classes, "num_classes")
    clusters = int_vector(clusters, "clusters")
    predictions = int_vector(predictions, "predictions")
    check_same_length(clusters, "clusters", predictions, "predictions")
    check_range(clusters, "clusters", num_clusters)
    check_range(predictions, "predictions", num_classes)
    return clusters, predictions, num_clusters, num_classes


def normalize_embeddings(z: np.ndarray, append_one: bool = True) -> np.ndarray:
    """L2-normalise the rows of z as float32, first appending a constant 1 column if asked.

    Appending 1 before normalising is the SHOT convention (Liang et al., ICML 2020). A zero row
    (only possible without the appended column) stays zero instead of becoming NaN.
    """
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"z must be a 2-D array [N, D], got shape {z.shape}.")
    if not np.isfinite(z).all():
        raise ValueError("z must contain only finite values.")
    if append_one:
        z = np.concatenate([z, np.ones((len(z), 1), dtype=np.float32)], axis=1)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return np.divide(z, norms, out=np.zeros_like(z), where=norms > 0)


def cluster_purity(
    clusters: np.ndarray, predictions: np.ndarray, num_clusters: int, num_classes: int
) -> ClusterVotes:
    """Count the source predictions in every cluster and take each cluster's majority vote.

    One bincount over the N samples; nothing loops over clusters or classes.
    """
    clusters, predictions, num_clusters, num_classes = _vote_inputs(
        clusters, predictions, num_clusters, num_classes
    )

    counts = np.bincount(
        clusters * num_classes + predictions, minlength=num_clusters * num_classes
    ).reshape(num_clusters, num_classes)
    size = counts.sum(axis=1)
    # argmax returns the first maximum, so a tied vote goes to the lowest class id.
    label = counts.argmax(axis=1)
    majority = counts.max(axis=1)
    non_empty = size > 0
    purity = np.divide(majority, size, out=np.zeros(num_clusters), where=non_empty)
    return ClusterVotes(
        label=np.where(non_empty, label, -1).astype(np.int64),
        purity=purity,
        size=size.astype(np.int64),
        counts=counts.astype(np.int64),
    )


def cluster_purity_loop(
    clusters: np.ndarray, predictions: np.ndarray, num_clusters: int, num_classes: int
) -> ClusterVotes:
    """`cluster_purity` computed the way the CluP reference code does: K x C Python loops.

    Each (cluster, class) pair makes one boolean pass over the N samples. Kept only as the
    reference definition that tests check `cluster_purity` against and that
    benchmarks/stage1.py times; use `cluster_purity`.
    """
    clusters, predictions, num_clusters, num_classes = _vote_inputs(
        clusters, predictions, num_clusters, num_classes
    )

    counts = np.zeros((num_clusters, num_classes), dtype=np.int64)
    label = np.full(num_clusters, -1, dtype=np.int64)
    purity = np.zeros(num_clusters)
    for k in range(num_clusters):
        for c in range(num_classes):
            counts[k, c] = np.count_nonzero((clusters == k) & (predictions == c))
        majority = 0
        for c in range(1, num_classes):
            # Strictly greater: a tie keeps the lower class id.
            if counts[k, c] > counts[k, majority]:
                majority = c
        size = int(counts[k].sum())
        if size:
            label[k] = majority
            purity[k] = int(counts[k, majority]) / size
    return ClusterVotes(label=label, purity=purity, size=counts.sum(axis=1), counts=counts)


def assign_pseudo_labels(
    clusters: np.ndarray, votes: ClusterVotes
) -> tuple[np.ndarray, np.ndarray]:
    """Give every sample its cluster's majority label and purity: ([N] int64, [N] float64)."""
    clusters = int_vector(clusters, "clusters")
    check_range(clusters, "clusters", len(votes.label))
    return votes.label[clusters], votes.purity[clusters]


def select_top_ratio(
    pseudo_labels: np.ndarray,
    scores: np.ndarray,
    ratio: float,
    num_classes: int,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Keep, per class c, the floor(ratio * N_c) best-scored eligible samples labelled c.

    N_c counts the eligible samples whose pseudo-label is c. Equal scores are broken by the
    lower sample index. Ineligible samples are never selected and their pseudo-labels are not
    checked, so dropped samples may carry -1. Returns a boolean mask [N].
    """
    if isinstance(ratio, bool) or not isinstance(ratio, Real) or not 0 < ratio <= 1:
        raise ValueError(f"selection_ratio (ratio) must be a number in (0, 1], got {ratio!r}.")
    num_classes = positive_int(num_classes, "num_classes")
    pseudo_labels = int_vector(pseudo_labels, "pseudo_labels")
    scores = score_vector(scores, "scores")
    check_same_length(pseudo_labels, "pseudo_labels", scores, "scores")
    eligible = _bool_mask(eligible, "eligible", len(pseudo_labels))

    index = np.flatnonzero(eligible)
    labels = pseudo_labels[index]
    check_range(labels, "pseudo_labels of eligible samples", num_classes)
    # lexsort's last key is the primary one: class, then descending score, then index.
    order = np.lexsort((index, -scores[index], labels))
    sorted_labels = labels[order]
    class_size = np.bincount(labels, minlength=num_classes)
    class_start = np.cumsum(class_size) - class_size
    rank_in_class = np.arange(len(order)) - class_start[sorted_labels]
    keep = np.floor(ratio * class_size + _FLOOR_SLACK).astype(np.int64)

    selected = np.zeros(len(pseudo_labels), dtype=bool)
    selected[index[order[rank_in_class < keep[sorted_labels]]]] = True
    return selected


def select_by_threshold(
    scores: np.ndarray, threshold: float, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Keep the eligible samples whose score is at least threshold. Returns a boolean mask [N]."""
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or np.isnan(threshold):
        raise ValueError(f"threshold must be a real number, got {threshold!r}.")
    scores = score_vector(scores, "scores")
    eligible = _bool_mask(eligible, "eligible", len(scores))
    return eligible & (scores >= threshold)


def agreeing_members(predictions: np.ndarray, pseudo_labels: np.ndarray) -> np.ndarray:
    """Mask of the samples whose own source prediction equals their cluster pseudo-label."""
    predictions = int_vector(predictions, "predictions")
    pseudo_labels = int_vector(pseudo_labels, "pseudo_labels")
    check_same_length(predictions, "predictions", pseudo_labels, "pseudo_labels")
    return predictions == pseudo_labels


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float | None:
    return float(np.mean(predicted == truth)) if len(truth) else None


def pseudo_label_summary(
    pseudo_labels: np.ndarray,
    selected: np.ndarray,
    num_classes: int,
    true_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """JSON-serialisable account of a selection.

    Always: num_samples, num_selected, selected_per_class (list of C ints). With true_labels
    also pseudo_label_accuracy over all samples and selected_accuracy over the selected ones,
    each None when there is nothing to measure.
    """
    num_classes = positive_int(num_classes, "num_classes")
    pseudo_labels = int_vector(pseudo_labels, "pseudo_labels")
    selected = _bool_mask(selected, "selected", len(pseudo_labels))
    chosen = pseudo_labels[selected]
    check_range(chosen, "pseudo_labels of selected samples", num_classes)

    summary: dict[str, Any] = {
        "num_samples": len(pseudo_labels),
        "num_selected": len(chosen),
        "selected_per_class": np.bincount(chosen, minlength=num_classes).tolist(),
    }
    if true_labels is not None:
        true_labels = int_vector(true_labels, "true_labels")
        check_same_length(pseudo_labels, "pseudo_labels", true_labels, "true_labels")
        check_range(true_labels, "true_labels", num_classes)
        summary["pseudo_label_accuracy"] = _accuracy(pseudo_labels, true_labels)
        summary["selected_accuracy"] = _accuracy(chosen, true_labels[selected])
    return summary
