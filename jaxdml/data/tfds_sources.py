"""The real DML datasets as :class:`~jaxdml.data.sources.Source` objects over prepared TFDS ArrayRecords.

Reading never needs TensorFlow: ``tfds.data_source`` opens the ArrayRecord files, records are parsed with
the dataset's own NumPy example parser (``tfds``' ``ExampleParserNp``) and JPEGs are decoded with PIL.
Preparing the files (``python -m jaxdml.data.prepare``) is a separate, one-off step.

Protocols (the usual DML splits): CUB-200-2011 classes 1–100 train / 101–200 test and Cars196 1–98 / 99–196 (TFDS
ships both as classification splits, so train+test are concatenated and re-split by class); Stanford Online
Products as TFDS ships it (label ``class_id``, ``super_class_id`` exposed as ``super_labels``); In-Shop
(``jaxdml.data.inshop``) train / query / gallery, with query and gallery sharing one label mapping.
"""

from __future__ import annotations

import io
import os
import shlex
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image
from tensorflow_datasets.core import example_parser

from jaxdml.data.sources import (
    CorruptRecordError,
    DatasetNotPreparedError,
    DataSplits,
    SubsetSource,
    as_rgb_uint8,
)
from jaxdml.data.specs import SPECS

PREPARE_MODULE = "jaxdml.data.prepare"
_BYTES = (bytes, bytearray, memoryview)




# --------------------------------------------------------------------------------------------------
# Not-prepared errors


def prepare_command(name: str, data_dir: str | os.PathLike | None) -> str:
    """The shell command that prepares ``name`` into ``data_dir``."""
    spec = SPECS[name]
    parts = ["python", "-m", PREPARE_MODULE, "--dataset", name]
    if data_dir is not None:
        parts += ["--data_dir", shlex.quote(os.fspath(data_dir))]
    command = " ".join(parts)
    if spec.manual_required:
        command += " --manual_dir MANUAL_DIR"
    return command


def not_prepared_message(
    name: str, data_dir: str | os.PathLike | None, problem: str, default_root: str | None = None
) -> str:
    """What is wrong, the exact command that fixes it, and what that command needs."""
    spec = SPECS[name]
    if data_dir is not None:
        where = repr(os.fspath(data_dir))
    else:
        where = "the TFDS default data_dir" + (f" ({default_root})" if default_root else "")
    if spec.needs_tensorflow:
        needs = "TensorFlow is needed for this one step only (reading never needs it): pip install -e '.[prepare]'"
    else:
        needs = "No TensorFlow needed; tfds needs importlib_resources to prepare: pip install -e '.[prepare]'"
    return (
        f"Dataset {name!r} is not prepared in {where}: {problem}\n"
        f"Prepare it once with:\n  {prepare_command(name, data_dir)}\n{needs}\n{spec.manual_note}"
    )


def _preparation_problem(name: str, data_dir: str | None, split: str) -> tuple[str | None, str | None]:
    """(why ``split`` of ``name`` cannot be read from ``data_dir``, or None if prepared; the data root)."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        root = os.fspath(builder.data_dir_root)
        if not builder.is_prepared():
            return f"nothing prepared at {builder.data_dir}", root
        formats = builder.info.available_file_formats()
        if tfds.core.FileFormat.ARRAY_RECORD not in formats:
            found = ", ".join(sorted(f.value for f in formats))
            return (
                f"it is prepared at {builder.data_dir} as {found}, but random access needs ArrayRecord "
                "(prepare it into another data_dir, or delete that folder)"
            ), root
        if split not in builder.info.splits:
            return f"{builder.data_dir} has no split {split!r}", root
        return None, root
    except Exception:  # cannot tell; the caller re-raises the original error
        return None, None


def open_split(name: str, split: str, data_dir: str | None) -> Any:
    """``tfds.data_source`` for one split (decoded examples); DatasetNotPreparedError if not prepared.

    ``download=False``: reading must never trigger a (TensorFlow-needing) preparation. Under
    ``tfds.testing.mock_data`` this returns the mock's random examples.
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        return tfds.data_source(SPECS[name].tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as err:
        problem, root = _preparation_problem(SPECS[name].tfds_name, data_dir, split)
        if problem is not None:
            raise DatasetNotPreparedError(not_prepared_message(name, data_dir, problem, root)) from err
        raise


# --------------------------------------------------------------------------------------------------
# Labels without decoding images

_LABEL_CACHE: dict[tuple[str, int], np.ndarray] = {}  # (cache file, record count) -> values


def _raw_records_available(data_source: Any) -> bool:
    """True when the underlying ArrayRecord reader returns serialized bytes (real files, not mocks)."""
    inner = getattr(data_source, "data_source", None)
    return inner is not None and len(data_source) > 0 and isinstance(inner[0], _BYTES)


def _cache_path(data_source: Any, key: str) -> str:
    split = str(data_source.split).replace("/", "_")
    return os.path.join(data_source.dataset_info.data_dir, f"jaxdml-{split}-{key.replace('/', '_')}.npy")


def _load_cached(path: str, length: int) -> np.ndarray | None:
    """The cached values, or None when missing, unreadable or not of ``length`` records (stale)."""
    if (path, length) in _LABEL_CACHE:
        return _LABEL_CACHE[(path, length)]
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if values.ndim != 1 or len(values) != length or not np.issubdtype(values.dtype, np.integer):
        return None
    return values.astype(np.int64)


def _save_cached(path: str, values: np.ndarray) -> None:
    """Atomic write next to the prepared data; skipped (memory only) where that folder is not writable."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path), suffix=".tmp", dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as f:
            np.save(f, values)
        os.replace(tmp, path)
    except OSError as err:
        logging.info("jaxdml: label cache %s not written (%s); kept in memory", path, err)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def _parse_int_fields(data_source: Any, keys: Sequence[str], chunk: int = 1024) -> dict[str, np.ndarray]:
    """Parses only ``keys`` from every serialized record (image bytes are not decoded)."""
    features = data_source.dataset_info.features
    parser = example_parser.ExampleParserNp({k: features[k].get_serialized_info() for k in keys})
    n = len(data_source)
    out = {k: np.empty(n, np.int64) for k in keys}
    for start in range(0, n, chunk):
        records = data_source.data_source.__getitems__(list(range(start, min(n, start + chunk))))
        for offset, record in enumerate(records):
            example = parser.parse_example(record)
            for k in keys:
                out[k][start + offset] = int(example[k])
    return out


def read_int_fields(data_source: Any, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Integer fields (labels) of every record of one ``tfds.data_source`` split, cheaply.

    Decoding every example just to collect labels is far too slow on SOP (120k JPEGs), so on real
    ArrayRecord files each record is parsed for ``keys`` only (the dataset's own NumPy example parser
    restricted to those fields; no image is decoded) and the arrays are cached as
    ``jaxdml-<split>-<key>.npy`` next to the prepared data, re-used while the record count matches, and
    in this process's memory (the only cache where that folder is not writable). Where records are not
    serialized bytes (``tfds.testing.mock_data``) the decoded examples are read instead, uncached.
    """
    n = len(data_source)
    if n == 0:
        return {k: np.zeros(0, np.int64) for k in keys}
    if not _raw_records_available(data_source):
        if n > 20_000:
            logging.warning("jaxdml: reading %d decoded examples to collect labels (slow)", n)
        rows = [[int(np.asarray(data_source[i][k])) for k in keys] for i in range(n)]
        return {k: np.asarray([row[j] for row in rows], np.int64).reshape(n) for j, k in enumerate(keys)}
    paths = {k: _cache_path(data_source, k) for k in keys}
    out = {k: v for k in keys if (v := _load_cached(paths[k], n)) is not None}
    missing = [k for k in keys if k not in out]
    if missing:
        out.update(_parse_int_fields(data_source, missing))
        for k in missing:
            _save_cached(paths[k], out[k])
    for k in keys:
        _LABEL_CACHE[(paths[k], n)] = out[k]
    return out


# --------------------------------------------------------------------------------------------------
# The source


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Encoded image (JPEG/PNG/...) -> (H, W, 3) uint8; grayscale, palette and CMYK converted to RGB."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)


class TfdsSource:
    """One or more TFDS splits of one dataset, concatenated in the given order, as a :class:`Source`.

    ``original_labels`` are the TFDS label values; ``labels`` index them in ``classes`` (default: the
    sorted unique original labels, so labels are contiguous ``0..C-1``; pass ``classes`` to share one
    mapping between sources, e.g. In-Shop query and gallery). ``super_labels``: the TFDS super-class
    field where the dataset has one (SOP), else None.

    Picklable for grain worker processes: the tfds data sources pickle as tfds intends (ArrayRecord
    readers reopen lazily in each process; ``mock_data``'s mocks are picklable too); per-process parser
    caches are dropped. Images: on real files only the ``image`` field of a record is parsed and decoded
    (with PIL; other image fields such as CUB's segmentation masks are skipped); otherwise (mocks) the
    decoded example's image is used.
    """

    def __init__(
        self,
        name: str,
        dataset: str,
        splits: Sequence[str],
        data_sources: Sequence[Any],
        original_labels: np.ndarray,
        classes: np.ndarray | None = None,
        super_labels: np.ndarray | None = None,
        image_key: str = "image",
    ) -> None:
        self.name = name
        self.dataset = dataset
        self.splits = tuple(splits)
        self.image_key = image_key
        self._data_sources = tuple(data_sources)
        lengths = [len(ds) for ds in self._data_sources]
        self._starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.original_labels = np.asarray(original_labels, np.int64)
        if len(self.original_labels) != self._starts[-1]:
            raise ValueError(f"{name}: {self._starts[-1]} records but {len(self.original_labels)} labels")
        self.classes = np.unique(self.original_labels) if classes is None else np.asarray(classes, np.int64)
        positions = np.searchsorted(self.classes, self.original_labels)
        positions = np.minimum(positions, max(len(self.classes) - 1, 0))
        if len(self.original_labels) and np.any(self.classes[positions] != self.original_labels):
            raise ValueError(f"{name}: some labels are not in `classes`")
        self.labels = positions.astype(np.int32)
        self.super_labels = None if super_labels is None else np.asarray(super_labels, np.int32)
        self._parsers: dict[int, Any] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, {len(self)} images, {len(self.classes)} classes)"

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_parsers"] = {}
        return state

    def with_classes(self, classes: np.ndarray) -> TfdsSource:
        """The same records with labels indexing ``classes`` (a shared label mapping)."""
        return TfdsSource(
            self.name,
            self.dataset,
            self.splits,
            self._data_sources,
            self.original_labels,
            classes=classes,
            super_labels=self.super_labels,
            image_key=self.image_key,
        )

    def _locate(self, index: int) -> tuple[int, int]:
        part = int(np.searchsorted(self._starts, index, side="right")) - 1
        return part, int(index - self._starts[part])

    def locate(self, index: int) -> tuple[str, int]:
        """(tfds split, record index within it) of ``index``."""
        part, record = self._locate(index)
        return self.splits[part], record

    def _read_image(self, part: int, record: int) -> np.ndarray:
        data_source = self._data_sources[part]
        inner = getattr(data_source, "data_source", None)
        raw = inner[record] if inner is not None else None
        if isinstance(raw, _BYTES):
            parser = self._parsers.get(part)
            if parser is None:
                feature = data_source.dataset_info.features[self.image_key]
                parser = example_parser.ExampleParserNp({self.image_key: feature.get_serialized_info()})
                self._parsers[part] = parser
            return decode_image_bytes(parser.parse_example(raw)[self.image_key])
        return np.asarray(data_source[record][self.image_key])

    def image(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range [0, {len(self)})")
        part, record = self._locate(index)
        split = self.splits[part]
        try:
            return as_rgb_uint8(self._read_image(part, record))
        except Exception as err:
            raise CorruptRecordError(
                f"{self.dataset}: cannot read or decode record {record} of split {split!r} "
                f"(index {index} of {self.name}): {type(err).__name__}: {err}. "
                "Set --config.data.skip_corrupt=True to skip such records."
            ) from err


def open_tfds_source(
    dataset: str,
    splits: Sequence[str],
    data_dir: str | os.PathLike | None,
    *,
    name: str | None = None,
    classes: np.ndarray | None = None,
) -> TfdsSource:
    """A :class:`TfdsSource` over ``splits`` of a supported ``dataset`` (labels read cheaply, cached)."""
    spec = SPECS[dataset]
    keys = [spec.label_key] + ([spec.super_label_key] if spec.super_label_key else [])
    data_sources, labels, supers = [], [], []
    for split in splits:
        data_source = open_split(dataset, split, data_dir)
        fields = read_int_fields(data_source, keys)
        data_sources.append(data_source)
        labels.append(fields[spec.label_key])
        if spec.super_label_key:
            supers.append(fields[spec.super_label_key])
    return TfdsSource(
        name or f"{dataset}[{'+'.join(splits)}]",
        dataset,
        splits,
        data_sources,
        np.concatenate(labels),
        classes=classes,
        super_labels=np.concatenate(supers) if spec.super_label_key else None,
    )


def split_by_class(full: TfdsSource, num_train_classes: int, name: str) -> tuple[SubsetSource, SubsetSource]:
    """Class-disjoint re-split: original labels ``< num_train_classes`` train, the others test."""
    is_train = full.original_labels < num_train_classes
    train = SubsetSource(f"{name}[train]", full, np.flatnonzero(is_train))
    test = SubsetSource(f"{name}[test]", full, np.flatnonzero(~is_train))
    return train, test


def load_dataset(name: str, data_dir: str | os.PathLike | None) -> DataSplits:
    """Train / query / reference sources of a supported dataset (see :data:`DATASETS`).

    Raises DatasetNotPreparedError (with the preparing command) when the data is not in ``data_dir``.
    """
    if name not in SPECS:
        raise ValueError(f"unknown dataset {name!r}; downloadable: {', '.join(SPECS)} (data.name also accepts the "
                         f"embedded digit_pairs, digit_collage and digit_numbers: jaxdml.data.datasets.DATASETS)")
    spec = SPECS[name]
    if spec.classification:
        classes = np.arange(spec.num_classes)
        train, test = (open_tfds_source(name, (split,), data_dir, classes=classes, name=f"{name}[{split}]")
                       for split in spec.splits)
        return DataSplits(train=train, query=test)
    if spec.num_train_classes is not None:
        # Full label range as `classes`, so labels == TFDS labels even when a class has no image (mocks).
        full = open_tfds_source(name, ("train", "test"), data_dir, classes=np.arange(spec.num_classes))
        train, test = split_by_class(full, spec.num_train_classes, name)
        return DataSplits(train=train, query=test)
    train = open_tfds_source(name, spec.splits[:1], data_dir, name=f"{name}[{spec.splits[0]}]")
    query = open_tfds_source(name, spec.splits[1:2], data_dir, name=f"{name}[{spec.splits[1]}]")
    if len(spec.splits) == 2:
        return DataSplits(train=train, query=query)
    reference = open_tfds_source(name, spec.splits[2:3], data_dir, name=f"{name}[{spec.splits[2]}]")
    shared = np.union1d(query.original_labels, reference.original_labels)
    return DataSplits(train=train, query=query.with_classes(shared), reference=reference.with_classes(shared))
