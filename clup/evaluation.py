"""Classification metrics from predictions and labels."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    predictions: np.ndarray, labels: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (None for a class absent from `labels`), confusion matrix.

    Rows of the confusion matrix are true classes, columns predicted classes.
    """
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} differ")
    n = len(classes)
    confusion = np.bincount(labels * n + predictions, minlength=n * n).reshape(n, n)
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    per_class = {
        name: (float(correct[i] / support[i]) if support[i] else None)
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": float(correct.sum() / max(len(labels), 1)),
        "count": int(len(labels)),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
    }
