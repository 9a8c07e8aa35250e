"""The optimiser section that every trained stage has (`source.optimizer`, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clup.config.loader import check_non_negative, check_positive
from clup.errors import ConfigError


@dataclass
class OptimizerConfig:
    """Optimiser and learning-rate schedule over the stage's epochs.

    `cosine` anneals to zero over the stage; `exponential` multiplies the rate by
    `decay` every epoch (the reference source recipe: 0.99). Both after any warm-up.
    """

    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    schedule: Literal["cosine", "exponential"] = "cosine"
    decay: float = 0.99

    def validate(self, key: str) -> None:
        check_positive(self.lr, f"{key}.lr")
        if not 0 < self.decay <= 1:
            raise ConfigError(f"{key}.decay (per-epoch factor) must be in (0, 1], got {self.decay}")
        check_non_negative(self.weight_decay, f"{key}.weight_decay")
        check_non_negative(self.warmup_epochs, f"{key}.warmup_epochs")
