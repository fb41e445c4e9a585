"""Input pipeline: batches are pure functions of (seed, step); corrupt records are named or skipped."""

import dataclasses

import numpy as np
import pytest

from jaxdml.data import pipeline
from jaxdml.data.digits import load_digits_splits
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.data.sources import ArraySource, CorruptRecordError


def make_train_batches(source, **kwargs):
    sampler = MPerClassSampler(source.labels, 2, 3, seed=0)
    return pipeline.TrainBatches(source, sampler, seed=0, image_size=16, crop_area=(0.5, 1.0),
                                 crop_aspect=(0.75, 1.33), flip=True, **kwargs)


def test_digits_are_a_class_disjoint_real_set():
    train, test = load_digits_splits()
    assert len(train) + len(test) == 1797
    assert set(train.original_labels) == {0, 1, 2, 3, 4} and set(test.original_labels) == {5, 6, 7, 8, 9}
    assert train.image(0).shape == (8, 8, 3) and train.image(0).dtype == np.uint8
    assert int(train.image(0).max()) > 200


def test_batches_are_deterministic_and_resumable():
    train, _ = load_digits_splits()
    make = make_train_batches(train)
    full = list(pipeline.iterate(make, 0, 6))
    resumed = list(pipeline.iterate(make, 3, 6))
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    assert full[0]["images"].shape == (6, 16, 16, 3)
    assert not np.array_equal(full[0]["images"], full[1]["images"])


def test_worker_processes_give_the_same_batches():
    train, _ = load_digits_splits()
    make = make_train_batches(train)
    inline = list(pipeline.iterate(make, 0, 4))
    parallel = list(pipeline.iterate(make, 0, 4, num_workers=2))
    for a, b in zip(inline, parallel):
        np.testing.assert_array_equal(a["images"], b["images"])


@dataclasses.dataclass(frozen=True)
class CorruptAt(ArraySource):
    bad: tuple = ()

    def image(self, index):
        if index in self.bad:
            raise CorruptRecordError(f"{self.name} record {index}: cannot decode image")
        return super().image(index)


def corrupt_source(bad):
    labels = np.repeat(np.arange(2), 4).astype(np.int32)
    images = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8) * 30
    return CorruptAt("toy", images, labels, bad=tuple(bad))


def test_corrupt_record_is_named():
    make = make_train_batches(corrupt_source(range(8)))
    with pytest.raises(CorruptRecordError, match="toy record"):
        make(0)


def test_corrupt_record_is_replaced_within_its_class_and_counted():
    source = corrupt_source([1])
    sampler = MPerClassSampler(source.labels, 2, 4, seed=0)  # every image of both classes, every step
    make = pipeline.TrainBatches(source, sampler, seed=0, image_size=8, crop_area=(1.0, 1.0),
                                 crop_aspect=(1.0, 1.0), flip=False, skip_corrupt=True)
    batch = make(0)
    assert int(batch["skipped"]) == 1
    values = sorted({int(v) for v in batch["images"][:, 0, 0, 0]})
    assert 30 not in values  # record 1 (value 30) never appears
    np.testing.assert_array_equal(np.sort(batch["labels"]), [0, 0, 0, 0, 1, 1, 1, 1])


def test_eval_batches_pad_and_skip():
    source = corrupt_source([2])
    make = pipeline.EvalBatches(source, batch_size=5, image_size=8, resize_size=8, skip_corrupt=True)
    assert len(make) == 2
    first, second = make(0), make(1)
    assert first["valid"].tolist() == [True, True, False, True, True]
    assert second["valid"].tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(second["labels"][:3], [1, 1, 1])
    with pytest.raises(CorruptRecordError):
        pipeline.EvalBatches(source, 5, 8, 8, skip_corrupt=False)(0)
