"""The `source` section: the source model, given or trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clup.config.data import DatasetConfig
from clup.config.loader import check_folder_name, check_fraction, check_positive
from clup.config.model import BackboneConfig, PreprocessingConfig
from clup.config.optimizer import OptimizerConfig
from clup.errors import ConfigError

HEADS = ("linear", "shot")
"""The classifier heads `Classifier` builds (clup/models/checkpoint.py)."""


@dataclass
class SourceConfig:
    """The source model: an existing checkpoint, or how to train one.

    `run_name`: the run folder (under `output_root`) the source model is trained in;
    experiments naming the same one share one model (AFE->ExpW and AFE->FER2013
    train the AFE model once). Default: the experiment's own folder.
    `head`: `linear`, or SHOT's shape (a 256-d bottleneck with BatchNorm, then a
    weight-normalised linear classifier), which SHOT, NRC and AaD adapt.
    `pretrained`: a file of backbone weights to start from (a torchvision ResNet-18
    state dict, or one whose keys carry a prefix such as `module.` or `backbone.`,
    stripped automatically or as given in `pretrained_prefix`).
    """

    checkpoint: str | None = None
    data: DatasetConfig | None = None
    run_name: str | None = None
    pretrained: str | None = None
    pretrained_prefix: str = ""
    head: Literal[HEADS] = "linear"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    epochs: int = 100
    batch_size: int = 64
    label_smoothing: float = 0.1
    color_jitter: float = 0.4
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.01))

    def validate(self, key: str) -> None:
        if self.checkpoint is None and self.data is None:
            raise ConfigError(f"{key}: set either {key}.checkpoint or {key}.data to train one")
        if self.run_name is not None:
            check_folder_name(self.run_name, f"{key}.run_name")
        check_positive(self.epochs, f"{key}.epochs")
        check_positive(self.batch_size, f"{key}.batch_size")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"{key}.label_smoothing must be in [0, 1)")
        check_fraction(self.color_jitter, f"{key}.color_jitter")
