"""The training augmentations: the flip switch of a domain, stage 3's reference preset."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from clup.config import DatasetConfig, PreprocessingConfig, SwAVConfig
from clup.data.datamodule import DomainDataModule
from clup.data.transforms import MultiCrop, train_transform

PRE = PreprocessingConfig(image_size=32)


def kinds(compose: A.Compose) -> list[str]:
    return [type(t).__name__ for t in compose.transforms]


def test_flip_can_be_switched_off_for_every_training_view() -> None:
    assert "HorizontalFlip" in kinds(train_transform(PRE))
    for kind in ("standard", "reference"):
        assert "HorizontalFlip" not in kinds(train_transform(PRE, flip=False, kind=kind))
    crops = MultiCrop(PRE, SwAVConfig(), flip=False)
    assert "HorizontalFlip" not in kinds(crops.global_crop) + kinds(crops.local_crop)


def test_a_domain_that_must_not_be_mirrored_reaches_the_loaders_without_flip() -> None:
    digits = DatasetConfig(kind="digits", path="unused", domain="uci", horizontal_flip=False)
    module = DomainDataModule(digits, ["0", "1"], PRE, train_views="pseudo_labels",
                              augmentation="reference")
    assert "HorizontalFlip" not in kinds(module._train_transform())
    batched = DomainDataModule(digits, ["0", "1"], PRE, train_views="multicrop",
                               swav=SwAVConfig(multicrop="batched"))
    assert batched._multicrop is not None and not batched._multicrop.flip


def test_the_reference_stage3_augmentation_rotates_shifts_and_jitters_strongly() -> None:
    compose = train_transform(PRE, kind="reference")
    assert kinds(compose)[:4] == ["HorizontalFlip", "Affine", "ColorJitter", "Resize"]
    jitter = compose.transforms[2]
    assert jitter.hue == (-0.5, 0.5) and jitter.brightness == (0.5, 1.5)
    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    out = compose(image=image)["image"]
    assert tuple(out.shape) == (3, 32, 32)
    with pytest.raises(ValueError, match="standard or reference"):
        train_transform(PRE, kind="strong")
