"""M-per-class batch sampling as a pure function of (seed, step).

A batch holds ``classes_per_batch`` classes with ``samples_per_class`` images each (the DML standard,
pytorch-metric-learning's ``MPerClassSampler``). Because :meth:`MPerClassSampler.batch_indices` depends
only on ``(seed, step)``, a run resumed at step ``s`` sees exactly the batches an uninterrupted run sees,
and every host of a multi-host job computes the same global batch without communication.

Unlike PML's sampler it also covers the data evenly: the classes are visited in a fresh permutation per
*class epoch* (``num_classes // classes_per_batch`` steps), and each class walks through its images in
per-class permutations, so every image is seen before any is repeated (up to the leftover classes of a
class epoch and a rare replacement where a batch straddles two permutations). A class with fewer than
``samples_per_class`` images repeats images within the batch; larger classes never do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_CLASS_ORDER, _ITEM_ORDER = 0, 1  # independent random streams


@dataclasses.dataclass(frozen=True, eq=False)
class MPerClassSampler:
    labels: np.ndarray
    classes_per_batch: int
    samples_per_class: int
    seed: int = 0
    members: tuple[np.ndarray, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        num_classes = int(labels.max()) + 1 if labels.size else 0
        members = tuple(np.flatnonzero(labels == c) for c in range(num_classes))
        if any(len(m) == 0 for m in members):
            raise ValueError("labels must be contiguous class ids 0..C-1 (some class has no sample)")
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
        return np.concatenate([self._items(int(c), epoch * m, m) for c in classes])

    def _items(self, cls: int, start: int, count: int) -> np.ndarray:
        """Positions ``start..start+count`` of class ``cls``'s endless stream of permutations."""
        members = self.members[cls]
        n = len(members)
        out = np.empty(count, dtype=np.int64)
        for block in range(start // n, (start + count - 1) // n + 1):
            perm = np.random.default_rng([self.seed, _ITEM_ORDER, cls, block]).permutation(n)
            lo, hi = max(start, block * n), min(start + count, (block + 1) * n)
            out[lo - start:hi - start] = members[perm[lo - block * n:hi - block * n]]
        if count <= n and len(np.unique(out)) < count:
            # The batch straddles two permutations and drew an image twice: replace the repeats by
            # unused images, in the order of the last permutation (PML never repeats within a class either).
            _, first = np.unique(out, return_index=True)
            repeats = np.setdiff1d(np.arange(count), first)
            unused = [m for m in members[perm] if m not in set(out)]
            out[repeats] = unused[:len(repeats)]
        return out
