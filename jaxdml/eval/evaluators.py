"""Evaluators: run the model in inference mode over a source (one embedding path) and compute metrics.

``EVALUATORS`` maps ``eval.evaluator`` to a class: ``retrieval`` (exact kNN retrieval metrics of the
``embedding`` output) and ``accuracy`` (top-1 / top-5 of the ``logits`` output). Both read a source through
:func:`predict_source`, with a jitted ``predict(state, images)`` that the trainer builds on the training core.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdml.data import pipeline
from jaxdml.data.sources import Source
from jaxdml.eval.retrieval import retrieval_metrics

log = logging.getLogger(__name__)

Predict = Callable[[Any, jax.Array], jax.Array]  # (state, images) -> outputs (e.g. embeddings or logits)


def predict_source(predict: Predict, state: Any, source: Source, cfg: ml_collections.ConfigDict, mesh: Mesh
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``predict`` over every image of ``source`` (evaluation transform, batches split over the devices):
    (outputs, labels), corrupt records left out with a warning when ``data.skip_corrupt`` is set."""
    d = cfg.data
    devices = mesh.devices.size
    batch_size = -(-cfg.eval.batch_size // devices) * devices
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    maker = pipeline.EvalBatches(source, batch_size, d.image_size, d.resize_size, d.skip_corrupt)
    outputs, labels = [], []
    for batch in pipeline.iterate(maker, 0, len(maker), d.num_workers):
        images = jax.make_array_from_process_local_data(sharding, batch["images"])
        out = np.asarray(predict(state, images))
        outputs.append(out[batch["valid"]])
        labels.append(batch["labels"][batch["valid"]])
    skipped = len(source) - sum(len(x) for x in labels)
    if skipped:
        log.warning("%s: %d corrupt records left out of the evaluation", source.name, skipped)
    return np.concatenate(outputs), np.concatenate(labels)


class Evaluator:
    """``evaluator(state, query, reference) -> metrics`` (fractions) over the model output ``output``."""

    output: ClassVar[str]
    default_selection_metric: ClassVar[str]

    def __init__(self, cfg: ml_collections.ConfigDict, predict: Predict, mesh: Mesh):
        self.cfg, self.predict, self.mesh = cfg, predict, mesh

    @staticmethod
    def metric_names(eval_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
        raise NotImplementedError

    def outputs(self, state: Any, source: Source) -> tuple[np.ndarray, np.ndarray]:
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
        q, ql = self.outputs(state, query)
        r, rl = self.outputs(state, reference) if reference is not None else (None, None)
        metrics = retrieval_metrics(q, ql, r, rl, ks=tuple(self.cfg.eval.ks), clustering=self.cfg.eval.clustering,
                                    seed=self.cfg.seed)
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics


class AccuracyEvaluator(Evaluator):
    """Top-1 and top-5 accuracy of the logits on the query set (the reference set is not used)."""

    output = "logits"
    default_selection_metric = "accuracy"

    @staticmethod
    def metric_names(eval_cfg: ml_collections.ConfigDict) -> tuple[str, ...]:
        return ("accuracy", "top5_accuracy")

    def __call__(self, state: Any, query: Source, reference: Source | None = None) -> dict[str, float]:
        del reference
        logits, labels = self.outputs(state, query)
        top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
        return {"accuracy": float(np.mean(top5[:, 0] == labels)),
                "top5_accuracy": float(np.mean(np.any(top5 == labels[:, None], axis=1)))}


# eval.evaluator -> class; the one list of valid names.
EVALUATORS: dict[str, type[Evaluator]] = {"retrieval": RetrievalEvaluator, "accuracy": AccuracyEvaluator}
