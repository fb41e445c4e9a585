"""Random-access, class-labelled image sets: the one interface the pipeline reads.

A *source* has ``labels`` (int32 class ids), ``__len__`` and
``image(i)`` returning an ``uint8`` array ``(H, W, 3)``. Training sources have contiguous ids
``0..num_classes-1`` (the sampler needs them); the query and reference of one dataset share one mapping,
so a query set's ids may skip classes that only its reference set has. The embedded digits set is an
:class:`ArraySource`; real datasets (``jaxdml.data.tfds_sources``) wrap ``tfds.data_source``. Class
re-splits and validation folds are :class:`SubsetSource` views, so no image is copied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from jaxdml.errors import UserError


class DatasetNotPreparedError(UserError, RuntimeError):
    """A real dataset has not been prepared; the message gives the command that prepares it."""


class CorruptRecordError(UserError, RuntimeError):
    """An image record cannot be decoded; the message names the record."""


class Source(Protocol):
    name: str
    labels: np.ndarray  # (N,) int32 class ids

    def __len__(self) -> int: ...

    def image(self, index: int) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class DataSplits:
    """What a run reads: training images, optional validation classes, the test query and reference sets."""

    train: Source
    query: Source  # the test set (In-Shop: its query set)
    reference: Source | None = None  # None: the query set is its own reference (self-matches excluded)
    val: Source | None = None  # class-disjoint held-out training classes (model selection), if any


def num_classes(source: Source) -> int:
    return int(source.labels.max()) + 1 if len(source.labels) else 0


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    return image


@dataclasses.dataclass(frozen=True)
class ArraySource:
    """Images held in memory: ``images`` (N, H, W, C) uint8 and ``labels`` (N,)."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        return as_rgb_uint8(self.images[index])


@dataclasses.dataclass(frozen=True)
class SubsetSource:
    """The records ``indices`` of ``parent``, with their labels remapped to ``0..C-1`` (in sorted order)."""

    name: str
    parent: Source
    indices: np.ndarray
    labels: np.ndarray = dataclasses.field(init=False)
    original_labels: np.ndarray = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64)
        original = np.asarray(self.parent.labels)[indices]
        _, remapped = np.unique(original, return_inverse=True)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "original_labels", original)
        object.__setattr__(self, "labels", remapped.astype(np.int32))

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> np.ndarray:
        return self.parent.image(int(self.indices[index]))


def select_classes(source: Source, classes: Sequence[int] | np.ndarray, name: str) -> SubsetSource:
    """The records of ``source`` whose label is in ``classes``."""
    keep = np.isin(source.labels, np.asarray(classes))
    return SubsetSource(name, source, np.flatnonzero(keep))


def split_validation_classes(source: Source, fraction: float) -> tuple[Source, Source | None]:
    """Holds out the last ``fraction`` of the classes (class-disjoint) for model selection."""
    if fraction <= 0:
        return source, None
    classes = np.unique(source.labels)
    num_val = max(1, round(fraction * len(classes)))
    if num_val >= len(classes):
        raise ValueError(f"{source.name}: val_fraction={fraction} leaves no training classes")
    train = select_classes(source, classes[:-num_val], f"{source.name}[train-classes]")
    val = select_classes(source, classes[-num_val:], f"{source.name}[val-classes]")
    return train, val


def fold_classes(classes: np.ndarray, folds: int, fold: int) -> np.ndarray:
    """The classes of fold ``fold`` of ``folds``: contiguous blocks of the sorted classes, cut at
    ``linspace(0, C, folds + 1)`` rounded down (the GSP/CCP release's ``_datasetFromText``; its model ``i``, counted
    from 1, validates on our fold ``folds - i``)."""
    classes = np.unique(classes)
    bounds = np.linspace(0, len(classes), folds + 1).astype(int)
    return classes[bounds[fold]:bounds[fold + 1]]


def split_fold(source: Source, folds: int, fold: int) -> tuple[Source, Source]:
    """(the other folds' records, fold ``fold``'s records): class-disjoint, for model ``fold`` of the MLRC protocol."""
    if folds > len(np.unique(source.labels)):
        raise ValueError(f"{source.name}: data.folds={folds} is more than its {len(np.unique(source.labels))} "
                         f"training classes")
    held = fold_classes(source.labels, folds, fold)
    rest = np.setdiff1d(np.unique(source.labels), held)
    return (select_classes(source, rest, f"{source.name}[folds!={fold}]"),
            select_classes(source, held, f"{source.name}[fold={fold}]"))
