"""The `swav` section: stage 2, self-supervised pre-training on the target images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clup.config.loader import check_folder_name, check_positive
from clup.config.optimizer import OptimizerConfig
from clup.errors import ConfigError


@dataclass
class SwAVConfig:
    """Stage 2: SwAV with multi-crop (Caron et al., 2020).

    `run_name`: a run folder (under `output_root`) shared by the experiments with the
    same target, so SwAV is trained once per target. Default: the experiment's own.
    `multicrop`: `batched` cuts and alters the crops of a whole batch at once on the
    training device (clup/data/batch_augment.py); `per_image` runs albumentations on each
    image in the loader (clup/data/transforms.py). Same augmentations and ranges; batched
    costs far less (docs/scale.md, "Speed settings"). `crop_source_size`: with `batched`, the side
    the loader resizes each image to before the crops are cut (null: the prepared size
    for AFE, RAF-DB, ExpW and FER2013, so small crops keep the file's detail as the
    per-image path does; `preprocessing.image_size` for other data).
    """

    run_name: str | None = None
    multicrop: Literal["batched", "per_image"] = "batched"
    crop_source_size: int | None = None
    epochs: int = 200
    batch_size: int = 64
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(
            name="sgd", lr=0.06, momentum=0.9, nesterov=False, weight_decay=1e-6, warmup_epochs=10
        )
    )
    n_prototypes: int = 3000
    projection_hidden_dim: int = 2048
    projection_dim: int = 128
    n_global_crops: int = 2
    n_local_crops: int = 6
    local_crop_size: int = 64
    global_crop_scale: list[float] = field(default_factory=lambda: [0.14, 1.0])
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.14])
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    freeze_prototypes_epochs: int = 1
    queue_length: int = 0
    queue_start_epoch: int = 15

    def validate(self, key: str) -> None:
        if self.run_name is not None:
            check_folder_name(self.run_name, f"{key}.run_name")
        for name in ("epochs", "batch_size", "n_prototypes", "projection_hidden_dim",
                     "projection_dim", "local_crop_size"):
            check_positive(getattr(self, name), f"{key}.{name}")
        if self.crop_source_size is not None and self.crop_source_size < 8:
            raise ConfigError(f"{key}.crop_source_size must be null or at least 8, got "
                              f"{self.crop_source_size}")
        if self.n_global_crops < 2:
            raise ConfigError(f"{key}.n_global_crops must be >= 2 for swapped prediction")
        for name in ("global_crop_scale", "local_crop_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1] <= 1:
                raise ConfigError(f"{key}.{name} must be [low, high] with 0 < low <= high <= 1")
        if self.queue_length < 0 or self.queue_length % self.batch_size:
            raise ConfigError(
                f"{key}.queue_length must be 0 or a multiple of {key}.batch_size "
                f"({self.batch_size}), got {self.queue_length}"
            )
