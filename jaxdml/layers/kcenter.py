"""Greedy k-center (farthest-point) selection, used to initialise GSP prototypes and CCP proxies."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def greedy_k_center(points: jnp.ndarray, k: int, valid: jnp.ndarray | None = None,
                    initial: jnp.ndarray | None = None) -> jnp.ndarray:
    """Indices (k,) of ``points`` (M, D) picked greedily, each the farthest (squared L2) from those before.

    Starts from ``initial`` centres (I, D) when given (none of them is returned), else from ``points[0]``
    (as the released GSP code). ``valid`` (M,) excludes rows. O(k M D), no M x M matrix.
    """
    m = points.shape[0]
    valid = jnp.ones((m,), bool) if valid is None else valid
    points = points.astype(jnp.float32)

    def sq_dist(center: jnp.ndarray) -> jnp.ndarray:
        return jnp.sum(jnp.square(points - center), axis=-1)

    if initial is None:
        first = jnp.argmax(valid)  # the first valid row
        nearest = jnp.where(valid, sq_dist(points[first]), -jnp.inf)
        picked = jnp.zeros((k,), jnp.int32).at[0].set(first)
        start = 1
    else:
        dists = jax.vmap(sq_dist)(initial.astype(jnp.float32))
        nearest = jnp.where(valid, jnp.min(dists, axis=0), -jnp.inf)
        picked = jnp.zeros((k,), jnp.int32)
        start = 0

    def pick(i, carry):
        picked, nearest = carry
        index = jnp.argmax(nearest)
        return picked.at[i].set(index), jnp.minimum(nearest, sq_dist(points[index]))

    return jax.lax.fori_loop(start, k, pick, (picked, nearest))[0]
