"""The one train step of every procedure, built from a model, a loss function and an optimiser, and jitted.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``, compiled with ``jax.jit`` over the mesh:
the batch is split over the ``data`` axis, the state replicated and donated. The loss function sees what any
procedure needs: the parameters, the model's outputs, the batch and a :class:`StepContext` (step, loss state,
the state's hook-owned ``extra`` arrays, and the ``frozen`` arrays passed as an argument, e.g. a teacher).

A non-finite loss or gradient never reaches the parameters: the step keeps the last good state and records
the first bad step in ``state.nonfinite_step``, which the host reads at its next sync point, so divergence is
reported with the exact step without a device-to-host sync every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdml.train.state import TrainState, model_variables


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a loss function may read besides parameters, outputs and batch (all traced arrays)."""

    step: jnp.ndarray  # the step being taken (0-based)
    loss_state: dict[str, Any]  # the objective's state (e.g. a cross-batch memory)
    extra: dict[str, Any]  # hook-owned arrays of the state (e.g. a snapshot of earlier weights)
    frozen: Any  # arrays passed to the step, never optimised nor checkpointed (a teacher, its artefacts)


# loss_fn(params, outputs, batch, context) -> (loss, new loss_state, metrics)
LossFn = Callable[[dict[str, Any], Any, dict[str, jnp.ndarray], StepContext],
                  tuple[jnp.ndarray, dict[str, Any], dict[str, jnp.ndarray]]]


def apply_model(model: nn.Module, variables: dict[str, Any], *args: Any, mutable: list[str], **kwargs: Any
                ) -> tuple[Any, dict[str, Any]]:
    """``model.apply`` returning ``(outputs, updated collections)`` (empty when nothing is mutable)."""
    if not mutable:
        return model.apply(variables, *args, **kwargs), {}
    out, updated = model.apply(variables, *args, mutable=mutable, **kwargs)
    return out, dict(updated)


def refresh_fn(model: nn.Module) -> Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]:
    """``(params, model_state) -> (params, model_state)`` after ``model.refresh``: parameter updates that are not
    gradient steps (GSP prototypes from k-center once its memory is full)."""

    def refresh(params: dict[str, Any], model_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        _, refreshed = apply_model(model, model_variables(params, model_state), method=type(model).refresh,
                                   mutable=["params", *model_state])
        return {**params, **refreshed.pop("params")}, {**model_state, **refreshed}

    return refresh


def _all_finite(tree: Any) -> jnp.ndarray:
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.asarray(True)


def guarded_update(state: TrainState, loss: jnp.ndarray, grads: Any, **new: Any) -> TrainState:
    """``state`` with the fields in ``new`` and the step counted, or unchanged (step still counted) if the loss, a
    gradient or a new parameter is not finite; the first such step is recorded in ``nonfinite_step`` and nothing
    is applied from then on (the loop reports it and stops at the next check)."""
    finite = jnp.isfinite(loss) & _all_finite(grads) & _all_finite(new.get("params", {}))
    healthy = state.nonfinite_step < 0
    accept = finite & healthy
    kept = {k: jax.tree.map(lambda a, b: jnp.where(accept, a, b), v, getattr(state, k)) for k, v in new.items()}
    return state.replace(step=state.step + 1, nonfinite_step=jnp.where(healthy & ~finite, state.step,
                                                                       state.nonfinite_step), **kept)


def train_step_fn(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation,
                  post_update: Callable[..., Any] | None = None):
    """The un-jitted ``step(state, batch, frozen) -> (state, metrics)`` (``batch = {"images", "labels"}``)."""

    def step(state: TrainState, batch: dict[str, jnp.ndarray], frozen: Any) -> tuple[TrainState, dict]:
        collections = list(state.model_state)
        context = StepContext(state.step, state.loss_state, state.extra, frozen)

        def objective(params: dict[str, Any]):
            outputs, model_state = apply_model(model, model_variables(params, state.model_state), batch["images"],
                                               train=True, mutable=collections)
            loss, loss_state, metrics = loss_fn(params, outputs, batch, context)
            return loss, (model_state, loss_state, metrics)

        (loss, (model_state, loss_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if post_update is not None:
            params, model_state = post_update(params, model_state)
        new_state = guarded_update(state, loss, grads, params=params, model_state=model_state,
                                   loss_state=loss_state, opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return step


def make_train_step(model: nn.Module, loss_fn: LossFn, tx: optax.GradientTransformation, mesh: Mesh,
                    state_sharding: Any, *, frozen: Any = None, post_update: Callable[..., Any] | None = None
                    ) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]:
    """The jitted, sharded train step ``(state, batch) -> (state, metrics)``; the state argument is donated.

    ``frozen`` (a pytree of arrays, e.g. a teacher's variables) is placed on every device once and passed to each
    call; it is never optimised and never part of the state.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(train_step_fn(model, loss_fn, tx, post_update),
                     in_shardings=(state_sharding, batch_sharding(mesh), replicated),
                     out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    frozen = jax.device_put(frozen, replicated)
    return lambda state, batch: jitted(state, batch, frozen)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches are split over the mesh's ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec("data"))


def make_predict_step(model: nn.Module, output: str, mesh: Mesh, state_sharding: Any
                      ) -> Callable[[TrainState, jax.Array], jax.Array]:
    """The jitted inference function ``(state, images) -> outputs[output]`` (e.g. ``embedding`` or ``logits``); the
    outputs stay split over the devices like the images."""

    def predict(state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
        return model.apply(model_variables(state.params, state.model_state), images, train=False)[output]

    return jax.jit(predict, in_shardings=(state_sharding, batch_sharding(mesh)), out_shardings=batch_sharding(mesh))
