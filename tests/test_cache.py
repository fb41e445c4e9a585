"""The decode-once image cache: same pixels as the uncached pipeline, built once, shared by path."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdml.config import default_config
from jaxdml.data import cache, pipeline, transforms
from jaxdml.data.datasets import cache_directory, load_data
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.data.sources import CorruptRecordError


@dataclasses.dataclass
class VariedSource:
    """Images of different shapes (portrait, landscape, square, already at the cache size), one corrupt."""

    name: str = "varied[train]"
    corrupt: int = 4
    fail_after: int | None = None  # raise a non-corrupt error after this many reads (an interrupted build)
    reads: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(0)
        shapes = [(300, 400), (333, 250), (256, 256), (256, 301), (90, 90), (500, 375), (64, 480), (257, 1000)]
        self.images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes] * 3
        self.labels = np.repeat(np.arange(6), 4).astype(np.int32)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise KeyboardInterrupt
        if index == self.corrupt:
            raise CorruptRecordError(f"{self.name}: record {index} is corrupt")
        return self.images[index]


def test_cache_holds_the_resized_images_and_marks_corrupt_records(tmp_path):
    source = VariedSource()
    cached = cache.cached(source, 256, tmp_path)
    assert len(cached) == len(source) and cached.name == source.name
    np.testing.assert_array_equal(cached.labels, source.labels)
    for i in range(len(source)):
        if i == source.corrupt:
            with pytest.raises(CorruptRecordError, match="record 4"):
                cached.image(i)
            continue
        image = cached.image(i)
        assert min(image.shape[:2]) == 256
        np.testing.assert_array_equal(image, cache.resize_shorter_side(source.images[i], 256))
    assert cached.nbytes == sum(cache.resize_shorter_side(im, 256).size for i, im in enumerate(source.images)
                                if i != source.corrupt)


def test_evaluation_batches_are_bit_identical_to_the_uncached_pipeline(tmp_path):
    source = VariedSource(corrupt=-1)
    cached = cache.cached(source, 256, tmp_path)
    for size, resize in ((224, 256), (227, 256)):
        plain = pipeline.EvalBatches(source=source, device_batch=8, image_size=size, resize_size=resize)
        fast = pipeline.EvalBatches(source=cached, device_batch=8, image_size=size, resize_size=resize)
        for number in range(len(plain)):
            a, b = plain(number), fast(number)
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])


def test_training_batches_from_the_cache_are_valid_and_deterministic(tmp_path):
    source = VariedSource(corrupt=-1)
    cached = cache.cached(source, 256, tmp_path)
    sampler = MPerClassSampler(cached.labels, 2, 4, seed=0)
    make = pipeline.TrainBatches(source=cached, sampler=sampler, seed=0, image_size=224, crop_area=(0.16, 1.0),
                                 crop_aspect=(0.75, 4 / 3), flip=True)
    first, again = make(3), make(3)
    np.testing.assert_array_equal(first["images"], again["images"])
    assert first["images"].shape == (8, 224, 224, 3)
    # The crop is taken from the cached (resized) image: exactly the transform applied to it.
    rng = np.random.default_rng([0, pipeline._AUGMENT, 3, 0])
    index = sampler.batch_indices(3)[0]
    expected = transforms.train_transform(cached.image(index), rng, size=224, area=(0.16, 1.0),
                                          aspect=(0.75, 4 / 3), flip=True)
    np.testing.assert_array_equal(first["images"][0], expected)


def test_built_once_then_reused_and_pickled_as_a_path(tmp_path):
    source = VariedSource()
    first = cache.cached(source, 256, tmp_path)
    reads = source.reads
    assert reads == len(source)
    second = cache.cached(source, 256, tmp_path)
    assert source.reads == reads  # nothing decoded again
    first.image(0)  # maps the file
    blob = pickle.dumps(first)
    assert len(blob) < 10_000 < first.nbytes
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.image(7), second.image(7))
    # Another size or another label set is another cache.
    assert cache.cache_key(source, 256) != cache.cache_key(source, 288)
    relabelled = VariedSource()
    relabelled.labels = relabelled.labels[::-1].copy()
    assert cache.cache_key(source, 256) != cache.cache_key(relabelled, 256)


def test_parallel_build_equals_serial_build(tmp_path):
    serial = cache.cached(VariedSource(), 128, tmp_path / "serial")
    parallel = cache.cached(VariedSource(), 128, tmp_path / "parallel", num_workers=2)
    np.testing.assert_array_equal(serial.offsets, parallel.offsets)
    assert serial.path.read_bytes() == parallel.path.read_bytes()


def test_an_interrupted_build_leaves_nothing_behind_and_is_redone(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        cache.cached(VariedSource(fail_after=10), 256, tmp_path)
    assert list(tmp_path.iterdir()) == []
    cached = cache.cached(VariedSource(), 256, tmp_path)
    np.testing.assert_array_equal(cached.image(10), cache.resize_shorter_side(VariedSource().images[10], 256))


def test_a_damaged_cache_names_the_files_to_delete(tmp_path):
    cached = cache.cached(VariedSource(), 256, tmp_path)
    with open(cached.path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(RuntimeError, match="delete both files"):
        cache.cached(VariedSource(), 256, tmp_path)


def test_load_data_caches_every_split_of_a_real_dataset(tmp_path):
    cfg = default_config().data
    cfg.name, cfg.data_dir, cfg.cache_dir, cfg.resize_size = "inshop", str(tmp_path / "tfds"), "default", 64
    with tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE):
        splits = load_data(cfg)
        cfg.cache_dir = None
        plain = load_data(cfg)
    assert cache_directory("default", cfg.data_dir) == str(tmp_path / "tfds" / "jaxdml_cache")
    for fast, slow in ((splits.train, plain.train), (splits.query, plain.query),
                       (splits.reference, plain.reference)):
        assert isinstance(fast, cache.CachedSource)
        np.testing.assert_array_equal(fast.labels, slow.labels)
        np.testing.assert_array_equal(fast.image(5), cache.resize_shorter_side(slow.image(5), 64))
    assert len(list((tmp_path / "tfds" / "jaxdml_cache").glob("*.u8"))) == 3
