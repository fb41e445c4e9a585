"""Input pipeline: batches are pure functions of (seed, step); corrupt records are named or skipped."""

import dataclasses

import numpy as np
import pytest

from jaxdml.data import pipeline
from jaxdml.data.digits import load_digit_pairs, load_digits_source, split_numbers
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.data.sources import ArraySource, CorruptRecordError


def make_train_batches(source, **kwargs):
    sampler = MPerClassSampler(source.labels, 2, 3, seed=0)
    return pipeline.TrainBatches(source=source, sampler=sampler, seed=0, image_size=16, crop_area=(0.5, 1.0),
                                 crop_aspect=(0.75, 1.33), flip=True, **kwargs)


def test_digit_pairs_are_class_disjoint_and_share_no_handwriting():
    train, test = load_digit_pairs()
    train_numbers, test_numbers = split_numbers()
    assert len(train_numbers) == len(test_numbers) == 50 and not set(train_numbers) & set(test_numbers)
    assert len(train) == len(test) == 50 * 30 and train.labels.max() == 49
    image = train.image(0)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and int(image.max()) > 200
    # Train number 0's images show its two digits; no 8x8 digit image is used on both sides.
    tens = int(train_numbers[0]) // 10
    digits = load_digits_source()
    tiles = {bytes(t) for t in digits.images[digits.labels == tens]}
    assert bytes(np.ascontiguousarray(train.images[0, 4:12, 0:8])) in tiles
    def all_tiles(source):
        return {bytes(np.ascontiguousarray(x[4:12, c:c + 8])) for x in source.images for c in (0, 8)}
    assert not all_tiles(train) & all_tiles(test)
    assert all_tiles(train) and all_tiles(test)


def test_batches_are_deterministic_and_resumable():
    train, _ = load_digit_pairs()
    make = make_train_batches(train)
    full = list(pipeline.iterate(make, 0, 6))
    resumed = list(pipeline.iterate(make, 3, 6))
    for a, b in zip(full[3:], resumed):
        np.testing.assert_array_equal(a["images"], b["images"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
    assert full[0]["images"].shape == (6, 16, 16, 3)
    assert not np.array_equal(full[0]["images"], full[1]["images"])


@pytest.mark.parametrize("hosts", [2, 3])
def test_hosts_build_disjoint_slices_of_the_same_global_batch(hosts):
    train, _ = load_digit_pairs()
    whole = make_train_batches(train)(5)
    parts = [dataclasses.replace(make_train_batches(train), shard_index=i, shard_count=hosts)(5) for i in range(hosts)]
    # Each image's augmentation depends on its place in the global batch, not on the host that builds it.
    for key in ("images", "labels"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
    assert [len(p["labels"]) for p in parts] == [len(x) for x in np.array_split(np.arange(6), hosts)]
    assert len({bytes(p["images"]) for p in parts}) == hosts


def test_eval_batches_give_each_device_a_contiguous_part_and_each_host_its_devices_parts():
    source = ArraySource("ten", np.arange(10, dtype=np.uint8)[:, None, None, None].repeat(8, 1).repeat(8, 2)
                         .repeat(3, 3), np.arange(10) % 3)
    settings = dict(source=source, device_batch=2, image_size=8, resize_size=8, devices=4)
    whole = pipeline.EvalBatches(**settings, device_lo=0, device_hi=4)
    assert whole.rows_per_device == 4 and len(whole) == 2  # ceil(10 / 4) = 3 rows, two batches of 2
    np.testing.assert_array_equal(whole.rows(), np.arange(16))
    host1 = pipeline.EvalBatches(**settings, device_lo=2, device_hi=4)
    np.testing.assert_array_equal(host1.rows(), np.arange(8, 16))
    # Batch 1 of host 1: rows 10-11 of device 2 (past the end: padding) and rows 14-15 of device 3.
    first, second = host1(0), host1(1)
    assert first["images"][:, 0, 0, 0].tolist() == [8, 9, 0, 0] and first["valid"].tolist() == [1, 1, 0, 0]
    assert second["valid"].tolist() == [0, 0, 0, 0]
    # The batches of all devices, laid out by device, give every record once, in order, each with its label.
    rows = np.concatenate([np.stack([whole(b)["images"][:, 0, 0, 0].reshape(4, 2) for b in range(2)], 1)
                           .reshape(-1)])
    valid = np.concatenate([np.stack([whole(b)["valid"].reshape(4, 2) for b in range(2)], 1).reshape(-1)])
    np.testing.assert_array_equal(rows[valid], np.arange(10))
    np.testing.assert_array_equal(np.flatnonzero(valid), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])


def test_worker_processes_give_the_same_batches():
    train, _ = load_digit_pairs()
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
    make = pipeline.TrainBatches(source=source, sampler=sampler, seed=0, image_size=8, crop_area=(1.0, 1.0),
                                 crop_aspect=(1.0, 1.0), flip=False, skip_corrupt=True)
    batch = make(0)
    assert int(batch["skipped"]) == 1
    values = sorted({int(v) for v in batch["images"][:, 0, 0, 0]})
    assert 30 not in values  # record 1 (value 30) never appears
    np.testing.assert_array_equal(np.sort(batch["labels"]), [0, 0, 0, 0, 1, 1, 1, 1])


def test_eval_batches_pad_and_skip():
    source = corrupt_source([2])
    make = pipeline.EvalBatches(source=source, device_batch=5, image_size=8, resize_size=8, skip_corrupt=True)
    assert len(make) == 2
    first, second = make(0), make(1)
    assert first["valid"].tolist() == [True, True, False, True, True]
    assert second["valid"].tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(second["labels"][:3], [1, 1, 1])
    with pytest.raises(CorruptRecordError):
        pipeline.EvalBatches(source=source, device_batch=5, image_size=8, resize_size=8)(0)


@pytest.mark.parametrize("augment", ["pad_crop", "rotate", "none"])
def test_classification_augmentations_are_deterministic_per_step(augment):
    from jaxdml.data import transforms
    from jaxdml.data.digits import load_digit_numbers
    from jaxdml.data.sampler import ShuffleSampler

    train, _ = load_digit_numbers()
    sampler = ShuffleSampler(train.labels, 32, seed=0)
    make = pipeline.TrainBatches(source=train, sampler=sampler, seed=0, image_size=16, crop_area=(1.0, 1.0),
                                 crop_aspect=(1.0, 1.0),
                                 flip=False, augment=augment, crop_padding=2, rotation_degrees=20.0)
    a, b = make(5), make(5)
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["images"].shape == (32, 16, 16, 3) and not np.array_equal(a["images"], make(6)["images"])
    first = train.image(int(sampler.batch_indices(5)[0]))
    rng = np.random.default_rng([0, pipeline._AUGMENT, 5, 0])
    if augment == "rotate":
        expected = transforms.rotate_flip_transform(first, rng, degrees=20.0, flip=False)
    else:
        expected = transforms.pad_crop_transform(first, rng, size=16, padding=2 if augment == "pad_crop" else 0,
                                                 flip=False)
    np.testing.assert_array_equal(a["images"][0], expected)
    if augment == "none":
        np.testing.assert_array_equal(a["images"][0], first)  # 16x16 images: the image itself
