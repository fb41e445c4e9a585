"""Cross-batch memory against pytorch-metric-learning's CrossBatchMemory; the ZSR loss against a direct
numpy computation; the objective's weighting."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from jaxdml.config import default_config
from jaxdml.losses import LOSSES, MINERS, make_loss, make_objective, zero_shot_loss
from jaxdml.losses.zsr import class_disjoint_halves


def objective_for(name, kwargs=None, *, xbm_batches=0, start=0, zsr=0.0, batch=8, classes=6, dim=5):
    cfg = default_config().loss
    cfg.name, cfg.kwargs = name, ConfigDict(kwargs or {})
    cfg.xbm.batches, cfg.xbm.start_step, cfg.zsr.weight = xbm_batches, start, zsr
    return make_objective(cfg, num_classes=classes, embedding_dim=dim, batch_size=batch)


@pytest.mark.parametrize(("name", "kwargs", "pml_name"), [
    ("contrastive", {"pos_margin": 0.1, "neg_margin": 0.8}, "ContrastiveLoss"),
    ("multi_similarity", {}, "MultiSimilarityLoss"),
])
def test_cross_batch_memory_matches_pml(name, kwargs, pml_name):
    torch = pytest.importorskip("torch")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    batch, dim, batches_in_memory = 8, 5, 3
    reference = pml_losses.CrossBatchMemory(getattr(pml_losses, pml_name)(**kwargs), embedding_size=dim,
                                            memory_size=batches_in_memory * batch)
    objective = objective_for(name, kwargs, xbm_batches=batches_in_memory, batch=batch, dim=dim)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        _, state = objective.init(jax.random.key(0))
        state = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
        for step in range(5):  # fills the memory, then wraps around
            x = rng.normal(size=(batch, dim))
            labels = rng.integers(0, 6, batch)
            t = torch.tensor(x, requires_grad=True)
            expected = reference(t, torch.tensor(labels))
            expected.backward()

            def loss_of(e, state=state, labels=labels, step=step):
                loss, new_state, _ = objective({"embedding": e}, jnp.asarray(labels), {}, state, jnp.asarray(step))
                return loss, new_state

            (value, state), grad = jax.value_and_grad(loss_of, has_aux=True)(jnp.asarray(x))
            np.testing.assert_allclose(float(value), expected.item(), rtol=1e-9, err_msg=f"step {step}")
            np.testing.assert_allclose(np.asarray(grad), t.grad.numpy(), rtol=1e-7, atol=1e-12)


def test_memory_is_not_used_before_the_start_step():
    objective = objective_for("contrastive", xbm_batches=2, start=3)
    plain = objective_for("contrastive")
    _, state = objective.init(jax.random.key(0))
    rng = np.random.default_rng(1)
    for step in range(5):
        x, labels = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), jnp.asarray(rng.integers(0, 4, 8))
        loss, state, _ = objective({"embedding": x}, labels, {}, state, jnp.asarray(step))
        batch_only = plain({"embedding": x}, labels, {}, {}, jnp.asarray(step))[0]
        if step < 3:
            assert float(loss) == pytest.approx(float(batch_only), rel=1e-6)
        else:
            assert abs(float(loss) - float(batch_only)) > 1e-6
    assert int(state["position"]) == (5 * 8) % 16


def test_class_disjoint_halves():
    a, b = class_disjoint_halves(jnp.asarray([3, 3, 1, 1, 7, 7, 2, 2]))
    assert a.tolist() == [True, True, True, True, False, False, False, False]
    a, b = class_disjoint_halves(jnp.asarray([5, 0, 5, 0, 9, 9]))  # 3 classes: A gets 1, B gets 2
    assert a.tolist() == [True, False, True, False, False, False] and (a ^ b).all()


def numpy_zsr(attributes, labels, classes, ridge=0.05, scale=9.5):
    """Direct computation with explicit index sets (no masking tricks)."""
    order = list(dict.fromkeys(labels.tolist()))
    half_a = set(order[: len(order) // 2])
    a = np.array([label in half_a for label in labels])
    losses = np.zeros(len(labels))
    for fit, predict in ((a, ~a), (~a, a)):
        x, y = attributes[fit], classes[labels[fit]]
        w = x.T @ np.linalg.solve(x @ x.T + ridge * np.eye(len(x)), y)
        logits = scale * (attributes[predict] @ w) @ classes.T
        log_z = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        losses[predict] = log_z - logits[np.arange(len(logits)), labels[predict]]
    return losses.mean()


def test_zero_shot_loss_matches_the_direct_computation_and_finite_differences():
    rng = np.random.default_rng(2)
    labels = np.repeat(rng.permutation(10)[:6], 4)
    attributes = rng.dirichlet(np.ones(7), size=len(labels))
    classes = rng.normal(size=(10, 5)) * 0.5
    with jax.enable_x64(True):
        value = zero_shot_loss(jnp.asarray(attributes), jnp.asarray(labels), jnp.asarray(classes))
        np.testing.assert_allclose(float(value), numpy_zsr(attributes, labels, classes), rtol=1e-10)
        f = lambda x, y: zero_shot_loss(x, jnp.asarray(labels), y)
        gx, gy = jax.grad(f, argnums=(0, 1))(jnp.asarray(attributes), jnp.asarray(classes))
        dx, dy, eps = rng.normal(size=attributes.shape), rng.normal(size=classes.shape), 1e-6
        numeric = (f(jnp.asarray(attributes + eps * dx), jnp.asarray(classes + eps * dy))
                   - f(jnp.asarray(attributes - eps * dx), jnp.asarray(classes - eps * dy))) / (2 * eps)
        np.testing.assert_allclose(float(jnp.sum(gx * dx) + jnp.sum(gy * dy)), float(numeric), rtol=1e-6)
    assert float(zero_shot_loss(jnp.ones((4, 3)), jnp.zeros(4, int), jnp.ones((2, 3)))) == 0.0  # one class


def test_objective_weighting_and_parameters():
    objective = objective_for("contrastive", zsr=0.1)
    params, state = objective.init(jax.random.key(0))
    assert params["class_embeddings"].shape == (6, 5) and state == {}
    rng = np.random.default_rng(3)
    outputs = {"embedding": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
               "attributes": jnp.asarray(rng.dirichlet(np.ones(4), size=8), jnp.float32)}
    labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _, metrics = objective(outputs, labels, params, state, jnp.asarray(0))
    np.testing.assert_allclose(float(loss), 0.9 * float(metrics["dml_loss"]) + 0.1 * float(metrics["zsr_loss"]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="needs a head that outputs attributes"):
        objective({"embedding": outputs["embedding"]}, labels, params, state, jnp.asarray(0))
    cfg = default_config().loss
    cfg.zsr.weight = 1.5
    with pytest.raises(ValueError, match=r"loss\.zsr\.weight"):
        make_objective(cfg, num_classes=2, embedding_dim=2, batch_size=2)


def test_weighted_sum_of_terms():
    cfg = default_config().loss
    cfg.name, cfg.weight = "contrastive", 0.1
    cfg.extra_terms = ConfigDict({"ms": {"name": "multi_similarity", "kwargs": {"alpha": 3.0}, "weight": 2.0}})
    objective = make_objective(cfg, num_classes=4, embedding_dim=5, batch_size=8)
    rng = np.random.default_rng(4)
    x, labels = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32), jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
    loss, _, metrics = objective({"embedding": x}, labels, {}, {}, jnp.asarray(0))
    ms = make_loss("multi_similarity", {"alpha": 3.0})
    expected = 0.1 * make_loss("contrastive")(x, labels) + 2.0 * ms(x, labels)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    assert set(metrics) == {"contrastive_loss", "ms_loss"}
    cfg.extra_terms = ConfigDict({"ms": {"name": "multi_similarty"}})
    with pytest.raises(ValueError, match="Did you mean multi_similarity"):
        make_objective(cfg, num_classes=4, embedding_dim=5, batch_size=8)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_trains_through_the_objective(name):
    """Each loss by name: jit, finite value and gradients (embeddings and loss parameters), with a memory
    where the loss allows one."""
    cfg = default_config().loss
    cfg.name = name
    if name == "margin":
        cfg.kwargs = ConfigDict({"learn_beta": True, "num_classes": 6})
    xbm = 0 if name == "n_pairs" else 2
    cfg.xbm.batches, cfg.xbm.start_step = xbm, 1
    objective = make_objective(cfg, num_classes=6, embedding_dim=5, batch_size=8)
    params, state = objective.init(jax.random.key(0))
    labels = jnp.asarray([0, 0, 1, 1, 2, 2, 5, 5])
    rng = np.random.default_rng(5)

    @jax.jit
    def step(x, params, state, step):
        def loss_fn(x, params):
            loss, new_state, _ = objective({"embedding": x}, labels, params, state, step)
            return loss, new_state
        (loss, new_state), grads = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(x, params)
        return loss, new_state, grads

    for i in range(3):
        x = jnp.asarray(rng.normal(size=(8, 5)), jnp.float32)
        loss, state, (gx, gp) = step(x, params, state, jnp.asarray(i))
        assert np.isfinite(float(loss)) and np.isfinite(np.asarray(gx)).all()
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(gp))
    if name == "margin":
        assert params["margin"]["beta"].shape == (6,) and float(jnp.abs(gp["margin"]["beta"]).max()) > 0


@pytest.mark.parametrize("miner", sorted(MINERS))
def test_configured_miner_feeds_its_selection_to_the_loss(miner):
    cfg = default_config().loss
    cfg.name = "triplet_margin" if miner == "triplet_margin" else "contrastive"
    cfg.miner.name = miner
    objective = make_objective(cfg, num_classes=4, embedding_dim=5, batch_size=8)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(8, 5)), jnp.float32)
    labels = jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])
    mined = MINERS[miner](x, labels)
    selection = {"triplets": mined} if miner == "triplet_margin" else {"pair_mask": mined}
    expected = LOSSES[cfg.name].fn(x, labels, **selection)
    np.testing.assert_allclose(float(objective({"embedding": x}, labels, {}, {}, jnp.asarray(0))[0]),
                               float(expected), rtol=1e-6)


def test_memory_with_losses_that_need_the_batch_is_refused():
    cfg = default_config().loss
    cfg.name, cfg.xbm.batches = "n_pairs", 2
    with pytest.raises(ValueError, match="cannot use a cross-batch memory"):
        make_objective(cfg, num_classes=4, embedding_dim=5, batch_size=8)


def release_c1(x, labels, ref=None, ref_labels=None):
    """The release's original_contrastive (C1): (sum_pos [1 - s - 1e-5]+ + sum_neg [s - 0.5]+) / B, cosine
    similarities of l2-normalised vectors; against the batch its diagonal is dropped, against a reference set
    (its XBM memory) every pair counts."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    own = ref is None
    ref, ref_labels = (x, labels) if own else (ref / np.linalg.norm(ref, axis=1, keepdims=True), ref_labels)
    s = x @ ref.T
    pos = labels[:, None] == ref_labels[None, :]
    if own:
        pos &= ~np.eye(len(x), dtype=bool)
    neg = labels[:, None] != ref_labels[None, :]
    pos_term, neg_term = (1.0 - s - 1e-5) * pos, (s - 0.5) * neg
    return (pos_term[pos_term > 0].sum() + neg_term[neg_term > 0].sum()) / len(x)


def test_release_memory_matches_the_released_xbm_loss():
    """The TF release's XBMLoss around C1: the ring buffer written before the loss (the batch's own copies stay in),
    L(batch, batch) always, plus L(batch, memory) once the pointer reaches start_at + batches_in_mem."""
    batch, dim, batches, start = 8, 5, 3, 2
    c1 = {"distance": "cosine", "pos_margin": 1.0 - 1e-5, "neg_margin": 0.5, "reduction": "sum_per_anchor"}
    cfg = default_config().loss
    cfg.name, cfg.kwargs = "contrastive", ConfigDict(c1)
    cfg.xbm.batches, cfg.xbm.start_step, cfg.xbm.mode = batches, start, "release"
    objective = make_objective(cfg, num_classes=6, embedding_dim=dim, batch_size=batch)
    rng = np.random.default_rng(4)
    memory, memory_labels, pointer = np.zeros((batches, batch, dim)), np.zeros((batches, batch), int), 0
    with jax.enable_x64(True):
        _, state = objective.init(jax.random.key(0))
        state = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
        used = []
        for step in range(9):  # before the memory counts, then with it, wrapping around
            x, labels = rng.normal(size=(batch, dim)), rng.integers(0, 6, batch)
            memory[pointer % batches], memory_labels[pointer % batches] = x, labels  # enqueueDequeue
            pointer += 1
            ready = pointer >= start + batches
            used.append(ready)
            expected = release_c1(x, labels) + (release_c1(x, labels, memory.reshape(-1, dim),
                                                           memory_labels.reshape(-1)) if ready else 0.0)
            loss, state, _ = objective({"embedding": jnp.asarray(x)}, jnp.asarray(labels), {}, state,
                                       jnp.asarray(step))
            np.testing.assert_allclose(float(loss), expected, rtol=1e-10, err_msg=f"step {step}")
    assert used == [False] * 4 + [True] * 5  # from step index start + batches - 1
    cfg.xbm.mode = "fifo"
    with pytest.raises(ValueError, match=r"loss\.xbm\.mode"):
        make_objective(cfg, num_classes=6, embedding_dim=dim, batch_size=batch)
