"""M-per-class sampler: batch composition, purity in (seed, step), and even coverage of the data."""

import collections

import numpy as np
import pytest

from jaxdml.data.sampler import MPerClassSampler


def make_labels(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]).astype(np.int32)


def test_batches_hold_classes_per_batch_times_samples_per_class():
    labels = make_labels([10, 7, 12, 9, 8, 11])
    sampler = MPerClassSampler(labels, classes_per_batch=3, samples_per_class=4, seed=1)
    for step in range(20):
        idx = sampler.batch_indices(step)
        assert idx.shape == (12,)
        groups = labels[idx].reshape(3, 4)
        assert (groups == groups[:, :1]).all(), "each group of m indices is one class"
        assert len(set(groups[:, 0])) == 3, "distinct classes"
        for g in idx.reshape(3, 4):
            assert len(set(g)) == 4, "no repeated image while the class has enough"


def test_pure_function_of_seed_and_step():
    labels = make_labels([5] * 8)
    a = MPerClassSampler(labels, 4, 2, seed=3)
    b = MPerClassSampler(labels, 4, 2, seed=3)
    c = MPerClassSampler(labels, 4, 2, seed=4)
    for step in (0, 1, 17, 1000):
        np.testing.assert_array_equal(a.batch_indices(step), b.batch_indices(step))
    assert any((a.batch_indices(s) != c.batch_indices(s)).any() for s in range(5))
    # Order of calls does not matter (no hidden state).
    late = a.batch_indices(999)
    a.batch_indices(0)
    np.testing.assert_array_equal(late, a.batch_indices(999))


def test_each_class_once_per_class_epoch():
    labels = make_labels([6] * 12)
    sampler = MPerClassSampler(labels, 4, 2, seed=0)
    assert sampler.steps_per_class_epoch == 3
    for epoch in range(4):
        classes = [labels[sampler.batch_indices(epoch * 3 + s)][::2] for s in range(3)]
        assert sorted(np.concatenate(classes)) == list(range(12))


def test_every_image_seen_before_any_repeats():
    sizes = [9, 6, 12, 8]
    labels = make_labels(sizes)
    sampler = MPerClassSampler(labels, 4, 3, seed=5)  # every step is one class epoch
    seen = collections.defaultdict(list)
    for step in range(4):
        for i in sampler.batch_indices(step):
            seen[labels[i]].append(i)
    for cls, n in enumerate(sizes):
        first = seen[cls][:n]
        assert len(set(first)) == len(first), f"class {cls} repeated an image within its first {n} draws"


def test_small_class_repeats_images():
    labels = make_labels([2, 8, 8])
    sampler = MPerClassSampler(labels, 3, 4, seed=0)
    idx = sampler.batch_indices(0)
    small = idx[labels[idx] == 0]
    assert len(small) == 4 and set(small) == {0, 1}


def test_errors_are_explained():
    with pytest.raises(ValueError, match="exceeds the 3 classes"):
        MPerClassSampler(make_labels([4, 4, 4]), 4, 2)
    with pytest.raises(ValueError, match="contiguous"):
        MPerClassSampler(np.array([0, 0, 2, 2]), 1, 2)
