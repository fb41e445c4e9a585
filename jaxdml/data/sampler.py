"""Batch samplers as pure functions of (seed, step).

Every sampler here maps a step number to the record indices of that step's batch
(:meth:`batch_indices`), depending only on ``(seed, step)``: a run resumed at step ``s`` sees exactly the
batches an uninterrupted run sees, and every host of a multi-host job computes the same global batch
without communication. Batches have a fixed size (static shapes under ``jit``) and come grouped by class.

* :class:`MPerClassSampler`: ``classes_per_batch`` classes with ``samples_per_class`` images each (the DML
  standard, pytorch-metric-learning's ``MPerClassSampler``).
* :class:`OnePerClassSampler`: ``batch_size`` distinct classes with one image each, every class once per
  class epoch (e.g. one embedding per class to re-initialise proxies, as CCP does).
* :class:`ShuffleSampler`: uniform batches without replacement within an epoch (classification training).
* :class:`HierarchicalSampler`: PML's ``HierarchicalSampler`` (FastAP-style): a batch draws from
  ``super_classes_per_batch`` super-classes, each contributing an equal share of classes with
  ``samples_per_class`` images each.

Unlike PML's samplers they also cover the data evenly: classes (and super-classes) are visited in a fresh
permutation per *class epoch*, and each class walks through its images in per-class permutations, so every
image is seen before any is repeated (up to the leftover classes of a class epoch and a rare replacement
where a batch straddles two permutations). A class with fewer than ``samples_per_class`` images repeats
images within the batch; larger classes never do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxdml.errors import ConfigError

# Independent random streams (2 is the pipeline's augmentation stream).
_CLASS_ORDER, _ITEM_ORDER = 0, 1
_ONE_CLASS_ORDER, _ONE_ITEM_ORDER, _ONE_FILL_ORDER = 3, 4, 5
_SUPER_ORDER, _SUB_CLASS_ORDER = 6, 7
_SHUFFLE_ORDER = 8


def _class_members(labels: np.ndarray) -> tuple[np.ndarray, ...]:
    """Sorted record indices of each class ``0..C-1``; an error if some class id in that range has no record."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    num_classes = int(labels.max()) + 1 if labels.size else 0
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(num_classes + 1))
    members = tuple(order[bounds[c]:bounds[c + 1]] for c in range(num_classes))
    if any(len(m) == 0 for m in members):
        raise ValueError("labels must be contiguous class ids 0..C-1 (some class has no sample)")
    return members


def _stream(members: np.ndarray, key: tuple[int, ...], start: int, count: int) -> np.ndarray:
    """Positions ``start..start+count`` of the endless stream of random permutations of ``members``.

    Permutation ``b`` of the stream is drawn from ``key + (b,)``, so any window is computed without the ones
    before it. A window of at most ``len(members)`` items holds no repeat.
    """
    n = len(members)
    out = np.empty(count, dtype=np.int64)
    for block in range(start // n, (start + count - 1) // n + 1):
        perm = np.random.default_rng([*key, block]).permutation(n)
        lo, hi = max(start, block * n), min(start + count, (block + 1) * n)
        out[lo - start:hi - start] = members[perm[lo - block * n:hi - block * n]]
    if count <= n and len(np.unique(out)) < count:
        # The window straddles two permutations and drew an item twice: replace the repeats by unused
        # items, in the order of the last permutation (PML never repeats within a class either).
        _, first = np.unique(out, return_index=True)
        repeats = np.setdiff1d(np.arange(count), first)
        used = set(out.tolist())
        unused = [m for m in members[perm] if m not in used]
        out[repeats] = unused[:len(repeats)]
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class MPerClassSampler:
    labels: np.ndarray
    classes_per_batch: int
    samples_per_class: int
    seed: int = 0
    members: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        members = _class_members(self.labels)
        num_classes = len(members)
        if self.classes_per_batch > num_classes:
            raise ValueError(
                f"classes_per_batch={self.classes_per_batch} exceeds the {num_classes} classes of the "
                f"training set; lower train.batch_size or raise data.samples_per_class.")
        if self.classes_per_batch < 1 or self.samples_per_class < 1:
            raise ValueError("classes_per_batch and samples_per_class must be positive")
        object.__setattr__(self, "members", members)

    @property
    def num_classes(self) -> int:
        return len(self.members)

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    @property
    def steps_per_class_epoch(self) -> int:
        return self.num_classes // self.classes_per_batch

    def batch_indices(self, step: int) -> np.ndarray:
        """Record indices (``batch_size``,) of batch ``step``, grouped by class."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.steps_per_class_epoch)
        order = np.random.default_rng([self.seed, _CLASS_ORDER, epoch]).permutation(self.num_classes)
        classes = order[position * self.classes_per_batch:(position + 1) * self.classes_per_batch]
        m = self.samples_per_class
        return np.concatenate([_stream(self.members[c], (self.seed, _ITEM_ORDER, int(c)), epoch * m, m)
                               for c in classes])


@dataclasses.dataclass(frozen=True, eq=False)
class OnePerClassSampler:
    """Batches of ``batch_size`` distinct classes, one image each; every class once per class epoch.

    A class epoch is ``ceil(num_classes / batch_size)`` steps over a fresh permutation of the classes; when
    ``batch_size`` does not divide ``num_classes`` its last batch is filled up with classes from the start of
    the permutation (still distinct within the batch), with images from a separate random stream, so that a
    class's first visits walk through all of its images before repeating any.
    """

    labels: np.ndarray
    batch_size: int
    seed: int = 0
    members: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        members = _class_members(self.labels)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")
        if self.batch_size > len(members):
            raise ValueError(
                f"batch_size={self.batch_size} exceeds the {len(members)} classes of the training set, so a "
                f"batch cannot hold distinct classes; lower train.batch_size to at most {len(members)}.")
        object.__setattr__(self, "members", members)

    @property
    def num_classes(self) -> int:
        return len(self.members)

    @property
    def steps_per_class_epoch(self) -> int:
        return -(-self.num_classes // self.batch_size)

    def batch_indices(self, step: int) -> np.ndarray:
        """Record indices (``batch_size``,) of batch ``step``, one per class, the classes distinct."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.steps_per_class_epoch)
        order = np.random.default_rng([self.seed, _ONE_CLASS_ORDER, epoch]).permutation(self.num_classes)
        slots = np.arange(position * self.batch_size, (position + 1) * self.batch_size)
        out = np.empty(self.batch_size, dtype=np.int64)
        for i, slot in enumerate(slots):
            cls = int(order[slot % self.num_classes])
            stream = _ONE_ITEM_ORDER if slot < self.num_classes else _ONE_FILL_ORDER  # second visit: fill-up
            out[i] = _stream(self.members[cls], (self.seed, stream, cls), epoch, 1)[0]
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class HierarchicalSampler:
    """PML's ``HierarchicalSampler`` (FastAP-style batches from few super-classes), pure in (seed, step).

    A batch holds ``super_classes_per_batch`` distinct super-classes; each contributes
    ``batch_size / super_classes_per_batch`` records as distinct classes of that super-class with
    ``samples_per_class`` images each (PML's composition; PML's ``samples_per_class="all"`` and its short
    batches from super-classes with too few classes are left out: batch shapes are static here). Batches
    come grouped by super-class, then by class.

    Coverage: the super-classes are visited in a fresh permutation per *super epoch*
    (``num_super_classes // super_classes_per_batch`` steps), rather than PML's every-tuple-equally epoch
    (the same pair frequencies in expectation, without enumerating all tuples); each super-class walks
    through its classes in permutations, and each class through its images.
    """

    labels: np.ndarray
    super_labels: np.ndarray
    batch_size: int
    samples_per_class: int
    super_classes_per_batch: int = 2
    seed: int = 0
    members: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)
    super_members: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)  # class ids per super-class
    super_ids: np.ndarray = dataclasses.field(init=False, repr=False)  # super_labels value of each super-class

    def __post_init__(self) -> None:
        members = _class_members(self.labels)
        labels, super_labels = np.asarray(self.labels), np.asarray(self.super_labels)
        if super_labels.shape != labels.shape:
            raise ValueError(f"super_labels {super_labels.shape} and labels {labels.shape} must have one entry "
                             f"per record (the source's super_labels; only SOP has them)")
        k, m, b = self.super_classes_per_batch, self.samples_per_class, self.batch_size
        if k < 1 or m < 1 or b < 1:
            raise ValueError(f"batch_size={b}, samples_per_class={m} and super_classes_per_batch={k} must be "
                             f"positive")
        super_of_class = np.array([super_labels[ids[0]] for ids in members])
        for c, ids in enumerate(members):
            if (super_labels[ids] != super_of_class[c]).any():
                raise ValueError(f"class {c} has records in super-classes {sorted(set(super_labels[ids].tolist()))}"
                                 f"; every class must lie in one super-class")
        super_ids, super_index = np.unique(super_of_class, return_inverse=True)
        super_members = tuple(np.flatnonzero(super_index == s) for s in range(len(super_ids)))
        if k > len(super_ids):
            raise ValueError(f"data.super_classes_per_batch={k} exceeds the {len(super_ids)} super-classes of the "
                             f"training set; lower data.super_classes_per_batch.")
        if b % k:
            raise ValueError(f"train.batch_size={b} is not divisible by data.super_classes_per_batch={k}; choose "
                             f"e.g. train.batch_size={max(b // (k * m), 1) * k * m}.")
        if (b // k) % m:
            raise ValueError(f"each super-class's share train.batch_size / data.super_classes_per_batch = {b // k} "
                             f"is not divisible by data.samples_per_class={m}; choose e.g. "
                             f"train.batch_size={max(b // (k * m), 1) * k * m}.")
        need = b // (k * m)
        short = [(int(super_ids[s]), len(c)) for s, c in enumerate(super_members) if len(c) < need]
        if short:
            listed = ", ".join(f"{sid} ({n} classes)" for sid, n in short[:5]) + (", ..." if len(short) > 5 else "")
            raise ValueError(
                f"a batch takes train.batch_size / (data.super_classes_per_batch * data.samples_per_class) = {need} "
                f"distinct classes from each of its super-classes, but super-classes {listed} have fewer; lower "
                f"train.batch_size or raise data.super_classes_per_batch or data.samples_per_class.")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "super_members", super_members)
        object.__setattr__(self, "super_ids", super_ids)

    @property
    def num_classes(self) -> int:
        return len(self.members)

    @property
    def num_super_classes(self) -> int:
        return len(self.super_members)

    @property
    def classes_per_super_class(self) -> int:
        """Distinct classes each super-class of a batch contributes."""
        return self.batch_size // (self.super_classes_per_batch * self.samples_per_class)

    @property
    def steps_per_super_epoch(self) -> int:
        return self.num_super_classes // self.super_classes_per_batch

    def batch_indices(self, step: int) -> np.ndarray:
        """Record indices (``batch_size``,) of batch ``step``, grouped by super-class, then by class."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        k, m, c = self.super_classes_per_batch, self.samples_per_class, self.classes_per_super_class
        epoch, position = divmod(step, self.steps_per_super_epoch)
        order = np.random.default_rng([self.seed, _SUPER_ORDER, epoch]).permutation(self.num_super_classes)
        out = []
        for s in order[position * k:(position + 1) * k]:
            classes = self.super_members[s]
            # Super epoch e takes slice e % slices of the super-class's class permutation number e // slices,
            # so a class appears at most once per permutation ("cycle"), and draws its images at cycle * m.
            cycle, slot = divmod(epoch, len(classes) // c)
            perm = np.random.default_rng([self.seed, _SUB_CLASS_ORDER, int(s), cycle]).permutation(len(classes))
            for cls in classes[perm[slot * c:(slot + 1) * c]]:
                out.append(_stream(self.members[cls], (self.seed, _ITEM_ORDER, int(cls)), cycle * m, m))
        return np.concatenate(out)


@dataclasses.dataclass(frozen=True, eq=False)
class ShuffleSampler:
    """``batch_size`` records per step from an endless stream of permutations of all records (one per epoch).

    The classification sampler (``torch.utils.data.DataLoader(shuffle=True)`` without a short last batch):
    epoch ``e`` is permutation ``e`` of the records, batches run across epoch boundaries, so every record is
    seen once per epoch and the batch size stays static.
    """

    labels: np.ndarray
    batch_size: int
    seed: int = 0
    members: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= len(self.labels):
            raise ValueError(f"batch_size={self.batch_size} must be in [1, {len(self.labels)}] (the training set)")
        object.__setattr__(self, "members", _class_members(self.labels))

    def batch_indices(self, step: int) -> np.ndarray:
        everything = np.arange(len(self.labels))
        return _stream(everything, (self.seed, _SHUFFLE_ORDER), step * self.batch_size, self.batch_size)


def _m_per_class(source: Any, batch_size: int, seed: int, data_cfg: Any) -> MPerClassSampler:
    m = data_cfg.samples_per_class
    return MPerClassSampler(source.labels, classes_per_batch=batch_size // m, samples_per_class=m, seed=seed)


def _hierarchical(source: Any, batch_size: int, seed: int, data_cfg: Any) -> HierarchicalSampler:
    super_labels = getattr(source, "super_labels", None)
    if super_labels is None:
        raise ConfigError(f"data.sampler='hierarchical' needs super-class labels, which {source.name} does not have "
                          f"(stanford_online_products has them, with data.val_fraction=0).")
    return HierarchicalSampler(source.labels, super_labels, batch_size=batch_size,
                               samples_per_class=data_cfg.samples_per_class,
                               super_classes_per_batch=data_cfg.super_classes_per_batch, seed=seed)


# data.sampler -> builder(source, global batch size, seed, data section); the one list of valid names.
SAMPLERS: dict[str, Callable[..., Any]] = {
    "m_per_class": _m_per_class,
    "one_per_class": lambda source, batch_size, seed, _: OnePerClassSampler(source.labels, batch_size, seed=seed),
    "hierarchical": _hierarchical,
    "shuffle": lambda source, batch_size, seed, _: ShuffleSampler(source.labels, batch_size, seed=seed),
}
# Samplers whose batches are whole groups of data.samples_per_class images per class.
GROUPED_SAMPLERS = ("m_per_class", "hierarchical")


def build_sampler(data_cfg: Any, source: Any, batch_size: int, seed: int) -> Any:
    """The sampler ``data_cfg.sampler`` names over the training ``source``."""
    return SAMPLERS[data_cfg.sampler](source, batch_size, seed, data_cfg)
