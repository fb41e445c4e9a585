"""The training objective of a config: a DML loss, optionally against a cross-batch memory, plus ZSR.

``total = (1 - zsr.weight) * L_DML + zsr.weight * L_ZSR`` (the released GSP code's weighting, 0.9 / 0.1).
Cross-batch memory (XBM, Wang et al. 2020) as pytorch-metric-learning's ``CrossBatchMemory``: each step
enqueues the batch's (gradient-stopped) embeddings in a ring buffer of ``xbm.batches`` batches and, from
``xbm.start_step`` on, pairs every anchor of the batch with every item of the memory (itself excluded).
Loss parameters (ZSR class embeddings) and loss state (the memory) live in the train state, so they are
checkpointed and sharded like everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxdml.losses.zsr import zero_shot_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    base: Callable[..., jnp.ndarray]  # loss(embeddings, labels, ref_embeddings, ref_labels, *, pair_mask)
    num_classes: int
    embedding_dim: int
    xbm_size: int = 0  # memory slots (batches x batch size); 0 = no memory
    xbm_start_step: int = 0
    zsr_weight: float = 0.0
    zsr_ridge: float = 0.05
    zsr_scale: float = 9.5

    def init(self, rng: jax.Array) -> tuple[dict[str, Any], dict[str, Any]]:
        """(loss parameters, loss state)."""
        params: dict[str, Any] = {}
        if self.zsr_weight > 0:
            params["class_embeddings"] = jax.nn.initializers.he_normal()(
                rng, (self.num_classes, self.embedding_dim), jnp.float32)
        state: dict[str, Any] = {}
        if self.xbm_size:
            state = {"embeddings": jnp.zeros((self.xbm_size, self.embedding_dim), jnp.float32),
                     "labels": jnp.full((self.xbm_size,), -1, jnp.int32),
                     "position": jnp.zeros((), jnp.int32)}
        return params, state

    def __call__(self, outputs: dict[str, jnp.ndarray], labels: jnp.ndarray, params: dict[str, Any],
                 state: dict[str, Any], step: jnp.ndarray) -> tuple[jnp.ndarray, dict[str, Any], dict[str, Any]]:
        """(loss, new loss state, metrics)."""
        embeddings = outputs["embedding"]
        embeddings = embeddings.astype(jnp.promote_types(embeddings.dtype, jnp.float32))
        metrics: dict[str, jnp.ndarray] = {}
        if self.xbm_size:
            state, pair_mask = self._enqueue(state, embeddings, labels)
            dml = jax.lax.cond(
                step >= self.xbm_start_step,
                lambda: self.base(embeddings, labels, state["embeddings"], state["labels"], pair_mask=pair_mask),
                lambda: self.base(embeddings, labels))
        else:
            dml = self.base(embeddings, labels)
        loss = dml
        if self.zsr_weight > 0:
            if "attributes" not in outputs:
                raise ValueError("loss.zsr.weight > 0 needs a head that outputs attributes (model.pooling='gsp')")
            zsr = zero_shot_loss(outputs["attributes"], labels, params["class_embeddings"],
                                 ridge=self.zsr_ridge, scale=self.zsr_scale)
            loss = (1.0 - self.zsr_weight) * dml + self.zsr_weight * zsr
            metrics.update(dml_loss=dml, zsr_loss=zsr)
        return loss, state, metrics

    def _enqueue(self, state: dict[str, Any], embeddings: jnp.ndarray, labels: jnp.ndarray
                 ) -> tuple[dict[str, Any], jnp.ndarray]:
        """Writes the batch at the ring position; returns the new state and the (B, M) valid-pair mask."""
        batch = embeddings.shape[0]
        position = state["position"]
        new_state = {
            "embeddings": jax.lax.dynamic_update_slice(state["embeddings"], jax.lax.stop_gradient(embeddings),
                                                       (position, jnp.zeros_like(position))),
            "labels": jax.lax.dynamic_update_slice(state["labels"], labels.astype(jnp.int32), (position,)),
            "position": (position + batch) % self.xbm_size,
        }
        slots = jnp.arange(self.xbm_size)
        is_self = slots[None, :] == (position + jnp.arange(batch))[:, None]
        return new_state, (new_state["labels"] >= 0)[None, :] & ~is_self


def make_objective(cfg: ml_collections.ConfigDict, base: Callable[..., jnp.ndarray], *, num_classes: int,
                   embedding_dim: int, batch_size: int) -> Objective:
    """The objective described by the ``loss`` section of a config, around the bound DML loss ``base``."""
    if cfg.xbm.batches < 0 or not 0.0 <= cfg.zsr.weight < 1.0:
        raise ValueError(f"loss.xbm.batches must be >= 0 and loss.zsr.weight in [0, 1); got {cfg.xbm.batches}, "
                         f"{cfg.zsr.weight}")
    return Objective(base, num_classes, embedding_dim, xbm_size=cfg.xbm.batches * batch_size,
                     xbm_start_step=cfg.xbm.start_step, zsr_weight=cfg.zsr.weight, zsr_ridge=cfg.zsr.ridge,
                     zsr_scale=cfg.zsr.scale)
