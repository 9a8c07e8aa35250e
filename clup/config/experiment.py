"""Experiment configuration: one YAML file per experiment, typed and validated.

The schema is a tree of dataclasses, one module per section. `load_experiment` reads a
YAML file, applies `key.sub=value` overrides and converts the result, refusing unknown
keys, wrong types and impossible values with a message that names the dotted key at fault.
"""

from __future__ import annotations

import copy
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

CLUP_METHODS = ("clup", "clup_plus")
"""The methods that run CluP's stages: the faithful reference, and this project's recipe."""
METHODS = (*CLUP_METHODS, "source_only", *SFDA_METHODS)
"""The `method` values: CluP, CluP+, the source model alone, and the baselines."""


@dataclass
class ExperimentConfig:
    """One experiment: a source model, a target domain and a method adapting one to the other.

    `method: clup` runs the three CluP stages (instance-level pseudo-labelling is CluP with
    `cluster_labeler.labels: instance` and `score: confidence`); `clup_plus` runs them with
    the switches of clup/recipes.py's `CLUP_PLUS` as its defaults (what the experiment sets
    itself wins); `source_only` evaluates the source model; `shot`, `nrc`, `aad` and
    `tent` are the baselines of baselines.md.
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

    @staticmethod
    def defaults_for(raw: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults `raw`'s method sets in other sections: CluP+'s recipe."""
        from clup.recipes import RECIPES  # late: it cites the grids, it needs no schema

        method = raw.get("method")
        return copy.deepcopy(RECIPES.get(method, {})) if isinstance(method, str) else {}

    @property
    def runs_clup(self) -> bool:
        """Whether it runs CluP's stages (`clup` or `clup_plus`)."""
        return self.method in CLUP_METHODS

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
        if self.cluster_labeler.features == "swav" and not self.runs_clup:
            raise ConfigError(
                f"cluster_labeler.features: swav clusters stage 2's SwAV features, which only "
                f"methods clup and clup_plus train; method {self.method} has none. Set "
                "cluster_labeler.features: source_model")
        if self.finetune.rounds > 1:
            self._check_self_training()
        # Late: the stage registry reads this schema's values, and is the one list of stages.
        from clup.registry import STAGES

        check_keys(self.slurm.stages, STAGES, "slurm.stages")

    def _check_self_training(self) -> None:
        """Stage 3's later rounds grow stage 1's selection ratio (`finetune.rounds`)."""
        first, final = self.cluster_labeler.selection_ratio, self.finetune.final_selection_ratio
        if final < first:
            raise ConfigError(
                f"finetune.final_selection_ratio ({final}) must be at least "
                f"cluster_labeler.selection_ratio ({first}): with finetune.rounds > 1 the "
                "selected share grows from one to the other")
        if self.cluster_labeler.purity_threshold is not None:
            raise ConfigError(
                "finetune.rounds > 1 grows cluster_labeler.selection_ratio, which "
                "cluster_labeler.purity_threshold replaces; set the threshold to null or "
                "finetune.rounds: 1")

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
