"""Generalized Sum Pooling (GSP) as a pure function: pick and weight local features by partial transport.

GAP averages all N locations. GSP transports a fraction ``transport_ratio`` (mu) of the locations' mass to
K learnable prototypes (entropy-smoothed, ``gamma`` = inverse temperature) and pools the features with the
transported shares: ``pooled = sum_j w_j x_j`` with ``w_j = sum_k P_kj / mu``, a convex combination that
ignores locations unlike any prototype. ``mu = 1`` is exactly GAP. The K-dim histogram
``a_k = sum_j P_kj / mu`` ("attributes") feeds the zero-shot (ZSR) loss. As in the released code, features
and prototypes are Lipschitz-normalised (``v / max(1, ||v||)``) for the cost, which is the unsquared L2
distance; the pooled vector uses the features as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdml.kernels import gsp_transport
from jaxdml.layers.pooling import as_locations


def lipschitz_normalize(x: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """``x / max(1, ||x||)``: unit norm only for vectors longer than 1 (the released code's normalisation)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, 1.0)


def prototype_costs(features: jnp.ndarray, prototypes: jnp.ndarray) -> jnp.ndarray:
    """Unsquared L2 distances (B, K, N) between normalised prototypes (K, D) and features (B, N, D).

    Float32 (or wider) whatever the input dtype, at full matmul precision; zero distance has gradient 0.
    """
    dtype = jnp.promote_types(features.dtype, jnp.float32)
    x = lipschitz_normalize(features.astype(dtype))
    w = lipschitz_normalize(prototypes.astype(dtype))
    cross = jnp.einsum("kd,bnd->bkn", w, x, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(jnp.square(w), -1)[None, :, None] + jnp.sum(jnp.square(x), -1)[:, None, :] - 2.0 * cross
    sq = jnp.maximum(sq, 0.0)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def gsp_weights(features: jnp.ndarray, prototypes: jnp.ndarray, *, transport_ratio: float, gamma: float,
                method: str = "newton") -> tuple[jnp.ndarray, jnp.ndarray]:
    """(location weights (B, N) summing to 1, transport plan (B, K, N) summing to ``transport_ratio``)."""
    features = as_locations(features)
    if prototypes.ndim != 2 or prototypes.shape[-1] != features.shape[-1]:
        raise ValueError(f"prototypes must be (K, {features.shape[-1]}) to match the features' dimension, "
                         f"got shape {prototypes.shape}")
    if isinstance(transport_ratio, (int, float)) and not 0 < transport_ratio <= 1:
        raise ValueError(f"transport_ratio must be in (0, 1], got {transport_ratio}")
    plan = gsp_transport(prototype_costs(features, prototypes), transport_ratio, gamma, method=method)
    weights = jnp.sum(plan, axis=-2) / transport_ratio
    return weights, plan


def gsp_pool(features: jnp.ndarray, prototypes: jnp.ndarray, *, transport_ratio: float, gamma: float,
             method: str = "newton") -> tuple[jnp.ndarray, jnp.ndarray]:
    """Pooled features (B, D) and attribute histogram (B, K) for features (B, N, D) or (B, H, W, D)."""
    x = as_locations(features)
    weights, plan = gsp_weights(x, prototypes, transport_ratio=transport_ratio, gamma=gamma, method=method)
    attributes = jnp.sum(plan, axis=-1) / transport_ratio
    if isinstance(transport_ratio, (int, float)) and transport_ratio == 1:
        pooled = jnp.mean(x, axis=1)  # exactly GAP (the plan's shares are 1/N up to rounding)
    else:
        pooled = jnp.einsum("bn,bnd->bd", weights.astype(x.dtype), x)
    return pooled, attributes
