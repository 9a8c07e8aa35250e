"""SwAV multi-crop on batches: boxes as torchvision samples them, each operation checked."""

from __future__ import annotations

import math

import pytest
import torch

from clup.config import PreprocessingConfig, SwAVConfig
from clup.data import batch_augment as B

CPU = torch.device("cpu")


def test_crop_boxes_lie_inside_the_image_with_area_in_scale_and_ratio_in_range() -> None:
    torch.manual_seed(0)
    top, left, h, w = B.crop_boxes(20000, 32, 24, (0.15, 0.4), CPU).unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 32).all() and (left + w <= 24).all()
    area = h * w / (32 * 24)
    # Rounding the sides moves the area a little past the drawn fraction.
    assert area.min() > 0.15 * 0.8 and area.max() < 0.4 * 1.25
    assert 0.2 < area.mean() < 0.33
    ratio = w / h
    assert ratio.min() > 0.75 * 0.8 and ratio.max() < 4 / 3 * 1.25


def test_a_scale_no_box_can_reach_falls_back_to_the_centred_crop() -> None:
    # A 4 x 40 image: a box of at least 90% of its area within ratio [3/4, 4/3] never fits.
    boxes = B.crop_boxes(50, 4, 40, (0.9, 1.0), CPU)
    # 5 = round(4 x 4/3); left = round(35 / 2) = 18, half to even as torchvision rounds.
    assert boxes.tolist() == [[0.0, 18.0, 4.0, 5.0]] * 50


def test_the_whole_image_unflipped_at_its_own_size_comes_back_unchanged() -> None:
    torch.manual_seed(1)
    x = torch.rand(3, 3, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 3)
    same = B.crop_and_resize(x, boxes, torch.ones(3), 8)
    torch.testing.assert_close(same, x)
    flipped = B.crop_and_resize(x, boxes, -torch.ones(3), 8)
    torch.testing.assert_close(flipped, x.flip(-1))
    quarter = B.crop_and_resize(x, torch.tensor([[4.0, 0.0, 4.0, 4.0]] * 3), torch.ones(3), 4)
    torch.testing.assert_close(quarter, x[:, :, 4:, :4])


def test_a_third_of_a_hue_turn_takes_red_to_green_and_keeps_grey() -> None:
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(B.hue_rotation(red, torch.tensor([1 / 3])),
                               torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1))
    grey = torch.full((1, 3, 2, 2), 0.4)
    torch.testing.assert_close(B.hue_rotation(grey, torch.tensor([0.27])), grey)


def test_with_probability_zero_jitter_grey_and_blur_change_nothing() -> None:
    x = torch.rand(4, 3, 6, 6)
    torch.testing.assert_close(B.color_jitter(x, p=0.0), x)
    torch.testing.assert_close(B.random_grey(x, p=0.0), x)
    torch.testing.assert_close(B.gaussian_blur(x, p=0.0), x)
    grey = B.random_grey(x, p=1.0)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])


def test_jitter_changes_brightness_within_its_range() -> None:
    torch.manual_seed(2)
    x = torch.full((2000, 3, 2, 2), 0.5)
    out = B.color_jitter(x, p=1.0)
    # Grey images: contrast, saturation and hue keep them; brightness scales by 0.6..1.4.
    factor = out[:, 0, 0, 0] / 0.5
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert factor.std() > 0.2


def test_gaussian_kernels_sum_to_one_and_three_taps_have_zero_outer_taps() -> None:
    kernels = B.gaussian_kernels(torch.tensor([0.5, 3.0]), torch.tensor([3.0, 5.0]))
    torch.testing.assert_close(kernels.sum(dim=1), torch.ones(2))
    assert kernels[0, 0] == 0 and kernels[0, 4] == 0 and kernels[1, 0] > 0
    expected = torch.exp(torch.tensor([-2.0, -0.0, -2.0]))  # sigma 0.5: exp(-x^2 / 0.5)
    torch.testing.assert_close(kernels[0, 1:4], expected / expected.sum())
    flat = torch.full((5, 3, 7, 7), 0.3)
    torch.testing.assert_close(B.gaussian_blur(flat, p=1.0), flat)  # mirrored borders


def test_multicrop_gives_normalised_global_then_local_views_and_is_seeded() -> None:
    pre = PreprocessingConfig(image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    swav = SwAVConfig(n_global_crops=2, n_local_crops=3, local_crop_size=8)
    crops = B.BatchMultiCrop(pre, swav)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    torch.manual_seed(3)
    views = crops(images)
    assert [tuple(v.shape) for v in views] == [(5, 3, 16, 16)] * 2 + [(5, 3, 8, 8)] * 3
    assert all(v.dtype == torch.float32 for v in views)
    assert min(v.min() for v in views) >= -2 - 1e-5 and max(v.max() for v in views) <= 2 + 1e-5
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(views, crops(images), strict=True))
    with pytest.raises(ValueError, match="uint8 batch"):
        crops(images.float())


def test_batch_input_resizes_to_the_input_size_as_uint8_chw() -> None:
    import numpy as np

    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = B.BatchInput(16)(image=image)["image"]
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 16, 16)
    assert math.isclose(out.float().mean().item(), float(image.mean()), rel_tol=0.05)


def test_batched_crops_are_cut_from_the_prepared_size_of_the_fer_datasets() -> None:
    from clup.config import DatasetConfig
    from clup.data.datamodule import DomainDataModule

    def side(kind: str, **swav: int) -> int:
        return DomainDataModule(DatasetConfig(kind=kind, path="x", prepared_size=160), [],
                                PreprocessingConfig(image_size=64),
                                train_views="multicrop", swav=SwAVConfig(**swav)
                                ).crop_source_size

    assert side("rafdb") == 160  # small local crops keep the file's detail
    assert side("folders") == 64
    assert side("rafdb", crop_source_size=96) == 96


def test_without_flip_whole_image_crops_are_never_mirrored() -> None:
    torch.manual_seed(2)
    x = torch.rand(64, 3, 8, 8)
    asymmetric = x - x.flip(-1)
    assert asymmetric.abs().amax() > 0.1
    kept = B.resized_crops(x, 8, (1.0, 1.0), flip=False)
    torch.testing.assert_close(kept, x)
    mirrored = B.resized_crops(x, 8, (1.0, 1.0), flip=True)
    flipped = [torch.allclose(m, i.flip(-1)) and not torch.allclose(m, i)
               for m, i in zip(mirrored, x, strict=True)]
    assert 10 < sum(flipped) < 54  # about half, each either the image or its mirror
