"""Metric learning: an embedding model (backbone -> pooling head) trained with the configured objective (losses,
miner, cross-batch memory, ZSR) and selected by retrieval metrics.

From an experiment file: ``jaxdml/main.py`` -> :class:`MetricLearningTrainer` (here) -> the jitted step of
``jaxdml/train/step.py``.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdml.errors import ConfigError
from jaxdml.losses import make_objective
from jaxdml.models import BACKBONES, build_model
from jaxdml.models.convert import check_fits, load_pretrained
from jaxdml.models.model import has_refresh
from jaxdml.train.state import TrainState
from jaxdml.train.step import StepContext, refresh_fn
from jaxdml.trainers.base import Procedure, Trainer

log = logging.getLogger(__name__)


def metric_learning_procedure(cfg: ml_collections.ConfigDict, num_classes: int) -> Procedure:
    """The model of ``cfg.model`` and the objective of ``cfg.loss`` (over ``num_classes`` training classes)."""
    model = build_model(cfg.model)
    objective = make_objective(cfg.loss, num_classes=num_classes, embedding_dim=cfg.model.embedding_dim,
                               batch_size=cfg.train.batch_size, embedding_norm=cfg.model.embedding_norm)
    rng = jax.random.key(cfg.seed)
    sample = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3), jnp.uint8)

    def init_fn() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        model_rng, loss_rng = jax.random.split(rng)
        variables = dict(model.init(model_rng, sample, train=False))
        params = dict(variables.pop("params"))
        loss_params, loss_state = objective.init(loss_rng)
        if loss_params:
            params["loss"] = loss_params
        return params, variables, loss_state

    def loss_fn(params: dict[str, Any], outputs: dict[str, jnp.ndarray], batch: dict[str, jnp.ndarray],
                context: StepContext):
        loss, loss_state, metrics = objective(outputs, batch["labels"], params.get("loss", {}), context.loss_state,
                                              context.step)
        norms = jnp.linalg.norm(outputs["embedding"].astype(jnp.float32), axis=-1)
        return loss, loss_state, {**metrics, "embedding_norm": jnp.mean(norms)}

    return Procedure(model, init_fn, loss_fn, post_update=refresh_fn(model) if has_refresh(model) else None)


class MetricLearningTrainer(Trainer):
    """Trains an embedding; evaluates retrieval (P@1, MAP@R, R-precision, Recall@K, NMI/AMI)."""

    default_evaluator = "retrieval"

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        if cfg.model.backbone not in BACKBONES:
            raise ConfigError(f"trainer={cfg.trainer!r} trains the backbones of jaxdml.models.backbones; "
                              f"model.backbone={cfg.model.backbone!r} is not one of {sorted(BACKBONES)}.")
        if cfg.eval.evaluator != "retrieval":
            raise ConfigError(f"trainer={cfg.trainer!r} learns embeddings; set eval.evaluator='retrieval' (or leave "
                              f"it empty), not {cfg.eval.evaluator!r}.")

    def build(self) -> Procedure:
        return metric_learning_procedure(self.cfg, self.num_classes)

    def prepare_state(self, state: TrainState) -> TrainState:
        """With ``model.pretrained``: the backbone's parameters and BatchNorm statistics from that file. Only values
        change, so the optimiser state (zeros at step 0) stays valid."""
        m = self.cfg.model
        if not m.pretrained:
            return state
        loaded = load_pretrained(m.pretrained, m.backbone)
        expected = {"params": state.params["backbone"], "batch_stats": state.model_state["batch_stats"]["backbone"]}
        check_fits(loaded, expected, m.pretrained)
        params = {**state.params, "backbone": loaded["params"]}
        model_state = {**state.model_state,
                       "batch_stats": {**state.model_state["batch_stats"], "backbone": loaded["batch_stats"]}}
        log.info("backbone weights from %s", m.pretrained)
        return jax.device_put(state.replace(params=params, model_state=model_state), self.state_sharding)
