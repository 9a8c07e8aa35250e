from pathlib import Path

import numpy as np
import pytest
import torch

from clup.clustering.diagnostics import (
    class_shares,
    knn_label_agreement,
    plot_diagnostics,
    pseudo_label_diagnostics,
    ranking_auc,
    selection_curve,
)


def test_auc_counts_correct_above_wrong_pairs() -> None:
    # correct scores 0.9, 0.4; wrong 0.5, 0.1: of the 4 (correct, wrong) pairs 3 are ordered
    assert ranking_auc(np.array([0.9, 0.5, 0.4, 0.1]),
                       np.array([True, False, True, False])) == pytest.approx(0.75)
    assert ranking_auc(np.array([0.2, 0.8]), np.array([True, True])) is None


def test_selection_curve_keeps_the_best_per_class() -> None:
    pseudo = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.9, 0.8, 0.3, 0.1, 0.7, 0.2])
    truth = np.array([0, 1, 0, 1, 1, 0])
    curve = selection_curve(pseudo, scores, truth, 2, ratios=(0.5, 1.0))
    # r=0.5: class 0 keeps 2 (samples 0, 1: one right), class 1 keeps 1 (sample 4: right)
    assert curve[0] == {"ratio": 0.5, "selected": 3, "accuracy": pytest.approx(2 / 3)}
    assert curve[1] == {"ratio": 1.0, "selected": 6, "accuracy": pytest.approx(3 / 6)}


def test_diagnostics_compare_labelings_and_plot(tmp_path: Path) -> None:
    truth = np.array([0, 0, 1, 1])
    result = pseudo_label_diagnostics(
        {"good": (np.array([0, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])),
         "bad": (np.array([0, 1, 1, 1]), np.array([0.1, 0.9, 0.2, 0.3]))}, truth, 2)
    assert result["good"]["accuracy"] == 0.75 and result["good"]["auc"] == 1.0
    assert result["bad"]["auc"] == 0.0  # its one wrong label has the top score
    plot_diagnostics(result, tmp_path / "plot.png", "test")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_knn_agreement_counts_neighbours_with_the_same_label() -> None:
    # Four points on a line of angles: 0 and 1 close together, 2 and 3 close together.
    angles = torch.tensor([0.0, 0.1, 1.4, 1.5])
    features = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0],
                                                                                 [0.5], [2.0]])
    labels = torch.tensor([0, 0, 1, 0])
    # k=1: the nearest of 0 is 1 (same), of 1 is 0 (same), of 2 is 3 (other), of 3 is 2
    # (other); the norms do not matter (cosine).
    assert knn_label_agreement(features, labels, 1) == pytest.approx(2 / 4)
    # k=2, second neighbours: 0 -> 2 (other), 1 -> 2 (other), 2 -> 1 (other), 3 -> 1 (same)
    assert knn_label_agreement(features, labels, 2) == pytest.approx(3 / 8)
    # Chunking the rows changes nothing, a sample is never its own neighbour.
    assert knn_label_agreement(features, labels, 2, chunk=1) == pytest.approx(3 / 8)
    assert knn_label_agreement(features, torch.zeros(4, dtype=torch.long), 3) == 1.0
    with pytest.raises(ValueError, match="k must be"):
        knn_label_agreement(features, labels, 4)


def test_class_shares_sum_to_one_and_show_a_collapse() -> None:
    assert class_shares(torch.tensor([2, 2, 2, 0]), 3) == [0.25, 0.0, 0.75]
    assert class_shares(torch.zeros(0, dtype=torch.long), 2) == [0.0, 0.0]
