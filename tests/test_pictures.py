"""Retrieval pictures: the query choice, the grid's geometry, frames that match a NumPy kNN, the exact search with
rows and a validity mask, and the image in TensorBoard's event file."""

import struct
from pathlib import Path

import numpy as np
import pytest

from jaxdml.data.sources import ArraySource
from jaxdml.eval import pictures as pic
from jaxdml.eval.retrieval import knn
from jaxdml.train.hooks import PictureHook
from jaxdml.train.writers import MetricWriter


def numpy_knn(query, reference, k, rows, valid, same):
    """Top-k reference rows by squared distance (ties: lower index), excluding invalid rows and, if ``same``, the
    query itself."""
    out = []
    for row in rows:
        d = ((reference - query[row]) ** 2).sum(axis=1).astype(np.float64)
        d[~valid] = np.inf
        if same:
            d[row] = np.inf
        out.append(np.argsort(d, kind="stable")[:k])
    return np.asarray(out)


def tile_colour(picture, row, column, tile):
    """The frame colour of tile ``column`` (0 = the query) of grid row ``row``."""
    y = pic.GAP + row * (tile + pic.GAP) + 1
    x = pic.GAP + column * (tile + pic.GAP) + (3 * pic.GAP if column else 0) + 1
    return tuple(int(v) for v in picture[y, x])


def test_choose_queries_takes_the_first_image_of_the_first_classes_with_a_match():
    labels = np.array([5, 3, 3, 9, 5, 7, 1, -1])
    valid = np.array([True, True, True, True, True, True, True, False])
    # self retrieval: class 9, 7 and 1 have a single item, nothing to find
    assert pic.choose_queries(labels, valid, None, None, 8).tolist() == [1, 0]
    assert pic.choose_queries(labels, valid, None, None, 1).tolist() == [1]
    # against a reference set: any class the reference holds
    assert pic.choose_queries(labels, valid, np.array([1, 9, 4]), np.ones(3, bool), 8).tolist() == [6, 3]


@pytest.mark.parametrize("same", [True, False])
def test_picture_geometry_and_frames_match_a_numpy_knn(same):
    rng = np.random.default_rng(0)
    n, size, k, queries = 60, 8, 4, 5
    images = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 6, n).astype(np.int32)
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    valid = np.ones(n, bool)
    valid[-3:] = False  # padding rows: never neighbours, may be NaN
    emb[-3:] = np.nan
    source = ArraySource("toy", images, labels)
    if same:
        out = pic.retrieval_picture(emb, labels, valid, source, queries=queries, k=k, image_size=size,
                                    resize_size=size)
        ref_emb, ref_labels, ref_valid = emb, labels, valid
    else:
        ref_emb = rng.normal(size=(40, 5)).astype(np.float32)
        ref_labels = rng.integers(0, 6, 40).astype(np.int32)
        ref_valid = np.ones(40, bool)
        ref_valid[::7] = False
        ref_source = ArraySource("toy_ref", rng.integers(0, 255, (40, size, size, 3), dtype=np.uint8), ref_labels)
        out = pic.retrieval_picture(emb, labels, valid, source, ref_emb, ref_labels, ref_valid, ref_source,
                                    queries=queries, k=k, image_size=size, resize_size=size)
    picture, shown = out
    rows = shown["rows"]
    assert rows.tolist() == pic.choose_queries(labels, valid, None if same else ref_labels, ref_valid,
                                               queries).tolist()
    expected = numpy_knn(emb, ref_emb, k, rows, ref_valid, same)
    np.testing.assert_array_equal(shown["neighbours"], expected)
    correct = ref_labels[expected] == labels[rows][:, None]
    scale = pic.tile_scale(size)
    tile = size * scale + 2 * pic.BORDER
    assert picture.dtype == np.uint8
    assert picture.shape == (pic.GAP + queries * (tile + pic.GAP), pic.GAP + (k + 1) * (tile + pic.GAP)
                             + 2 * pic.GAP, 3)
    for i in range(queries):
        assert tile_colour(picture, i, 0, tile) == pic.QUERY_COLOUR
        for j in range(k):
            want = pic.CORRECT_COLOUR if correct[i, j] else pic.WRONG_COLOUR
            assert tile_colour(picture, i, j + 1, tile) == want
    # the query image itself, enlarged by nearest neighbour, inside its frame
    y0, x0 = pic.GAP + pic.BORDER, pic.GAP + pic.BORDER
    inner = picture[y0:y0 + size * scale, x0:x0 + size * scale]
    np.testing.assert_array_equal(inner[::scale, ::scale], images[rows[0]])


def test_no_picture_when_no_class_has_a_match():
    source = ArraySource("lone", np.zeros((3, 4, 4, 3), np.uint8), np.array([0, 1, 2], np.int32))
    assert pic.retrieval_picture(np.eye(3, dtype=np.float32), source.labels, np.ones(3, bool), source, queries=2,
                                 k=1, image_size=4, resize_size=4) is None


def test_knn_rows_and_mask_against_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    valid = rng.random(50) > 0.3
    rows = np.array([3, 17, 40])
    _, idx = knn(x, k=5, rows=rows, reference_valid=valid, reference_block_size=8)
    np.testing.assert_array_equal(idx, numpy_knn(x, x, 5, rows, valid, True))
    _, full = knn(x, k=5)
    _, some = knn(x, k=5, rows=rows)
    np.testing.assert_array_equal(full[rows], some)


def read_events(directory: Path) -> list:
    """Every event of the TFRecord files in ``directory`` (length, crc, data, crc per record)."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            events.append(event)
            at += 12 + length + 4
    return events


def test_picture_hook_writes_tensorboard_and_png(tmp_path):
    picture = np.zeros((20, 30, 3), np.uint8)
    picture[:, :, 1] = 170
    writer = MetricWriter(tmp_path)
    hook = PictureHook(lambda: (picture, {}), writer, tmp_path / "pictures")
    path = hook.show(7)
    writer.close()
    assert path == tmp_path / "pictures" / "retrieval_step7.png"
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)
    images = [(e.step, v) for e in read_events(tmp_path / "tensorboard") for v in e.summary.value
              if v.HasField("image")]
    assert [(step, v.tag, v.image.height, v.image.width) for step, v in images] == [(7, "retrieval", 20, 30)]
    import io

    decoded = np.asarray(Image.open(io.BytesIO(images[0][1].image.encoded_image_string)))
    np.testing.assert_array_equal(decoded, picture)
    assert PictureHook(lambda: None, writer, tmp_path / "none").show(8) is None
    assert not (tmp_path / "none").exists()
