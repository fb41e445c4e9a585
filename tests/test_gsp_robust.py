"""GSP transport robustness: the log-space Newton solver against an independent float64 NumPy reference over
gamma times the cost range from 1 to 1e4 in float32, gradients across that sweep, argument validation, and NaN
(never a plausible plan) for invalid traced arguments."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.kernels import METHODS, gsp_transport

EPS32 = float(np.finfo(np.float32).eps)
MUS = (0.05, 0.3, 0.7, 0.95)
PRODUCTS = (1.0, 10.0, 100.0, 1e3, 1e4)  # gamma times the cost range
SHAPES = [(8, 16), (64, 49), (16, 196)]  # (K, N)
newton = jax.jit(gsp_transport)  # one compilation per shape (eager dispatch compiles every op separately)


def sigmoid(x):
    return np.exp(-np.logaddexp(0.0, -x))


def reference_plan(cost, mu, gamma):
    """Independent float64 reference: bisection on t = log m, sums of exponentials by np.logaddexp.

    cost (B, K, N), mu and gamma (B,). P_kj = s_j softmax_k(-gamma C_kj), N s_j = sigmoid(t + l_j) with
    l_j = log S_j - max_j log S_j, and t the root of mean_j sigmoid(t + l_j) = mu in
    [logit(mu), logit(mu) - min l].
    """
    cost = np.asarray(cost, np.float64)
    mu = np.asarray(mu, np.float64)[:, None]
    logits = -np.asarray(gamma, np.float64)[:, None, None] * cost
    log_s = np.logaddexp.reduce(logits, axis=-2)
    softmax = np.exp(logits - log_s[:, None, :])
    rel = log_s - log_s.max(-1, keepdims=True)
    lo = np.log(mu) - np.log1p(-mu)
    hi = lo - rel.min(-1, keepdims=True)
    for _ in range(200):  # the bracket stops shrinking after ~70 halvings in float64
        mid = 0.5 * (lo + hi)
        below = np.mean(sigmoid(mid + rel), axis=-1, keepdims=True) < mu
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    sigma = sigmoid(0.5 * (lo + hi) + rel)
    return sigma[:, None, :] / cost.shape[-1] * softmax, sigma


def sweep(seed, k, n):
    """float32 costs (20, K, N) in [0, 2) and per problem mu, gamma with gamma * cost range = PRODUCTS."""
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0.0, 2.0, size=(len(MUS) * len(PRODUCTS), k, n)).astype(np.float32)
    mu = np.tile(np.asarray(MUS, np.float32), len(PRODUCTS))
    product = np.repeat(np.asarray(PRODUCTS), len(MUS))
    gamma = (product / (cost.max((-2, -1)) - cost.min((-2, -1)))).astype(np.float32)
    return cost, mu, gamma, product


@pytest.mark.parametrize("seed", range(len(SHAPES)))
def test_newton_matches_float64_reference_up_to_gamma_range_1e4(seed):
    k, n = SHAPES[seed]
    cost, mu, gamma, product = sweep(seed, k, n)
    plan = np.asarray(newton(jnp.asarray(cost), jnp.asarray(mu), jnp.asarray(gamma)), np.float64)
    reference, sigma = reference_plan(cost, mu, gamma)  # from the same float32 inputs, solved in float64
    assert np.isfinite(plan).all() and (plan >= 0).all()
    np.testing.assert_allclose(plan.sum((-2, -1)), mu, rtol=8 * EPS32)
    assert (plan.sum(-2) <= (1 + 4 * EPS32) / n).all(), "a location gives more than its mass 1/N"
    # Tolerance. The float32 solve is backward stable: it is the exact plan for mu and the costs perturbed by a
    # few ulps (F(t) = mean sigmoid - mu is evaluated to ~eps * mu; cost differences are taken before the
    # scaling by gamma, so the partially transported locations see no large-gamma rounding). A relative change
    # of mu by eps moves N s_j by eps * mu * d_sigma_j / mean(d_sigma) (d_sigma = sigma (1 - sigma)), so the
    # error relative to the largest entry is ~eps * (1 + mu * kappa), kappa = max d_sigma / mean d_sigma <= N
    # (measured: at most 3.8 times that over three seeds and five shapes; we allow 16).
    d_sigma = sigma * (1 - sigma)
    kappa = d_sigma.max(-1) / np.maximum(d_sigma.mean(-1), 1e-300)
    tolerance = 16 * EPS32 * (1 + mu * kappa) * reference.max((-2, -1))
    error = np.abs(plan - reference).max((-2, -1))
    bad = error > tolerance
    assert not bad.any(), (f"gamma*range {product[bad]}, mu {mu[bad]}: error {error[bad]} > {tolerance[bad]}")


def test_newton_equals_ott_where_ott_converges():
    """ott-jax's Sinkhorn (threshold 1e-6 on the marginals, at most 2000 iterations, epsilon = 1/gamma) converges
    up to gamma * range = 1e3 here. At 1e4 it does not: measured 1% off the optimum at mu = 0.7 and the total
    mass 3e-4 off, so that product is left out (Newton is checked there against the NumPy reference above)."""
    cost, mu, _, _ = sweep(10, 32, 49)
    ott = jax.jit(lambda c, m, g: gsp_transport(c, m, g, method="ott"))
    for i, product in enumerate(PRODUCTS[:-1]):
        batch = slice(4 * i, 4 * i + 4)
        gamma = np.float32(product / (cost[batch].max() - cost[batch].min()))
        c, m = jnp.asarray(cost[batch]), jnp.asarray(mu[batch])
        by_newton = np.asarray(newton(c, m, gamma))
        by_ott = np.asarray(ott(c, m, gamma))
        # ott stops when its marginals are within 1e-6, so its shares s_j (and the entries s_j a_kj, a <= 1) are
        # within about that; measured at most 4e-7.
        np.testing.assert_allclose(by_ott, by_newton, rtol=0, atol=2e-6, err_msg=f"gamma * range {product}")


@pytest.mark.parametrize("seed", [2])
def test_newton_gradients_finite_and_equal_to_float64_across_the_sweep(seed):
    """float32 gradients (cost, mu, gamma) are finite; the cost gradient equals the float64 one (which the
    finite-difference tests check at moderate gamma) to 64 ulps of its natural scale gamma max|w| / N: the
    softmax part a (g - sum_k a g) has the usual absolute accuracy eps max|g| (measured at most 7 ulps)."""
    k, n = SHAPES[seed]
    cost, mu, gamma, _ = sweep(seed + 20, k, n)
    weights = np.random.default_rng(seed + 30).normal(size=cost.shape).astype(np.float32)
    loss = lambda c, m, g, w: jnp.sum(w * gsp_transport(c, m, g))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(jnp.asarray(cost), jnp.asarray(mu), jnp.asarray(gamma),
                                                       jnp.asarray(weights))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)
    with jax.enable_x64(True):
        exact = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(cost, jnp.float64), jnp.asarray(mu, jnp.float64),
                                                   jnp.asarray(gamma, jnp.float64), jnp.asarray(weights, jnp.float64)))
    scale = gamma * np.abs(weights).max((-2, -1)) / n
    error = np.abs(np.asarray(grads[0], np.float64) - exact).max((-2, -1))
    assert (error <= 64 * EPS32 * scale).all(), error / (EPS32 * scale)


def test_newton_gradient_keeps_relative_accuracy_with_one_partial_location():
    """K = 1 makes the softmax exactly 1, so the whole gradient runs through the transported shares. At
    gamma * range = 1e3 one location is partial and carries almost all of sum_j d_sigma_j; its term
    g_s_j - sum_i w_i g_s_i is tiny and cancels catastrophically unless centred on it (measured on the six problems
    kept: uncentred, 1e-2 to 100% relative errors on four; centred, at most 6e-6)."""
    rng = np.random.default_rng(50)
    cost = rng.uniform(0, 2, size=(8, 1, 16)).astype(np.float32)
    weights = rng.normal(size=cost.shape).astype(np.float32)
    mu = np.tile(np.asarray(MUS, np.float32), 2)
    gamma = (1e3 / (cost.max((-2, -1)) - cost.min((-2, -1)))).astype(np.float32)
    loss = lambda c, m, g, w: jnp.sum(w * gsp_transport(c, m, g))
    approximate = np.asarray(jax.jit(jax.grad(loss))(cost, mu, gamma, weights), np.float64)
    with jax.enable_x64(True):
        exact = np.asarray(jax.jit(jax.grad(loss))(*(jnp.asarray(v, jnp.float64) for v in (cost, mu, gamma, weights))))
    scale = np.abs(exact).max((-2, -1))
    kept = scale > 1e-30  # gradients that float32 represents with full precision (not underflowed)
    assert kept.sum() >= 5
    error = np.abs(approximate - exact).max((-2, -1))[kept] / scale[kept]
    assert (error < 1e-4).all(), error


def test_flat_between_clusters_float32():
    """Two clusters of locations 1e4 apart in gamma * cost: F(t) is flat (derivative ~e^-5000) between them.
    mu = 0.5 puts the root there (first cluster fully transported); mu = 0.25 splits the first cluster evenly."""
    cost = np.zeros((4, 20), np.float32)
    cost[:, 10:] = 1.0
    cost += np.random.default_rng(0).uniform(0, 1e-6, size=cost.shape).astype(np.float32)  # gamma * 1e-6 = 0.01
    for mu, expected in [(0.5, [1.0] * 10 + [0.0] * 10), (0.25, [0.5] * 10 + [0.0] * 10)]:
        plan = np.asarray(newton(jnp.asarray(cost), mu, 1e4))
        np.testing.assert_allclose(plan.sum(0) * 20, expected, atol=1e-2)
        reference, _ = reference_plan(cost[None], np.array([mu]), np.array([1e4]))
        np.testing.assert_allclose(plan, reference[0], rtol=0, atol=64 * EPS32 * reference.max())


# Validation -------------------------------------------------------------------------------------------------


COST = np.random.default_rng(40).uniform(0, 2, size=(2, 5, 7)).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("mu", "gamma", "match"), [
    (0.0, 5.0, "transport_ratio must be in"), (-0.5, 5.0, "transport_ratio must be in"),
    (1.5, 5.0, "transport_ratio must be in"), (math.nan, 5.0, "transport_ratio must be in"),
    (0.3, 0.0, "gamma must be positive and finite"), (0.3, -1.0, "gamma must be positive and finite"),
    (0.3, math.inf, "gamma must be positive and finite"), (0.3, math.nan, "gamma must be positive and finite"),
])
def test_invalid_transport_ratio_or_gamma_raises(method, mu, gamma, match):
    with pytest.raises(ValueError, match=match):
        gsp_transport(jnp.asarray(COST), mu, gamma, method=method)


@pytest.mark.parametrize("method", ["newton", "ott"])
def test_invalid_concrete_arrays_raise(method):
    with pytest.raises(ValueError, match="transport_ratio must be in"):
        gsp_transport(jnp.asarray(COST), np.array([0.3, 1.2], np.float32), 5.0, method=method)
    with pytest.raises(ValueError, match="gamma must be positive"):
        gsp_transport(jnp.asarray(COST), 0.3, jnp.asarray(-2.0), method=method)
    with pytest.raises(ValueError, match="does not broadcast"):
        gsp_transport(jnp.asarray(COST), np.full(3, 0.3), 5.0, method=method)
    with pytest.raises(TypeError, match="must be a real number"):
        gsp_transport(jnp.asarray(COST), 0.3 + 0.1j, 5.0, method=method)


def test_fixed_point_still_requires_python_numbers():
    with pytest.raises(TypeError, match="Python numbers"):
        gsp_transport(jnp.asarray(COST), jnp.asarray(0.3), 5.0, method="fixed_point")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("shape", "match"), [((7,), r"\(\.\.\., K, N\)"), ((0, 7), "K = 0"), ((5, 0), "N = 0"),
                                              ((3, 0, 7), "K = 0")])
def test_bad_cost_shape_raises(method, shape, match):
    with pytest.raises(ValueError, match=match):
        gsp_transport(jnp.ones(shape, jnp.float32), 0.3, 5.0, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_complex_cost_raises(method):
    with pytest.raises(TypeError, match="cost must be real"):
        gsp_transport(jnp.asarray(COST, jnp.complex64), 0.3, 5.0, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_integer_and_bool_costs_are_promoted_to_float32(method):
    integer = np.random.default_rng(41).integers(0, 4, size=(2, 5, 7))
    solve = jax.jit(lambda c: gsp_transport(c, 0.3, 2.0, method=method))  # concrete mu and gamma
    for cost in (integer.astype(np.int32), integer > 1):
        plan = solve(jnp.asarray(cost))
        expected = solve(jnp.asarray(cost, jnp.float32))
        assert plan.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(plan), np.asarray(expected))
        np.testing.assert_allclose(np.asarray(plan).sum((-2, -1)), 0.3, rtol=1e-5)


@pytest.mark.parametrize("method", ["newton", "ott"])
def test_traced_invalid_arguments_give_nan_under_jit(method):
    """Inside jit the values cannot be checked: an invalid one poisons its problem's plan with NaN (the
    training step's NaN guard stops on it) and leaves the other problems of the batch untouched."""
    cost = jnp.asarray(COST)
    solve = jax.jit(lambda c, m, g: gsp_transport(c, m, g, method=method))
    valid = np.asarray(solve(cost, 0.3, 5.0))
    assert np.isfinite(valid).all()
    np.testing.assert_allclose(valid.sum((-2, -1)), 0.3, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(solve(cost, 1.0, 5.0)).sum(-2), 1 / 7, rtol=1e-5)  # mu = 1 is GAP
    for mu, gamma in [(0.0, 5.0), (-0.5, 5.0), (1.5, 5.0), (math.nan, 5.0), (0.3, 0.0), (0.3, -1.0),
                      (0.3, math.inf), (0.3, math.nan)]:
        assert np.isnan(np.asarray(solve(cost, mu, gamma))).all(), (mu, gamma)
    if method == "newton":  # one gamma per problem is a newton feature
        mixed = np.asarray(solve(cost, jnp.asarray([0.3, 1.5]), jnp.asarray([5.0, 5.0])))
        assert np.isnan(mixed[1]).all()
        np.testing.assert_array_equal(mixed[0], valid[0])
        d_cost = jax.jit(jax.grad(lambda c, m: jnp.sum(gsp_transport(c, m, 5.0) ** 2)))(cost, -0.5)
        assert np.isnan(np.asarray(d_cost)).all()
