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


def fill_memory(memory: jnp.ndarray, count: jnp.ndarray, vectors: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``memory`` (M, D) with ``vectors`` (B, D) written from row ``count``, and the new count.

    As the GSP release's ``fill_memory``: a batch that would overflow the memory is written to its last B rows
    (a batch longer than the memory keeps its last M vectors).
    """
    vectors = vectors[-memory.shape[0]:].astype(memory.dtype)
    begin = jnp.minimum(count, memory.shape[0] - vectors.shape[0])
    return jax.lax.dynamic_update_slice(memory, vectors, (begin, 0)), count + vectors.shape[0]


def k_center_from_memory(memory: jnp.ndarray, k: int) -> jnp.ndarray:
    """K points (K, D) of ``memory`` (M, D), as the release's ``initialize_support_kernel``: seeded with the first K
    rows, picked greedily from the rows after them (from all rows, starting at row 0, when M < 2K)."""
    if memory.shape[0] >= 2 * k:
        return memory[k:][greedy_k_center(memory[k:], k, initial=memory[:k])]
    return memory[greedy_k_center(memory, k)]
