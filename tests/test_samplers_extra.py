"""One-per-class and hierarchical samplers: batch composition, purity in (seed, step), coverage, clear errors."""

import collections

import numpy as np
import pytest

from jaxdml.data.sampler import HierarchicalSampler, OnePerClassSampler


def make_labels(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]).astype(np.int32)


# --------------------------------------------------------------------------------------------- one per class


def test_one_per_class_batches_hold_distinct_classes():
    labels = make_labels([3, 1, 5, 2, 4, 6, 2, 3, 1, 7, 2])
    sampler = OnePerClassSampler(labels, batch_size=4, seed=0)
    assert sampler.steps_per_class_epoch == 3
    for step in range(12):
        idx = sampler.batch_indices(step)
        assert idx.shape == (4,) and idx.dtype == np.int64
        assert len(set(labels[idx])) == 4


@pytest.mark.parametrize(("num_classes", "batch_size"), [(12, 4), (11, 4), (9, 9), (10, 3)])
def test_one_per_class_covers_every_class_each_class_epoch(num_classes, batch_size):
    labels = make_labels(np.arange(num_classes) % 4 + 1)
    sampler = OnePerClassSampler(labels, batch_size, seed=2)
    steps = sampler.steps_per_class_epoch
    for epoch in range(3):
        classes = np.concatenate([labels[sampler.batch_indices(epoch * steps + s)] for s in range(steps)])
        counts = np.bincount(classes, minlength=num_classes)
        assert (counts >= 1).all(), "a class was missed in a class epoch"
        assert counts.sum() - num_classes == steps * batch_size - num_classes  # only the fill-up repeats
        assert counts.max() <= 2


def test_one_per_class_walks_through_each_class_images():
    sizes = [3, 5, 2, 4]
    labels = make_labels(sizes)
    sampler = OnePerClassSampler(labels, batch_size=2, seed=1)  # 2 steps per class epoch, no fill-up
    seen = collections.defaultdict(list)
    for step in range(2 * max(sizes)):
        for i in sampler.batch_indices(step):
            seen[labels[i]].append(i)
    for cls, n in enumerate(sizes):
        assert sorted(seen[cls][:n]) == list(np.flatnonzero(labels == cls)), f"class {cls} repeated too early"


def test_one_per_class_is_a_pure_function_of_seed_and_step():
    labels = make_labels([2] * 10)
    a, b, c = (OnePerClassSampler(labels, 3, seed=s) for s in (5, 5, 6))
    late = a.batch_indices(500)
    for step in (0, 1, 3, 4, 77):
        np.testing.assert_array_equal(a.batch_indices(step), b.batch_indices(step))
    np.testing.assert_array_equal(late, b.batch_indices(500))
    assert any((a.batch_indices(s) != c.batch_indices(s)).any() for s in range(5))


def test_one_per_class_errors_are_explained():
    with pytest.raises(ValueError, match=r"batch_size=5 exceeds the 4 classes.*train\.batch_size to at most 4"):
        OnePerClassSampler(make_labels([2, 2, 2, 2]), 5)
    with pytest.raises(ValueError, match="contiguous"):
        OnePerClassSampler(np.array([0, 0, 2, 2]), 1)
    with pytest.raises(ValueError, match="step must be >= 0"):
        OnePerClassSampler(make_labels([2, 2]), 2).batch_indices(-1)


# ---------------------------------------------------------------------------------------------- hierarchical


def hierarchy(classes_per_super, images=(3, 6), seed=0):
    """labels, super_labels: super-class s has classes_per_super[s] classes of 3..6 images, records shuffled."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(images[0], images[1] + 1, size=sum(classes_per_super))
    labels = make_labels(sizes)
    super_of_class = np.repeat(np.arange(len(classes_per_super)), classes_per_super)
    order = rng.permutation(len(labels))  # records of a class need not be contiguous
    return labels[order], (10 + super_of_class[labels])[order]  # super ids need not start at 0


def check_composition(batch, labels, super_labels, batch_size, m, k, grouped):
    """PML's HierarchicalSampler composition: k distinct super-classes sharing the batch equally, each share made
    of distinct classes of that super-class with m images each (no image twice while a class has m).
    ``grouped``: additionally in our order (super-class blocks, class blocks)."""
    batch = np.asarray(batch)
    assert batch.shape == (batch_size,)
    supers = collections.Counter(super_labels[batch].tolist())
    assert len(supers) == k and set(supers.values()) == {batch_size // k}
    per_class = collections.defaultdict(list)
    for i in batch:
        per_class[labels[i]].append(i)
    for cls, items in per_class.items():
        assert len(items) == m, f"class {cls} has {len(items)} images, not {m}"
        if (labels == cls).sum() >= m:
            assert len(set(items)) == m
    if grouped:
        blocks = super_labels[batch].reshape(k, -1)
        assert (blocks == blocks[:, :1]).all()
        classes = labels[batch].reshape(-1, m)
        assert (classes == classes[:, :1]).all()


@pytest.mark.parametrize(("batch_size", "m", "k"), [(24, 4, 2), (24, 2, 3), (12, 3, 4), (16, 8, 2)])
def test_hierarchical_composition_is_pmls(batch_size, m, k):
    from pytorch_metric_learning.samplers import HierarchicalSampler as PMLHierarchicalSampler

    labels, super_labels = hierarchy([6, 8, 5, 7, 9])
    sampler = HierarchicalSampler(labels, super_labels, batch_size, m, k, seed=0)
    for step in range(15):
        check_composition(sampler.batch_indices(step), labels, super_labels, batch_size, m, k, grouped=True)
    # The same rules hold for PML's batches (its order is shuffled).
    pml = PMLHierarchicalSampler(np.stack([labels, super_labels], axis=1), batch_size, m, batches_per_super_tuple=1,
                                 super_classes_per_batch=k)
    for batch in list(pml)[:15]:
        check_composition(batch, labels, super_labels, batch_size, m, k, grouped=False)


def test_hierarchical_small_class_repeats_images():
    labels, super_labels = hierarchy([3, 3], images=(1, 2))
    sampler = HierarchicalSampler(labels, super_labels, batch_size=12, samples_per_class=3, seed=0)
    for step in range(4):
        idx = sampler.batch_indices(step)
        check_composition(idx, labels, super_labels, 12, 3, 2, grouped=True)
        assert len(set(idx)) < 12


def test_hierarchical_covers_super_classes_classes_and_images():
    classes_per_super = [4, 6, 8, 4]
    labels, super_labels = hierarchy(classes_per_super, seed=3)
    sampler = HierarchicalSampler(labels, super_labels, batch_size=8, samples_per_class=2, seed=1)
    assert (sampler.classes_per_super_class, sampler.steps_per_super_epoch) == (2, 2)
    # Each super epoch uses every super-class exactly once.
    for epoch in range(6):
        used = [super_labels[sampler.batch_indices(epoch * 2 + s)][0::4] for s in range(2)]
        assert sorted(np.concatenate(used)) == [10, 11, 12, 13]
    # A super-class with n classes shows all of them, once each, in n / 2 super epochs.
    seen = collections.defaultdict(list)
    images = collections.defaultdict(list)
    for step in range(2 * 8):
        idx = sampler.batch_indices(step)
        for i in idx[0::2]:
            seen[super_labels[i]].append(labels[i])
        for i in idx:
            images[labels[i]].append(i)
    for s, n in enumerate(classes_per_super):
        first = seen[10 + s][:n]
        assert len(set(first)) == n, f"super-class {10 + s} repeated a class before showing all {n}"
    # Each class walks through its images before repeating one.
    for cls, items in images.items():
        n = (labels == cls).sum()
        assert len(set(items[:n])) == min(n, len(items))


def test_hierarchical_is_a_pure_function_of_seed_and_step():
    labels, super_labels = hierarchy([5, 5, 5])
    a, b, c = (HierarchicalSampler(labels, super_labels, 12, 3, 2, seed=s) for s in (4, 4, 5))
    late = a.batch_indices(321)
    for step in (0, 1, 2, 9, 50):
        np.testing.assert_array_equal(a.batch_indices(step), b.batch_indices(step))
    np.testing.assert_array_equal(late, b.batch_indices(321))
    assert any((a.batch_indices(s) != c.batch_indices(s)).any() for s in range(5))


def test_hierarchical_errors_name_the_config_keys():
    labels, super_labels = hierarchy([4, 6, 3])
    make = lambda **kw: HierarchicalSampler(labels, super_labels, **{
        "batch_size": 12, "samples_per_class": 2, "super_classes_per_batch": 2, **kw})
    make()
    with pytest.raises(ValueError, match=r"train\.batch_size=13 is not divisible by data\.super_classes_per_batch=2"):
        make(batch_size=13)
    with pytest.raises(ValueError, match=r"= 6 is not divisible by data\.samples_per_class=4.*train\.batch_size=8"):
        make(samples_per_class=4)
    with pytest.raises(ValueError, match=r"data\.super_classes_per_batch=4 exceeds the 3 super-classes"):
        make(super_classes_per_batch=4, batch_size=16)
    with pytest.raises(ValueError, match=r"= 4 distinct classes.*super-classes 12 \(3 classes\).*train\.batch_size"):
        make(batch_size=16)
    with pytest.raises(ValueError, match="must be positive"):
        make(samples_per_class=0)
    mixed = super_labels.copy()
    mixed[np.flatnonzero(labels == 0)[0]] = 11
    with pytest.raises(ValueError, match=r"class 0 has records in super-classes \[10, 11\]"):
        HierarchicalSampler(labels, mixed, 12, 2)
    with pytest.raises(ValueError, match="one entry per record"):
        HierarchicalSampler(labels, super_labels[:-1], 12, 2)
