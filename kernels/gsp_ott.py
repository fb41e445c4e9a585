"""GSP as an N x 2 entropic OT problem, solved by ott-jax's Sinkhorn with implicit differentiation.

Rows are the N locations (mass 1/N each); column 0 is the residual (cost 0, mass 1 - mu), column 1 stands
for all prototypes at once, with cost ``c_j = -(1/gamma) logsumexp_k(-gamma C_kj)`` (mass mu), and
``epsilon = 1/gamma``. Its plan's column 1 is the transported share ``s_j`` of each location, and the GSP
plan is ``P_kj = s_j softmax_k(-gamma C_kj)`` (Gibbs' variational principle splits the share).

Robustness: ott-jax 0.6.0's default implicit differentiation solves the 2 x 2 Schur complement of the
Sinkhorn Jacobian with lineax's NormalCG. That system is singular by construction (potentials are defined
up to a constant), and in float32 the iterative solve returns NaN or aborts with "A linear solver
returned non-finite output" on some inputs, typically nearly collinear features (every location has the
same cost), the state of a freshly initialised network. We solve the same system densely with lineax's
SVD (a pseudo-inverse: exact for the consistent singular system, and cheap at 2 x 2), which gives finite
gradients equal to the exact ones on those inputs; the tests cover that case.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import lineax
from ott.geometry import geometry
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn


def _svd_solver(**_) -> lineax.SVD:  # ott passes rtol/atol meant for iterative solvers; SVD needs none
    return lineax.SVD()


ROBUST_IMPLICIT_DIFF = implicit_differentiation.ImplicitDiff(solver_kwargs={"nonsym_solver": _svd_solver})


def _default_threshold(dtype: jnp.dtype) -> float:
    return 1e-12 if jnp.dtype(dtype) == jnp.float64 else 1e-6


def _solve_shares(column_cost: jnp.ndarray, mu: jnp.ndarray, gamma: float, threshold: float, min_iterations: int,
                  max_iterations: int) -> jnp.ndarray:
    """Transported shares (N,) for one problem: column 1 of the N x 2 Sinkhorn plan."""
    n = column_cost.shape[-1]
    cost = jnp.stack([jnp.zeros_like(column_cost), column_cost], axis=-1)
    geom = geometry.Geometry(cost_matrix=cost, epsilon=1.0 / gamma)
    a = jnp.full((n,), 1.0 / n, column_cost.dtype)
    b = jnp.stack([1.0 - mu, mu]).astype(column_cost.dtype)
    solver = sinkhorn.Sinkhorn(threshold=threshold, min_iterations=min_iterations, max_iterations=max_iterations,
                               lse_mode=True, implicit_diff=ROBUST_IMPLICIT_DIFF)
    out = solver(linear_problem.LinearProblem(geom, a=a, b=b))
    return out.matrix[:, 1]  # read inside the vmapped function (ott: not on a vmapped output)


def ott_plan(cost: jnp.ndarray, transport_ratio, gamma: float, *, threshold: float | None = None,
             min_iterations: int = 0, max_iterations: int = 2000) -> jnp.ndarray:
    """GSP plan (..., K, N) for cost (..., K, N) via ott-jax. ``min_iterations == max_iterations`` runs a
    fixed number of Sinkhorn iterations (much faster under vmap; check convergence separately)."""
    logits = -gamma * cost
    column_cost = -jax.nn.logsumexp(logits, axis=-2) / gamma  # (..., N)
    batch_shape, n = column_cost.shape[:-1], column_cost.shape[-1]
    mu = jnp.broadcast_to(jnp.asarray(transport_ratio, cost.dtype), batch_shape)
    inside = (mu > 0) & (mu < 1)
    solve = functools.partial(_solve_shares, gamma=gamma,
                              threshold=threshold if threshold is not None else _default_threshold(cost.dtype),
                              min_iterations=min_iterations, max_iterations=max_iterations)
    flat_cost = column_cost.reshape((-1, n))
    flat_mu = jnp.where(inside, mu, 0.5).reshape((-1,))
    shares = jax.vmap(solve)(flat_cost, flat_mu).reshape(column_cost.shape)
    edge = jnp.where(mu >= 1, 1.0 / n, 0.0)[..., None]
    shares = jnp.where(inside[..., None], shares, edge)
    return shares[..., None, :] * jax.nn.softmax(logits, axis=-2)
