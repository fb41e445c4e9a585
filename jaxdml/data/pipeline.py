"""Host input pipelines: grain datasets of whole batches, deterministic in (seed, step).

One grain element is one batch: ``TrainBatches`` maps a step number to the uint8 images and labels of
that step's M-per-class batch (augmentation randomness is drawn from ``(seed, step)`` too), so resuming
at step ``s`` is just starting the range at ``s``. Worker processes (``data.num_workers``) build batches in
parallel and grain returns them in order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import grain
import numpy as np

from jaxdml.data import transforms
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.data.sources import CorruptRecordError, Source

_AUGMENT = 2  # random stream id, independent of the sampler's streams


def _load(source: Source, index: int, skip_corrupt: bool, alternatives: np.ndarray | None
          ) -> tuple[np.ndarray | None, int]:
    """Image ``index`` (or, with ``skip_corrupt``, the first decodable alternative) and the number skipped."""
    try:
        return source.image(int(index)), 0
    except CorruptRecordError:
        if not skip_corrupt:
            raise
    if alternatives is None:
        return None, 1
    start = int(np.searchsorted(alternatives, index))
    for offset in range(1, len(alternatives)):
        candidate = int(alternatives[(start + offset) % len(alternatives)])
        try:
            return source.image(candidate), offset
        except CorruptRecordError:
            continue
    raise CorruptRecordError(f"{source.name}: every image of the class of record {index} is corrupt")


@dataclasses.dataclass(frozen=True)
class TrainBatches:
    """Callable ``step -> batch`` (picklable, for grain workers)."""

    source: Source
    sampler: MPerClassSampler
    seed: int
    image_size: int
    crop_area: tuple[float, float]
    crop_aspect: tuple[float, float]
    flip: bool
    skip_corrupt: bool = False
    shard_index: int = 0  # this host's slice of the global batch (multi-host runs)
    shard_count: int = 1
    # "random_resized_crop", "pad_crop" (CIFAR: zero-pad ``padding``, random crop, flip), "rotate" (rotation
    # by up to ``degrees`` + flip, Tiny-ImageNet in letKD) or "none" (a random image_size crop, unpadded and
    # unflipped: the image itself when it is image_size already)
    augment: str = "random_resized_crop"
    padding: int = 4
    degrees: float = 20.0

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        indices = np.array_split(self.sampler.batch_indices(int(step)), self.shard_count)[self.shard_index]
        # One stream per (step, host) keeps augmentations a pure function of (seed, step, position).
        rng = np.random.default_rng([self.seed, _AUGMENT, int(step), self.shard_index])
        images = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        skipped = 0
        for slot, index in enumerate(indices):
            label = self.source.labels[index]
            image, n = _load(self.source, index, self.skip_corrupt, self.sampler.members[label])
            skipped += n
            if self.augment == "rotate":
                images[slot] = transforms.rotate_flip_transform(image, rng, degrees=self.degrees, flip=self.flip)
            elif self.augment in ("pad_crop", "none"):
                padding = self.padding if self.augment == "pad_crop" else 0
                images[slot] = transforms.pad_crop_transform(image, rng, size=self.image_size, padding=padding,
                                                             flip=self.flip and self.augment == "pad_crop")
            else:
                images[slot] = transforms.train_transform(
                    image, rng, size=self.image_size, area=tuple(self.crop_area),
                    aspect=tuple(self.crop_aspect), flip=self.flip)
        return {"images": images, "labels": self.source.labels[indices].astype(np.int32),
                "skipped": np.int32(skipped)}


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Callable ``batch number -> batch`` over a source in order; the last batch is padded (``valid``)."""

    source: Source
    batch_size: int
    image_size: int
    resize_size: int
    skip_corrupt: bool = False

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.batch_size)

    def __call__(self, number: int) -> dict[str, np.ndarray]:
        lo = int(number) * self.batch_size
        hi = min(lo + self.batch_size, len(self.source))
        images = np.zeros((self.batch_size, self.image_size, self.image_size, 3), np.uint8)
        labels = np.full((self.batch_size,), -1, np.int32)
        valid = np.zeros((self.batch_size,), bool)
        for slot, index in enumerate(range(lo, hi)):
            image, _ = _load(self.source, index, self.skip_corrupt, None)
            if image is None:  # corrupt and skipped: left out of the evaluation
                continue
            images[slot] = transforms.eval_transform(image, resize_size=self.resize_size, size=self.image_size)
            labels[slot] = self.source.labels[index]
            valid[slot] = True
        return {"images": images, "labels": labels, "valid": valid}


def iterate(make_batch, start: int, stop: int, num_workers: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Batches ``make_batch(i)`` for ``i`` in ``[start, stop)``, built by ``num_workers`` processes."""
    dataset = grain.MapDataset.range(start, stop).map(make_batch).to_iter_dataset()
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain reads its flags in the workers (library use, no app.run)
            flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                                   per_worker_buffer_size=2))
    return iter(dataset)
