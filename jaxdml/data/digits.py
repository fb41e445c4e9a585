"""The embedded default dataset: two-digit numbers written with scikit-learn's bundled handwritten digits.

scikit-learn ships 1,797 real 8x8 handwritten digits (about 180 per digit), so this set needs no download.
Ten classes are too few for metric learning to generalise to unseen classes, so the classes here are the
100 two-digit numbers 00-99: an image is a 16x16 canvas with two real digits side by side. The numbers
are split into 50 training and 50 test classes (a fixed random split, class-disjoint, as CUB and Cars are),
and the digit *images* are split in halves too, so no handwritten digit appears on both sides: what
transfers to the test classes is how to read digits, not memorised strokes.
"""

from __future__ import annotations

import numpy as np

from jaxdml.data.sources import ArraySource

IMAGES_PER_CLASS = 30
SPLIT_SEED = 0


def load_digits_source() -> ArraySource:
    """All 1,797 digits as one source: uint8 (N, 8, 8, 1) images scaled to 0..255, labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return ArraySource("digits", images, digits.target.astype(np.int32))


def split_numbers(seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train numbers, test numbers): a fixed random half of 00-99 each, sorted."""
    order = np.random.default_rng(seed).permutation(100)
    return np.sort(order[:50]), np.sort(order[50:])


def _compose(digits: ArraySource, instances: list[np.ndarray], numbers: np.ndarray, rng: np.random.Generator,
             per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.zeros((len(numbers) * per_class, 16, 16, 1), np.uint8)
    labels = np.repeat(np.arange(len(numbers), dtype=np.int32), per_class)
    for c, number in enumerate(numbers):
        tens, ones = divmod(int(number), 10)
        left = rng.choice(instances[tens], per_class, replace=len(instances[tens]) < per_class)
        right = rng.choice(instances[ones], per_class, replace=len(instances[ones]) < per_class)
        rows = slice(c * per_class, (c + 1) * per_class)
        images[rows, 4:12, 0:8] = digits.images[left]
        images[rows, 4:12, 8:16] = digits.images[right]
    return images, labels


def load_digit_pairs(per_class: int = IMAGES_PER_CLASS, seed: int = SPLIT_SEED
                     ) -> tuple[ArraySource, ArraySource]:
    """(train, test): 50 numbers each, ``per_class`` images per number, disjoint digit images."""
    digits = load_digits_source()
    rng = np.random.default_rng(seed)
    halves = [np.array_split(rng.permutation(np.flatnonzero(digits.labels == d)), 2) for d in range(10)]
    train_numbers, test_numbers = split_numbers(seed)
    train = _compose(digits, [h[0] for h in halves], train_numbers, rng, per_class)
    test = _compose(digits, [h[1] for h in halves], test_numbers, rng, per_class)
    return ArraySource("digit_pairs[train]", *train), ArraySource("digit_pairs[test]", *test)


COLLAGE_TARGET_DIGITS = (0, 1, 2, 3, 4, 5, 6)  # targets are the numbers written with these digits
COLLAGE_DISTRACTOR_DIGITS = (7, 8, 9)  # distractor tiles: numbers written with these, never targets


def load_digit_collage(per_class: int = IMAGES_PER_CLASS, seed: int = SPLIT_SEED
                       ) -> tuple[ArraySource, ArraySource]:
    """(train, test) collages in the spirit of GSP's CIFAR-Collage: 32x32 images of 2x2 tiles.

    One tile, at a random position, shows the target: a two-digit number written with digits 0-6 (49
    numbers, split at random into 25 training and 24 test classes). The other three tiles are distractors:
    numbers written with digits 7-9, which are never targets. Pooling that averages every location (GAP)
    mixes three nuisance tiles into every embedding; pooling that can ignore them should not. Handwriting
    is split between train and test as in :func:`load_digit_pairs`.
    """
    digits = load_digits_source()
    rng = np.random.default_rng(seed + 1)
    halves = [np.array_split(rng.permutation(np.flatnonzero(digits.labels == d)), 2) for d in range(10)]
    targets = np.array([10 * a + b for a in COLLAGE_TARGET_DIGITS for b in COLLAGE_TARGET_DIGITS])
    distractors = np.array([10 * a + b for a in COLLAGE_DISTRACTOR_DIGITS for b in COLLAGE_DISTRACTOR_DIGITS])
    order = rng.permutation(len(targets))
    splits = (np.sort(targets[order[:25]]), np.sort(targets[order[25:]]))
    sources = []
    for half, (name, numbers) in enumerate(zip(("train", "test"), splits)):
        instances = [h[half] for h in halves]
        targets_tiles, labels = _compose(digits, instances, numbers, rng, per_class)  # (M, 16, 16, 1)
        m = len(labels)
        clutter = np.stack([_compose(digits, instances, rng.choice(distractors, m), rng, 1)[0] for _ in range(3)],
                           axis=1)  # (M, 3, 16, 16, 1)
        position = rng.integers(0, 4, m)  # the target's cell in the 2 x 2 grid
        cells = np.arange(4)[None, :]
        from_clutter = np.clip(cells - (cells > position[:, None]), 0, 2)  # cell -> distractor index
        grid = np.where((cells == position[:, None])[..., None, None, None], targets_tiles[:, None],
                        np.take_along_axis(clutter, from_clutter[..., None, None, None], axis=1))
        images = grid.reshape(m, 2, 2, 16, 16, 1).transpose(0, 1, 3, 2, 4, 5).reshape(m, 32, 32, 1)
        sources.append(ArraySource(f"digit_collage[{name}]", images, labels))
    return sources[0], sources[1]


def load_digit_numbers(train_per_class: int = 30, test_per_class: int = 10, seed: int = SPLIT_SEED
                       ) -> tuple[ArraySource, ArraySource]:
    """(train, test) for *classification*: all 100 numbers 00-99 in both, label = the number, written with
    disjoint halves of the handwritten digits (the test set reads unseen handwriting of the same classes)."""
    digits = load_digits_source()
    rng = np.random.default_rng(seed)
    halves = [np.array_split(rng.permutation(np.flatnonzero(digits.labels == d)), 2) for d in range(10)]
    numbers = np.arange(100)
    train = _compose(digits, [h[0] for h in halves], numbers, rng, train_per_class)
    test = _compose(digits, [h[1] for h in halves], numbers, rng, test_per_class)
    return ArraySource("digit_numbers[train]", *train), ArraySource("digit_numbers[test]", *test)
