"""The In-Shop builder prepared TF-free from fake files, read back via load_dataset (real ArrayRecords)."""

from __future__ import annotations

import multiprocessing
import operator
import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import example_parser

from jaxdml.data import inshop, prepare, tfds_sources
from jaxdml.data.sources import CorruptRecordError
from jaxdml.data.tfds_sources import load_dataset, read_int_fields

# (item id, split, PIL mode); the sorted unique items 02 03 04 05 07 10 get labels 0..5.
ROWS = [
    ("id_00000010", "train", "RGB"),
    ("id_00000010", "train", "RGB"),
    ("id_00000010", "train", "L"),  # grayscale JPEG
    ("id_00000002", "train", "RGB"),
    ("id_00000002", "train", "CMYK"),  # CMYK JPEG: 4 channels unless converted
    ("id_00000007", "train", "RGB"),
    ("id_00000007", "train", "RGB"),
    ("id_00000005", "query", "RGB"),
    ("id_00000005", "query", "RGB"),
    ("id_00000003", "query", "RGB"),
    ("id_00000005", "gallery", "RGB"),
    ("id_00000003", "gallery", "RGB"),
    ("id_00000003", "gallery", "L"),
    ("id_00000004", "gallery", "RGB"),  # an item only in the gallery, sorted between the query items
]
ITEM_LABEL = {item: i for i, item in enumerate(sorted({item for item, _, _ in ROWS}))}


def write_manual_files(manual: Path, rows=ROWS, image_root: str = "", partition_dir: str = "", corrupt=()) -> list[str]:
    """Tiny JPEGs under ``manual/image_root/img/...`` and the partition list; returns the image names."""
    rng = np.random.default_rng(0)
    lines, names = [], []
    for i, (item, split, mode) in enumerate(rows):
        name = f"img/WOMEN/Dresses/{item}/{i:02d}_1_front.jpg"
        path = manual / image_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if i in corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
        else:
            pixels = rng.integers(0, 256, (12 + i, 9 + 2 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(path, format="JPEG")
        lines.append(f"{name} {item} {split}")
        names.append(name)
    partition = manual / partition_dir / inshop.PARTITION_FILE
    partition.parent.mkdir(parents=True, exist_ok=True)
    partition.write_text(f"{len(lines)}\nimage_name item_id evaluation_status\n" + "\n".join(lines) + "\n")
    return names


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(manual_dir, data_dir, printed summary) after `python -m jaxdml.data.prepare --dataset inshop`."""
    root = tmp_path_factory.mktemp("inshop")
    manual, data_dir = root / "manual", root / "data"
    write_manual_files(manual)
    rc = prepare.main(["--dataset", "inshop", "--data_dir", str(data_dir), "--manual_dir", str(manual)])
    assert rc == 0
    return manual, data_dir


def decoded_fields(data_dir: Path, split: str) -> list[dict]:
    ds = tfds.data_source("inshop", split=split, data_dir=str(data_dir), download=False)
    return [ds[i] for i in range(len(ds))]


def test_prepare_writes_array_records_and_prints_summary(tmp_path, capsys):
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    write_manual_files(manual)
    assert prepare.main(["--dataset", "inshop", "--data_dir", str(data_dir), "--manual_dir", str(manual)]) == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in (data_dir / "inshop" / "1.0.0").glob("*.array_record*")) == [
        f"inshop-{split}.array_record-00000-of-00001" for split in ("gallery", "query", "train")
    ]
    assert f"prepared as ArrayRecord at {data_dir / 'inshop' / '1.0.0'}" in out
    assert "train            7 images      3 classes" in out
    assert "query            3 images      2 classes" in out
    assert "reference        4 images      3 classes" in out
    # A second run notices the prepared data and does nothing.
    assert prepare.main(["--dataset", "inshop", "--data_dir", str(data_dir), "--manual_dir", str(manual)]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_load_dataset_sizes_and_labels(prepared):
    _, data_dir = prepared
    splits = load_dataset("inshop", data_dir)
    expected_sizes = {s: sum(row[1] == s for row in ROWS) for s in inshop.SPLITS}
    sources = {"train": splits.train, "query": splits.query, "gallery": splits.reference}
    assert {s: len(src) for s, src in sources.items()} == expected_sizes == {"train": 7, "query": 3, "gallery": 4}
    for split, source in sources.items():
        examples = decoded_fields(data_dir, split)  # records in the order the source sees them
        items = [ex["item_id"].decode() if isinstance(ex["item_id"], bytes) else ex["item_id"] for ex in examples]
        np.testing.assert_array_equal(source.original_labels, [ITEM_LABEL[item] for item in items])
        np.testing.assert_array_equal([int(ex["label"]) for ex in examples], source.original_labels)
    train_labels = splits.train.labels
    np.testing.assert_array_equal(np.unique(train_labels), [0, 1, 2])
    # Query and gallery share one mapping: the same item has the same label in both.
    query, gallery = splits.query, splits.reference
    np.testing.assert_array_equal(query.classes, [ITEM_LABEL[i] for i in ("id_00000003", "id_00000004", "id_00000005")])
    np.testing.assert_array_equal(np.unique(gallery.labels), [0, 1, 2])
    np.testing.assert_array_equal(np.unique(query.labels), [0, 2])  # item 04 is only in the gallery
    same_label = query.labels[:, None] == gallery.labels[None, :]
    same_item = query.original_labels[:, None] == gallery.original_labels[None, :]
    np.testing.assert_array_equal(same_label, same_item)


def test_images_are_the_files_as_rgb(prepared):
    manual, data_dir = prepared
    splits = load_dataset("inshop", data_dir)
    for split, source in (("train", splits.train), ("query", splits.query), ("gallery", splits.reference)):
        for i, example in enumerate(decoded_fields(data_dir, split)):
            name = example["file_name"]
            name = name.decode() if isinstance(name, bytes) else name
            with Image.open(manual / name) as original:
                expected = np.asarray(original.convert("RGB"))
            image = source.image(i)
            assert image.dtype == np.uint8 and image.shape == expected.shape
            np.testing.assert_array_equal(image, expected)


def test_label_fast_path_matches_decoding_and_is_cached(prepared):
    _, data_dir = prepared
    for split in inshop.SPLITS:
        ds = tfds.data_source("inshop", split=split, data_dir=str(data_dir), download=False)
        assert tfds_sources._raw_records_available(ds)
        slow = np.asarray([int(ds[i]["label"]) for i in range(len(ds))])
        tfds_sources._LABEL_CACHE.clear()
        cache = data_dir / "inshop" / "1.0.0" / f"jaxdml-{split}-label.npy"
        cache.unlink(missing_ok=True)
        np.testing.assert_array_equal(read_int_fields(ds, ["label"])["label"], slow)
        np.testing.assert_array_equal(np.load(cache), slow)
        # The cache is what is read next time; a stale one (wrong record count) is ignored and rewritten.
        tfds_sources._LABEL_CACHE.clear()
        np.save(cache, np.arange(len(ds) + 1))
        np.testing.assert_array_equal(read_int_fields(ds, ["label"])["label"], slow)
        np.testing.assert_array_equal(np.load(cache), slow)
        tfds_sources._LABEL_CACHE.clear()
        np.save(cache, slow[::-1].copy())
        np.testing.assert_array_equal(read_int_fields(ds, ["label"])["label"], slow[::-1])  # proves it is read
        cache.unlink()
        tfds_sources._LABEL_CACHE.clear()


def test_pickled_source_reads_in_a_fresh_process(prepared):
    _, data_dir = prepared
    source = load_dataset("inshop", data_dir).reference
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.image(2), source.image(2))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        image = pool.apply(operator.methodcaller("image", 3), (source,))
    np.testing.assert_array_equal(image, source.image(3))


def test_corrupt_record_raises_naming_it(tmp_path):
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    write_manual_files(manual, rows=ROWS[:3] + ROWS[7:8] + ROWS[10:11], corrupt={1})
    inshop.Inshop(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    train = load_dataset("inshop", data_dir).train  # labels need no image decoding
    assert len(train) == 3
    ds = tfds.data_source("inshop", split="train", data_dir=str(data_dir), download=False)
    parser = example_parser.ExampleParserNp({"file_name": ds.dataset_info.features["file_name"].get_serialized_info()})
    names = [parser.parse_example(ds.data_source[i])["file_name"].decode() for i in range(len(ds))]
    bad = next(i for i, n in enumerate(names) if n.startswith("img/WOMEN/Dresses/id_00000010/01_"))
    for i in range(3):
        if i != bad:
            assert train.image(i).shape[-1] == 3
    with pytest.raises(CorruptRecordError) as info:
        train.image(bad)
    message = str(info.value)
    assert f"record {bad} of split 'train'" in message and "inshop" in message
    assert "skip_corrupt=True" in message


def test_alternative_layout_eval_and_img_folders(tmp_path):
    manual, data_dir = tmp_path / "manual", tmp_path / "data"
    write_manual_files(manual, image_root="Img", partition_dir="Eval")
    inshop.Inshop(data_dir=str(data_dir)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    splits = load_dataset("inshop", data_dir)
    assert (len(splits.train), len(splits.query), len(splits.reference)) == (7, 3, 4)


def test_missing_manual_files_say_what_to_download(tmp_path):
    data_dir, manual = tmp_path / "data", tmp_path / "manual"
    args = ["--dataset", "inshop", "--data_dir", str(data_dir), "--manual_dir", str(manual)]
    with pytest.raises(SystemExit) as info:  # no manual dir at all
        prepare.main(args)
    assert "list_eval_partition.txt" in str(info.value) and "img.zip" in str(info.value)
    manual.mkdir()
    (manual / "README").write_text("x")
    with pytest.raises(SystemExit) as info:  # no partition list
        prepare.main(args)
    assert f"no {inshop.PARTITION_FILE} in {manual}" in str(info.value)
    write_manual_files(manual)
    for path in sorted((manual / "img").rglob("*.jpg"))[:1]:
        path.unlink()
    with pytest.raises(SystemExit) as info:  # images missing
        prepare.main(args)
    assert "img.zip" in str(info.value) or "is missing" in str(info.value)
    assert not (data_dir / "inshop" / "1.0.0").exists()


def test_parse_partition():
    rows = inshop.parse_partition(
        [
            "2",
            "image_name item_id evaluation_status",
            "img/a/id_1/1.jpg id_1 train",
            "img/b/id_2/1.jpg id_2 query  ",
        ]
    )
    assert rows == [("img/a/id_1/1.jpg", "id_1", "train"), ("img/b/id_2/1.jpg", "id_2", "query")]
    assert inshop.item_labels([*rows, ("x", "id_0", "gallery")]) == {"id_0": 0, "id_1": 1, "id_2": 2}
    with pytest.raises(ValueError, match="header says 3"):
        inshop.parse_partition(["3", "image_name item_id evaluation_status", "a id_1 train"])
    with pytest.raises(ValueError, match="line 3"):
        inshop.parse_partition(["1", "image_name item_id evaluation_status", "a id_1 validation"])
    with pytest.raises(ValueError, match="header"):
        inshop.parse_partition(["a id_1 train"])
