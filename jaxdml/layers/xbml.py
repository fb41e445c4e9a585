"""XBML's view of GAP as pure functions: soft assignment of local features to K prototypes, and GAP as a convex
combination of per-image prototype vectors.

With any soft assignment ``p_nk >= 0``, ``sum_k p_nk = 1`` of the N local features ``x_n`` of an image,

    GAP(x) = (1/N) sum_n x_n = sum_k a_k mu_k,   a_k = (1/N) sum_n p_nk,   mu_k = sum_n p_nk x_n / sum_n p_nk,

an identity: the coefficients ``a`` are convex (non-negative, summing to 1) and ``mu_k`` is the image's
prototype-k vector. XBML ("Generalizable Embeddings with Cross-batch Metric Learning", Gurbuz and Alatan, ICIP
2023) learns the assignment so that the prototypes generalise across classes (``jaxdml.losses.xbml``). The
assignment is the GSP release's ``MetaGlobalPooling`` one (the closest released code; XBML's own was not
released): ``p_n = softmax(scale * n(x_n) W^T)`` with K learnable, unnormalised prototype directions ``W`` (K, D),
``n(v) = v / max(1, ||v||)`` and scale 10. With K = 1 the coefficient is 1 and ``mu_1`` is GAP itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdml.layers.gsp import lipschitz_normalize
from jaxdml.layers.pooling import as_locations

_HIGHEST = jax.lax.Precision.HIGHEST


def prototype_assignment(features: jnp.ndarray, prototypes: jnp.ndarray, scale: float = 10.0) -> jnp.ndarray:
    """Soft assignment (B, N, K) of the local features (B, H, W, D) or (B, N, D) to the K prototypes (K, D):
    ``softmax_k(scale * <n(x_n), w_k>)``, in float32 (or wider) at full matmul precision."""
    dtype = jnp.promote_types(features.dtype, jnp.float32)
    x = lipschitz_normalize(as_locations(features).astype(dtype))
    logits = jnp.einsum("bnd,kd->bnk", x, prototypes.astype(dtype), precision=_HIGHEST)
    return jax.nn.softmax(scale * logits, axis=-1)


def prototype_coefficients(assignment: jnp.ndarray) -> jnp.ndarray:
    """The convex coefficients (B, K) of GAP over the prototypes: the mean assignment over locations."""
    return jnp.mean(assignment, axis=1)


def image_prototypes(features: jnp.ndarray, assignment: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """Each image's prototype vectors ``mu_k`` (B, K, D): the assignment-weighted means of its local features
    (zero for a prototype no location is assigned to). ``einsum('bk,bkd->bd', a, mu)`` is GAP."""
    x = as_locations(features).astype(assignment.dtype)
    mass = jnp.sum(assignment, axis=1)  # (B, K)
    sums = jnp.einsum("bnk,bnd->bkd", assignment, x, precision=_HIGHEST)
    return sums / jnp.maximum(mass, eps)[..., None]
