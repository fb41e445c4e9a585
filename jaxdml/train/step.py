"""The train state and the (un-jitted) train and embed steps; ``loop.py`` jits them with shardings.

A non-finite loss or gradient never reaches the parameters: the step keeps the last good state and
records the first bad step in ``state.nonfinite_step``, which the host reads at its next sync point, so
divergence is reported with the exact step without a device-to-host sync every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

MODEL_GROUPS = ("backbone", "head")


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: batches consumed
    params: dict[str, Any]  # parameter groups: backbone, head (+ loss parameters)
    batch_stats: dict[str, Any]
    opt_state: optax.OptState
    nonfinite_step: jnp.ndarray  # int32 scalar: first step with a non-finite loss/gradient, or -1


def model_variables(params: dict[str, Any], batch_stats: dict[str, Any]) -> dict[str, Any]:
    return {"params": {g: params[g] for g in MODEL_GROUPS}, "batch_stats": batch_stats}


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               sample_images: jnp.ndarray) -> TrainState:
    """Initial parameters, BN statistics and optimiser state (pure; jit it with out_shardings)."""
    variables = model.init(rng, sample_images, train=False)
    params = dict(variables["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      nonfinite_step=jnp.full((), -1, jnp.int32))


def _all_finite(tree: Any) -> jnp.ndarray:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_train_step(model: nn.Module, loss_fn: Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray],
                    tx: optax.GradientTransformation) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)`` for ``batch = {"images", "labels"}``."""

    def train_step(state: TrainState, batch: dict[str, jnp.ndarray]) -> tuple[TrainState, dict]:
        def objective(params: dict[str, Any]) -> tuple[jnp.ndarray, tuple[Any, jnp.ndarray]]:
            embeddings, updates = model.apply(model_variables(params, state.batch_stats), batch["images"],
                                              train=True, mutable=["batch_stats"])
            loss = loss_fn(embeddings.astype(jnp.float32), batch["labels"])
            return loss, (updates["batch_stats"], embeddings)

        (loss, (batch_stats, embeddings)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)

        finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
        healthy = state.nonfinite_step < 0
        accept = finite & healthy

        def keep_if_bad(new: Any, old: Any) -> Any:
            return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_bad(params, state.params),
            batch_stats=keep_if_bad(batch_stats, state.batch_stats),
            opt_state=keep_if_bad(opt_state, state.opt_state),
            nonfinite_step=jnp.where(healthy & ~finite, state.step, state.nonfinite_step),
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "embedding_norm": jnp.mean(jnp.linalg.norm(embeddings.astype(jnp.float32), axis=-1))}
        return new_state, metrics

    return train_step


def make_embed_step(model: nn.Module) -> Callable[[TrainState, jnp.ndarray], jnp.ndarray]:
    """``embed(state, images) -> float32 embeddings`` in inference mode."""

    def embed(state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
        return model.apply(model_variables(state.params, state.batch_stats), images, train=False)

    return embed
