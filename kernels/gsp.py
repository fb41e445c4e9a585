"""The Generalized Sum Pooling transport problem and three solvers for it.

Problem (GSP, Gurbuz et al., ICCV 2023). For K prototypes and N locations with cost ``C`` (K, N), find
the transport plan ``P >= 0`` and residual ``r >= 0`` with ``r_j + sum_k P_kj = 1/N`` for every location,
``sum_kj P_kj = mu`` (the transport ratio) and free prototype marginals, minimising
``<C, P> + (1/gamma) sum P log P`` (the residual costs nothing).

Exact structure (checked by the tests against the two other solvers): with
``S_j = sum_k exp(-gamma C_kj)`` the optimum is ``P_kj = s_j softmax_k(-gamma C_kj)`` where the share of
location j that is transported is ``s_j = (1/N) m S_j / (1 + m S_j)`` and the scalar ``m > 0`` is the root of
``F(m) = sum_j s_j(m) - mu``. ``F`` is increasing and concave, so Newton's method from ``m = 0`` climbs
monotonically to the root, and the implicit-function theorem gives the gradient without unrolling.

Methods of :func:`gsp_transport`:

* ``"newton"`` (default): the scalar root by Newton's method; the gradient (with respect to the cost, the
  transport ratio and gamma) by the implicit-function theorem in closed form, O(K N), no unrolling.
* ``"fixed_point"``: the released code's solver, bit for bit: ``iterations`` (100) rounds of
  ``p = q / (1 + m S)``, ``m <- mu / sum_j p_j S_j``, one more of each, ``P = m Kb p``; its analytic KKT
  gradient (``grad_method='inv'``). It can stop short of the optimum when it converges slowly.
* ``"ott"``: the same optimum as an N x 2 entropic OT problem solved by ott-jax's Sinkhorn with implicit
  differentiation (:mod:`jaxdml.kernels.gsp_ott`).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

Method = Literal["newton", "fixed_point", "ott"]
METHODS: tuple[str, ...] = ("newton", "fixed_point", "ott")


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Solve in at least float32 (bfloat16 / float16 inputs are promoted), in float64 when given."""
    return jnp.promote_types(dtype, jnp.float32)


def _newton_root(scaled: jnp.ndarray, mu: jnp.ndarray, max_iterations: int) -> jnp.ndarray:
    """Root ``m`` (..., 1) of ``mean_j(m S_j / (1 + m S_j)) = mu`` for ``S`` (..., N) in (0, 1], 0 < mu < 1.

    ``F`` is increasing and concave in ``m``, so Newton's method from ``m = 0`` climbs monotonically.
    """
    dtype = scaled.dtype
    tolerance = 8 * float(jnp.finfo(dtype).eps)

    def cond(carry):
        i, _, delta = carry
        return (i < max_iterations) & jnp.any(delta > tolerance)

    def body(carry):
        i, m, _ = carry
        ms = m * scaled
        value = jnp.mean(ms / (1 + ms), axis=-1, keepdims=True) - mu
        slope = jnp.mean(scaled / jnp.square(1 + ms), axis=-1, keepdims=True)
        m_next = m - value / slope
        return i + 1, m_next, jnp.abs(m_next - m) / jnp.maximum(m_next, jnp.finfo(dtype).tiny)

    init = (0, jnp.zeros_like(mu), jnp.full_like(mu, jnp.inf))
    return jax.lax.while_loop(cond, body, init)[1]


@jax.custom_vjp
def _newton_solution(cost: jnp.ndarray, mu: jnp.ndarray, gamma: jnp.ndarray) -> jnp.ndarray:
    return _newton_forward(cost, mu, gamma)[0]


def _newton_forward(cost, mu, gamma, max_iterations: int = 64):
    """Plan (..., K, N) plus what the backward pass needs: softmax ``a`` and ``sigma_j = N s_j``."""
    logits = -gamma[..., None, None] * cost
    peak = jnp.max(logits, axis=-2, keepdims=True)
    e = jnp.exp(logits - peak)  # the only exp over (K, N)
    e_sum = jnp.sum(e, axis=-2, keepdims=True)
    a = e / e_sum  # softmax over prototypes
    log_s = (peak + jnp.log(e_sum))[..., 0, :]  # log S_j, (..., N)
    scaled = jnp.exp(log_s - jnp.max(log_s, axis=-1, keepdims=True))  # S_j / max_j S_j in (0, 1]
    mu_ = mu[..., None]
    inside = (mu_ > 0) & (mu_ < 1)
    m = _newton_root(scaled, jnp.where(inside, mu_, 0.5), max_iterations)
    ms = m * scaled
    sigma = jnp.where(inside, ms / (1 + ms), jnp.where(mu_ >= 1, 1.0, 0.0))  # N s_j
    n = cost.shape[-1]
    plan = (sigma / n)[..., None, :] * a
    return plan, (a, sigma, cost, gamma)


def _newton_fwd(cost, mu, gamma):
    plan, residuals = _newton_forward(cost, mu, gamma)
    return plan, residuals


def _newton_bwd(residuals, g):
    """Implicit-function-theorem gradient in closed form, O(K N) (derivation in the module tests)."""
    a, sigma, cost, gamma = residuals
    n = cost.shape[-1]
    s = sigma / n
    g_s = jnp.sum(g * a, axis=-2)  # dLoss/ds_j through P = s a
    d_sigma = sigma * (1 - sigma)  # derivative of the logistic N s_j = sigma(log m + log S_j)
    denominator = jnp.sum(d_sigma, axis=-1, keepdims=True)
    weighted = jnp.sum(d_sigma * g_s, axis=-1, keepdims=True) / jnp.where(denominator > 0, denominator, 1.0)
    c = d_sigma * (g_s - weighted) / n  # dLoss/dlog S_j, with log m adjusting to keep sum_j s_j = mu
    d_logits = a * (c[..., None, :] + s[..., None, :] * (g - g_s[..., None, :]))
    d_cost = -gamma[..., None, None] * d_logits
    d_gamma = -jnp.sum(d_logits * cost, axis=(-2, -1))
    d_mu = weighted[..., 0]
    return d_cost, d_mu, d_gamma


_newton_solution.defvjp(_newton_fwd, _newton_bwd)


def _newton_plan(cost: jnp.ndarray, transport_ratio, gamma) -> jnp.ndarray:
    batch = cost.shape[:-2]
    mu = jnp.broadcast_to(jnp.asarray(transport_ratio, cost.dtype), batch)
    return _newton_solution(cost, mu, jnp.broadcast_to(jnp.asarray(gamma, cost.dtype), batch))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _fixed_point_solution(cost: jnp.ndarray, mu: float, gamma: float, iterations: int, mu_init: float | None
                          ) -> jnp.ndarray:
    """The released PyTorch ``PartialTransportPlan.forward``: X = [r; P] of shape (..., K + 1, N)."""
    kb = jnp.exp(-gamma * cost)
    n = cost.shape[-1]
    q = jnp.asarray(1.0 / n, cost.dtype)
    kb_t_1 = jnp.sum(kb, axis=-2, keepdims=True)  # (..., 1, N)
    m = jnp.full((*cost.shape[:-2], 1, 1), mu if mu_init is None else mu_init, cost.dtype)

    def round_(m, _):
        p = q / (1.0 + m * kb_t_1)
        return mu / jnp.sum(p * kb_t_1, axis=-1, keepdims=True), None

    m, _ = jax.lax.scan(round_, m, None, length=iterations)
    p = q / (1.0 + m * kb_t_1)
    m = mu / jnp.sum(p * kb_t_1, axis=-1, keepdims=True)
    return jnp.concatenate([p, m * kb * p], axis=-2)


def _fixed_point_fwd(cost, mu, gamma, iterations, mu_init):
    x = _fixed_point_solution(cost, mu, gamma, iterations, mu_init)
    return x, x


def _fixed_point_bwd(mu, gamma, iterations, mu_init, x, dy):
    """The released code's analytic KKT gradient (``grad_method='inv'``), O(K N)."""
    del iterations, mu_init
    n = x.shape[-1]
    g = x * dy
    r = x[..., :1, :]
    k_1 = 1.0 / (1.0 - mu - n * jnp.sum(jnp.square(r), axis=-1, keepdims=True))
    row_sum = jnp.sum(g, axis=-2, keepdims=True)
    coeff = jnp.sum(g[..., :1, :], axis=-1, keepdims=True) - n * jnp.sum(row_sum * r, axis=-1, keepdims=True)
    d_mu = -coeff * k_1
    common = n * (row_sum + d_mu * r)
    return (-gamma * (g - common * x)[..., 1:, :],)


_fixed_point_solution.defvjp(_fixed_point_fwd, _fixed_point_bwd)


def gsp_transport(cost: jnp.ndarray, transport_ratio: float, gamma: float, *, method: Method = "newton",
                  iterations: int = 100, mu_init: float | None = None) -> jnp.ndarray:
    """Transport plan ``P`` (..., K, N) of the GSP problem for cost (..., K, N) (prototypes x locations).

    The residual is ``1/N - P.sum(-2)``. ``iterations`` and ``mu_init`` (default ``transport_ratio``, as the
    PyTorch release; the TF release starts at 1.0) apply to ``"fixed_point"`` only. Inputs may be float32,
    bfloat16 or float64; the solve runs in at least float32 and the plan has the input's dtype. ``vmap`` and
    ``jit`` apply as usual; ``method``, ``iterations`` and ``mu_init`` are static.
    """
    cost = jnp.asarray(cost)
    if cost.ndim < 2:
        raise ValueError(f"cost must have shape (..., K, N) (prototypes x locations), got {cost.shape}")
    work = cost.astype(_compute_dtype(cost.dtype))
    if method == "newton":
        plan = _newton_plan(work, transport_ratio, gamma)
    elif method == "fixed_point":
        if not isinstance(transport_ratio, (int, float)) or not isinstance(gamma, (int, float)):
            raise TypeError("method='fixed_point' reproduces the released code: transport_ratio and gamma must be "
                            "Python numbers (its gradient is with respect to the cost only)")
        plan = _fixed_point_solution(work, float(transport_ratio), float(gamma), int(iterations), mu_init)[..., 1:, :]
    elif method == "ott":
        from jaxdml.kernels.gsp_ott import ott_plan

        plan = ott_plan(work, transport_ratio, gamma)
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return plan.astype(cost.dtype)
