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


class _FixedAngle:
    """An rng whose uniform() returns a chosen angle and whose random() decides the flip."""

    def __init__(self, angle: float, flip_draw: float):
        self.angle, self.flip_draw = angle, flip_draw

    def uniform(self, low, high):
        assert (low, high) == (-20.0, 20.0)
        return self.angle

    def random(self):
        return self.flip_draw


@pytest.mark.parametrize("angle", [-17.3, 0.0, 12.5])
def test_rotation_matches_torchvision_random_rotation(angle):
    torchvision = pytest.importorskip("torchvision")
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as tf

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ours = transforms.rotate_flip_transform(image, _FixedAngle(angle, 0.9), degrees=20.0, flip=True)
    expected = np.asarray(tf.rotate(Image.fromarray(image), angle, interpolation=InterpolationMode.NEAREST))
    np.testing.assert_array_equal(ours, expected)
    assert torchvision.transforms.RandomRotation(20).interpolation == InterpolationMode.NEAREST  # its default
    flipped = transforms.rotate_flip_transform(image, _FixedAngle(angle, 0.1), degrees=20.0, flip=True)
    np.testing.assert_array_equal(flipped, expected[:, ::-1])


def test_pad_crop_is_random_crop_with_zero_padding():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) + 1
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(50):
        out = transforms.pad_crop_transform(image, rng, size=4, padding=1, flip=False)
        assert out.shape == (4, 4, 3)
        padded = np.pad(image, ((1, 1), (1, 1), (0, 0)))
        match = [(t, c) for t in range(3) for c in range(3) if np.array_equal(padded[t:t + 4, c:c + 4], out)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 9  # every offset of the 9 occurs
