"""Stage 1's mathematics as one function on arrays."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from clup.clustering import cluster_pseudo_labels
from clup.config import ClusterLabelerConfig


def test_its_defaults_are_the_stage_settings_defaults() -> None:
    config = {f.name: f.default for f in dataclasses.fields(ClusterLabelerConfig)}
    for name, parameter in inspect.signature(cluster_pseudo_labels).parameters.items():
        if parameter.default is not inspect.Parameter.empty and name in config:
            assert parameter.default == config[name], name


def test_a_cluster_corrects_its_minority_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    # Two tight groups of 20; the source model is wrong on 3 members of each.
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    group = np.repeat([0, 1], 20)
    embeddings = centres[group] + 0.01 * rng.standard_normal((40, 2))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    predicted = group.copy()
    predicted[[0, 1, 2, 20, 21, 22]] = 1 - predicted[[0, 1, 2, 20, 21, 22]]
    probs = np.full((40, 2), 0.2)
    probs[np.arange(40), predicted] = 0.8
    labels = cluster_pseudo_labels(embeddings, probs, num_clusters=2, selection_ratio=0.5,
                                   seed=3, kmeans_backend="sklearn")
    assert (labels.pseudo_label == group).all()  # the vote corrects the 6 wrong ones
    assert np.allclose(labels.purity, 17 / 20)
    assert labels.selected.sum() == 20  # half of each pseudo-class
    again = cluster_pseudo_labels(embeddings, probs, num_clusters=2, selection_ratio=0.5,
                                  seed=3, kmeans_backend="sklearn")
    assert (again.selected == labels.selected).all()
    own = cluster_pseudo_labels(embeddings, probs, num_clusters=2, selection_ratio=0.5,
                                labels="instance", score="confidence", seed=3,
                                kmeans_backend="sklearn")
    assert (own.pseudo_label == predicted).all()
