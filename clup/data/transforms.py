"""Albumentations pipelines: evaluation, supervised training and SwAV multi-crop."""

from __future__ import annotations

import albumentations as A
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


def train_transform(pre: PreprocessingConfig, color_jitter: float = 0.0) -> A.Compose:
    """Mild, label-preserving augmentation for supervised training.

    Deliberately generic (flip, crop, the usual brightness/contrast/saturation
    jitter): a source recipe that imitated the target's nuisances (greyscale,
    blur, noise) would no longer be source-free in spirit.
    """
    size = pre.image_size
    return A.Compose(
        [
            A.RandomResizedCrop(size=(size, size), scale=(0.8, 1.0), ratio=(0.9, 1.1)),
            A.HorizontalFlip(),
            A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                          saturation=color_jitter, hue=0.0, p=0.8 if color_jitter else 0.0),
            *_to_tensor(pre),
        ]
    )


class MultiCrop:
    """SwAV multi-crop (Caron et al., 2020): global crops first, then local crops."""

    def __init__(self, pre: PreprocessingConfig, swav: SwAVConfig) -> None:
        self.global_crop = self._crop(pre, pre.image_size, swav.global_crop_scale, blur=0.5)
        self.local_crop = self._crop(pre, swav.local_crop_size, swav.local_crop_scale, blur=0.1)
        self.n_global = swav.n_global_crops
        self.n_local = swav.n_local_crops

    @staticmethod
    def _crop(pre: PreprocessingConfig, size: int, scale: list[float], blur: float) -> A.Compose:
        return A.Compose(
            [
                A.RandomResizedCrop(size=(size, size), scale=tuple(scale)),
                A.HorizontalFlip(),
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
