"""Image transforms: crop boxes obey the area/aspect ranges; eval resize + centre crop is exact."""

import math

import numpy as np
import pytest

from jaxdml.data import transforms


def test_random_resized_crop_box_respects_ranges():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = transforms.random_resized_crop_box(300, 400, rng, (0.16, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        areas.append(h * w / (300 * 400))
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    # Rounding to whole pixels moves the bounds by < 1 %.
    assert areas.min() > 0.16 * 0.97 and areas.max() <= 1.0
    assert ratios.min() > 0.75 * 0.98 and ratios.max() < 4 / 3 * 1.02
    assert areas.min() < 0.2 and areas.max() > 0.95  # the whole range is used
    assert ratios.min() < 0.8 and ratios.max() > 1.25


def test_random_resized_crop_falls_back_to_centre_crop():
    rng = np.random.default_rng(0)
    # A 10x100 strip can never hold a crop of aspect <= 4/3 with that area: centre crop of max aspect.
    top, left, h, w = transforms.random_resized_crop_box(10, 100, rng, (0.9, 1.0), (3 / 4, 4 / 3))
    assert (h, w) == (10, round(10 * 4 / 3))
    assert (top, left) == (0, (100 - w) // 2)


def test_train_transform_shape_dtype_and_flip():
    rng = np.random.default_rng(1)
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :15] = 255  # left half white
    flipped = 0
    for _ in range(200):
        out = transforms.train_transform(image, rng, size=16, area=(1.0, 1.0), aspect=(1.5, 1.5), flip=True)
        assert out.shape == (16, 16, 3) and out.dtype == np.uint8
        flipped += out[:, 0].mean() < out[:, -1].mean()
    assert 70 < flipped < 130


def test_eval_transform_resizes_shorter_side_and_takes_the_centre():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255  # a centred square
    out = transforms.eval_transform(image, resize_size=50, size=40)
    assert out.shape == (40, 40, 3)
    # Resized to 50x100: the square is at rows 20..30, cols 45..55; the crop starts at (5, 30).
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (15, 24, 15, 24)
    assert math.isclose(out[..., 0].mean(), 255 * 100 / 1600, rel_tol=0.15)


def test_eval_transform_rejects_crop_larger_than_resize():
    with pytest.raises(ValueError, match=r"smaller than data\.image_size"):
        transforms.eval_transform(np.zeros((8, 8, 3), np.uint8), resize_size=8, size=16)
