"""The train state and the (un-jitted) train and embed steps; ``loop.py`` jits them with shardings.

A non-finite loss or gradient never reaches the parameters: the step keeps the last good state and
records the first bad step in ``state.nonfinite_step``, which the host reads at its next sync point, so
divergence is reported with the exact step without a device-to-host sync every step.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdml.losses.objective import Objective

MODEL_GROUPS = ("backbone", "head")


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: batches consumed
    params: dict[str, Any]  # parameter groups: backbone, head (+ loss: e.g. ZSR class embeddings)
    model_state: dict[str, Any]  # the model's other collections: batch_stats, GSP memory
    loss_state: dict[str, Any]  # e.g. the cross-batch memory
    opt_state: optax.OptState
    nonfinite_step: jnp.ndarray  # int32 scalar: first step with a non-finite loss/gradient, or -1


def model_variables(params: dict[str, Any], model_state: dict[str, Any]) -> dict[str, Any]:
    return {"params": {g: params[g] for g in MODEL_GROUPS}, **model_state}


def init_variables(model: nn.Module, objective: Objective, rng: jax.Array, sample_images: jnp.ndarray
                   ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(params, model_state, loss_state) of a fresh run."""
    model_rng, loss_rng = jax.random.split(rng)
    variables = dict(model.init(model_rng, sample_images, train=False))
    params = dict(variables.pop("params"))
    loss_params, loss_state = objective.init(loss_rng)
    if loss_params:
        params["loss"] = loss_params
    return params, variables, loss_state


def init_state(model: nn.Module, objective: Objective, tx: optax.GradientTransformation, rng: jax.Array,
               sample_images: jnp.ndarray) -> TrainState:
    """The initial train state (pure; jit it with out_shardings)."""
    params, model_state, loss_state = init_variables(model, objective, rng, sample_images)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                      loss_state=loss_state, opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))


def _all_finite(tree: Any) -> jnp.ndarray:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def _apply(model: nn.Module, variables: dict[str, Any], *args: Any, mutable: list[str], **kwargs: Any
           ) -> tuple[Any, dict[str, Any]]:
    if not mutable:
        return model.apply(variables, *args, **kwargs), {}
    out, updated = model.apply(variables, *args, mutable=mutable, **kwargs)
    return out, dict(updated)


def make_train_step(model: nn.Module, objective: Objective, tx: optax.GradientTransformation):
    """``train_step(state, batch) -> (state, metrics)`` for ``batch = {"images", "labels"}``."""

    def train_step(state: TrainState, batch: dict[str, jnp.ndarray]) -> tuple[TrainState, dict]:
        collections = list(state.model_state)

        def objective_fn(params: dict[str, Any]):
            outputs, model_state = _apply(model, model_variables(params, state.model_state), batch["images"],
                                          train=True, mutable=collections)
            loss, loss_state, loss_metrics = objective(outputs, batch["labels"], params.get("loss", {}),
                                                       state.loss_state, state.step)
            return loss, (model_state, loss_state, outputs["embedding"], loss_metrics)

        (loss, aux), grads = jax.value_and_grad(objective_fn, has_aux=True)(state.params)
        model_state, loss_state, embeddings, loss_metrics = aux
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # Updates that are not gradient steps (GSP prototypes from k-center once its memory is full).
        _, refreshed = _apply(model, model_variables(params, model_state), method=type(model).refresh,
                              mutable=["params", *collections])
        params = {**params, **refreshed.pop("params")}
        model_state = {**model_state, **refreshed}

        new_state = guarded_update(state, loss, grads, params, model_state, loss_state, opt_state)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "embedding_norm": jnp.mean(jnp.linalg.norm(embeddings.astype(jnp.float32), axis=-1)),
                   **loss_metrics}
        return new_state, metrics

    return train_step


def guarded_update(state: TrainState, loss: jnp.ndarray, grads: Any, params: Any, model_state: Any, loss_state: Any,
                   opt_state: Any) -> TrainState:
    """The next state, or the current one unchanged (step still counted) if the loss, a gradient or a new
    parameter is not finite; the first such step is recorded in ``nonfinite_step`` and nothing is applied
    from then on (the loop reports it and stops at the next check)."""
    finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(params)
    healthy = state.nonfinite_step < 0
    accept = finite & healthy

    def keep_if_bad(new: Any, old: Any) -> Any:
        return jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, old)

    return TrainState(
        step=state.step + 1,
        params=keep_if_bad(params, state.params),
        model_state=keep_if_bad(model_state, state.model_state),
        loss_state=keep_if_bad(loss_state, state.loss_state),
        opt_state=keep_if_bad(opt_state, state.opt_state),
        nonfinite_step=jnp.where(healthy & ~finite, state.step, state.nonfinite_step),
    )


def make_embed_step(model: nn.Module):
    """``embed(state, images) -> float32 embeddings`` in inference mode."""

    def embed(state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
        return model.apply(model_variables(state.params, state.model_state), images, train=False)["embedding"]

    return embed
