"""Global pooling of feature maps ``(B, H, W, D)`` (or location sets ``(B, N, D)``) to ``(B, D)``."""

from __future__ import annotations

import jax.numpy as jnp


def as_locations(features: jnp.ndarray) -> jnp.ndarray:
    """(B, H, W, D) feature maps or (B, N, D) location sets as (B, N, D)."""
    if features.ndim == 4:
        return features.reshape(features.shape[0], -1, features.shape[-1])
    if features.ndim != 3:
        raise ValueError(f"expected features (B, H, W, D) or (B, N, D), got shape {features.shape}")
    return features


def global_average_pool(features: jnp.ndarray) -> jnp.ndarray:
    """GAP: the mean over locations."""
    return jnp.mean(as_locations(features), axis=1)


def global_max_pool(features: jnp.ndarray) -> jnp.ndarray:
    """GMP: the per-channel maximum over locations."""
    return jnp.max(as_locations(features), axis=1)


def gap_plus_gmp(features: jnp.ndarray) -> jnp.ndarray:
    """GAP + GMP, summed (the Proxy-Anchor / conventional-protocol head)."""
    return global_average_pool(features) + global_max_pool(features)


POOLINGS = {"gap": global_average_pool, "gmp": global_max_pool, "gap+gmp": gap_plus_gmp}


def pool(features: jnp.ndarray, kind: str) -> jnp.ndarray:
    if kind not in POOLINGS:
        raise ValueError(f"unknown pooling {kind!r}; choose one of {sorted(POOLINGS)} (model.pooling also accepts "
                         f"'gsp', the Generalized Sum Pooling head)")
    return POOLINGS[kind](features)


def l2_normalize(x: jnp.ndarray, axis: int = -1, eps: float = 1e-12) -> jnp.ndarray:
    """x / max(||x||, eps), as torch.nn.functional.normalize (finite gradient at 0)."""
    norm = jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=axis, keepdims=True), eps * eps))
    return x / norm
