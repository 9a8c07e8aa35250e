"""Albumentations pipelines: evaluation, supervised training and SwAV multi-crop."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from clup.config import PreprocessingConfig, SwAVConfig


def _to_tensor(pre: PreprocessingConfig) -> list[A.BasicTransform]:
    return [A.Normalize(mean=pre.mean, std=pre.std, max_pixel_value=255.0), ToTensorV2()]


def eval_transform(pre: PreprocessingConfig) -> A.Compose:
    """No augmentation: stage 1 predictions and every evaluation use this."""
    size = pre.image_size
    return A.Compose([A.Resize(size, size), *_to_tensor(pre)])


def _flip(flip: bool) -> list[A.BasicTransform]:
    return [A.HorizontalFlip()] if flip else []


def train_transform(pre: PreprocessingConfig, color_jitter: float = 0.0, flip: bool = True,
                    kind: str = "standard") -> A.Compose:
    """Label-preserving augmentation for supervised training; `flip`: mirror half the images
    (`DatasetConfig.horizontal_flip`).

    `standard` is mild and deliberately generic (crop, flip, the usual brightness/contrast/
    saturation jitter): a source recipe that imitated the target's nuisances (greyscale,
    blur, noise) would no longer be source-free in spirit. `reference` is the CluP release's
    stage-3 augmentation (`FinetuneConfig.augmentation`), in its order: flip, affine, jitter,
    resize (altndrr/clup src/data/image.py:78-101).
    """
    size = pre.image_size
    if kind == "reference":
        return A.Compose([
            *_flip(flip),
            # torchvision's RandomAffine(35, translate=(0.15, 0.15)): uniform angle and shift.
            A.Affine(rotate=(-35, 35), translate_percent={"x": (-0.15, 0.15), "y": (-0.15, 0.15)},
                     border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
            A.ColorJitter(brightness=(0.5, 1.5), contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                          hue=(-0.5, 0.5), p=1.0),
            A.Resize(size, size),
            *_to_tensor(pre),
        ])
    if kind != "standard":
        raise ValueError(f"augmentation must be standard or reference, got {kind!r}")
    return A.Compose(
        [
            A.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
            *_flip(flip),
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                          saturation=color_jitter, hue=0.0, p=0.8 if color_jitter else 0.0),
            *_to_tensor(pre),
        ]
    )


class MultiCrop:
    """SwAV multi-crop (Caron et al., 2020): global crops first, then local crops."""

    def __init__(self, pre: PreprocessingConfig, swav: SwAVConfig, flip: bool = True) -> None:
        self.global_crop = self._crop(pre, pre.image_size, swav.global_crop_scale, 0.5, flip)
        self.local_crop = self._crop(pre, swav.local_crop_size, swav.local_crop_scale, 0.1, flip)
        self.n_global = swav.n_global_crops
        self.n_local = swav.n_local_crops

    @staticmethod
    def _crop(pre: PreprocessingConfig, size: int, scale: list[float], blur: float,
              flip: bool) -> A.Compose:
        return A.Compose(
            [
                A.RandomResizedCrop(size=(size, size), scale=tuple(scale)),
                *_flip(flip),
                A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
                A.ToGray(p=0.2),
                A.GaussianBlur(blur_limit=(3, 5), p=blur),
                *_to_tensor(pre),
            ]
        )

    def set_random_seed(self, seed: int) -> None:
        self.global_crop.set_random_seed(seed)
        self.local_crop.set_random_seed(seed + 1)

    def __call__(self, image: np.ndarray) -> list[torch.Tensor]:
        views = [self.global_crop(image=image)["image"] for _ in range(self.n_global)]
        views += [self.local_crop(image=image)["image"] for _ in range(self.n_local)]
        return views
