"""SwAV multi-crop on whole batches, on the training device.

The per-image albumentations pipeline (`transforms.MultiCrop`) costs about a millisecond of
Python per image for four crops, as much as a small CNN's training step on the CPU, and on a
GPU it is the loader that limits SwAV. Here the loader only decodes and resizes each image
to one size (`BatchInput`); `BatchMultiCrop` then draws every
crop's parameters for the whole batch at once and applies them with a few tensor
operations, in the same family and ranges as `transforms.MultiCrop` (SwAV's recipe, Caron et
al., NeurIPS 2020):

- random resized crop (torchvision's sampling: area fraction in `scale`, log-uniform aspect
  ratio in [3/4, 4/3], ten tries then a centre crop), bilinear resampling through
  `affine_grid`/`grid_sample`, horizontal flip with probability 1/2;
- colour jitter with probability 0.8 (brightness, contrast and saturation factors in
  [0.6, 1.4], hue shift in [-0.1, 0.1] of a turn, as a rotation about the grey axis);
  applied in that fixed order, where albumentations shuffles the order per image;
- greyscale with probability 0.2 (ITU-R 601 weights);
- Gaussian blur with a kernel of 3 or 5 taps and sigma in [0.5, 3.0] (albumentations'
  defaults), with probability 0.5 for global and 0.1 for local crops, mirrored borders;
- then the preprocessing's normalisation.

The crops are cut from the image at `swav.crop_source_size` (by default the prepared size of
the FER datasets, the model's input size for other data).
Random numbers come from torch's generator of the batch's device, seeded per run by
`seed_everything`.
"""

from __future__ import annotations

import math

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F

from clup.config import PreprocessingConfig, SwAVConfig

RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
JITTER = 0.4
HUE = 0.1
JITTER_P = 0.8
GREY_P = 0.2
BLUR_SIGMA = (0.5, 3.0)
GREY_WEIGHTS = (0.299, 0.587, 0.114)


class BatchInput:
    """What the loader does per image before `BatchMultiCrop`: resize to `size` (the side
    the crops are cut from) and make a uint8 CHW tensor (augmentation and normalisation
    happen on the batch)."""

    def __init__(self, size: int) -> None:
        self.resize = A.Resize(size, size)

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        resized = self.resize(image=image)["image"]
        return {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))}


class BatchMultiCrop:
    """SwAV's global then local crops of a uint8 batch [B, 3, H, W], normalised float."""

    def __init__(self, pre: PreprocessingConfig, swav: SwAVConfig, flip: bool = True) -> None:
        self.flip = flip
        self.crops = ([(pre.image_size, tuple(swav.global_crop_scale), 0.5)]
                      * swav.n_global_crops
                      + [(swav.local_crop_size, tuple(swav.local_crop_scale), 0.1)]
                      * swav.n_local_crops)
        self.mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 batch [B, 3, H, W], got {images.dtype} "
                             f"{tuple(images.shape)}")
        x = images.float().div_(255)
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        views = []
        for size, scale, blur_p in self.crops:
            view = resized_crops(x, size, scale, self.flip)
            view = color_jitter(view, JITTER_P)
            view = random_grey(view, GREY_P)
            view = gaussian_blur(view, blur_p)
            views.append((view - mean) / std)
        return views


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


def crop_boxes(n: int, height: int, width: int, scale: tuple[float, float],
               device: torch.device) -> torch.Tensor:
    """[n, 4] boxes (top, left, h, w) in pixels, sampled as torchvision's RandomResizedCrop."""
    area = height * width
    target = area * _uniform(n * CROP_TRIES, *scale, device).view(n, CROP_TRIES)
    log_ratio = _uniform(n * CROP_TRIES, math.log(RATIO[0]), math.log(RATIO[1]), device)
    aspect = log_ratio.exp().view(n, CROP_TRIES)
    w = (target * aspect).sqrt().round()
    h = (target / aspect).sqrt().round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # No try fitted: torchvision's fallback, the largest centred crop of a ratio in range.
    fallback = ~fits.any(dim=1)
    in_ratio = min(max(width / height, RATIO[0]), RATIO[1])
    fw = float(width) if width / height <= RATIO[1] else float(round(height * in_ratio))
    fh = float(height) if width / height >= RATIO[0] else float(round(width / in_ratio))
    w = torch.where(fallback, torch.full_like(w, fw), w)
    h = torch.where(fallback, torch.full_like(h, fh), h)
    top = (torch.rand(n, device=device) * (height - h + 1)).floor()
    left = (torch.rand(n, device=device) * (width - w + 1)).floor()
    top = torch.where(fallback, ((height - h) / 2).round(), top)
    left = torch.where(fallback, ((width - w) / 2).round(), left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(x: torch.Tensor, size: int, scale: tuple[float, float], flip: bool = True
                  ) -> torch.Tensor:
    """A random resized crop of each image, flipped horizontally with probability 1/2 when
    `flip`."""
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, scale, x.device)
    mirror = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0)
    return crop_and_resize(x, boxes, mirror if flip else torch.ones_like(mirror), size)


def crop_and_resize(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor, size: int
                    ) -> torch.Tensor:
    """Each image's box (top, left, h, w) resampled bilinearly to `size` x `size`, mirrored
    where `flip` is -1."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = w / width * flip
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GREY_WEIGHTS[0] * r + GREY_WEIGHTS[1] * g + GREY_WEIGHTS[2] * b).unsqueeze(1)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.view(-1, 1, 1, 1)


def color_jitter(x: torch.Tensor, p: float, strength: float = JITTER, hue: float = HUE
                 ) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter of a random `p` of the images."""
    n, device = len(x), x.device
    on = torch.rand(n, device=device) < p

    def factor(low: float, high: float, identity: float) -> torch.Tensor:
        return _per_image(torch.where(on, _uniform(n, low, high, device),
                                      torch.full((n,), identity, device=device)))

    x = (x * factor(1 - strength, 1 + strength, 1.0)).clamp_(0, 1)
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * factor(1 - strength, 1 + strength, 1.0) + mean).clamp_(0, 1)
    grey = _grey(x)
    x = ((x - grey) * factor(1 - strength, 1 + strength, 1.0) + grey).clamp_(0, 1)
    return hue_rotation(x, factor(-hue, hue, 0.0).view(n)).clamp_(0, 1)


def hue_rotation(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image's colours about the grey axis by `turns` of a full turn."""
    angle = 2 * math.pi * turns
    cos, sin = angle.cos(), angle.sin()
    third, root = 1 / 3, math.sqrt(1 / 3)
    # Rodrigues' rotation about the unit vector (1, 1, 1) / sqrt(3).
    eye = torch.eye(3, device=x.device)
    ones = torch.full((3, 3), third, device=x.device)
    cross = torch.tensor([[0.0, -1, 1], [1, 0, -1], [-1, 1, 0]], device=x.device) * root
    matrix = (cos.view(-1, 1, 1) * eye + (1 - cos).view(-1, 1, 1) * ones
              + sin.view(-1, 1, 1) * cross)
    return torch.einsum("nij,njhw->nihw", matrix, x)


def random_grey(x: torch.Tensor, p: float) -> torch.Tensor:
    on = _per_image(torch.rand(len(x), device=x.device) < p)
    return torch.where(on, _grey(x).expand_as(x), x)


def gaussian_kernels(sigma: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """[n, 5] normalised 1-D Gaussian kernels; a 3-tap kernel has zero outer taps."""
    offsets = torch.arange(-2, 3, device=sigma.device, dtype=sigma.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = kernel * ((offsets.abs() <= (taps.view(-1, 1) - 1) / 2).to(kernel.dtype))
    return kernel / kernel.sum(dim=1, keepdim=True)


def gaussian_blur(x: torch.Tensor, p: float) -> torch.Tensor:
    """Blur a random `p` of the images, each with its own kernel size and sigma."""
    n, channels, height, width = x.shape
    device = x.device
    on = torch.rand(n, device=device) < p
    if not on.any():
        return x
    sigma = _uniform(n, *BLUR_SIGMA, device)
    taps = torch.where(torch.rand(n, device=device) < 0.5, 3.0, 5.0)
    kernel = gaussian_kernels(sigma, taps)
    identity = torch.tensor([0.0, 0, 1, 0, 0], device=device)
    kernel = torch.where(on.view(-1, 1), kernel, identity).repeat_interleave(channels, dim=0)
    flat = x.reshape(1, n * channels, height, width)
    flat = F.conv2d(F.pad(flat, (2, 2, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, 5),
                    groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, 2, 2), mode="reflect"), kernel.view(-1, 1, 5, 1),
                    groups=n * channels)
    return flat.view(n, channels, height, width)
