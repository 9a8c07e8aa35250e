"""The network and its input handling: the settings every checkpoint stores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clup.config.loader import check_positive
from clup.errors import ConfigError
from clup.models.catalogue import BACKBONES, STEMS


@dataclass
class BackboneConfig:
    """The feature extractor; `small_cnn` exists for the CPU demo and tests
    (the names: clup/models/catalogue.py).

    `small_images`: a ResNet-18 stem that keeps the resolution (stride 1, no max-pool), of
    the kind `stem`: `small`, a 3x3 convolution, or `reference`, the CluP release's 7x7
    convolution with padding 2 (altndrr/clup src/models/utils.py:63-64; clup/models/catalogue.py).
    """

    name: Literal[BACKBONES] = "resnet18"
    width: int = 16
    small_images: bool = False
    stem: Literal[tuple(STEMS)] = "small"

    def validate(self, key: str) -> None:
        check_positive(self.width, f"{key}.width")


@dataclass
class PreprocessingConfig:
    """Evaluation-time input handling; stored in every checkpoint."""

    image_size: int = 160
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def validate(self, key: str) -> None:
        check_positive(self.image_size, f"{key}.image_size")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != 3:
                raise ConfigError(f"{key}.{name} must have 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"{key}.std must be positive, got {self.std}")
