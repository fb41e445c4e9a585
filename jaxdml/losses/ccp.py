"""The math of CCP-DML ("Deep Metric Learning with Chance Constraints", Gurbuz et al., WACV 2024), as pure functions.

CCP trains M proxies per class with a base pair loss L and re-initialises them, round after round, from real
embeddings; each round is a proximal problem around the previous round's best weights theta_bar:

    loss = pair_weight * L(batch, batch) + proxy_weight * L(batch anchors, all proxies)
           + lambda / 2 * ||theta - theta_bar||^2          (network weights theta only, never the proxies)

so the gradient gains exactly ``lambda * (theta - theta_bar)`` (the release's ``DistanceRegularizer``; lambda = 0 in
the first round). A new round re-picks each class's M proxies from a pool of fresh embeddings of that class by
greedy k-center (farthest-point) seeded with the round's best proxies, which are not picked themselves
(``proxy_utils.greedyKCenter``); the very first proxies come from the same pick seeded with the zero vector.

Proxy layout, as the release's ``makeProxy``: ``proxies`` is (M * C, D) and row ``j * C + c`` is proxy ``j`` of
class ``c`` (:func:`proxy_labels`). The round logic (when a round ends) is in :mod:`jaxdml.trainers.ccp`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.layers import greedy_k_center


def proxy_labels(num_classes: int, per_class: int) -> jnp.ndarray:
    """(M * C,) labels of the proxies: ``[0, 1, .., C-1]`` repeated M times."""
    return jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), per_class)


def by_class(proxies: jnp.ndarray, per_class: int) -> jnp.ndarray:
    """(M * C, D) proxies -> (C, M, D), class-major."""
    m_c, d = proxies.shape
    return jnp.swapaxes(proxies.reshape(per_class, m_c // per_class, d), 0, 1)


def flat(proxies: jnp.ndarray) -> jnp.ndarray:
    """(C, M, D) -> (M * C, D): the inverse of :func:`by_class`."""
    c, m, d = proxies.shape
    return jnp.swapaxes(proxies, 0, 1).reshape(m * c, d)


def pool_size(pool_per_class: int, per_class: int) -> int:
    """Embeddings drawn per class for a re-pick: ``b`` if ``b >= M`` else ``b * M`` (the release's rule)."""
    return pool_per_class if pool_per_class >= per_class else pool_per_class * per_class


def ccp_loss(base: Callable[..., jnp.ndarray], embeddings: jnp.ndarray, labels: jnp.ndarray, proxies: jnp.ndarray,
             per_class: int, num_classes: int, *, pair_weight: float, proxy_weight: float
             ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """``pair_weight * L(batch, batch) + proxy_weight * L(batch, proxies)`` with one base pair loss ``L`` (the batch
    items are the anchors, the proxies the references); (loss, its two terms)."""
    pair = base(embeddings, labels)
    to_proxies = base(embeddings, labels, proxies, proxy_labels(num_classes, per_class))
    return pair_weight * pair + proxy_weight * to_proxies, {"pair_loss": pair, "proxy_loss": to_proxies}


def proximal_penalty(params: Any, anchor: Any, lam: jnp.ndarray) -> jnp.ndarray:
    """``lam / 2 * ||params - anchor||^2`` over every leaf; its gradient in ``params`` is ``lam * (params - anchor)``
    (``anchor`` is held constant)."""
    anchor = jax.lax.stop_gradient(anchor)
    squares = [jnp.sum(jnp.square(p.astype(jnp.float32) - a.astype(jnp.float32)))
               for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor))]
    return 0.5 * lam * sum(squares, jnp.zeros((), jnp.float32))


@jax.jit
def pick_proxies(pool: jnp.ndarray, seeds: jnp.ndarray) -> jnp.ndarray:
    """Per class, greedy k-center picks from ``pool`` (C, P, D), seeded with ``seeds`` (C, M, D), which are not
    returned: (C, M, D) pool points, each the farthest (squared L2) from the seeds and the points picked before."""
    per_class = seeds.shape[1]
    picked = jax.vmap(lambda points, initial: greedy_k_center(points, per_class, initial=initial))(pool, seeds)
    return jnp.take_along_axis(pool, picked[:, :, None], axis=1)


def pool_indices(labels: np.ndarray, num_classes: int, size: int, seed: int, round_index: int) -> np.ndarray:
    """(C, size) record indices, ``size`` per class, drawn for round ``round_index``: a pure function of
    (seed, round), so a resumed run draws the same pool. Without replacement when the class has enough records,
    else every record once and the rest drawn again."""
    rng = np.random.default_rng([seed, 11, round_index])
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(num_classes + 1))
    out = np.empty((num_classes, size), np.int64)
    for c in range(num_classes):
        members = order[starts[c]:starts[c + 1]]
        if len(members) == 0:
            raise ValueError(f"class {c} has no training records to draw CCP proxies from")
        if len(members) >= size:
            out[c] = rng.choice(members, size, replace=False)
        else:
            out[c] = np.concatenate([rng.permutation(members), rng.choice(members, size - len(members))])
    return out
