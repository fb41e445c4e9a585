"""Decode-once image cache: every image of a source decoded, resized and stored in one memory-mapped file.

JPEG decoding dominates the host cost of a DML input pipeline (CUB, Cars, SOP and In-Shop images are a few
hundred pixels wide, and each is read hundreds of times). :func:`cached` decodes each image once, resizes
it so that its shorter side is ``size`` (as the evaluation transform's first step does), and appends it to
``<dir>/<key>.u8`` with an index of offsets and shapes. :class:`CachedSource` maps that file: the pages
live once in the OS page cache and are shared by the main process and every grain worker (only the path is
pickled), so the cache is in memory after the first epoch without being copied per process. Put the
directory on ``/dev/shm`` to hold it in RAM from the start.

With ``size == data.resize_size`` evaluation is bit-identical to the uncached pipeline (resizing to the
same size is a copy). Training crops come from the resized image rather than the original; at 256 pixels
for a 224 or 227 crop this is the usual DML practice and changes no statistic we measure. The file is
written under a temporary name and renamed, so an interrupted build is redone, never read half-written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from jaxdml.data.sources import CorruptRecordError, Source

log = logging.getLogger(__name__)
_CHUNK = 256  # images per task when decoding in parallel


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize so that the shorter side is ``size`` (aspect kept, as ``eval_transform``'s first step)."""
    height, width = image.shape[:2]
    if height <= width:
        new_h, new_w = size, int(size * width / height)
    else:
        new_h, new_w = int(size * height / width), size
    if (new_h, new_w) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))


def _decode_chunk(source: Source, start: int, stop: int, size: int) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for index in range(start, stop):
        try:
            out.append(resize_shorter_side(source.image(index), size))
        except CorruptRecordError:
            out.append(None)  # stays corrupt in the cache: the pipeline's skip/raise policy still applies
    return out


def cache_key(source: Source, size: int) -> str:
    """Names the cache of ``source`` at ``size``: its name, length and labels (a changed split gets a new file)."""
    digest = hashlib.sha256(np.ascontiguousarray(source.labels, np.int64).tobytes()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source.name)
    return f"{safe}-n{len(source)}-s{size}-{digest}"


@dataclasses.dataclass
class CachedSource:
    """A :class:`Source` read from a cache file; pickles as its path (grain workers map the same pages)."""

    name: str
    labels: np.ndarray
    path: Path
    offsets: np.ndarray  # (N + 1,) int64 byte offsets; equal neighbours mark a corrupt record
    shapes: np.ndarray  # (N, 2) int32 (height, width)
    super_labels: np.ndarray | None = None  # carried over from the source (SOP's hierarchical sampler)
    _data: np.memmap | None = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.path, np.uint8, mode="r")
        lo, hi = int(self.offsets[index]), int(self.offsets[index + 1])
        if lo == hi:
            raise CorruptRecordError(f"{self.name}: record {index} could not be decoded when the cache was built")
        height, width = (int(x) for x in self.shapes[index])
        return np.asarray(self._data[lo:hi]).reshape(height, width, 3)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])


def cached(source: Source, size: int, directory: str | Path, num_workers: int = 0) -> CachedSource:
    """The cache of ``source`` at shorter side ``size`` in ``directory``, built (once, with ``num_workers``
    threads) if missing."""
    directory = Path(directory)
    key = cache_key(source, size)
    data_path, index_path = directory / f"{key}.u8", directory / f"{key}.json"
    if not (data_path.is_file() and index_path.is_file()):
        _build(source, size, data_path, index_path, num_workers)
    index = json.loads(index_path.read_text())
    offsets = np.asarray(index["offsets"], np.int64)
    if offsets[-1] != data_path.stat().st_size or len(offsets) != len(source) + 1:
        raise RuntimeError(f"image cache {data_path} does not match its index; delete both files to rebuild it")
    return CachedSource(source.name, np.asarray(source.labels), data_path, offsets,
                        np.asarray(index["shapes"], np.int32).reshape(-1, 2), getattr(source, "super_labels", None))


def _build(source: Source, size: int, data_path: Path, index_path: Path, num_workers: int) -> None:
    data_path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [(start, min(start + _CHUNK, len(source))) for start in range(0, len(source), _CHUNK)]
    log.info("caching %d images of %s (shorter side %d) in %s", len(source), source.name, size, data_path)
    offsets, shapes = [0], []
    tmp_data = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp_data, "wb") as out:
            if num_workers > 0:
                with ThreadPoolExecutor(num_workers) as pool:  # PIL decodes and resizes without the GIL
                    results = pool.map(_decode_chunk, *zip(*[(source, a, b, size) for a, b in chunks]))
                    _write(results, out, offsets, shapes)
            else:
                _write((_decode_chunk(source, a, b, size) for a, b in chunks), out, offsets, shapes)
        tmp_index = index_path.with_name(f".{index_path.name}.{os.getpid()}.tmp")
        tmp_index.write_text(json.dumps({"source": source.name, "size": size, "offsets": offsets,
                                         "shapes": [x for shape in shapes for x in shape]}))
        os.replace(tmp_data, data_path)
        os.replace(tmp_index, index_path)
    finally:
        tmp_data.unlink(missing_ok=True)


def _write(chunks, out, offsets: list[int], shapes: list[tuple[int, int]]) -> None:
    for images in chunks:
        for image in images:
            if image is None:
                shapes.append((0, 0))
            else:
                out.write(np.ascontiguousarray(image, np.uint8).tobytes())
                shapes.append(image.shape[:2])
            offsets.append(offsets[-1] + (0 if image is None else image.size))
