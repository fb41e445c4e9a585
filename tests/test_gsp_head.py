"""The GSP head: GAP while its memory fills, k-center prototypes after, then GSP; variants; k-center itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.layers import greedy_k_center, gsp_pool, gsp_weights, l2_normalize
from jaxdml.models import GSPHead


def numpy_k_center(points, k):
    picked = [0]
    nearest = ((points - points[0]) ** 2).sum(-1)
    for _ in range(k - 1):
        picked.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((points - points[picked[-1]]) ** 2).sum(-1))
    return picked


def test_greedy_k_center_matches_farthest_point_selection():
    points = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    assert greedy_k_center(jnp.asarray(points), 7).tolist() == numpy_k_center(points, 7)
    # From given centres: none of them is re-picked, the first pick is the farthest from them.
    chosen = greedy_k_center(jnp.asarray(points), 3, initial=jnp.asarray(points[:2]))
    far = np.min(((points[:, None] - points[None, :2]) ** 2).sum(-1), axis=1)
    assert int(chosen[0]) == int(np.argmax(far)) and not set(chosen.tolist()) & {0, 1}


def release_k_center(point_set, initial_set, k):
    """The GSP release's greedyKCenter (proxy_utils.py): min squared distance to the initial set, then argmax."""
    nearest = ((point_set[:, None] - initial_set[None]) ** 2).sum(-1).min(1)
    picked = []
    for _ in range(k):
        picked.append(point_set[int(np.argmax(nearest))])
        nearest = np.minimum(nearest, ((point_set - picked[-1]) ** 2).sum(-1))
    return np.stack(picked)


def test_prototypes_come_from_k_center_over_the_gap_memory():
    head = GSPHead(embedding_dim=6, num_prototypes=3, memory_size=8, transport_ratio=0.5)
    features = jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
    variables = head.init(jax.random.key(1), features)
    refresh = lambda v: head.apply(v, method=GSPHead.refresh, mutable=True)[1]
    scales = (0.05, 1.0)  # the first batch's GAP vectors are shorter than 1, the second's longer
    for step, scale in enumerate(scales):
        out, updates = head.apply(variables, scale * features + step, train=True, mutable=["gsp"])
        variables = {**variables, **updates}
        # GAP of the projected features until the prototypes exist.
        kernel = variables["params"]["projection"]["kernel"]
        gap = jnp.mean((scale * features + step) @ kernel, axis=(1, 2))
        np.testing.assert_allclose(np.asarray(out["embedding"]), np.asarray(l2_normalize(gap)), rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(out["attributes"]), 0.0)
        variables = {**variables, **refresh(variables)}
        assert bool(variables["gsp"]["ready"]) == (step == 1)
    # The memory holds v / max(1, |v|) (the release's Lipschitz L2Normalization), not unit vectors.
    memory = np.asarray(variables["gsp"]["memory"])
    gaps = [np.asarray(jnp.mean((s * features + i) @ kernel, axis=(1, 2))) for i, s in enumerate(scales)]
    lipschitz = np.concatenate([g / np.maximum(1.0, np.linalg.norm(g, axis=1, keepdims=True)) for g in gaps])
    np.testing.assert_allclose(memory, lipschitz, rtol=1e-5)
    assert np.linalg.norm(memory[:4], axis=1).max() < 0.99
    # k-center seeded with the first K entries, picking K of the entries after them.
    expected = release_k_center(memory[3:], memory[:3], 3)
    np.testing.assert_allclose(np.asarray(variables["params"]["prototypes"]), expected, rtol=1e-6)
    out = head.apply(variables, features, return_plan=True)
    pooled, attributes = gsp_pool(features @ variables["params"]["projection"]["kernel"], jnp.asarray(expected),
                                  transport_ratio=0.5, gamma=5.0)
    np.testing.assert_allclose(np.asarray(out["embedding"]), np.asarray(l2_normalize(pooled)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(out["attributes"]), np.asarray(attributes), rtol=1e-5)
    assert out["plan"].shape == (4, 3, 3, 3)
    # Refreshing again changes nothing: initialisation happens once.
    again = refresh(variables)
    np.testing.assert_array_equal(np.asarray(again["params"]["prototypes"]), expected)


@pytest.mark.parametrize(("augment_max_pool", "gem"), [(True, False), (False, True)])
def test_variants_give_unit_embeddings_and_gradients(augment_max_pool, gem):
    head = GSPHead(embedding_dim=6, num_prototypes=4, memory_size=0, augment_max_pool=augment_max_pool, gem=gem)
    features = jax.random.normal(jax.random.key(0), (3, 4, 4, 5))
    variables = head.init(jax.random.key(1), features)
    assert ("gem_power" in variables["params"]) == gem
    out = head.apply(variables, features)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(out["embedding"]), axis=1), 1.0, rtol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(head.apply({**variables, "params": p}, features)["embedding"][:, 0]))(
        variables["params"])
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert float(jnp.abs(grads["prototypes"]).max()) > 0


@pytest.mark.parametrize(("augment_max_pool", "gem"), [(True, False), (False, True), (True, True)])
def test_variants_follow_the_release(augment_max_pool, gem):
    """The release's transport_pool / gmeanp / call: GeM over the backbone map weighted by N * w, then the
    projection; the max-pool augmentation adds the projection of the backbone's global max pool."""
    head = GSPHead(embedding_dim=6, num_prototypes=4, memory_size=0, augment_max_pool=augment_max_pool, gem=gem,
                   transport_ratio=0.5)
    features = jax.nn.relu(jax.random.normal(jax.random.key(2), (3, 4, 4, 5)))  # a backbone map: non-negative
    variables = head.init(jax.random.key(3), features)
    out = head.apply(variables, features)
    kernel = np.asarray(variables["params"]["projection"]["kernel"], np.float64)
    local = np.asarray(features, np.float64).reshape(3, 16, 5)
    weights, _ = gsp_weights(jnp.asarray(local @ kernel, jnp.float32), variables["params"]["prototypes"],
                             transport_ratio=0.5, gamma=5.0)
    weights = np.asarray(weights, np.float64)
    if gem:
        scaled = np.maximum(16 * weights[..., None] * local, 1e-6)
        expected = (np.mean(scaled**3, axis=1) ** (1 / 3)) @ kernel
    else:
        expected = np.einsum("bn,bnd->bd", weights, local @ kernel)
    if augment_max_pool:
        expected = expected + local.max(axis=1) @ kernel
    np.testing.assert_allclose(out["raw_embedding"], expected, rtol=1e-4, atol=1e-5)
    if gem:
        assert (np.asarray(out["raw_embedding"]) < 0).any(), "GeM before the projection keeps negative coordinates"


def test_a_batch_that_would_overflow_the_memory_fills_its_last_slots():
    """As the release's fill_memory: with 6 slots and batches of 4, the second batch lands in slots 2-5."""
    head = GSPHead(embedding_dim=6, num_prototypes=2, memory_size=6, transport_ratio=0.5)
    features = 0.05 * jax.random.normal(jax.random.key(0), (4, 3, 3, 5))
    variables = head.init(jax.random.key(1), features)
    for step in range(2):
        _, updates = head.apply(variables, features + 0.01 * step, train=True, mutable=["gsp"])
        variables = {**variables, **updates}
    kernel = np.asarray(variables["params"]["projection"]["kernel"])
    gap = lambda step: np.asarray(jnp.mean((features + 0.01 * step) @ kernel, axis=(1, 2)))
    memory = np.asarray(variables["gsp"]["memory"])
    np.testing.assert_allclose(memory[:2], gap(0)[:2], rtol=1e-5)
    np.testing.assert_allclose(memory[2:], gap(1), rtol=1e-5)
