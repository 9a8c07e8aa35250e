"""The `sfda` section: the source-free baselines CluP is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from clup.config.loader import check_non_negative, check_positive
from clup.preset_table import PRESETS, TABLE

SFDA_METHODS = tuple(TABLE)
"""The `method` values that adapt the source model by a baseline (clup/stages/sfda_adapter.py):
those with official settings in the preset table, which every baseline has."""


@dataclass
class SFDAConfig:
    """The source-free baselines of baselines.md (`method: shot | nrc | aad | tent`).

    `preset`: the official setup the settings left unset come from (`digits`, `office31`,
    `office-home`, `visda`; `auto`: by the target's train size), per method
    (clup/preset_table.py, docs/methods.md); a value set here wins over the preset's.
    SHOT, NRC and AaD: SGD with momentum and Nesterov, the bottleneck and classifier at `lr`
    and the backbone at `backbone_lr_scale` of it, with SHOT's per-step decay
    `lr * (1 + 10 p)^-0.75` when `lr_decay`. `augment`: the training augmentation on the
    target images (false: as evaluated). `beta`: SHOT's pseudo-label weight, from epoch
    `pseudo_label_from_epoch` on. `k`, `kk`: NRC's and AaD's neighbours, `k_late`,
    `kk_late` from half of the training on (0: no switch). `alpha0`, `alpha_decay`: AaD's
    dispersion weight `alpha0 (1 + 10 p)^-alpha_decay` (0: constant). `tent_lr`: Tent's
    Adam rate. `tent_variant`: `published`, Tent's code (BatchNorm2d only, batch statistics
    at test time too, one pass whatever `epochs`), or `epochs`, every BatchNorm for `epochs`
    epochs, evaluated with running statistics (clup/stages/sfda_adapter.py).
    """

    preset: Literal[("auto", *PRESETS)] = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    backbone_lr_scale: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_decay: bool | None = None
    augment: bool | None = None
    beta: float | None = None
    pseudo_label_from_epoch: int | None = None
    k: int | None = None
    kk: int | None = None
    k_late: int | None = None
    kk_late: int | None = None
    alpha0: float | None = None
    alpha_decay: float | None = None
    tent_lr: float | None = None
    tent_variant: Literal["published", "epochs"] = "published"

    def validate(self, key: str) -> None:
        for name in ("epochs", "batch_size", "lr", "k", "kk", "tent_lr"):
            if getattr(self, name) is not None:
                check_positive(getattr(self, name), f"{key}.{name}")
        for name in ("backbone_lr_scale", "momentum", "weight_decay", "beta",
                     "pseudo_label_from_epoch", "k_late", "kk_late", "alpha0", "alpha_decay"):
            if getattr(self, name) is not None:
                check_non_negative(getattr(self, name), f"{key}.{name}")
