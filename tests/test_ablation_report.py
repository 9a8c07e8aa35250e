"""benchmarks/ablation.py: a grid's methods sorted by train-split evidence, never by test."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from benchmarks import ablation

FIELDS = ["setup", "method", "seed", "target_accuracy", "selected_accuracy", "auc_score",
          "train_accuracy", "train_im", "train_neg_entropy"]


def _rows(test: dict[str, float]) -> list[dict[str, str]]:
    train = {"A": [0.6, 0.7], "B": [0.8, 0.8], "C": [0.5, 0.55]}
    rows = []
    for method, values in train.items():
        for seed, value in enumerate(values):
            rows.append({"setup": "s", "method": method, "seed": str(seed),
                         "target_accuracy": str(test[method]), "selected_accuracy": "0.9",
                         "auc_score": "", "train_accuracy": str(value),
                         "train_im": str(1 - value), "train_neg_entropy": "-1"})
    return rows


def _order(text: str) -> list[str]:
    return [line.split("|")[1].strip() for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]


def test_methods_are_sorted_by_the_chooser_and_the_test_column_changes_nothing() -> None:
    text = ablation.tables(_rows({"A": 0.1, "B": 0.2, "C": 0.9}), "train_accuracy")
    assert _order(text) == ["B", "A", "C"]
    assert _order(ablation.tables(_rows({"A": 0.9, "B": 0.1, "C": 0.5}), "train_accuracy")) \
        == ["B", "A", "C"]
    assert _order(ablation.tables(_rows({"A": 0.1, "B": 0.2, "C": 0.9}), "train_im")) \
        == ["C", "A", "B"]
    # Mean ± population std over seeds, in points: A's train accuracy 65.0 ± 5.0.
    line = next(line for line in text.splitlines() if line.startswith("| A |"))
    assert "| 2 |" in line and "65.0 ± 5.0" in line and line.rstrip().endswith("10.0 ± 0.0 |")


def test_a_grid_folder_without_its_table_says_so(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no benchmark.csv"):
        ablation.read_rows(tmp_path)
    with (tmp_path / "benchmark.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(_rows({"A": 0.1, "B": 0.2, "C": 0.3}))
    assert len(ablation.read_rows(tmp_path)) == 6


def test_spearman_against_hand_values_and_the_footer() -> None:
    assert ablation.spearman((1, 2, 3, 4), (10, 20, 30, 40)) == pytest.approx(1.0)
    assert ablation.spearman((1, 2, 3, 4), (4, 3, 2, 1)) == pytest.approx(-1.0)
    # Ranks (0, 1, 2.5, 2.5) against (0, 2, 1, 3): Pearson of the ranks, by hand 0.632.
    assert ablation.spearman((1, 2, 3, 3), (1, 3, 2, 4)) == pytest.approx(0.6324555, abs=1e-6)
    assert ablation.spearman((1, 1, 1), (1, 2, 3)) is None
    text = ablation.tables(_rows({"A": 0.6, "B": 0.9, "C": 0.1}), "train_accuracy")
    assert "train_accuracy +1.00" in text and "train_im -1.00" in text
