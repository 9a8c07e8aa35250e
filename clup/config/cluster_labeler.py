"""The `cluster_labeler` section: stage 1, CluP's cluster-level pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clup.config.loader import check_choice, check_folder_name, check_positive
from clup.errors import ConfigError


@dataclass
class ClusterLabelerConfig:
    """Stage 1: K-means on source embeddings, cluster-level pseudo-labels.

    `labels` and `score` are the ablation switches of the paper's contrast: CluP
    labels each sample by its cluster's majority and ranks it by the cluster's
    purity; instance-level pseudo-labelling (`labels: instance`, `score:
    confidence`) uses each sample's own prediction and softmax confidence.
    clup's own `score`s (clup/clustering/scores.py, which lists them): `purity_confidence`,
    purity times the sample's softmax probability of its pseudo-label; `soft_purity`, the
    cluster members' mean probability of the cluster's label; `soft_purity_confidence`, their
    product. Under `labels: instance` the pseudo-label is the sample's own prediction, so the
    sample's factor is its confidence; the cluster's factor still reads the cluster's label.
    `purity_threshold` thresholds whichever score ranks.
    `kmeans_backend`: `faiss` (on the GPU when faiss has one), `sklearn`, or `auto` (faiss
    when installed); both run Lloyd iterations up to `kmeans_max_iter` with sklearn's
    convergence test, keeping the best of `kmeans_n_init` seeded starts, each from
    `kmeans_init`: `k-means++` (the reference's, scikit-learn's default) or `random` rows.
    Two starts, not the reference's 10: at ExpW's size each costs about 11 s on 2 cores, and
    stage 1 after the features should stay under 30 s there (docs/scale.md, "Scale and speed").
    `features`: what K-means clusters: `source_model`, the source model's embeddings (CluP); or
    `swav`, stage 2's SwAV backbone's pooled embeddings of the same images (at stage 2's
    input size), this project's variant: the clusters come from the target's own
    self-supervised features, the votes still from the source model's predictions. Stage 1
    then waits for stage 2 instead of running beside it (`clup.registry`, stage 1's
    `extra_upstream`); CluP's method only, since only it trains SwAV.
    `run_name`: a run folder (under `output_root`) shared by the experiments whose stage 1
    settings agree (a benchmark names it after their digest). Default: the experiment's own.
    """

    run_name: str | None = None
    labels: Literal["cluster", "instance"] = "cluster"
    features: Literal["source_model", "swav"] = "source_model"
    score: str = "purity"
    num_clusters: int = 250
    selection_ratio: float = 0.1
    purity_threshold: float | None = None
    append_one: bool = True
    drop_disagreeing: bool = False
    kmeans_backend: str = "auto"
    kmeans_init: str = "k-means++"
    kmeans_max_iter: int = 300
    kmeans_n_init: int = 2
    batch_size: int = 256

    def validate(self, key: str) -> None:
        # Late: clup.clustering loads numpy, which reading a configuration need not.
        from clup.clustering.kmeans import BACKENDS, INITS
        from clup.clustering.scores import SCORES

        if self.run_name is not None:
            check_folder_name(self.run_name, f"{key}.run_name")
        check_choice(self.score, SCORES, f"{key}.score")
        check_choice(self.kmeans_backend, BACKENDS, f"{key}.kmeans_backend")
        check_choice(self.kmeans_init, INITS, f"{key}.kmeans_init")
        check_positive(self.num_clusters, f"{key}.num_clusters")
        if not 0 < self.selection_ratio <= 1:
            raise ConfigError(
                f"{key}.selection_ratio must be in (0, 1], got {self.selection_ratio}"
            )
        if self.purity_threshold is not None and not 0 <= self.purity_threshold <= 1:
            raise ConfigError(f"{key}.purity_threshold must be in [0, 1] or null")
        check_positive(self.kmeans_max_iter, f"{key}.kmeans_max_iter")
        check_positive(self.kmeans_n_init, f"{key}.kmeans_n_init")
        check_positive(self.batch_size, f"{key}.batch_size")
