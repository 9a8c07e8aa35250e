"""Stage 1's ranking rules, against hand computations, in the settings and in the table."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from clup.clustering import cluster_pseudo_labels
from clup.clustering.diagnostics import score_diagnostics
from clup.clustering.pseudo_labels import select_top_ratio
from clup.clustering.scores import SCORES, ranking_scores
from clup.config import load_experiment
from clup.data.manifest import ImageTable
from clup.errors import ConfigError
from clup.stages.cluster_labeler import pseudo_label_csv

# Two clusters of 3 and 2 members over 3 classes. Cluster 0 votes 0, 0, 1: label 0, purity
# 2/3; member 2 disagrees. Cluster 1 votes 2, 2: label 2, purity 1.
CLUSTERS = np.array([0, 0, 0, 1, 1])
PROBS = np.array([
    [0.7, 0.2, 0.1],
    [0.6, 0.3, 0.1],
    [0.2, 0.5, 0.3],
    [0.1, 0.3, 0.6],
    [0.3, 0.2, 0.5],
])
CLUSTER_LABEL = np.array([0, 0, 0, 2, 2])
PURITY = np.array([2 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
OWN = PROBS.argmax(axis=1)  # 0, 0, 1, 2, 2
# The members' probability of their cluster's label: 0.7, 0.6, 0.2 | 0.6, 0.5.
SOFT_PURITY = [(0.7 + 0.6 + 0.2) / 3] * 3 + [(0.6 + 0.5) / 2] * 2  # 0.5, 0.55


def _scores(rule: str, pseudo_label: np.ndarray) -> np.ndarray:
    return ranking_scores(rule, CLUSTERS, PROBS, CLUSTER_LABEL, PURITY, pseudo_label)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("purity", [2 / 3, 2 / 3, 2 / 3, 1.0, 1.0]),
        ("confidence", [0.7, 0.6, 0.5, 0.6, 0.5]),
        ("purity_confidence", [2 / 3 * 0.7, 2 / 3 * 0.6, 2 / 3 * 0.2, 0.6, 0.5]),
        ("soft_purity", SOFT_PURITY),
        ("soft_purity_confidence", [0.5 * 0.7, 0.5 * 0.6, 0.5 * 0.2, 0.55 * 0.6, 0.55 * 0.5]),
    ],
)
def test_each_rule_with_cluster_labels(rule: str, expected: list[float]) -> None:
    scores = _scores(rule, CLUSTER_LABEL)
    assert scores.dtype == np.float64
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_a_member_disagreeing_with_its_cluster_ranks_last_with_its_own_factor() -> None:
    for rule in ("purity_confidence", "soft_purity_confidence"):
        assert _scores(rule, CLUSTER_LABEL)[:3].argmin() == 2, rule
    assert len(set(_scores("soft_purity", CLUSTER_LABEL)[:3])) == 1  # cluster-level


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # Member 2's own prediction is class 1 (0.5); the cluster's factors do not change.
        ("purity_confidence", [2 / 3 * 0.7, 2 / 3 * 0.6, 2 / 3 * 0.5, 0.6, 0.5]),
        ("soft_purity", SOFT_PURITY),
        ("soft_purity_confidence", [0.5 * 0.7, 0.5 * 0.6, 0.5 * 0.5, 0.55 * 0.6, 0.55 * 0.5]),
    ],
)
def test_instance_labels_use_the_members_own_prediction(rule: str,
                                                        expected: list[float]) -> None:
    np.testing.assert_allclose(_scores(rule, OWN), expected, rtol=1e-12)


def test_instance_labels_through_the_stage_function() -> None:
    # Two tight groups of 3 and 2 points, so k-means finds CLUSTERS (up to renaming).
    embeddings = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 2)
    embeddings += 1e-3 * np.arange(10).reshape(5, 2)
    labels = cluster_pseudo_labels(embeddings, PROBS, num_clusters=2, selection_ratio=1.0,
                                   labels="instance", score="soft_purity_confidence",
                                   kmeans_backend="sklearn")
    assert (labels.pseudo_label == OWN).all()
    np.testing.assert_allclose(labels.score, [0.35, 0.3, 0.25, 0.33, 0.275], rtol=1e-6)


def test_bad_inputs_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"score must be one of \['purity', 'confidence', "):
        ranking_scores("entropy", CLUSTERS, PROBS, CLUSTER_LABEL, PURITY, CLUSTER_LABEL)
    with pytest.raises(ValueError, match="pseudo_label must lie in"):
        ranking_scores("purity", CLUSTERS, PROBS, CLUSTER_LABEL, PURITY, CLUSTER_LABEL + 1)
    with pytest.raises(ValueError, match="purity must have one entry per entry of probs"):
        ranking_scores("purity", CLUSTERS, PROBS, CLUSTER_LABEL, PURITY[:4], CLUSTER_LABEL)
    with pytest.raises(ValueError, match="score must be one of"):
        cluster_pseudo_labels(np.eye(5), PROBS, num_clusters=2, score="entropy")


def test_empty_input_gives_empty_scores() -> None:
    empty = np.zeros(0, dtype=np.int64)
    for rule in SCORES:
        assert ranking_scores(rule, empty, np.zeros((0, 3)), empty, np.zeros(0), empty).shape \
            == (0,)


@pytest.mark.parametrize("rule", list(SCORES))
def test_the_settings_accept_every_rule(tiny_yaml: Path, rule: str) -> None:
    config = load_experiment(tiny_yaml, [f"cluster_labeler.score={rule}"])
    assert config.cluster_labeler.score == rule


def test_the_settings_refuse_an_unknown_rule(tiny_yaml: Path) -> None:
    with pytest.raises(ConfigError, match=r"cluster_labeler\.score must be one of \['purity', "
                                          r"'confidence', 'purity_confidence', 'soft_purity', "
                                          r"'soft_purity_confidence'\], got 'entropy'"):
        load_experiment(tiny_yaml, ["cluster_labeler.score=entropy"])


def test_diagnostics_judge_every_rule_on_its_labels() -> None:
    truth = np.array([0, 0, 0, 2, 2])  # member 2's cluster label is right, its own is wrong
    result = score_diagnostics(CLUSTERS, PROBS, CLUSTER_LABEL, PURITY, truth, 3)
    assert list(result) == ["auc_purity", "auc_confidence", "auc_purity_confidence",
                            "auc_soft_purity", "auc_soft_purity_confidence", "diagnostics"]
    assert list(result["diagnostics"]) == [
        "cluster label, purity", "instance label, confidence",
        "cluster label, purity confidence", "cluster label, soft purity",
        "cluster label, soft purity confidence"]
    # Every cluster label is right: no AUC. The instance labels' one mistake (member 2,
    # confidence 0.5) ranks below 0.7 and 0.6 and ties 0.5: (3 + 0.5) / 4.
    assert result["auc_purity"] is None and result["auc_soft_purity_confidence"] is None
    assert result["auc_confidence"] == pytest.approx(3.5 / 4)
    wrong = np.array([0, 0, 1, 2, 2])  # now member 2's cluster label is the mistake
    result = score_diagnostics(CLUSTERS, PROBS, CLUSTER_LABEL, PURITY, wrong, 3)
    assert result["auc_purity_confidence"] == 1.0  # its 2/3 * 0.2 is the lowest score
    assert result["auc_soft_purity"] == pytest.approx(3 / 4)  # its 0.5 ties 2 right, 2 above


@pytest.mark.parametrize("rule", ["purity", "soft_purity_confidence"])
def test_the_table_score_column_is_the_ranking_that_selected(rule: str) -> None:
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((40, 4))
    probs = rng.dirichlet(np.ones(3), size=40).astype(np.float32)
    labels = cluster_pseudo_labels(embeddings, probs, num_clusters=6, selection_ratio=0.3,
                                   score=rule, kmeans_backend="sklearn")
    table = ImageTable([Path(f"/images/{i}.png") for i in range(40)], rng.integers(0, 3, 40))
    rows = list(csv.DictReader(io.StringIO(pseudo_label_csv(table, labels))))
    assert list(rows[0]) == ["index", "path", "cluster", "source_pred", "source_conf",
                             "pseudo_label", "purity", "selected", "score", "true_label"]
    score = np.array([float(r["score"]) for r in rows])
    assert (score == labels.score).all()  # written exactly
    if rule == "purity":
        assert (score == labels.purity).all()
    pseudo = np.array([int(r["pseudo_label"]) for r in rows])
    selected = np.array([r["selected"] == "1" for r in rows])
    assert selected.any()
    assert (select_top_ratio(pseudo, score, 0.3, 3) == selected).all()
