"""XBML: convex prototype coefficients against NumPy, the head's reduction to GAP, the dual ridge fit against a NumPy
primal solve (well-posed at the MLRC batch's 16-row halves against K = 32), both readings of the cross-batch loss
against NumPy, float64 finite differences, config refusals and an exact resume."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict
from train_helpers import REPO, tiny_config

from jaxdml.config import default_config
from jaxdml.errors import ConfigError
from jaxdml.layers import image_prototypes, prototype_assignment, prototype_coefficients
from jaxdml.losses import make_objective
from jaxdml.losses import xbml as xbml_loss
from jaxdml.losses.pair import contrastive_loss
from jaxdml.models import EmbeddingHead, XBMLHead
from jaxdml.trainers import Resume, create_trainer, resolve_config, train_and_evaluate

COLLAGE = REPO / "experiments" / "xbml_digits_collage.py"


def numpy_coefficients(x, prototypes, scale):
    """MetaGlobalPooling's attributes: mean over locations of softmax(scale * n(x) W^T), n(v) = v / max(1, |v|)."""
    x = x.reshape(x.shape[0], -1, x.shape[-1])
    n = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1.0)
    logits = scale * n @ prototypes.T
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p, p.mean(1)


def numpy_primal_ridge(a, e, ridge):
    """W = (A^T A + ridge I)^-1 A^T E (K x K), the primal form, in float64."""
    return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ e)


def numpy_halves(labels):
    order = list(dict.fromkeys(labels.tolist()))
    first = set(order[:len(order) // 2])
    return np.array([c in first for c in labels.tolist()])


def numpy_contrastive(e, labels, mask, pos_margin=0.0, neg_margin=1.0):
    """PML's ContrastiveLoss (l2-normalised, euclidean, each side averaged over its non-zero terms) on masked pairs."""
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    d = np.sqrt(np.maximum(((e[:, None] - e[None]) ** 2).sum(-1), 0))
    off = ~np.eye(len(e), dtype=bool) & mask
    same = labels[:, None] == labels[None]
    pos, neg = np.maximum(d - pos_margin, 0)[off & same], np.maximum(neg_margin - d, 0)[off & ~same]
    return sum(v[v > 0].mean() if (v > 0).any() else 0.0 for v in (pos, neg))


# --- the head ------------------------------------------------------------------------------------------------------


def test_coefficients_are_convex_match_numpy_and_recombine_to_gap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 3, 8)) * 0.7
    w = rng.normal(size=(6, 8))
    with jax.enable_x64(True):
        assignment = prototype_assignment(jnp.asarray(x), jnp.asarray(w), 10.0)
        a = prototype_coefficients(assignment)
        mu = image_prototypes(jnp.asarray(x), assignment)
    p_np, a_np = numpy_coefficients(x, w, 10.0)
    np.testing.assert_allclose(assignment, p_np, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a, a_np, rtol=1e-12, atol=1e-15)
    a, mu = np.asarray(a), np.asarray(mu)
    assert np.all(a >= 0) and np.allclose(np.sum(a, -1), 1.0, atol=1e-14)
    # GAP = sum_k a_k mu_k exactly (the identity XBML starts from)
    np.testing.assert_allclose(np.einsum("bk,bkd->bd", a, mu), x.reshape(5, -1, 8).mean(1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 32])
def test_head_embedding_is_gap_and_k1_coefficients_are_one(k):
    features = jax.random.normal(jax.random.key(1), (6, 4, 4, 12))
    head = XBMLHead(embedding_dim=10, num_prototypes=k)
    variables = head.init(jax.random.key(2), features)
    out = head.apply(variables, features, return_assignment=True)
    gap = EmbeddingHead(embedding_dim=10, pooling="gap")
    reference = gap.apply({"params": {"projection": variables["params"]["projection"]}}, features)
    np.testing.assert_allclose(out["embedding"], reference["embedding"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["raw_embedding"], reference["raw_embedding"], rtol=1e-5, atol=1e-5)
    assert out["attributes"].shape == (6, k) and out["assignment"].shape == (6, 4, 4, k)
    assert np.all(np.asarray(out["attributes"]) >= 0)
    np.testing.assert_allclose(np.sum(out["attributes"], -1), 1.0, rtol=1e-6)
    if k == 1:
        np.testing.assert_array_equal(out["attributes"], 1.0)


def test_head_in_bfloat16_keeps_float32_convex_coefficients():
    features = jax.random.normal(jax.random.key(3), (4, 3, 3, 8)).astype(jnp.bfloat16)
    head = XBMLHead(embedding_dim=8, num_prototypes=5, dtype=jnp.bfloat16)
    out = head.apply(head.init(jax.random.key(4), features), features)
    assert out["attributes"].dtype == jnp.float32 and out["embedding"].dtype == jnp.float32
    np.testing.assert_allclose(np.sum(out["attributes"], -1), 1.0, rtol=1e-6)


def _head_objective_grads(head, reading, features, labels, weight):
    cfg = default_config().loss
    cfg.xbml.weight, cfg.xbml.reading = weight, reading
    objective = make_objective(cfg, num_classes=int(labels.max()) + 1, embedding_dim=10, batch_size=len(labels))
    loss_params, loss_state = objective.init(jax.random.key(5))
    variables = head.init(jax.random.key(6), features)

    def loss(params):
        outputs = head.apply({"params": params}, features, train=True)
        return objective(outputs, labels, loss_params, loss_state, jnp.asarray(0))[0]

    return variables["params"], jax.grad(loss)(variables["params"])


@pytest.mark.parametrize("reading", ["r1", "r2"])
def test_with_one_prototype_training_reduces_to_gap(reading):
    """K = 1: the coefficients are the constant 1, so the XBML term gives the network no gradient and the step is
    GAP's with the base loss scaled by 1 - weight."""
    features = jax.random.normal(jax.random.key(7), (16, 3, 3, 12))
    labels = jnp.repeat(jnp.arange(4), 4)
    params, grads = _head_objective_grads(XBMLHead(embedding_dim=10, num_prototypes=1), reading, features, labels,
                                          0.25)
    gap_params, gap_grads = _head_objective_grads(EmbeddingHead(embedding_dim=10, pooling="gap"), reading,
                                                  features, labels, 0.0)
    # same projection (init with the same key and layout), so the same embeddings
    jax.tree.map(np.testing.assert_array_equal, params["projection"], gap_params["projection"])
    np.testing.assert_array_equal(grads["prototypes"], 0.0)
    if reading == "r1":
        jax.tree.map(lambda g, r: np.testing.assert_allclose(g, 0.75 * r, rtol=1e-4, atol=1e-7),
                     grads["projection"], gap_grads["projection"])


# --- the ridge fit ---------------------------------------------------------------------------------------------------


def test_dual_ridge_equals_numpy_primal_at_the_mlrc_batch():
    """8 classes x 4 (the MLRC batch): each half has 16 rows against K = 32 prototypes, so only the dual is
    square-small; it must equal the primal (K x K) solve, in float64 exactly and in float32 closely."""
    rng = np.random.default_rng(8)
    labels = np.repeat(rng.permutation(20)[:8], 4)
    a = rng.dirichlet(np.ones(32) * 0.3, size=32)
    e = rng.normal(size=(32, 128))
    in_a = numpy_halves(labels)
    assert in_a.sum() == 16
    expected = np.where(in_a[:, None], a @ numpy_primal_ridge(a[~in_a], e[~in_a], 0.05),
                        a @ numpy_primal_ridge(a[in_a], e[in_a], 0.05))
    with jax.enable_x64(True):
        w64 = xbml_loss.cross_batch_prototypes(jnp.asarray(a), jnp.asarray(e), jnp.asarray(in_a), 0.05)
        got64, valid = xbml_loss.reexpressed_embeddings(jnp.asarray(a), jnp.asarray(e), jnp.asarray(labels), 0.05)
    np.testing.assert_allclose(w64, numpy_primal_ridge(a[in_a], e[in_a], 0.05), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(got64, expected, rtol=1e-9, atol=1e-10)
    assert bool(valid)
    got32, _ = jax.jit(xbml_loss.reexpressed_embeddings)(jnp.asarray(a, jnp.float32), jnp.asarray(e, jnp.float32),
                                                         jnp.asarray(labels), 0.05)
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_ridge_stays_well_posed_when_coefficients_collapse():
    """Every row assigning all its mass to one prototype (rank 1): the Gram matrix is 11^T + lambda I, still
    invertible; float32 matches the float64 primal solve."""
    a = np.zeros((16, 32))
    a[:, 3] = 1.0
    e = np.random.default_rng(9).normal(size=(16, 8))
    fit = np.arange(16) < 8
    w = xbml_loss.cross_batch_prototypes(jnp.asarray(a, jnp.float32), jnp.asarray(e, jnp.float32), jnp.asarray(fit))
    expected = numpy_primal_ridge(a[fit], e[fit], 0.05)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected[3], e[fit].sum(0) / (8 + 0.05), rtol=1e-12)  # the closed form


# --- the two readings --------------------------------------------------------------------------------------------


def _batch(seed, classes=6, per_class=4, k=7, dim=5):
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.permutation(10)[:classes], per_class)
    return rng, labels, rng.dirichlet(np.ones(k), size=len(labels)), rng.normal(size=(len(labels), dim))


def test_r2_loss_matches_numpy():
    _, labels, a, e = _batch(10)
    in_a = numpy_halves(labels)
    reexpressed = np.where(in_a[:, None], a @ numpy_primal_ridge(a[~in_a], e[~in_a], 0.05),
                           a @ numpy_primal_ridge(a[in_a], e[in_a], 0.05))
    expected = numpy_contrastive(reexpressed, labels, in_a[:, None] == in_a[None])
    with jax.enable_x64(True):
        got = xbml_loss.reexpressed_loss(contrastive_loss, jnp.asarray(a), jnp.asarray(e), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)
    one_class = xbml_loss.reexpressed_loss(contrastive_loss, jnp.asarray(a[:4]), jnp.asarray(e[:4]),
                                           jnp.zeros(4, int))
    assert float(one_class) == 0.0


def test_gradients_match_finite_differences():
    rng, labels, a, e = _batch(11)
    classes = rng.normal(size=(10, 5)) * 0.5
    with jax.enable_x64(True):
        losses = {
            "r1": lambda x, y, c: xbml_loss.zero_shot_loss(x, jnp.asarray(labels), c),
            "r2": lambda x, y, c: xbml_loss.reexpressed_loss(
                lambda emb, lab, pair_mask: contrastive_loss(emb, lab, pair_mask=pair_mask, neg_margin=1.5),
                x, y, jnp.asarray(labels)) + 0.0 * jnp.sum(c),
        }
        args = (jnp.asarray(a), jnp.asarray(e), jnp.asarray(classes))
        for reading, f in losses.items():
            grads = jax.grad(f, argnums=(0, 1, 2))(*args)
            directions = [rng.normal(size=x.shape) for x in args]
            eps = 1e-6
            plus = f(*(x + eps * d for x, d in zip(args, directions)))
            minus = f(*(x - eps * d for x, d in zip(args, directions)))
            analytic = sum(float(jnp.sum(g * d)) for g, d in zip(grads, directions))
            np.testing.assert_allclose(analytic, float((plus - minus) / (2 * eps)), rtol=1e-6, err_msg=reading)
            assert any(float(jnp.abs(g).max()) > 0 for g in grads[:2]), reading


def test_head_coefficients_gradient_matches_finite_differences():
    with jax.enable_x64(True):
        features = jax.random.normal(jax.random.key(12), (3, 2, 2, 6), jnp.float64)
        head = XBMLHead(embedding_dim=4, num_prototypes=5, dtype=jnp.float64)
        params = jax.tree.map(lambda p: p.astype(jnp.float64), head.init(jax.random.key(13), features)["params"])
        target = jax.random.normal(jax.random.key(14), (3, 5), jnp.float64)
        f = lambda p: jnp.sum(head.apply({"params": p}, features)["attributes"] * target)
        grads = jax.grad(f)(params)
        leaves, tree = jax.tree.flatten(params)
        directions = jax.tree.unflatten(tree, [jax.random.normal(jax.random.key(15 + i), x.shape, jnp.float64)
                                               for i, x in enumerate(leaves)])
        eps = 1e-6
        shift = lambda s: jax.tree.map(lambda p, d: p + s * eps * d, params, directions)
        numeric = (f(shift(1.0)) - f(shift(-1.0))) / (2 * eps)
        analytic = sum(jnp.sum(g * d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(directions)))
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


@pytest.mark.parametrize("reading", ["r1", "r2"])
def test_objective_weighting_and_parameters(reading):
    cfg = default_config().loss
    cfg.xbml.weight, cfg.xbml.reading = 0.2, reading
    objective = make_objective(cfg, num_classes=6, embedding_dim=5, batch_size=8)
    params, state = objective.init(jax.random.key(0))
    assert ("class_embeddings" in params) == (reading == "r1")
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(8, 5))
    outputs = {"embedding": jnp.asarray(raw / np.linalg.norm(raw, axis=1, keepdims=True), jnp.float32),
               "raw_embedding": jnp.asarray(raw, jnp.float32),
               "attributes": jnp.asarray(rng.dirichlet(np.ones(4), size=8), jnp.float32)}
    labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _, metrics = objective(outputs, labels, params, state, jnp.asarray(0))
    np.testing.assert_allclose(float(loss), 0.8 * float(metrics["dml_loss"]) + 0.2 * float(metrics["xbml_loss"]),
                               rtol=1e-6)
    if reading == "r2":
        expected = xbml_loss.reexpressed_loss(contrastive_loss, outputs["attributes"], outputs["raw_embedding"],
                                              labels)
    else:
        expected = xbml_loss.zero_shot_loss(outputs["attributes"], labels, params["class_embeddings"])
    np.testing.assert_allclose(float(metrics["xbml_loss"]), float(expected), rtol=1e-6)
    with pytest.raises(ValueError, match=r"model\.pooling='xbml'"):
        objective({"embedding": outputs["embedding"]}, labels, params, state, jnp.asarray(0))


def test_config_refusals():
    cfg = default_config()
    cfg.loss.xbml.weight = 0.1
    with pytest.raises(ConfigError, match=r"^loss\.xbml\.weight=0\.1 needs model\.pooling='xbml'.*e\.g\. "
                                          r"loss\.xbml\.weight=0\.0\.$"):
        resolve_config(cfg)
    cfg.model.pooling = "xbml"
    cfg.loss.xbml.reading = "r3"
    with pytest.raises(ConfigError, match=r"loss\.xbml\.reading='r3'.*r1.*r2"):
        resolve_config(cfg)
    cfg.loss.xbml.reading = "r2"
    cfg.loss.xbml.weight = 1.0
    with pytest.raises(ConfigError, match=r"loss\.xbml\.weight=1\.0 must be in \[0, 1\)"):
        resolve_config(cfg)
    cfg.loss.xbml.weight = 0.1
    cfg.model.xbml.num_prototypes = 0
    with pytest.raises(ConfigError, match=r"model\.xbml\.num_prototypes=0 must be >= 1"):
        resolve_config(cfg)
    cfg.model.xbml.num_prototypes = 32
    resolve_config(cfg)
    cfg.trainer, cfg.data.val_fraction = "ccp", 0.25
    with pytest.raises(ConfigError, match=r"loss\.xbml\.weight=0\.1 is not used"):
        resolve_config(cfg)


# --- end to end ----------------------------------------------------------------------------------------------------

XBML_R2 = {"model.pooling": "xbml", "model.xbml.num_prototypes": 8, "loss.xbml.weight": 0.1,
           "loss.xbml.reading": "r2", "train.eval_every": 100, "train.checkpoint_every": 2,
           "optim.schedule": "constant", "eval.at_start": False}


def restored_state(cfg, workdir):
    trainer = create_trainer(cfg, workdir)
    trainer.close()
    return jax.device_get(trainer.state)


def test_interrupted_run_resumes_exactly(tmp_path):
    """Reading r2 on the tiny digits (the r1 path is GSP's ZSR, whose resume test_gsp_train covers): 3 steps then
    an extension to 6 equal 6 straight steps, bit for bit, the prototypes included."""
    straight = tiny_config(**{**XBML_R2, "train.num_steps": 6})
    summary = train_and_evaluate(straight, tmp_path / "straight")
    train_and_evaluate(tiny_config(**{**XBML_R2, "train.num_steps": 3}), tmp_path / "resumed")
    train_and_evaluate(straight, tmp_path / "resumed", resume=Resume(extend_steps=True))
    a, b = restored_state(straight, tmp_path / "straight"), restored_state(straight, tmp_path / "resumed")
    assert int(a.step) == int(b.step) == 6
    for part in ("params", "model_state", "loss_state", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(a, part), getattr(b, part))
    assert a.params["head"]["prototypes"].shape == (8, 16)
    assert 0.0 <= summary["final"]["map_at_r"] <= 1.0


def test_experiment_variants():
    from jaxdml.config import load_config_file

    for reading in ("r1", "r2"):
        cfg = load_config_file(f"{COLLAGE}:{reading}")
        assert (cfg.model.pooling, cfg.loss.xbml.reading, cfg.loss.xbml.weight) == ("xbml", reading, 0.1)
    with pytest.raises(ValueError, match="unknown reading"):
        load_config_file(f"{COLLAGE}:r3")
    assert isinstance(default_config().loss.xbml, ConfigDict)
