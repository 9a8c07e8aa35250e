from pathlib import Path

import numpy as np
import pytest

from clup.diagnostics import (
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
