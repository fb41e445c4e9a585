"""The GSP pooling function: exactly GAP at transport_ratio=1, a convex combination otherwise, and the
released code's normalisation and cost."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.layers.gsp import gsp_pool, gsp_weights, lipschitz_normalize, prototype_costs


def inputs(seed=0, b=3, h=4, w=5, d=6, k=7):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(b, h, w, d)).astype(np.float32) * rng.uniform(0.2, 3.0, size=(b, h, w, 1))
    prototypes = rng.normal(size=(k, d)).astype(np.float32)
    return jnp.asarray(features), jnp.asarray(prototypes)


@pytest.mark.parametrize("method", ["newton", "fixed_point", "ott"])
def test_transport_ratio_one_is_exactly_gap(method):
    features, prototypes = inputs()
    pooled, attributes = gsp_pool(features, prototypes, transport_ratio=1.0, gamma=5.0, method=method)
    # Every weight is exactly 1/N; the weighted sum and jnp.mean may round in another order (1 ulp on some CPUs).
    np.testing.assert_allclose(np.asarray(pooled), np.asarray(jnp.mean(features, axis=(1, 2))), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(attributes).sum(-1), 1.0, rtol=1e-5)


def test_pooled_is_a_convex_combination_of_the_locations():
    features, prototypes = inputs(1)
    weights, plan = gsp_weights(features, prototypes, transport_ratio=0.3, gamma=5.0)
    w = np.asarray(weights)
    assert w.shape == (3, 20) and (w >= 0).all()
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    assert (w <= 1 / (20 * 0.3) + 1e-6).all(), "no location gives more than its mass"
    pooled, attributes = gsp_pool(features, prototypes, transport_ratio=0.3, gamma=5.0)
    x = np.asarray(features).reshape(3, 20, 6)
    np.testing.assert_allclose(np.asarray(pooled), np.einsum("bn,bnd->bd", w, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(attributes), np.asarray(plan).sum(-1) / 0.3, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(attributes).sum(-1), 1.0, rtol=1e-5)


def test_gsp_ignores_locations_unlike_every_prototype():
    # Two kinds of location: copies of the prototype and far-away noise. With mu = the prototype
    # share, the pooled vector is (almost) the prototype-like locations' mean.
    proto = jnp.asarray([[1.0, 0.0, 0.0]])
    near = np.tile([0.9, 0.1, 0.0], (6, 1))
    far = np.tile([-1.0, 0.0, 1.0], (4, 1))
    features = jnp.asarray(np.concatenate([near, far])[None], jnp.float32)
    pooled, _ = gsp_pool(features, proto, transport_ratio=0.6, gamma=20.0)
    np.testing.assert_allclose(np.asarray(pooled[0]), [0.9, 0.1, 0.0], atol=2e-3)


def test_costs_are_unsquared_distances_of_lipschitz_normalised_vectors():
    features, prototypes = inputs(2)
    x = np.asarray(features, np.float64).reshape(3, 20, 6)
    p = np.asarray(prototypes, np.float64)
    n = lambda v: v / np.maximum(1.0, np.linalg.norm(v, axis=-1, keepdims=True))
    expected = np.linalg.norm(n(p)[None, :, None, :] - n(x)[:, None, :, :], axis=-1)
    np.testing.assert_allclose(np.asarray(prototype_costs(jnp.asarray(x, jnp.float32), prototypes)), expected,
                               rtol=1e-5, atol=1e-6)
    short = jnp.asarray([[0.3, 0.4]])  # norm 0.5: left as is
    np.testing.assert_array_equal(np.asarray(lipschitz_normalize(short)), np.asarray(short))
    np.testing.assert_allclose(np.asarray(lipschitz_normalize(jnp.asarray([[3.0, 4.0]]))), [[0.6, 0.8]])


def test_identical_feature_and_prototype_have_finite_gradients():
    features = jnp.asarray([[[0.5, 0.5], [0.1, -0.2]]])
    grad = jax.grad(lambda p: jnp.sum(gsp_pool(features, p, transport_ratio=0.5, gamma=5.0)[0]))(
        jnp.asarray([[0.5, 0.5]]))
    assert np.isfinite(np.asarray(grad)).all()


def test_bfloat16_features_and_shape_errors():
    features, prototypes = inputs(3)
    pooled, attributes = gsp_pool(features.astype(jnp.bfloat16), prototypes, transport_ratio=0.3, gamma=5.0)
    assert pooled.dtype == jnp.bfloat16 and attributes.dtype == jnp.float32
    reference, _ = gsp_pool(features, prototypes, transport_ratio=0.3, gamma=5.0)
    np.testing.assert_allclose(np.asarray(pooled, np.float32), np.asarray(reference), rtol=5e-2, atol=5e-2)
    with pytest.raises(ValueError, match=r"prototypes must be \(K, 6\)"):
        gsp_pool(features, prototypes[:, :4], transport_ratio=0.3, gamma=5.0)
    with pytest.raises(ValueError, match="transport_ratio must be in"):
        gsp_pool(features, prototypes, transport_ratio=1.5, gamma=5.0)
