"""Host input pipelines: grain datasets of whole batches, deterministic in (seed, step).

One grain element is one batch: ``TrainBatches`` maps a step number to the uint8 images and labels of
that step's M-per-class batch (augmentation randomness is drawn from ``(seed, step)`` too), so resuming
at step ``s`` is just starting the range at ``s``. Worker processes (``data.num_workers``) build batches in
parallel and grain returns them in order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from jaxdml.data import transforms
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


def _random_resized_crop(b: TrainBatches, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return transforms.train_transform(image, rng, size=b.image_size, area=tuple(b.crop_area),
                                      aspect=tuple(b.crop_aspect), flip=b.flip)


def _pad_crop(b: TrainBatches, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return transforms.pad_crop_transform(image, rng, size=b.image_size, padding=b.crop_padding, flip=b.flip,
                                         pad_mode=b.pad_mode)


def _rotate(b: TrainBatches, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return transforms.rotate_flip_transform(image, rng, degrees=b.rotation_degrees, flip=b.flip)


def _no_augmentation(b: TrainBatches, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return transforms.pad_crop_transform(image, rng, size=b.image_size, padding=0, flip=False)


# data.augment -> the train transform; the one list of valid names.
AUGMENTATIONS: dict[str, Callable[[TrainBatches, np.ndarray, np.random.Generator], np.ndarray]] = {
    "random_resized_crop": _random_resized_crop,  # area / aspect-ratio ranges, flip
    "pad_crop": _pad_crop,  # CIFAR: pad crop_padding pixels (data.pad_mode), random crop, flip
    "rotate": _rotate,  # rotation by up to rotation_degrees + flip (Tiny-ImageNet in letKD)
    "none": _no_augmentation,  # a random image_size crop, unpadded, unflipped (the image itself at that size)
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainBatches:
    """Callable ``step -> batch`` (picklable, for grain workers); the fields are the ``data`` section's keys."""

    source: Source
    sampler: Any  # any of jaxdml.data.sampler.SAMPLERS: batch_indices(step) and members (per class)
    seed: int
    image_size: int
    augment: str = "random_resized_crop"
    crop_area: tuple[float, float] = (0.16, 1.0)
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    crop_padding: int = 4
    pad_mode: str = "zeros"
    rotation_degrees: float = 20.0
    skip_corrupt: bool = False
    shard_index: int = 0  # this host's slice of the global batch (multi-host runs)
    shard_count: int = 1

    @classmethod
    def from_config(cls, data_cfg: Any, source: Source, sampler: Any, seed: int, **kwargs: Any) -> TrainBatches:
        """The batches a ``data`` config section describes (its keys that are fields of this class)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"source", "sampler", "seed"}
        settings = {k: v for k, v in data_cfg.items() if k in names}
        return cls(source=source, sampler=sampler, seed=seed, **{**settings, **kwargs})

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        batch = self.sampler.batch_indices(int(step))
        positions = np.array_split(np.arange(len(batch)), self.shard_count)[self.shard_index]
        indices = batch[positions]
        images = np.empty((len(indices), self.image_size, self.image_size, 3), np.uint8)
        transform = AUGMENTATIONS[self.augment]
        skipped = 0
        for slot, (position, index) in enumerate(zip(positions, indices)):
            label = self.source.labels[index]
            image, n = _load(self.source, index, self.skip_corrupt, self.sampler.members[label])
            skipped += n
            # One stream per image, keyed by its place in the global batch: the augmentation is the same whichever
            # host builds it, so a run gives the same batches on any number of hosts.
            rng = np.random.default_rng([self.seed, _AUGMENT, int(step), int(position)])
            images[slot] = transform(self, image, rng)
        return {"images": images, "labels": self.source.labels[indices].astype(np.int32),
                "skipped": np.int32(skipped)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalBatches:
    """Callable ``batch number -> this host's part of a global evaluation batch``, in the sharded layout.

    The ``devices`` devices of the mesh split the source into contiguous parts of :attr:`rows_per_device` rows
    (device ``j`` holds rows ``[j * S, (j + 1) * S)``, the last ones padded); global batch ``b`` gives every device
    the next ``device_batch`` rows of its part. This host builds the rows of its devices ``[device_lo, device_hi)``
    only, so it reads its own contiguous share of the source, and the outputs of all batches, kept on their
    devices, form one array sharded by rows whose row ``i`` is record ``i``. Padding and records skipped as
    corrupt have ``valid = False``.
    """

    source: Source
    device_batch: int
    image_size: int
    resize_size: int
    skip_corrupt: bool = False
    devices: int = 1
    device_lo: int = 0
    device_hi: int = 1

    @property
    def rows_per_device(self) -> int:
        """Rows of the source per device (a whole number of batches; at least one)."""
        per_device = max(1, math.ceil(len(self.source) / self.devices))
        return math.ceil(per_device / self.device_batch) * self.device_batch

    def __len__(self) -> int:
        return self.rows_per_device // self.device_batch

    def rows(self) -> np.ndarray:
        """The record numbers (padding included) of this host's devices, in the order the batches hold them."""
        per = self.rows_per_device
        return np.concatenate([np.arange(j * per, (j + 1) * per) for j in range(self.device_lo, self.device_hi)])

    def __call__(self, number: int) -> dict[str, np.ndarray]:
        per, size = self.rows_per_device, self.device_batch
        slots = (self.device_hi - self.device_lo) * size
        images = np.zeros((slots, self.image_size, self.image_size, 3), np.uint8)
        labels = np.full((slots,), -1, np.int32)
        valid = np.zeros((slots,), bool)
        for d, device in enumerate(range(self.device_lo, self.device_hi)):
            lo = device * per + int(number) * size
            for slot, index in enumerate(range(lo, min(lo + size, len(self.source))), start=d * size):
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
