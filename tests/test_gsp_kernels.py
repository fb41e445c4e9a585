"""GSP transport kernels: the three methods agree with each other, with a generic convex solver, with a
closed form and with finite differences; float32/bfloat16 inputs, vmap and jit work."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.kernels import METHODS, gsp_transport

SETTINGS = [(5.0, 0.3), (0.5, 0.3), (0.1, 0.3), (20.0, 0.7), (5.0, 0.9), (2.0, 0.05)]


def costs(seed, shape, scale=2.0):
    return np.random.default_rng(seed).uniform(0.0, scale, size=shape)


def objective(plan, cost, gamma):
    """<C, P> + (1/gamma) (sum P log P + sum r log r), the GSP objective."""
    n = cost.shape[-1]
    residual = 1.0 / n - plan.sum(-2)
    xlogx = lambda v: np.sum(np.where(v > 0, v * np.log(np.maximum(v, 1e-300)), 0.0))
    return float(np.sum(cost * plan) + (xlogx(plan) + xlogx(residual)) / gamma)


@pytest.mark.parametrize(("gamma", "mu"), SETTINGS)
def test_methods_agree_on_the_plan_float64(gamma, mu):
    cost = costs(1, (3, 8, 49))
    with jax.enable_x64(True):
        newton = np.asarray(gsp_transport(jnp.asarray(cost), mu, gamma))
        fixed = np.asarray(gsp_transport(jnp.asarray(cost), mu, gamma, method="fixed_point", iterations=5000))
        ott = np.asarray(gsp_transport(jnp.asarray(cost), mu, gamma, method="ott"))
    np.testing.assert_allclose(newton, fixed, atol=1e-9)
    np.testing.assert_allclose(newton, ott, atol=1e-9)
    n = cost.shape[-1]
    assert (newton >= 0).all() and (newton.sum(-2) <= 1.0 / n + 1e-15).all()
    np.testing.assert_allclose(newton.sum((-2, -1)), mu, rtol=1e-12)


def test_plan_is_the_optimum_of_the_convex_problem():
    """Against scipy's SLSQP on the problem as stated (no use of the closed-form structure)."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    k, n, gamma, mu = 3, 4, 2.0, 0.4
    cost = costs(2, (k, n))

    def f(v):
        p = np.maximum(v.reshape(k, n), 1e-12)
        r = np.maximum(1.0 / n - p.sum(0), 1e-12)
        return np.sum(cost * p) + (np.sum(p * np.log(p)) + np.sum(r * np.log(r))) / gamma

    constraints = [{"type": "eq", "fun": lambda v: v.sum() - mu},
                   {"type": "ineq", "fun": lambda v: 1.0 / n - v.reshape(k, n).sum(0)}]
    result = scipy_optimize.minimize(f, np.full(k * n, mu / (k * n)), method="SLSQP", constraints=constraints,
                                     bounds=[(1e-12, 1.0)] * (k * n), options={"ftol": 1e-14, "maxiter": 1000})
    with jax.enable_x64(True):
        plan = np.asarray(gsp_transport(jnp.asarray(cost), mu, gamma))
    np.testing.assert_allclose(plan, result.x.reshape(k, n), atol=2e-6)
    assert objective(plan, cost, gamma) <= result.fun + 1e-10


def test_closed_form_single_prototype_two_locations():
    # K = 1, N = 2: (m S1/(1+m S1) + m S2/(1+m S2)) / 2 = mu is a quadratic in m.
    gamma, mu, c = 3.0, 0.6, np.array([[0.2, 0.7]])
    s1, s2 = np.exp(-gamma * c[0])
    a, b, q = (2 * mu - 2) * s1 * s2, (2 * mu - 1) * (s1 + s2), 2 * mu
    m = (-b - np.sqrt(b * b - 4 * a * q)) / (2 * a)
    expected = np.array([[m * s1 / (1 + m * s1), m * s2 / (1 + m * s2)]]) / 2
    with jax.enable_x64(True):
        for method in METHODS:
            kwargs = {"iterations": 5000} if method == "fixed_point" else {}
            plan = np.asarray(gsp_transport(jnp.asarray(c), mu, gamma, method=method, **kwargs))
            np.testing.assert_allclose(plan, expected, rtol=1e-9, err_msg=method)


def _loss(method, weights, **kwargs):
    return lambda c, mu=0.3, gamma=5.0: jnp.sum(weights * gsp_transport(c, mu, gamma, method=method, **kwargs))


@pytest.mark.parametrize(("gamma", "mu"), SETTINGS)
def test_methods_agree_on_gradients_float64(gamma, mu):
    cost = costs(3, (2, 6, 25))
    weights = np.random.default_rng(4).normal(size=cost.shape)
    with jax.enable_x64(True):
        c, w = jnp.asarray(cost), jnp.asarray(weights)
        grads = {m: np.asarray(jax.grad(_loss(m, w, **({"iterations": 5000} if m == "fixed_point" else {})))(
            c, mu, gamma)) for m in METHODS}
    scale = np.abs(grads["newton"]).max()
    for method in ("fixed_point", "ott"):
        np.testing.assert_allclose(grads[method], grads["newton"], atol=1e-6 * scale, err_msg=method)


def _weighted_sum_raw(cost, weights, mu, gamma, method):
    return jnp.sum(weights * gsp_transport(cost, mu, gamma, method=method))


_weighted_sum = jax.jit(_weighted_sum_raw, static_argnums=4)
_weighted_sum_grad = jax.jit(jax.grad(_weighted_sum_raw), static_argnums=4)


@pytest.mark.parametrize(("method", "product", "mu"), [("newton", 10.0, 0.3), ("ott", 10.0, 0.3)] + [
    ("newton", product, mu) for product in (1.0, 100.0) for mu in (0.05, 0.3, 0.7, 0.95)])
def test_gradients_match_finite_differences(method, product, mu):
    """Directional derivatives in float64 at gamma * cost range = ``product`` (1 to 100: moderate gamma; at
    1e3-1e4 the gradients of these small problems are too small for differences of the loss to resolve them,
    there the float32 gradients are checked against these float64 ones in test_gsp_robust.py)."""
    cost = costs(5, (2, 5, 9))
    weights = np.random.default_rng(6).normal(size=cost.shape)
    direction = np.random.default_rng(7).normal(size=cost.shape)
    gamma = product / float(cost.max() - cost.min())
    with jax.enable_x64(True):
        c, w, d, eps = jnp.asarray(cost), jnp.asarray(weights), jnp.asarray(direction), 1e-5 / product
        f = lambda c: _weighted_sum(c, w, mu, gamma, method)  # jitted: one compilation for all the cases
        numeric = (f(c + eps * d) - f(c - eps * d)) / (2 * eps)
        analytic = jnp.sum(_weighted_sum_grad(c, w, mu, gamma, method) * d)
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


def test_newton_gradients_in_transport_ratio_and_gamma():
    cost = costs(8, (2, 5, 9))
    weights = np.random.default_rng(9).normal(size=cost.shape)
    with jax.enable_x64(True):
        f = _loss("newton", jnp.asarray(weights))
        c, eps = jnp.asarray(cost), 1e-6
        d_mu, d_gamma = jax.grad(f, argnums=(1, 2))(c, 0.35, 4.0)
        np.testing.assert_allclose(float(d_mu), float((f(c, 0.35 + eps, 4.0) - f(c, 0.35 - eps, 4.0)) / (2 * eps)),
                                   rtol=1e-6)
        np.testing.assert_allclose(float(d_gamma),
                                   float((f(c, 0.35, 4.0 + eps) - f(c, 0.35, 4.0 - eps)) / (2 * eps)), rtol=1e-6)


def test_fixed_point_reproduces_the_released_iteration():
    """A separate float64 implementation of the released loop (DESIGN.md §4): p = q/(1+mS), m <- mu/sum(pS)."""
    torch = pytest.importorskip("torch")
    cost = costs(10, (4, 16, 49))
    mu, gamma = 0.3, 5.0
    c = torch.tensor(cost, dtype=torch.float64)
    kernel = torch.exp(-gamma * c)
    total = kernel.sum(dim=1, keepdim=True)
    m = torch.full((4, 1, 1), mu, dtype=torch.float64)
    for _ in range(101):
        p = (1.0 / 49) / (1.0 + m * total)
        m = mu / (p * total).sum(dim=-1, keepdim=True)
    expected = (m * kernel * p).numpy()
    with jax.enable_x64(True):
        plan = np.asarray(gsp_transport(jnp.asarray(cost), mu, gamma, method="fixed_point", iterations=100))
    np.testing.assert_allclose(plan, expected, rtol=1e-13, atol=0)


def test_fixed_point_stops_short_where_newton_does_not():
    cost = costs(11, (2, 8, 49))
    with jax.enable_x64(True):
        exact = np.asarray(gsp_transport(jnp.asarray(cost), 0.95, 5.0))
        short = np.asarray(gsp_transport(jnp.asarray(cost), 0.95, 5.0, method="fixed_point"))
    residual = 1.0 / 49 - short.sum(-2)
    assert np.abs(short - exact).max() > 1e-7, "100 fixed-point steps are not enough at mu = 0.95"
    assert (residual > -1e-12).all()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_inputs_vmap_and_jit(dtype, method):
    cost = jnp.asarray(costs(12, (4, 8, 16)), dtype)
    plan = jax.jit(lambda c: gsp_transport(c, 0.3, 5.0, method=method))(cost)
    assert plan.dtype == dtype and plan.shape == cost.shape
    per_item = jax.vmap(lambda c: gsp_transport(c, 0.3, 5.0, method=method))(cost)
    np.testing.assert_allclose(np.asarray(per_item, np.float32), np.asarray(plan, np.float32), atol=1e-6)
    np.testing.assert_allclose(np.asarray(plan, np.float32).sum((-2, -1)), 0.3, rtol=1e-2)
    grad = jax.grad(lambda c: jnp.sum(jnp.sin(jnp.arange(16.0)) * gsp_transport(c, 0.3, 5.0, method=method)
                                      .astype(jnp.float32)))(cost)
    assert grad.dtype == dtype and np.isfinite(np.asarray(grad, np.float32)).all()


def test_ott_gradients_stay_finite_on_collinear_features_float32():
    """Nearly collinear features (every location costs the same) break ott-jax 0.6.0's default implicit
    differentiation in float32 (NaN / 'non-finite output'); our configuration solves that system densely."""
    rng = np.random.default_rng(13)
    weights = jnp.asarray(rng.normal(size=(8, 49)), jnp.float32)
    for gamma, mu in [(20.0, 0.7), (5.0, 0.3), (5.0, 0.9)]:
        for jitter in (0.0, 1e-6, 1e-3):
            cost = np.tile(rng.uniform(0, 2, size=(8, 1)), (1, 49)) + jitter * rng.normal(size=(8, 49))
            cost = jnp.asarray(cost, jnp.float32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g_ott = jax.grad(_loss("ott", weights))(cost, mu, gamma)
            g_newton = jax.grad(_loss("newton", weights))(cost, mu, gamma)
            assert np.isfinite(np.asarray(g_ott)).all(), (gamma, mu, jitter)
            np.testing.assert_allclose(np.asarray(g_ott), np.asarray(g_newton),
                                       atol=1e-4 * float(jnp.abs(g_newton).max()) + 1e-7)


def test_edge_ratios_and_bad_input():
    """mu = 1 is GAP; mu = 0 is rejected (it used to give an all-zero plan); more in test_gsp_robust.py."""
    cost = jnp.asarray(costs(14, (5, 7)), jnp.float32)
    np.testing.assert_allclose(np.asarray(gsp_transport(cost, 1.0, 5.0).sum(0)), 1 / 7, rtol=1e-6)
    with pytest.raises(ValueError, match=r"transport_ratio must be in \(0, 1\]"):
        gsp_transport(cost, 0.0, 5.0)
    with pytest.raises(ValueError, match="unknown method"):
        gsp_transport(cost, 0.3, 5.0, method="sinkhorn")
    with pytest.raises(ValueError, match=r"\(\.\.\., K, N\)"):
        gsp_transport(jnp.ones(3), 0.3, 5.0)
