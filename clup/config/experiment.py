"""Experiment configuration: one YAML file per experiment, typed and validated.

The schema is a tree of dataclasses, one module per section. `load_experiment` reads a
YAML file, applies `key.sub=value` overrides and converts the result, refusing unknown
keys, wrong types and impossible values with a message that names the dotted key at fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clup.config.cluster_labeler import ClusterLabelerConfig
from clup.config.data import DatasetConfig
from clup.config.finetune import FinetuneConfig
from clup.config.loader import check_folder_name, check_keys, from_dict, load
from clup.config.model import BackboneConfig, PreprocessingConfig
from clup.config.runtime import RuntimeConfig, WandbConfig
from clup.config.sfda import SFDA_METHODS, SFDAConfig
from clup.config.source import SourceConfig
from clup.config.swav import SwAVConfig
from clup.data.classes import CANONICAL_CLASSES
from clup.errors import ConfigError
from clup.slurm.schema import SlurmConfig

METHODS = ("clup", "source_only", *SFDA_METHODS)
"""The `method` values: CluP, the source model alone, and the baselines."""


@dataclass
class ExperimentConfig:
    """One experiment: a source model, a target domain and a method adapting one to the other.

    `method: clup` runs the three CluP stages (instance-level pseudo-labelling is CluP with
    `cluster_labeler.labels: instance` and `score: confidence`); `source_only` evaluates the
    source model; `shot`, `nrc`, `aad` and `tent` are the baselines of baselines.md.
    """

    name: str
    source: SourceConfig
    target: DatasetConfig | None = None
    method: Literal[METHODS] = "clup"
    seed: int = 0
    classes: list[str] = field(default_factory=lambda: list(CANONICAL_CLASSES))
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    cluster_labeler: ClusterLabelerConfig = field(default_factory=ClusterLabelerConfig)
    swav: SwAVConfig = field(default_factory=SwAVConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    sfda: SFDAConfig = field(default_factory=SFDAConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    output_root: str = "lightning_logs"

    def validate(self, key: str = "") -> None:
        check_folder_name(self.name, "name")
        names = [c.strip().lower() for c in self.classes]
        if len(names) < 2 or len(set(names)) != len(names) or not all(names):
            raise ConfigError(f"classes must list at least 2 distinct names, got {self.classes}")
        if self.method in ("shot", "nrc", "aad") and self.source.checkpoint is None \
                and self.source.head != "shot":
            raise ConfigError(f"method {self.method} adapts SHOT's network shape: set "
                              "source.head: shot (a bottleneck and a weight-normalised classifier)")
        k = self.cluster_labeler.num_clusters
        if k < len(self.classes):
            raise ConfigError(
                f"cluster_labeler.num_clusters must be at least the number of classes "
                f"({len(self.classes)}), got {k}"
            )
        # Late: the stage registry reads this schema's values, and is the one list of stages.
        from clup.registry import STAGES

        check_keys(self.slurm.stages, STAGES, "slurm.stages")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.name

    def require_target(self) -> DatasetConfig:
        if self.target is None:
            raise ConfigError(f"experiment {self.name} names no target dataset (key `target`)")
        return self.target


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML (with the files it `extends`), apply overrides, validate."""
    return load(ExperimentConfig, path, overrides)


def experiment_from_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    return from_dict(ExperimentConfig, raw)
