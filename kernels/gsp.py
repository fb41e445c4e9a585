"""The Generalized Sum Pooling transport problem and three solvers for it.

Problem (GSP, Gurbuz et al., ICCV 2023). For K prototypes and N locations with cost ``C`` (K, N), find
the transport plan ``P >= 0`` and residual ``r >= 0`` with ``r_j + sum_k P_kj = 1/N`` for every location,
``sum_kj P_kj = mu`` (the transport ratio, ``0 < mu <= 1``) and free prototype marginals, minimising
``<C, P> + (1/gamma) sum P log P`` (the residual costs nothing; ``gamma > 0``).

Exact structure (checked by the tests against the two other solvers and a NumPy reference): with
``S_j = sum_k exp(-gamma C_kj)`` the optimum is ``P_kj = s_j softmax_k(-gamma C_kj)`` where the share of
location j that is transported is ``s_j = (1/N) m S_j / (1 + m S_j) = (1/N) sigmoid(log m + log S_j)`` and
the scalar ``m > 0`` is the root of ``sum_j s_j(m) = mu``. ``mu = 1`` is GAP (``s_j = 1/N``, every location
fully transported). The implicit-function theorem gives the gradient without unrolling.

Methods of :func:`gsp_transport`:

* ``"newton"`` (default): the scalar root in log space; the gradient (with respect to the cost, the transport
  ratio and gamma) by the implicit-function theorem in closed form, O(K N), no unrolling. One exp over (K, N)
  (the softmax, with each column's minimum cost subtracted before the scaling by gamma); the root finding works
  on N-vectors. With ``z_j = log S_j - log S_ref`` (cost differences taken before the scaling by gamma, so
  locations near the reference keep full precision at any gamma) it solves
  ``F(t) = mean_j sigmoid(t + z_j) - mu = 0`` for ``t = log m + log S_ref``, each sigmoid and its complement
  to full relative precision (never ``1 - sigmoid``). ``F`` is increasing but exponentially flat between
  clusters of ``z`` at large gamma, where plain Newton crawls (and Newton on ``m`` itself, the previous solver,
  overflowed: ``m ~ exp(gamma * cost range)``). The solver is a safeguarded Newton (Numerical Recipes'
  ``rtsafe``) on the bracket ``[logit(mu) - max z, logit(mu) - min z]``, which every evaluation shrinks: a
  Newton step when it stays inside the bracket and is less than half the step before last, a bisection
  otherwise, in a ``jax.lax.while_loop`` of at most 128 iterations. It starts at a normal-quantile estimate
  of the root (``logit(mu) - mean z - q std z``) and stops when ``|F| <= 2 eps mu`` (the rounding level) or
  the step or bracket is below ``4 eps max(1, |t|)``, ``eps`` the dtype's. Then it re-centres ``z`` on the
  location nearest to half transported and takes one Newton step there (only when within the rounding of
  ``t``), so the partially transported locations never see the rounding of a large ``t``. Measured: 2-9
  iterations for gamma times the cost range up to 100, at most ~25 (float32) or ~60 (float64) up to 1e4-1e5;
  the float32 plan is finite and equals a float64 reference to a few ulps of its largest entry times the
  problem's condition number, up to at least 1e4. The backward pass forms ``sigma (1 - sigma)`` as
  ``sigmoid(x) sigmoid(-x)`` and its normalised weights in log space, and centres the weighted average over
  locations on its heaviest term, so saturated problems keep finite, accurate gradients.
* ``"fixed_point"``: the released code's solver, bit for bit: ``iterations`` (100) rounds of
  ``p = q / (1 + m S)``, ``m <- mu / sum_j p_j S_j``, one more of each, ``P = m Kb p``; its analytic KKT
  gradient (``grad_method='inv'``). It can stop short of the optimum when it converges slowly, and
  ``exp(-gamma C)`` underflows at large gamma times cost (as in the release).
* ``"ott"``: the same optimum as an N x 2 entropic OT problem solved by ott-jax's Sinkhorn with implicit
  differentiation (:mod:`jaxdml.kernels.gsp_ott`). Slow at large gamma (epsilon = 1/gamma): within its
  2000 iterations it converges up to gamma times the cost range ~1e3, not at 1e4 (measured in the tests).

Validation (:func:`gsp_transport`): the cost must be (..., K, N) with K, N >= 1 and real (integer and bool
costs are promoted to the default float dtype; complex is a TypeError); ``transport_ratio`` in (0, 1] and
``gamma`` positive and finite are checked when concrete (Python or NumPy numbers, arrays outside jit) with a
ValueError. When they are traced (jit, grad or vmap over them) they cannot be checked: an out-of-range or NaN
value then gives a NaN plan for the affected problems (so a NaN loss and NaN cost gradients), never a
plausible-looking one, and the training step's NaN guard stops on it; the other problems of the batch are
unaffected.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Method = Literal["newton", "fixed_point", "ott"]
METHODS: tuple[str, ...] = ("newton", "fixed_point", "ott")


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """Solve in at least float32 (bfloat16 / float16 inputs are promoted), in float64 when given."""
    return jnp.promote_types(dtype, jnp.float32)


def _logistic_pair(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(sigmoid(x), sigmoid(-x))``, both to full relative precision (no ``1 - sigmoid``), one exp."""
    e = jnp.exp(-jnp.abs(x))
    big = 1 / (1 + e)
    small = e * big
    positive = x >= 0
    return jnp.where(positive, big, small), jnp.where(positive, small, big)


def _solve_log_m(z: jnp.ndarray, mu: jnp.ndarray, max_iterations: int) -> jnp.ndarray:
    """Root ``t`` (..., 1) of ``F(t) = mean_j sigmoid(t + z_j) - mu`` for ``z`` (..., N), ``0 < mu < 1`` (..., 1).

    Safeguarded Newton (Numerical Recipes' ``rtsafe``): ``F`` is increasing with ``F(t_lo) <= 0 <= F(t_hi)``
    for ``t_lo = logit(mu) - max z`` and ``t_hi = logit(mu) - min z``; every evaluation shrinks that bracket,
    and a Newton step is taken only when it stays inside it and is less than half the step before last,
    otherwise the bracket is bisected. Starts at ``logit(mu) - mean z - q std z`` with ``q`` the standard
    normal's (1 - mu)-quantile (exact for equal ``z``, and the (1 - mu)-quantile of ``z``, the
    large-gamma limit, for normally spread ``z``). Stops when ``|F|`` is at the rounding level or the step or
    bracket is below a few ulps of ``t``.
    """
    eps = float(jnp.finfo(z.dtype).eps)
    f_tolerance = 2 * eps * mu
    x_tolerance = 4 * eps

    def evaluate(t):
        sigma, complement = _logistic_pair(t + z)
        return jnp.mean(sigma, axis=-1, keepdims=True) - mu, jnp.mean(sigma * complement, axis=-1, keepdims=True)

    def update(t, f, lo, hi, step):
        lo, hi = jnp.where(f < 0, t, lo), jnp.where(f > 0, t, hi)
        small = x_tolerance * jnp.maximum(jnp.abs(t), 1)
        converged = (jnp.abs(f) <= f_tolerance) | (jnp.abs(step) <= small) | (hi - lo <= small)
        return lo, hi, converged | jnp.isnan(f)  # a NaN cost gives a NaN plan without spinning

    logit_mu = jnp.log(mu) - jnp.log1p(-mu)
    lo = logit_mu - jnp.max(z, axis=-1, keepdims=True)
    hi = logit_mu - jnp.min(z, axis=-1, keepdims=True)
    quantile = jax.scipy.special.ndtri(1 - mu)
    start = logit_mu - jnp.mean(z, axis=-1, keepdims=True) - quantile * jnp.std(z, axis=-1, keepdims=True)
    t = jnp.clip(start, lo, hi)
    f, df = evaluate(t)
    width = hi - lo
    lo, hi, done = update(t, f, lo, hi, width)

    def cond(carry):
        i, *_, done = carry
        return (i < max_iterations) & ~jnp.all(done)

    def body(carry):
        i, t, f, df, lo, hi, step, step_before, done = carry
        newton = t - f / df  # df = 0 gives inf or nan: not inside the bracket, so bisect
        use_newton = (newton > lo) & (newton < hi) & (jnp.abs(2 * f) <= jnp.abs(step_before * df))
        t_next = jnp.where(use_newton, newton, 0.5 * (lo + hi))
        step_next = jnp.where(use_newton, newton - t, 0.5 * (hi - lo))  # rtsafe's dx: half the bracket if bisected
        f_next, df_next = evaluate(t_next)
        lo_next, hi_next, done_next = update(t_next, f_next, lo, hi, step_next)
        keep = lambda old, new: jnp.where(done, old, new)
        return (i + 1, keep(t, t_next), keep(f, f_next), keep(df, df_next), keep(lo, lo_next), keep(hi, hi_next),
                keep(step, step_next), keep(step_before, step), done | done_next)

    return jax.lax.while_loop(cond, body, (0, t, f, df, lo, hi, width, width, done))[1]


@jax.custom_vjp
def _newton_solution(cost: jnp.ndarray, mu: jnp.ndarray, gamma: jnp.ndarray) -> jnp.ndarray:
    return _newton_forward(cost, mu, gamma)[0]


def _newton_forward(cost, mu, gamma, max_iterations: int = 128):
    """Plan (..., K, N) plus what the backward pass needs.

    ``mu`` and ``gamma`` (batch shape) must be valid here (``gsp_transport`` substitutes valid stand-ins for
    traced invalid ones and poisons their plans): ``0 < mu <= 1``, ``0 < gamma < inf``.
    """
    column_min = jnp.min(cost, axis=-2, keepdims=True)  # (..., 1, N)
    e = jnp.exp(-gamma[..., None, None] * (cost - column_min))  # the only exp over (K, N); column maxima are 1
    e_sum = jnp.sum(e, axis=-2, keepdims=True)
    a = e / e_sum  # softmax over prototypes
    n = cost.shape[-1]
    min_c, log_e_sum = column_min[..., 0, :], jnp.log(e_sum[..., 0, :])  # log S_j = -gamma min_c_j + log_e_sum_j
    g = gamma[..., None]

    def relative_log_s(r):
        """``log S_j - log S_r`` (..., N), differences of costs before the scaling by gamma."""
        pick = lambda v: jnp.take_along_axis(v, r, axis=-1)
        return -g * (min_c - pick(min_c)) + (log_e_sum - pick(log_e_sum))

    mu_ = mu[..., None]
    inside = mu_ < 1  # mu = 1 is GAP: sigma = 1 everywhere, no root to find
    mu_solve = jnp.where(inside, mu_, 0.5)
    z = relative_log_s(jnp.argmax(-g * min_c + log_e_sum, axis=-1, keepdims=True))
    t = _solve_log_m(z, mu_solve, max_iterations)
    # Re-centre on the location nearest to half transported (t + z_r ~ 0), so the partially transported
    # locations do not see the rounding of a large t (gamma times the cost range >~ 100), and polish with one
    # Newton step, taken only when it is within the rounding of t (it is 0 or tiny at moderate gamma).
    r = jnp.argmin(jnp.abs(t + z), axis=-1, keepdims=True)
    rounding = 16 * float(jnp.finfo(z.dtype).eps) * jnp.maximum(jnp.abs(t), 1)
    t = t + jnp.take_along_axis(z, r, axis=-1)
    z = relative_log_s(r)
    sigma, complement = _logistic_pair(t + z)
    step = (jnp.mean(sigma, axis=-1, keepdims=True) - mu_solve) / jnp.mean(sigma * complement, axis=-1, keepdims=True)
    t = jnp.where(jnp.abs(step) <= rounding, t - step, t)
    x = t + z  # N s_j = sigmoid(x_j)
    sigma, complement = _logistic_pair(x)
    d_sigma = sigma * complement  # d sigma_j / dx_j, never as 1 - sigma
    weights = jax.nn.softmax(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x), axis=-1)  # d_sigma / sum(d_sigma)
    sigma = jnp.where(inside, sigma, 1.0)
    d_sigma, weights = jnp.where(inside, d_sigma, 0.0), jnp.where(inside, weights, 0.0)
    plan = (sigma / n)[..., None, :] * a
    return plan, (a, sigma, d_sigma, weights, cost, min_c, gamma)


def _newton_fwd(cost, mu, gamma):
    plan, residuals = _newton_forward(cost, mu, gamma)
    return plan, residuals


def _newton_bwd(residuals, g):
    """Implicit-function-theorem gradient in closed form, O(K N), no unrolling.

    With ``P = s a``, ``a = softmax_k(logits)``, ``N s_j = sigmoid(x_j)``, ``x_j = log m + log S_j`` and
    ``log m`` moving to keep ``sum_j s_j = mu``: ``dL/dlogits_kj = a_kj (c_j + s_j (g_kj - g_s_j))`` with
    ``g_s_j = sum_k a_kj g_kj`` and ``c_j = d_sigma_j (g_s_j - sum_i w_i g_s_i) / N``, ``w = d_sigma /
    sum(d_sigma)``, ``d_sigma = sigma (1 - sigma)``; ``dL/dmu = sum_i w_i g_s_i``. The average over locations
    is centred on its heaviest term: when one location carries almost all the weight (large gamma) the
    differences are tiny and would otherwise cancel catastrophically. (The softmax part ``g - g_s`` keeps the
    usual absolute accuracy, eps times ``max |g|``; centring it too cost ~20% of forward+backward on CPU.)
    """
    a, sigma, d_sigma, weights, cost, min_c, gamma = residuals
    n = cost.shape[-1]
    s = sigma / n
    g_s = jnp.sum(g * a, axis=-2)  # dLoss/ds_j through P = s a
    r = jnp.argmax(weights, axis=-1, keepdims=True)
    g_r = jnp.take_along_axis(g_s, r, axis=-1)
    centred = jnp.sum(weights * (g_s - g_r), axis=-1, keepdims=True)
    c = d_sigma * ((g_s - g_r) - centred) / n  # dLoss/dlog S_j
    scale = -gamma[..., None]  # d_cost = -gamma dL/dlogits, the scaling applied to N-vectors (one KN pass)
    d_cost = a * ((scale * c)[..., None, :] + (scale * s)[..., None, :] * (g - g_s[..., None, :]))
    # -sum_kj dL/dlogits_kj C_kj, using sum_k dL/dlogits_kj = c_j and sum_j c_j = 0 to centre the cost
    d_gamma = (jnp.sum(d_cost * (cost - min_c[..., None, :]), axis=(-2, -1)) / gamma
               - jnp.sum(c * (min_c - jnp.take_along_axis(min_c, r, axis=-1)), axis=-1))
    d_mu = (g_r + centred)[..., 0]  # sum_i w_i g_s_i
    return d_cost, d_mu, d_gamma


_newton_solution.defvjp(_newton_fwd, _newton_bwd)


def _newton_plan(cost: jnp.ndarray, mu: jnp.ndarray, gamma: jnp.ndarray) -> jnp.ndarray:
    batch = cost.shape[:-2]
    return _newton_solution(cost, jnp.broadcast_to(mu, batch), jnp.broadcast_to(gamma, batch))


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


def _concrete(value) -> np.ndarray | None:
    """``value`` as a NumPy array, or None when it is traced (inside jit, grad or vmap)."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return np.asarray(value)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _check_parameter(name: str, value, batch: tuple[int, ...], *, upper_closed: bool) -> bool:
    """Check ``transport_ratio`` (in (0, 1]) or ``gamma`` (in (0, inf)); True when concrete (checked)."""
    dtype = jnp.result_type(value)
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)) or dtype == jnp.bool_:
        raise TypeError(f"{name} must be a real number (or a real array), got dtype {dtype}; pass a float")
    shape = jnp.shape(value)
    if shape == ():  # a scalar broadcasts to any batch, also a symbolic one (jax.export with a dynamic batch)
        return _check_range(name, value, upper_closed=upper_closed)
    try:
        np.broadcast_shapes(shape, batch)
    except ValueError:
        raise ValueError(f"{name} has shape {shape}, which does not broadcast to the batch shape {batch} of the "
                         f"cost (..., K, N); pass a scalar or an array of shape cost.shape[:-2]") from None
    if np.broadcast_shapes(shape, batch) != batch:
        raise ValueError(f"{name} has shape {shape}, which would enlarge the batch shape {batch} of the cost "
                         f"(..., K, N); pass a scalar or an array of shape cost.shape[:-2]")
    return _check_range(name, value, upper_closed=upper_closed)


def _check_range(name: str, value, *, upper_closed: bool) -> bool:
    """The range half of :func:`_check_parameter`: True when ``value`` is concrete (and then in range)."""
    concrete = _concrete(value)
    if concrete is None:
        return False
    values = concrete.astype(np.float64)
    if upper_closed:
        bad = ~((values > 0) & (values <= 1))
        what = "in (0, 1] (the fraction of the mass that is transported; 1 is GAP)"
    else:
        bad = ~((values > 0) & np.isfinite(values))
        what = "positive and finite (the inverse temperature of the entropic regulariser)"
    if bad.any():
        shown = values[bad].flat[0]
        raise ValueError(f"{name} must be {what}, got {shown}; pass a value in that range")
    return True


def _check_cost(cost: jnp.ndarray) -> jnp.ndarray:
    """The cost as a floating array (integer and bool costs promoted), or a ValueError/TypeError."""
    if cost.ndim < 2:
        raise ValueError(f"cost must have shape (..., K, N) (prototypes x locations), got shape {cost.shape}; "
                         f"add the missing axis, e.g. cost[None] for one prototype")
    if cost.shape[-2] == 0 or cost.shape[-1] == 0:
        raise ValueError(f"cost of shape {cost.shape} has K = {cost.shape[-2]} prototypes and N = {cost.shape[-1]} "
                         f"locations; GSP needs K >= 1 and N >= 1")
    if jnp.issubdtype(cost.dtype, jnp.complexfloating):
        raise TypeError(f"cost must be real, got dtype {cost.dtype}; pass a real cost (e.g. a distance)")
    if jnp.issubdtype(cost.dtype, jnp.integer) or cost.dtype == jnp.bool_:
        return cost.astype(jnp.result_type(float))  # float32, or float64 when x64 is enabled
    if not jnp.issubdtype(cost.dtype, jnp.floating):
        raise TypeError(f"cost must be a real floating-point array, got dtype {cost.dtype}; pass float32")
    return cost


def gsp_transport(cost: jnp.ndarray, transport_ratio: float, gamma: float, *, method: Method = "newton",
                  iterations: int = 100, mu_init: float | None = None) -> jnp.ndarray:
    """Transport plan ``P`` (..., K, N) of the GSP problem for cost (..., K, N) (prototypes x locations).

    ``transport_ratio`` (mu, in (0, 1]; 1 is GAP: every location fully transported) and ``gamma`` (in
    (0, inf)) are scalars or arrays of the batch shape ``cost.shape[:-2]`` (``"ott"``: scalar gamma;
    ``"fixed_point"``: Python numbers). The residual is ``1/N - P.sum(-2)``. ``iterations`` and ``mu_init``
    (default ``transport_ratio``, as the PyTorch release; the TF release starts at 1.0) apply to
    ``"fixed_point"`` only. ``"newton"`` stays exact and finite for gamma times the cost range up to at least
    1e4 in float32 (see the module docstring).

    Inputs may be float32, bfloat16 or float64; the solve runs in at least float32 and the plan has the
    input's dtype. Integer and bool costs are promoted to the default float dtype (float32; float64 with x64)
    and so is the plan. ``vmap``, ``jit`` and ``grad`` apply as usual; ``method``, ``iterations`` and
    ``mu_init`` are static.

    Raises ValueError for a cost that is not (..., K, N) with K, N >= 1, for a ``transport_ratio`` or
    ``gamma`` out of range when concrete (Python or NumPy numbers, arrays outside jit) or not broadcastable
    to the batch shape, and for an unknown method; TypeError for a complex or non-numeric cost or parameter.
    Traced values (under jit, grad or vmap) cannot be checked: there an out-of-range or NaN
    ``transport_ratio`` or ``gamma`` gives a NaN plan for the affected problems (so a NaN loss and NaN cost
    gradients, which the training step's NaN guard catches), never a plausible-looking plan.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    cost = jnp.asarray(cost)
    work = _check_cost(cost)
    out_dtype = work.dtype
    work = work.astype(_compute_dtype(work.dtype))
    batch = work.shape[:-2]
    if method == "fixed_point":
        if (isinstance(transport_ratio, bool) or not isinstance(transport_ratio, (int, float))
                or isinstance(gamma, bool) or not isinstance(gamma, (int, float))):
            raise TypeError("method='fixed_point' reproduces the released code: transport_ratio and gamma must be "
                            "Python numbers (its gradient is with respect to the cost only)")
        _check_parameter("transport_ratio", transport_ratio, batch, upper_closed=True)
        _check_parameter("gamma", gamma, batch, upper_closed=False)
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {iterations!r}; pass e.g. 100")
        plan = _fixed_point_solution(work, float(transport_ratio), float(gamma), iterations, mu_init)[..., 1:, :]
        return plan.astype(out_dtype)
    mu_checked = _check_parameter("transport_ratio", transport_ratio, batch, upper_closed=True)
    gamma_checked = _check_parameter("gamma", gamma, batch, upper_closed=False)
    mu = jnp.asarray(transport_ratio, work.dtype)
    gamma_ = jnp.asarray(gamma, work.dtype)
    valid = None
    if not (mu_checked and gamma_checked):  # traced: solve a valid stand-in, then poison the plan with NaN
        mu_ok = (mu > 0) & (mu <= 1)
        gamma_ok = (gamma_ > 0) & jnp.isfinite(gamma_)
        mu, gamma_ = jnp.where(mu_ok, mu, 0.5), jnp.where(gamma_ok, gamma_, 1.0)
        valid = jnp.broadcast_to(mu_ok & gamma_ok, batch)
    if method == "newton":
        plan = _newton_plan(work, mu, gamma_)
    else:
        from jaxdml.kernels.gsp_ott import ott_plan

        if gamma_.ndim:
            raise ValueError(f"method='ott' takes a scalar gamma, got shape {gamma_.shape}; use method='newton' "
                             f"for one gamma per problem")
        plan = ott_plan(work, transport_ratio if valid is None else mu, gamma if valid is None else gamma_)
    if valid is not None:
        plan = plan * jnp.where(valid, 1.0, jnp.nan).astype(plan.dtype)[..., None, None]
    return plan.astype(out_dtype)
