"""jaxdml.data.tfds_sources over tfds.testing.mock_data (random decoded examples, TF-free)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdml.data import prepare, tfds_sources
from jaxdml.data.sources import CorruptRecordError, DatasetNotPreparedError, DataSplits, SubsetSource
from jaxdml.data.specs import DATASETS
from jaxdml.data.tfds_sources import TfdsSource, load_dataset

NUM_EXAMPLES = 120  # per mocked split


def mocked():
    return tfds.testing.mock_data(num_examples=NUM_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE)


def mock_field(name: str, split: str, key: str) -> np.ndarray:
    """The mock's values of ``key`` in ``split``, read independently of the code under test."""
    ds = tfds.data_source(name, split=split, download=False)
    return np.asarray([int(ds[i][key]) for i in range(len(ds))])


def assert_contiguous(labels: np.ndarray) -> None:
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))


def assert_images(source, indices=(0, 1, -1)) -> None:
    for i in indices:
        image = source.image(i % len(source))
        assert image.dtype == np.uint8
        assert image.ndim == 3 and image.shape[-1] == 3 and min(image.shape[:2]) > 0


def test_supported_names():
    assert set(DATASETS) == {"caltech_birds2011", "cars196", "stanford_online_products", "inshop", "cifar10",
                             "cifar100", "tiny_imagenet", "imagenet2012"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in DATASETS.values())
    with pytest.raises(ValueError, match=r"unknown dataset 'cub'; downloadable: caltech_birds2011"):
        load_dataset("cub", None)


@pytest.mark.parametrize(("name", "num_train", "num_classes"), [("caltech_birds2011", 100, 200), ("cars196", 98, 196)])
def test_class_resplit(tmp_path, name, num_train, num_classes):
    with mocked():
        splits = load_dataset(name, tmp_path)
        original = np.concatenate([mock_field(name, "train", "label"), mock_field(name, "test", "label")])
        assert isinstance(splits, DataSplits) and splits.reference is None
        train, test = splits.train, splits.query
        assert isinstance(train, SubsetSource) and isinstance(test, SubsetSource)
        assert train.parent is test.parent and len(train.parent) == 2 * NUM_EXAMPLES
        # Exactly the records of original classes 0..num_train-1 (1..num_train in the papers) go to train.
        np.testing.assert_array_equal(train.indices, np.flatnonzero(original < num_train))
        np.testing.assert_array_equal(test.indices, np.flatnonzero(original >= num_train))
        np.testing.assert_array_equal(train.original_labels, original[original < num_train])
        np.testing.assert_array_equal(test.original_labels, original[original >= num_train])
        assert set(train.original_labels).isdisjoint(test.original_labels)
        assert test.original_labels.max() < num_classes
        for source in (train, test):
            assert_contiguous(source.labels)
            # Remapping preserves the order of the original classes.
            np.testing.assert_array_equal(np.unique(source.original_labels)[source.labels], source.original_labels)
            assert_images(source)


def test_split_by_class_boundary():
    original = np.array([0, 99, 100, 199, 5, 100, 98, 150])
    records = [{"image": np.zeros((2, 2, 3), np.uint8)}] * len(original)
    full = TfdsSource("cub", "caltech_birds2011", ("train",), [records], original, classes=np.arange(200))
    np.testing.assert_array_equal(full.labels, original)
    train, test = tfds_sources.split_by_class(full, 100, "cub")
    np.testing.assert_array_equal(train.indices, [0, 1, 4, 6])
    np.testing.assert_array_equal(test.indices, [2, 3, 5, 7])
    np.testing.assert_array_equal(train.labels, [0, 3, 1, 2])  # 0, 99, 5, 98 -> ranks
    np.testing.assert_array_equal(test.labels, [0, 2, 0, 1])  # 100, 199, 100, 150


def test_sop_shipped_splits_and_super_labels(tmp_path):
    name = "stanford_online_products"
    with mocked():
        splits = load_dataset(name, tmp_path)
        assert splits.reference is None
        for source, split in ((splits.train, "train"), (splits.query, "test")):
            assert isinstance(source, TfdsSource) and source.splits == (split,)
            np.testing.assert_array_equal(source.original_labels, mock_field(name, split, "class_id"))
            np.testing.assert_array_equal(source.super_labels, mock_field(name, split, "super_class_id"))
            assert source.super_labels.dtype == np.int32 and source.super_labels.max() < 12
            assert_contiguous(source.labels)
            np.testing.assert_array_equal(source.classes[source.labels], source.original_labels)
            assert_images(source)


@pytest.mark.parametrize(("name", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_keeps_the_shipped_splits_and_labels(tmp_path, name, classes):
    with mocked():
        splits = load_dataset(name, tmp_path)
        assert splits.reference is None and (len(splits.train), len(splits.query)) == (NUM_EXAMPLES, NUM_EXAMPLES)
        for source, split in ((splits.train, "train"), (splits.query, "test")):
            np.testing.assert_array_equal(source.labels, mock_field(name, split, "label"))  # ids as shipped
            np.testing.assert_array_equal(source.classes, np.arange(classes))
            assert source.image(0).shape == (32, 32, 3)


def test_inshop_mocked_query_gallery_share_labels(tmp_path):
    with mocked():
        splits = load_dataset("inshop", tmp_path)
        assert splits.reference is not None
        assert [len(s) for s in (splits.train, splits.query, splits.reference)] == [NUM_EXAMPLES] * 3
        assert_contiguous(splits.train.labels)
        np.testing.assert_array_equal(splits.query.classes, splits.reference.classes)
        both = np.concatenate([splits.query.labels, splits.reference.labels])
        assert_contiguous(both)
        for source in (splits.query, splits.reference):
            np.testing.assert_array_equal(source.classes[source.labels], source.original_labels)
            assert_images(source)


def test_pickle_roundtrip(tmp_path):
    with mocked():
        splits = load_dataset("caltech_birds2011", tmp_path)
        for source in (splits.train, splits.train.parent):
            clone = pickle.loads(pickle.dumps(source))
            np.testing.assert_array_equal(clone.labels, source.labels)
            np.testing.assert_array_equal(clone.image(3), source.image(3))


class _Failing:
    """A tfds data source whose records cannot be decoded."""

    data_source = None

    def __len__(self) -> int:
        return 5

    def __getitem__(self, index):
        raise ValueError("Truncated File Read")


def test_corrupt_record_error_names_the_record():
    good = [{"image": np.zeros((4, 5, 3), np.uint8)}] * 3
    source = TfdsSource("cars196[train+test]", "cars196", ("train", "test"), [good, _Failing()], np.arange(8))
    assert source.image(2).shape == (4, 5, 3)
    assert source.locate(6) == ("test", 3)
    with pytest.raises(CorruptRecordError) as info:
        source.image(6)
    message = str(info.value)
    for part in ("cars196", "record 3", "'test'", "index 6", "Truncated File Read", "skip_corrupt=True"):
        assert part in message
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(IndexError):
        source.image(8)
    # A wrongly shaped image is a corrupt record too.
    bad = TfdsSource("x", "cars196", ("train",), [[{"image": np.zeros((4, 5, 4), np.uint8)}]], np.zeros(1))
    with pytest.raises(CorruptRecordError, match="record 0"):
        bad.image(0)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_not_prepared_error_gives_the_command(tmp_path, name):
    with pytest.raises(DatasetNotPreparedError) as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert name in message and str(tmp_path) in message
    assert f"python -m jaxdml.data.prepare --dataset {name} --data_dir {tmp_path}" in message
    assert "pip install -e '.[prepare]'" in message
    if name in ("cars196", "inshop", "tiny_imagenet", "imagenet2012"):  # a manual download is always needed
        assert f"--data_dir {tmp_path} --manual_dir MANUAL_DIR\n" in message
    else:
        assert f"--data_dir {tmp_path}\n" in message
    assert ("TensorFlow is needed" in message) == (name not in ("inshop", "tiny_imagenet"))
    assert not any(Path(tmp_path).rglob("*.array_record*"))


def test_prepare_command_quotes_paths():
    command = tfds_sources.prepare_command("cars196", "/data dir/tfds")
    expected = "python -m jaxdml.data.prepare --dataset cars196 --data_dir '/data dir/tfds'"
    assert command == expected + " --manual_dir MANUAL_DIR"


def test_prepare_says_what_is_missing(monkeypatch, tmp_path, capsys):
    real_find_spec = prepare.importlib.util.find_spec
    monkeypatch.setattr(
        prepare.importlib.util,
        "find_spec",
        lambda name: None if name == "tensorflow" else real_find_spec(name),
    )
    assert prepare.main(["--dataset", "cars196", "--data_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "TensorFlow" in err and "pip install -e '.[prepare]'" in err
    assert not any(tmp_path.iterdir())
    assert prepare.missing_requirements("inshop") == []  # In-Shop prepares without TensorFlow
