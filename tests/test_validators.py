"""The label-free measures of an adapted model against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clup.validators import (
    EPS,
    VALIDATORS,
    information_maximization,
    label_free_measures,
    negative_entropy,
)


def _h(row: list[float]) -> float:
    return -sum(p * math.log(p + EPS) for p in row)


PROBS = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]]


def test_negative_entropy_is_minus_the_mean_entropy() -> None:
    expected = -(_h(PROBS[0]) + _h(PROBS[1]) + _h(PROBS[2])) / 3
    assert negative_entropy(np.array(PROBS)) == pytest.approx(expected, rel=1e-12)


def test_information_maximization_is_the_entropy_of_the_mean_less_the_mean_entropy() -> None:
    mean = [sum(column) / 3 for column in zip(*PROBS, strict=True)]
    expected = _h(mean) - (_h(PROBS[0]) + _h(PROBS[1]) + _h(PROBS[2])) / 3
    assert information_maximization(np.array(PROBS)) == pytest.approx(expected, rel=1e-12)


def test_one_hot_predictions_spread_over_the_classes_score_log_c() -> None:
    assert information_maximization(np.eye(4)) == pytest.approx(math.log(4), abs=1e-4)
    # All on one class: confident, yet no diversity.
    assert information_maximization(np.tile([1.0, 0, 0, 0], (4, 1))) == pytest.approx(
        0.0, abs=1e-4)
    assert negative_entropy(np.full((5, 4), 0.25)) == pytest.approx(-math.log(4), abs=1e-4)


def test_every_validator_is_measured_and_reads_the_probabilities_alone() -> None:
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=50)
    measures = label_free_measures(probs)
    assert set(measures) == set(VALIDATORS)
    # The order of the images does not matter: no row is tied to a label.
    assert label_free_measures(probs[::-1]) == pytest.approx(measures)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(3), np.zeros((2, 3, 1))])
def test_anything_but_a_non_empty_matrix_is_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        information_maximization(bad)
