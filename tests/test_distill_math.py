"""Template-matching block, LeTKD layer, distillation losses and teacher artefacts against independent
references: torch's functional ops, scikit-learn (LDA, k-means), brute-force loops and hand-computed cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.distill import artefacts
from jaxdml.layers.template import LeTKDLayer, TemplateMatchingBlock, cosine_conv1x1, downscale_2x2
from jaxdml.losses import distill

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float64))


def _nchw(x) -> torch.Tensor:
    return _t(np.asarray(x).transpose(0, 3, 1, 2))


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------------------- layers


def test_cosine_conv_matches_the_letkd_conv2dcos():
    rng = np.random.default_rng(0)
    x, kernel = rng.normal(size=(2, 5, 5, 7)), rng.normal(size=(7, 11))
    x[0, 0, 0] = 0.0  # a zero feature: normalised to zero, as F.normalize with eps
    ours = np.asarray(cosine_conv1x1(jnp.asarray(x), jnp.asarray(kernel), 3.0))
    weight = _t(kernel.T).reshape(11, 7, 1, 1)
    ref = F.conv2d(F.normalize(_nchw(x), dim=1, eps=1e-12), F.normalize(weight, dim=1, eps=1e-12) * 3.0)
    np.testing.assert_allclose(ours, ref.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)
    assert np.all(np.abs(ours) <= 3.0 + 1e-12)


def test_letkd_layer_equals_its_composition_in_torch_and_alpha_zero_is_identity():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 4, 6))
    layer = LeTKDLayer(num_words=9, alpha=0.7, dtype=jnp.float64)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), variables["params"])
    assert set(params) == {"scores", "bn", "value"}
    assert float(params["scores"]["scale"]) == 3.0 and float(params["value"]["scale"]) == 1.0
    assert "bias" not in params["scores"] and "bias" not in params["value"]
    bn = {"mean": rng.normal(size=9), "var": rng.uniform(0.5, 2.0, 9)}
    params = {**params, "bn": {"scale": rng.uniform(0.5, 1.5, 9), "bias": rng.normal(size=9)}}
    out, scores = layer.apply({"params": params, "batch_stats": {"bn": bn}}, jnp.asarray(x))

    t_scores = F.conv2d(F.normalize(_nchw(x), dim=1), F.normalize(_t(params["scores"]["kernel"].T)[..., None, None],
                                                                  dim=1) * 3.0)
    t_bn = F.batch_norm(t_scores, _t(bn["mean"]), _t(bn["var"]), _t(params["bn"]["scale"]), _t(params["bn"]["bias"]),
                        training=False, eps=1e-5)
    t_value = F.conv2d(F.normalize(F.relu(t_bn), dim=1), F.normalize(_t(params["value"]["kernel"].T)[..., None, None],
                                                                     dim=1))
    expected = 0.7 * t_value + _nchw(x)
    np.testing.assert_allclose(np.asarray(scores), t_scores.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.asarray(out), expected.numpy().transpose(0, 2, 3, 1), rtol=1e-10, atol=1e-10)

    identity = LeTKDLayer(num_words=9, alpha=0.0, dtype=jnp.float64)
    out0, _ = identity.apply({"params": params, "batch_stats": {"bn": bn}}, jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(out0), x)


def test_letkd_layer_gradients_reach_both_scales_and_the_input():
    x = jax.random.normal(jax.random.key(3), (2, 4, 4, 6), jnp.float64)
    layer = LeTKDLayer(num_words=5, dtype=jnp.float64)
    variables = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), layer.init(jax.random.key(0), x))
    targets = jax.nn.softmax(jax.random.normal(jax.random.key(4), (2, 4, 4, 5), jnp.float64))

    def loss(params, x):  # eval-mode BN: flax's train-mode BN reduces in float32, too coarse for a float64 FD
        out, scores = layer.apply({**variables, "params": params}, x)
        return distill.location_kl(scores, targets) + jnp.mean(out**2)

    grads, dx = jax.grad(loss, argnums=(0, 1))(variables["params"], x)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert abs(float(grads["scores"]["scale"])) > 0 and abs(float(grads["value"]["scale"])) > 0
    assert float(jnp.abs(dx).max()) > 0
    # central finite difference on the score scale
    eps = 1e-6
    bump = lambda d: {**variables["params"], "scores": {
        **variables["params"]["scores"], "scale": variables["params"]["scores"]["scale"] + d}}
    numeric = (loss(bump(eps), x) - loss(bump(-eps), x)) / (2 * eps)
    np.testing.assert_allclose(float(grads["scores"]["scale"]), float(numeric), rtol=1e-6)


def test_template_block_starts_as_identity_and_returns_scores():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16))
    block = TemplateMatchingBlock(num_templates=10)
    variables = block.init(jax.random.key(1), x)
    out, scores = block.apply(variables, x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    assert scores.shape == (2, 8, 8, 10)
    labels = jnp.asarray([3, 7])

    def loss(params):
        (out, scores), _ = block.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return distill.template_matching_loss(scores, labels) + jnp.mean(out)

    grads = jax.grad(loss)(variables["params"])
    assert float(jnp.abs(grads["templates"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads["semantic"]["kernel"]).max()) > 0


def test_downscale_matches_avg_pool2d():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3))
    ref = F.avg_pool2d(_nchw(x), (2, 2), stride=(2, 2)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(downscale_2x2(jnp.asarray(x))), ref, rtol=1e-12)


# ---------------------------------------------------------------------------------------------------- losses


def test_location_kl_matches_torch_kl_div_batchmean_value_and_gradient():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 4, 4, 12)) * 3
    targets = rng.dirichlet(np.full(12, 0.3), size=(3, 4, 4))
    targets[0, 0, 0] = np.eye(12)[5]  # exact zeros: 0 log 0 = 0
    value, grad = jax.value_and_grad(distill.location_kl)(jnp.asarray(scores), jnp.asarray(targets))
    s = _t(scores).reshape(-1, 12).requires_grad_()
    ref = F.kl_div(F.log_softmax(s, dim=1), _t(targets).reshape(-1, 12), reduction="batchmean")
    ref.backward()
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad).reshape(-1, 12), s.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert float(distill.location_kl(jnp.log(jnp.asarray(targets) + 1e-300), jnp.asarray(targets))) < 1e-10
    with pytest.raises(ValueError, match="downscale_2x2"):
        distill.location_kl(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 8, 8, 3)))


def test_hinton_kd_matches_the_distill_kl_formula():
    rng = np.random.default_rng(3)
    student, teacher = rng.normal(size=(8, 100)) * 4, rng.normal(size=(8, 100)) * 4
    value, grad = jax.value_and_grad(distill.hinton_kd)(jnp.asarray(student), jnp.asarray(teacher), 4.0)
    s = _t(student).requires_grad_()
    ref = F.kl_div(F.log_softmax(s / 4, dim=1), F.softmax(_t(teacher) / 4, dim=1), reduction="sum") * 16 / 8
    ref.backward()
    np.testing.assert_allclose(float(value), ref.item(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), s.grad.numpy(), rtol=1e-10, atol=1e-14)
    assert abs(float(distill.hinton_kd(jnp.asarray(teacher), jnp.asarray(teacher)))) < 1e-12


def test_fitnet_hint_is_mse_and_template_loss_is_per_location_cross_entropy():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(2, 4, 4, 8)), rng.normal(size=(2, 4, 4, 8))
    np.testing.assert_allclose(float(distill.fitnet_hint(jnp.asarray(a), jnp.asarray(b))),
                               F.mse_loss(_t(a), _t(b)).item(), rtol=1e-12)
    scores, labels = rng.normal(size=(2, 3, 3, 5)), np.array([1, 4])
    ref = F.cross_entropy(_t(scores).reshape(-1, 5), torch.from_numpy(np.repeat(labels, 9)))
    np.testing.assert_allclose(float(distill.template_matching_loss(jnp.asarray(scores), jnp.asarray(labels))),
                               ref.item(), rtol=1e-12)
    # Two templates per class: a class scores log(e^a + e^b). Hand case at one location, label 0.
    two = np.log(np.array([[[[1.0, 3.0, 2.0, 2.0]]]]))  # class 0: log 4, class 1: log 4
    np.testing.assert_allclose(float(distill.template_matching_loss(jnp.asarray(two), jnp.asarray([0]), 2)),
                               np.log(2.0), rtol=1e-12)


# ------------------------------------------------------------------------------------------------- artefacts


def _blobs(num_classes=4, per_class=3, points=20, dim=6, seed=0):
    """Well-separated sub-class blobs: class c, sub-class j around a random centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (num_classes * per_class, dim))
    sub = np.repeat(np.arange(num_classes * per_class), points)
    return centres[sub] + rng.normal(0, 0.3, (len(sub), dim)), sub // per_class, sub, centres


def test_lda_matches_scikit_learn_up_to_sign():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    rng = np.random.default_rng(0)
    means, labels, mix = rng.normal(0, 2, (7, 12)), rng.integers(0, 7, 900), rng.normal(size=(12, 12))
    x = means[labels] + rng.normal(size=(900, 12)) @ mix
    lda = artefacts.fit_lda(x, labels, 5, shrinkage=0.0)
    ours = lda.project(x)
    reference = LinearDiscriminantAnalysis(n_components=5).fit(x, labels)
    expected = reference.transform(x)
    signs = np.sign(np.sum(ours * expected, axis=0))
    np.testing.assert_allclose(ours * signs, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(lda.mean, reference.xbar_, rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(lda.ratios) <= 0)
    with pytest.raises(ValueError, match="at most"):
        artefacts.fit_lda(x, labels, 7)


def test_subclass_centres_recover_the_blobs_as_scikit_learn_kmeans_does():
    from sklearn.cluster import KMeans

    x, labels, _, _ = _blobs()
    result = artefacts.subclass_centres(x, labels, num_classes=4, per_class=3)
    for c in range(4):
        ours = result.centres[c * 3:(c + 1) * 3]
        ref = KMeans(3, n_init=10, random_state=0).fit(x[labels == c]).cluster_centers_
        np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(ref, axis=0), atol=1e-4)
        own = result.assignment[labels == c]
        assert set(own) == {3 * c, 3 * c + 1, 3 * c + 2}
        np.testing.assert_array_equal(  # each sample's sub-class is its nearest own-class centre
            own, 3 * c + np.argmin(((x[labels == c][:, None] - ours[None]) ** 2).sum(-1), axis=1))
    with pytest.raises(ValueError, match="fewer than"):
        artefacts.subclass_centres(x[:5], labels[:5], num_classes=4, per_class=3)


def test_score_matrix_hand_case_and_brute_force():
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    # sub-class 0: two samples at its centre and one next to centre 2; sub-class 3 none (one-hot row)
    x = np.array([[0.1, 0.0], [0.0, 0.2], [0.0, 9.0], [10.0, 0.5], [0.5, 10.0], [9.0, 1.0]])
    assignment = np.array([0, 0, 0, 1, 2, 1])
    scores = artefacts.score_matrix(x, assignment, centres)
    np.testing.assert_allclose(scores, [[2 / 3, 0, 1 / 3, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-7)

    x, _, sub, _ = _blobs(seed=3)
    x = x + np.random.default_rng(1).normal(0, 8, x.shape)  # overlapping, so rows spread
    centres = np.stack([x[sub == s].mean(0) for s in range(12)])
    scores = artefacts.score_matrix(x, sub, centres)
    nearest = np.argmin(((x[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    for s in range(12):
        expected = np.bincount(nearest[sub == s], minlength=12) / np.sum(sub == s)
        np.testing.assert_allclose(scores[s], expected, atol=1e-7)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-6)


def test_subclass_targets_pick_the_nearest_sub_class_of_the_label():
    rng = np.random.default_rng(5)
    centres, per_class = rng.normal(size=(6, 3)), 2  # 3 classes x 2 sub-classes
    scores = rng.dirichlet(np.ones(6), size=6)
    projected, labels = rng.normal(size=(4, 2, 2, 3)), np.array([0, 2, 1, 2])
    out = np.asarray(artefacts.subclass_targets(jnp.asarray(projected), jnp.asarray(labels), jnp.asarray(centres),
                                                jnp.asarray(scores), per_class))
    for b in range(4):
        own = np.arange(labels[b] * 2, labels[b] * 2 + 2)
        for i in range(2):
            for j in range(2):
                d = ((projected[b, i, j] - centres[own]) ** 2).sum(-1)
                np.testing.assert_allclose(out[b, i, j], scores[own[np.argmin(d)]], rtol=1e-12)
    # a location at another class's centre still gets its own class's row
    at_other = np.broadcast_to(centres[5], (1, 1, 1, 3))
    row = artefacts.subclass_targets(jnp.asarray(at_other), jnp.asarray([0]), jnp.asarray(centres),
                                     jnp.asarray(scores), per_class)
    d = ((centres[5] - centres[:2]) ** 2).sum(-1)
    np.testing.assert_allclose(np.asarray(row)[0, 0, 0], scores[np.argmin(d)], rtol=1e-12)


def test_codebook_and_soft_assignment():
    x, _, _, true_centres = _blobs(num_classes=2, per_class=4, seed=7)
    codebook = artefacts.kmeans_codebook(x, 8, seed=0)
    matched = np.sort(np.argmin(((codebook[:, None] - true_centres[None]) ** 2).sum(-1), axis=1))
    np.testing.assert_array_equal(matched, np.arange(8))  # one word per blob
    sample = artefacts.kmeans_codebook(x, 8, seed=0, max_points=100)
    assert sample.shape == (8, 6)
    rng = np.random.default_rng(0)
    features = codebook[rng.integers(0, 8, (2, 3, 3))] + rng.normal(0, 3.0, (2, 3, 3, 6))
    p = np.asarray(artefacts.soft_assignment(jnp.asarray(features), jnp.asarray(codebook), temperature=20.0))
    d = ((features[..., None, :] - codebook) ** 2).sum(-1)
    expected = np.exp(-(d - d.min(-1, keepdims=True)) / 20.0)
    np.testing.assert_allclose(p, expected / expected.sum(-1, keepdims=True), rtol=1e-4, atol=1e-7)
    assert 0.01 < p.max(-1).min()  # not one-hot: the test compares real soft assignments
