"""The poolings GSP is compared with, as pure functions of location sets ``(B, N, C)`` (or maps ``(B, H, W, C)``).

Each follows the GSP release's TensorFlow layer (``framework/layers/pooling/*.py``), which is what the GSP paper
measured; where the release departs from the original paper the function says so. The learnable parts (attention
convolutions, projections, centres) live in the thin heads of :mod:`jaxdml.models.pooling_heads`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdml.layers.gsp import prototype_costs
from jaxdml.layers.pooling import as_locations, l2_normalize

# The release's Sinkhorn adds machine epsilon to each denominator (``7/3 - 4/3 - 1`` in float32).
_EPS32 = float(jnp.finfo(jnp.float32).eps)


def gem_pool(features: jnp.ndarray, power: jnp.ndarray | float, eps: float = 1e-6) -> jnp.ndarray:
    """GeM (Radenović et al.): ``(mean_n max(x_n, eps)^p)^(1/p)`` per channel; p = 1 is GAP, p -> inf GMP."""
    x = jnp.maximum(as_locations(features), eps)
    return jnp.mean(x**power, axis=1) ** (1.0 / power)


def _safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """sqrt with gradient 0 (not inf) at 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def crow_weights(features: jnp.ndarray, eps: float = 1e-16) -> tuple[jnp.ndarray, jnp.ndarray]:
    """CroW's spatial (B, N) and channel (B, C) weights of non-negative features (Kalantidis et al., a = b = 2).

    Spatial: ``sqrt(S / ||S||_2)`` with ``S_n = sum_c x_nc``. Channel: ``log((C eps + sum_c q_c) / (eps + q_c))``
    with ``q_c`` the mean over locations of ``sigmoid(x_nc)`` -- the release's smooth stand-in for the paper's
    fraction of non-zero locations (which has no gradient). A location (or a whole map) without activation gets
    spatial weight 0 with gradient 0; the release's ``tf.sqrt`` has an infinite gradient there, which turns
    training NaN as soon as one location of a ReLU map is all zeros.
    """
    x = as_locations(features)
    s = jnp.sum(x, axis=-1)
    spatial = _safe_sqrt(s / _safe_sqrt(jnp.sum(jnp.square(s), axis=1, keepdims=True)).clip(min=eps))
    q = jnp.mean(jax.nn.sigmoid(x), axis=1)
    channel = jnp.log((x.shape[-1] * eps + jnp.sum(q, axis=-1, keepdims=True)) / (eps + q))
    return spatial, channel


def crow_pool(features: jnp.ndarray) -> jnp.ndarray:
    """CroW: the mean over locations of ``relu(x)`` weighted by its spatial and channel weights."""
    x = jax.nn.relu(as_locations(features))
    spatial, channel = crow_weights(x)
    return jnp.mean(x * spatial[:, :, None] * channel[:, None, :], axis=1)


def weldon_pool(features: jnp.ndarray, k_max: int = 3, k_min: int = 3) -> jnp.ndarray:
    """WELDON (Durand et al.): per channel, the sum of the ``k_max`` largest plus the ``k_min`` smallest responses."""
    x = jnp.swapaxes(as_locations(features), 1, 2)  # (B, C, N)
    return jnp.sum(jax.lax.top_k(x, k_max)[0], -1) - jnp.sum(jax.lax.top_k(-x, k_min)[0], -1)


def netvlad_pool(features: jnp.ndarray, assignment_logits: jnp.ndarray, centers: jnp.ndarray) -> jnp.ndarray:
    """NetVLAD (Arandjelović et al.): soft-assignment-weighted residuals to K centres, intra-normalised, flattened.

    ``features`` (B, N, d), ``assignment_logits`` (B, N, K), ``centers`` (K, d) -> (B, K d). The final L2
    normalisation is the head's ``embedding_norm``.
    """
    x = as_locations(features)
    a = jax.nn.softmax(as_locations(assignment_logits), axis=-1)
    v = jnp.einsum("bnk,bnd->bkd", a, x) - jnp.sum(a, axis=1)[..., None] * centers[None]
    return l2_normalize(v, eps=1e-6).reshape(x.shape[0], -1)  # tf.nn.l2_normalize's epsilon (1e-12 on |v|^2)


def sinkhorn_plan(costs: jnp.ndarray, gamma: float, iterations: int) -> jnp.ndarray:
    """Entropic OT plan (B, K, N) with uniform marginals 1/K (support) and 1/N (locations) after ``iterations``
    unrolled Sinkhorn fixed-point steps on ``exp(-gamma C)``, as the release's ``OptimalTransport`` (OTK-style,
    differentiated through the iterations)."""
    k, n = costs.shape[-2:]
    kernel = jnp.exp(-gamma * costs)
    p, q = jnp.full((1, k), 1.0 / k), jnp.full((1, n), 1.0 / n)

    def fixed_point(u: jnp.ndarray, _: None) -> tuple[jnp.ndarray, None]:
        v = q / (jnp.einsum("bk,bkn->bn", u, kernel) + _EPS32)
        return p / (jnp.einsum("bn,bkn->bk", v, kernel) + _EPS32), None

    u = jax.lax.scan(fixed_point, jnp.ones(costs.shape[:-1], costs.dtype), None, length=iterations)[0]
    v = q / (jnp.einsum("bk,bkn->bn", u, kernel) + _EPS32)
    return u[:, :, None] * kernel * v[:, None, :]


def otp_pool(features: jnp.ndarray, support: jnp.ndarray, gamma: float = 2.0, iterations: int = 10) -> jnp.ndarray:
    """Optimal transport pooling (Mialon et al.'s OTK embedding as the release implements it).

    Locations (B, N, d) are transported to K support points (K, d) (costs: unsquared L2 between Lipschitz-normalised
    vectors, as GSP's); the embedding concatenates the K transported means, ``sqrt(K) * P X`` -> (B, K d).
    """
    x = as_locations(features)
    plan = sinkhorn_plan(prototype_costs(x, support), gamma, iterations)
    k = support.shape[0]
    return jnp.sqrt(float(k)) * jnp.einsum("bkn,bnd->bkd", plan, x.astype(plan.dtype)).reshape(x.shape[0], -1)


def scaled_gram(x: jnp.ndarray, scale: float, over_locations: bool) -> jnp.ndarray:
    """Uncentred second-order statistics of (B, N, A): ``X^T X / scale`` (B, A, A) over locations, or
    ``X X^T / scale`` (B, N, N) over channels (the release's GSoP covariance pooling)."""
    pattern = "bna,bnc->bac" if over_locations else "bna,bma->bnm"
    return jnp.einsum(pattern, x, x, precision=jax.lax.Precision.HIGHEST) / scale


def row_convolution(matrix: jnp.ndarray, kernel: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """GSoP's row-wise (grouped) convolution: column c of ``matrix`` (B, R, C) is mapped by its own filters
    ``kernel[:, c, :]`` (R, C, F); output (B, C F), channel ``c F + f`` (TF's grouped-convolution order)."""
    out = jnp.einsum("brc,rcf->bcf", matrix, kernel, precision=jax.lax.Precision.HIGHEST)
    return out.reshape(matrix.shape[0], -1) + bias
