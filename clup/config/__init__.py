"""Experiment configuration: one YAML file per experiment, typed and validated.

`loader` reads typed YAML and knows nothing of clup; `experiment` is the schema's root,
with a module per section (`data`, `model`, `source`, `cluster_labeler`, `swav`,
`finetune`, `sfda`, `runtime`; `slurm` is `clup.slurm.schema`). The names below are the
ones the rest of clup imports from here.
"""

from clup.config.cluster_labeler import ClusterLabelerConfig
from clup.config.data import DatasetConfig
from clup.config.experiment import ExperimentConfig, experiment_from_dict, load_experiment
from clup.config.finetune import FinetuneConfig
from clup.config.loader import config_to_dict, dump_yaml, from_dict
from clup.config.model import BackboneConfig, PreprocessingConfig
from clup.config.optimizer import OptimizerConfig
from clup.config.runtime import PRECISIONS, RuntimeConfig, WandbConfig
from clup.config.sfda import SFDA_METHODS, SFDAConfig
from clup.config.source import HEADS, SourceConfig
from clup.config.swav import SwAVConfig
from clup.data.classes import CANONICAL_CLASSES
from clup.slurm.schema import SlurmConfig, SlurmStageConfig

__all__ = [
    "CANONICAL_CLASSES",
    "HEADS",
    "PRECISIONS",
    "SFDA_METHODS",
    "BackboneConfig",
    "ClusterLabelerConfig",
    "DatasetConfig",
    "ExperimentConfig",
    "FinetuneConfig",
    "OptimizerConfig",
    "PreprocessingConfig",
    "RuntimeConfig",
    "SFDAConfig",
    "SlurmConfig",
    "SlurmStageConfig",
    "SourceConfig",
    "SwAVConfig",
    "WandbConfig",
    "config_to_dict",
    "dump_yaml",
    "experiment_from_dict",
    "from_dict",
    "load_experiment",
]
