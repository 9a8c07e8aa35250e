"""CluP stage-1 arithmetic checked against brute-force loops over the definitions."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest

from clup.clustering.pseudo_labels import (
    agreeing_members,
    assign_pseudo_labels,
    cluster_purity,
    cluster_purity_loop,
    normalize_embeddings,
    pseudo_label_summary,
    select_by_threshold,
    select_top_ratio,
)

NUM_RANDOM_CASES = 200


def brute_votes(clusters, predictions, num_clusters, num_classes):
    labels, purities, sizes, counts = [], [], [], []
    for k in range(num_clusters):
        members = [p for c, p in zip(clusters, predictions, strict=True) if c == k]
        row = [sum(1 for p in members if p == c) for c in range(num_classes)]
        best = max(row)
        labels.append(row.index(best) if members else -1)
        purities.append(best / len(members) if members else 0.0)
        sizes.append(len(members))
        counts.append(row)
    return labels, purities, sizes, counts


def brute_top_ratio(pseudo_labels, scores, ratio: Fraction, num_classes, eligible):
    selected = [False] * len(pseudo_labels)
    for c in range(num_classes):
        members = [i for i, label in enumerate(pseudo_labels) if eligible[i] and label == c]
        members.sort(key=lambda i: (-scores[i], i))
        for i in members[: math.floor(ratio * len(members))]:
            selected[i] = True
    return selected


def random_case(rng: np.random.Generator):
    num_samples = int(rng.integers(0, 80))
    num_clusters = int(rng.integers(1, 25))
    num_classes = int(rng.integers(1, 9))
    used_clusters = rng.choice(num_clusters, size=rng.integers(1, num_clusters + 1), replace=False)
    used_classes = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
    clusters = rng.choice(used_clusters, size=num_samples)
    predictions = rng.choice(used_classes, size=num_samples)
    return clusters, predictions, num_clusters, num_classes


def random_ratio(rng: np.random.Generator) -> Fraction:
    return Fraction(int(rng.choice([1, 3, 10, 20, 29, 30, 33, 50, 70, 99, 100])), 100)


def random_eligible(rng: np.random.Generator, size: int) -> np.ndarray | None:
    return None if rng.random() < 0.3 else rng.random(size) < rng.random()


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_pipeline_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    clusters, predictions, num_clusters, num_classes = random_case(rng)

    votes = cluster_purity(clusters, predictions, num_clusters, num_classes)
    labels, purities, sizes, counts = brute_votes(
        clusters.tolist(), predictions.tolist(), num_clusters, num_classes
    )
    assert votes.label.tolist() == labels
    assert votes.purity.tolist() == purities
    assert votes.size.tolist() == sizes
    assert votes.counts.tolist() == counts

    pseudo_labels, purity = assign_pseudo_labels(clusters, votes)
    assert pseudo_labels.tolist() == [labels[k] for k in clusters]
    assert purity.tolist() == [purities[k] for k in clusters]

    ratio = random_ratio(rng)
    eligible = random_eligible(rng, len(clusters))
    mask = [True] * len(clusters) if eligible is None else eligible.tolist()
    selected = select_top_ratio(pseudo_labels, purity, float(ratio), num_classes, eligible)
    assert selected.dtype == bool
    assert selected.tolist() == brute_top_ratio(
        pseudo_labels.tolist(), purity.tolist(), ratio, num_classes, mask
    )

    threshold = float(rng.random())
    assert select_by_threshold(purity, threshold, eligible).tolist() == [
        m and p >= threshold for m, p in zip(mask, purity.tolist(), strict=True)
    ]


def assert_same_votes(first, second) -> None:
    for field in ("label", "purity", "size", "counts"):
        expected, actual = getattr(first, field), getattr(second, field)
        assert actual.dtype == expected.dtype, field
        np.testing.assert_array_equal(actual, expected, err_msg=field)


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_one_pass_purity_equals_the_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(2000 + seed)
    clusters, predictions, num_clusters, num_classes = random_case(rng)
    assert_same_votes(
        cluster_purity(clusters, predictions, num_clusters, num_classes),
        cluster_purity_loop(clusters, predictions, num_clusters, num_classes),
    )


def test_one_pass_purity_equals_the_reference_loop_at_scale_with_ties_and_empty_clusters():
    rng = np.random.default_rng(7)
    # Clusters 0..59 of 80 used, few members each: many tied votes and 20 empty clusters.
    clusters = rng.integers(0, 60, size=600)
    predictions = rng.integers(0, 7, size=600)
    votes = cluster_purity_loop(clusters, predictions, 80, 7)
    assert_same_votes(cluster_purity(clusters, predictions, 80, 7), votes)
    top = votes.counts.max(axis=1)
    assert ((votes.counts == top[:, None]).sum(axis=1) > 1).sum() > 10
    assert (votes.label == -1).sum() == 20


def test_reference_loop_ties_go_to_lowest_class_and_empty_clusters_are_marked() -> None:
    votes = cluster_purity_loop([0, 0, 0, 0, 2], [3, 1, 3, 1, 2], num_clusters=3, num_classes=4)
    assert votes.label.tolist() == [1, -1, 2]
    assert votes.purity.tolist() == [0.5, 0.0, 1.0]
    assert votes.size.tolist() == [4, 0, 1]


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_select_top_ratio_with_tied_scores_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(1000 + seed)
    num_samples = int(rng.integers(0, 120))
    num_classes = int(rng.integers(1, 9))
    pseudo_labels = rng.integers(0, num_classes, size=num_samples)
    scores = rng.integers(0, 4, size=num_samples) / 4
    eligible = random_eligible(rng, num_samples)
    mask = [True] * num_samples if eligible is None else eligible.tolist()
    if eligible is not None:
        pseudo_labels[~eligible] = -1
    ratio = random_ratio(rng)

    selected = select_top_ratio(pseudo_labels, scores, float(ratio), num_classes, eligible)
    assert selected.tolist() == brute_top_ratio(
        pseudo_labels.tolist(), scores.tolist(), ratio, num_classes, mask
    )


def test_majority_tie_goes_to_lowest_class_and_empty_clusters_are_marked() -> None:
    votes = cluster_purity([0, 0, 0, 0, 2], [3, 1, 3, 1, 2], num_clusters=3, num_classes=4)
    assert votes.label.tolist() == [1, -1, 2]
    assert votes.purity.tolist() == [0.5, 0.0, 1.0]
    assert votes.size.tolist() == [4, 0, 1]
    assert votes.counts.tolist() == [[0, 2, 0, 2], [0, 0, 0, 0], [0, 0, 1, 0]]
    assert votes.label.dtype == votes.size.dtype == votes.counts.dtype == np.int64


def test_more_clusters_than_samples_and_no_samples() -> None:
    votes = cluster_purity([4], [0], num_clusters=6, num_classes=2)
    assert votes.label.tolist() == [-1, -1, -1, -1, 0, -1]
    empty = cluster_purity(np.array([], dtype=int), np.array([], dtype=int), 3, 2)
    assert empty.counts.shape == (3, 2)
    assert empty.label.tolist() == [-1, -1, -1]


@pytest.mark.parametrize(("ratio", "size", "kept"), [(0.3, 10, 3), (0.29, 100, 29), (0.1, 30, 3)])
def test_selected_count_is_the_exact_floor(ratio: float, size: int, kept: int) -> None:
    selected = select_top_ratio(np.zeros(size, dtype=int), np.arange(size), ratio, 1)
    assert selected.tolist() == [False] * (size - kept) + [True] * kept


def test_ratio_one_keeps_every_eligible_sample_and_tiny_ratio_keeps_none() -> None:
    labels, scores = np.array([0, 1, 1, 0]), np.array([0.1, 0.2, 0.3, 0.4])
    eligible = np.array([True, True, False, True])
    assert select_top_ratio(labels, scores, 1.0, 2, eligible).tolist() == eligible.tolist()
    assert not select_top_ratio(labels, scores, 0.01, 2).any()


def test_tied_scores_prefer_lower_index() -> None:
    selected = select_top_ratio([0, 0, 0, 0], [0.5, 0.9, 0.5, 0.5], 0.5, 1)
    assert selected.tolist() == [True, True, False, False]


def test_agreeing_members() -> None:
    assert agreeing_members([0, 1, 2], [0, 2, 2]).tolist() == [True, False, True]


def test_summary_counts_accuracies_and_is_json_serialisable() -> None:
    pseudo_labels = np.array([0, 0, 1, 2, 2])
    selected = np.array([True, False, True, True, False])
    summary = pseudo_label_summary(pseudo_labels, selected, 4, true_labels=[0, 1, 1, 0, 2])
    assert summary == {
        "num_samples": 5,
        "num_selected": 3,
        "selected_per_class": [1, 1, 1, 0],
        "pseudo_label_accuracy": 3 / 5,
        "selected_accuracy": 2 / 3,
    }
    assert json.loads(json.dumps(summary)) == summary
    assert all(type(count) is int for count in summary["selected_per_class"])


def test_summary_without_true_labels_or_selection() -> None:
    labels = np.array([-1, 1])
    nothing = np.zeros(2, dtype=bool)
    summary = pseudo_label_summary(labels, nothing, 2)
    assert summary == {"num_samples": 2, "num_selected": 0, "selected_per_class": [0, 0]}
    with_truth = pseudo_label_summary(labels, nothing, 2, true_labels=[0, 1])
    assert with_truth["pseudo_label_accuracy"] == 0.5
    assert with_truth["selected_accuracy"] is None


def test_normalize_embeddings_appends_one_and_gives_unit_rows() -> None:
    z = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 2.0]])
    normalized = normalize_embeddings(z)
    assert normalized.dtype == np.float32
    assert normalized.shape == (3, 3)
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(normalized[0], np.array([3.0, 4.0, 1.0]) / math.sqrt(26), rtol=1e-6)
    np.testing.assert_array_equal(normalized[1], [0.0, 0.0, 1.0])


def test_normalize_embeddings_keeps_zero_rows_zero_without_appended_one() -> None:
    normalized = normalize_embeddings(np.array([[0.0, 0.0], [0.0, 2.0]]), append_one=False)
    np.testing.assert_array_equal(normalized, [[0.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: normalize_embeddings(np.zeros(3)), "z"),
        (lambda: normalize_embeddings(np.array([[np.nan]])), "z"),
        (lambda: cluster_purity([0, 3], [0, 0], 3, 2), "clusters"),
        (lambda: cluster_purity([0, -1], [0, 0], 3, 2), "clusters"),
        (lambda: cluster_purity([0, 1], [0, 2], 3, 2), "predictions"),
        (lambda: cluster_purity([0, 1], [0], 3, 2), "predictions"),
        (lambda: cluster_purity([[0, 1]], [[0, 1]], 3, 2), "clusters"),
        (lambda: cluster_purity([0.0, 1.0], [0, 1], 3, 2), "clusters"),
        (lambda: cluster_purity([0], [0], 0, 2), "num_clusters"),
        (lambda: cluster_purity([0], [0], 1, 0), "num_classes"),
        (lambda: cluster_purity_loop([0, 3], [0, 0], 3, 2), "clusters"),
        (lambda: cluster_purity_loop([0, 1], [0], 3, 2), "predictions"),
        (lambda: cluster_purity_loop([0], [0], 1, 0), "num_classes"),
        (lambda: assign_pseudo_labels([5], cluster_purity([0], [0], 2, 1)), "clusters"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], 0.0, 2), "selection_ratio"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], 1.5, 2), "selection_ratio"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], -0.1, 2), "selection_ratio"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], float("nan"), 2), "selection_ratio"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], True, 2), "selection_ratio"),
        (lambda: select_top_ratio([0, 2], [0.5, 0.5], 0.5, 2), "pseudo_labels"),
        (lambda: select_top_ratio([0, 1], [0.5], 0.5, 2), "scores"),
        (lambda: select_top_ratio([0, 1], [0.5, np.nan], 0.5, 2), "scores"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], 0.5, 2, np.ones(3, bool)), "eligible"),
        (lambda: select_top_ratio([0, 1], [0.5, 0.5], 0.5, 2, np.ones(2)), "eligible"),
        (lambda: select_by_threshold([0.5], float("nan")), "threshold"),
        (lambda: select_by_threshold([[0.5]], 0.5), "scores"),
        (lambda: agreeing_members([0, 1], [0]), "pseudo_labels"),
        (lambda: pseudo_label_summary([0, 1], [True], 2), "selected"),
        (lambda: pseudo_label_summary([0, 5], [True, True], 2), "pseudo_labels"),
        (lambda: pseudo_label_summary([0, 1], [True, True], 2, [0, 7]), "true_labels"),
    ],
)
def test_invalid_inputs_raise_value_error_naming_the_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()
