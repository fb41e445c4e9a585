"""Evaluators: run the model in inference mode over a source (one embedding path) and compute metrics.

``EVALUATORS`` maps ``eval.evaluator`` to a class: ``retrieval`` (exact kNN retrieval metrics of the
``embedding`` output) and ``accuracy`` (top-1 / top-5 of the ``logits`` output). Both read a source through
:func:`predict_source`, with a jitted ``predict(state, images)`` that the trainer builds on the training core.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdml import distributed
from jaxdml.data import pipeline
from jaxdml.data.sources import Source
from jaxdml.eval.pictures import retrieval_picture
from jaxdml.eval.retrieval import retrieval_metrics

log = logging.getLogger(__name__)

Predict = Callable[[Any, jax.Array], jax.Array]  # (state, images) -> outputs (e.g. embeddings or logits)


@dataclasses.dataclass(frozen=True)
class Outputs:
    """A model output over a source, left on the devices: ``values`` is sharded by rows over the mesh (row ``i``
    holds record ``i``; each device's part ends with padding), ``labels`` and ``valid`` are host arrays of the same
    length, equal on every process (padding and corrupt records are not ``valid``)."""

    values: jax.Array
    labels: np.ndarray
    valid: np.ndarray


def _local_devices(mesh: Mesh) -> tuple[int, int]:
    """``[lo, hi)``: the positions of this process's devices in the mesh (contiguous, see ``create_mesh``)."""
    mine = [i for i, d in enumerate(mesh.devices.flat) if d.process_index == jax.process_index()]
    if mine != list(range(mine[0], mine[-1] + 1)):
        raise ValueError("the mesh must hold each process's devices next to each other (jaxdml.train.create_mesh)")
    return mine[0], mine[-1] + 1


def predict_source(predict: Predict, state: Any, source: Source, cfg: ml_collections.ConfigDict, mesh: Mesh
                   ) -> Outputs:
    """``predict`` over every image of ``source`` (evaluation transform), each device taking a contiguous part of
    the source and each process reading only its devices' parts (:class:`~jaxdml.data.pipeline.EvalBatches`); the
    outputs stay sharded over the devices, in record order. Corrupt records are left out (``valid``) with a
    warning when ``data.skip_corrupt`` is set."""
    d = cfg.data
    devices = mesh.devices.size
    lo, hi = _local_devices(mesh)
    maker = pipeline.EvalBatches(source=source, device_batch=-(-cfg.eval.batch_size // devices),
                                 image_size=d.image_size, resize_size=d.resize_size, skip_corrupt=d.skip_corrupt,
                                 devices=devices, device_lo=lo, device_hi=hi)
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    parts: dict[Any, list[jax.Array]] = {}
    valid = []
    for batch in pipeline.iterate(maker, 0, len(maker), d.num_workers):
        out = predict(state, jax.make_array_from_process_local_data(sharding, batch["images"]))
        for shard in out.addressable_shards:
            parts.setdefault(shard.device, []).append(shard.data)
        valid.append(batch["valid"].reshape(hi - lo, maker.device_batch))
    rows = devices * maker.rows_per_device
    shape = (rows, *out.shape[1:])
    arrays = [jnp.concatenate(parts[device]) for device in sharding.addressable_devices_indices_map(shape)]
    values = jax.make_array_from_single_device_arrays(shape, sharding, arrays)
    local_valid = np.concatenate(valid, axis=1).reshape(-1)  # (local devices, rows per device), flattened
    if distributed.multi_process():
        from jax.experimental import multihost_utils

        local_valid = multihost_utils.process_allgather(local_valid, tiled=True)
    labels = np.full(rows, -1, np.int64)
    labels[:len(source)] = source.labels
    skipped = len(source) - int(local_valid.sum())
    if skipped and distributed.is_primary():
        log.warning("%s: %d corrupt records left out of the evaluation", source.name, skipped)
    return Outputs(values, labels, np.asarray(local_valid, bool))


class Evaluator:
    """``evaluator(state, query, reference) -> metrics`` (fractions) over the model output ``output``."""

    output: ClassVar[str]
    default_selection_metric: ClassVar[str]

    def __init__(self, cfg: ml_collections.ConfigDict, predict: Predict, mesh: Mesh):
        self.cfg, self.predict, self.mesh = cfg, predict, mesh
        self.keep_outputs = False  # keep the last call's sources and outputs in ``last`` (for a picture)
        self.last: tuple[Source, Outputs, Source | None, Outputs | None] | None = None

    @staticmethod
    def metric_names(eval_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
        raise NotImplementedError

    def outputs(self, state: Any, source: Source) -> Outputs:
        return predict_source(self.predict, state, source, self.cfg, self.mesh)

    def __call__(self, state: Any, query: Source, reference: Source | None = None) -> dict[str, float]:
        raise NotImplementedError


class RetrievalEvaluator(Evaluator):
    """P@1, R-precision, MAP@R, Recall@K (and NMI / AMI) of the embeddings, pytorch-metric-learning's definitions."""

    output = "embedding"
    default_selection_metric = "map_at_r"

    @staticmethod
    def metric_names(eval_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
        names = ("precision_at_1", "r_precision", "map_at_r", *(f"recall_at_{k}" for k in eval_cfg.ks))
        return (*names, "nmi", "ami") if eval_cfg.clustering else names

    def __call__(self, state: Any, query: Source, reference: Source | None = None) -> dict[str, float]:
        start = time.perf_counter()
        q = self.outputs(state, query)
        r = self.outputs(state, reference) if reference is not None else None
        metrics = self.score(q, r)
        metrics["eval_seconds"] = time.perf_counter() - start
        if self.keep_outputs:
            self.last = (query, q, reference, r)
        return metrics

    def picture(self) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """The retrieval picture (:mod:`jaxdml.eval.pictures`: ``eval.pictures`` queries, ``eval.picture_k``
        neighbours) of the last call's embeddings, kept with ``keep_outputs``; they are released. None when there
        are none (or nothing to show)."""
        if self.last is None or not self.cfg.eval.pictures:
            self.last = None
            return None
        (query, q, reference, r), self.last = self.last, None
        d = self.cfg.data
        return retrieval_picture(q.values, q.labels, q.valid, query, r and r.values, r and r.labels, r and r.valid,
                                 reference, queries=self.cfg.eval.pictures, k=self.cfg.eval.picture_k,
                                 image_size=d.image_size, resize_size=d.resize_size, mesh=self.mesh)

    def score(self, query: Outputs, reference: Outputs | None = None) -> dict[str, float]:
        """The metrics of given embeddings (e.g. several models' outputs concatenated)."""
        r = reference
        return retrieval_metrics(query.values, query.labels, r and r.values, r and r.labels,
                                 ks=tuple(self.cfg.eval.ks), clustering=self.cfg.eval.clustering, seed=self.cfg.seed,
                                 mesh=self.mesh, query_valid=query.valid, reference_valid=r and r.valid)


class AccuracyEvaluator(Evaluator):
    """Top-1 and top-5 accuracy of the logits on the query set (the reference set is not used)."""

    output = "logits"
    default_selection_metric = "accuracy"

    @staticmethod
    def metric_names(eval_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
        return ("accuracy", "top5_accuracy")

    def __call__(self, state: Any, query: Source, reference: Source | None = None) -> dict[str, float]:
        del reference
        out = self.outputs(state, query)
        sharding = out.values.sharding
        labels, valid = (jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index])
                         for a in (out.labels.astype(np.int32), out.valid))
        top1, top5 = _top_k_hits(out.values, labels, valid)
        total = int(out.valid.sum())
        return {"accuracy": float(top1) / total, "top5_accuracy": float(top5) / total}


@jax.jit
def _top_k_hits(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """How many valid rows have their label first, and among the first five (ties: the lower class first, as a
    stable sort would order them)."""
    _, top = jax.lax.top_k(logits.astype(jnp.float32), min(5, logits.shape[-1]))
    hits = top == labels[:, None]
    return jnp.sum(hits[:, 0] & valid), jnp.sum(jnp.any(hits, axis=1) & valid)


# eval.evaluator -> class; the one list of valid names.
EVALUATORS: dict[str, type[Evaluator]] = {"retrieval": RetrievalEvaluator, "accuracy": AccuracyEvaluator}
