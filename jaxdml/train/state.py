"""The train state of every procedure, the device mesh, and the one function that creates and shards the state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LOSS_GROUP = "loss"  # parameters of the objective (proxies, class embeddings); every other group is the model's


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray  # int32 scalar: batches consumed
    params: dict[str, Any]  # parameter groups: backbone, head (+ loss: proxies, ZSR class embeddings)
    model_state: dict[str, Any]  # the model's other collections: batch_stats, GSP memory
    loss_state: dict[str, Any]  # e.g. the cross-batch memory
    opt_state: optax.OptState
    nonfinite_step: jnp.ndarray  # int32 scalar: first step with a non-finite loss/gradient, or -1
    # Arrays that hooks own (e.g. a weight snapshot for a proximal term): checkpointed and sharded with the state,
    # read by the loss function, changed only between steps.
    extra: dict[str, Any] = flax.struct.field(default_factory=dict)


def create_mesh() -> Mesh:
    """All devices of all processes on one ``data`` axis: batches are split over it, the state is replicated.

    The devices are ordered by process, so each process's devices hold a contiguous part of every batch (the part
    that process builds) and of every evaluation set."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), ("data",))


def model_variables(params: dict[str, Any], model_state: dict[str, Any]) -> dict[str, Any]:
    """The Flax variables of the model: every parameter group except the objective's, plus its collections."""
    return {"params": {g: v for g, v in params.items() if g != LOSS_GROUP}, **model_state}


InitFn = Callable[[], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]  # () -> (params, model_state, loss_state)


ExtraFn = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]  # (params, model_state) -> hook-owned arrays


def create_state(init_fn: InitFn, tx: optax.GradientTransformation, mesh: Mesh, extra_fn: ExtraFn | None = None
                 ) -> tuple[TrainState, Any]:
    """The initial state, created on the devices and replicated over ``mesh``, and its sharding. ``extra_fn``
    gives the initial hook-owned arrays (``TrainState.extra``) from the initial parameters."""

    def create() -> TrainState:
        params, model_state, loss_state = init_fn()
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                          loss_state=loss_state, opt_state=tx.init(params),
                          nonfinite_step=jnp.full((), -1, jnp.int32),
                          extra=extra_fn(params, model_state) if extra_fn is not None else {})

    replicated = NamedSharding(mesh, PartitionSpec())
    sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(create))
    return jax.jit(create, out_shardings=sharding)(), sharding
