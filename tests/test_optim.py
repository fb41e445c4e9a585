"""Optimiser: per-group LR multipliers, no weight decay on BN/biases, frozen BN parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdml.config import default_config
from jaxdml.train.optim import batchnorm_param_mask, learning_rate_schedule, make_optimizer

PARAMS = {
    "backbone": {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}},
    "head": {"projection": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}},
}
STATS = {"backbone": {"bn": {"mean": jnp.zeros(4), "var": jnp.ones(4)}}}




def test_batchnorm_params_found_through_batch_stats():
    mask = batchnorm_param_mask(PARAMS, STATS)
    assert mask["backbone"]["bn"] == {"scale": True, "bias": True}
    assert mask["backbone"]["conv"] == {"kernel": False}
    assert mask["head"]["projection"] == {"kernel": False, "bias": False}


def test_lr_multipliers_per_group():
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum = "sgd", 0.1, 0.0
    cfg.lr_mult.backbone, cfg.lr_mult.head = 0.1, 10.0
    tx = make_optimizer(cfg, 10, PARAMS, STATS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.01, rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["projection"]["kernel"], -1.0, rtol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_bn_and_biases(name):
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum, cfg.weight_decay = name, 0.1, 0.0, 0.5
    tx = make_optimizer(cfg, 10, PARAMS, STATS)
    zero = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero, tx.init(PARAMS), PARAMS)  # zero gradient: only decay moves anything
    assert np.all(np.asarray(updates["backbone"]["conv"]["kernel"]) < 0)
    assert np.all(np.asarray(updates["head"]["projection"]["kernel"]) < 0)
    for leaf in (updates["backbone"]["bn"]["scale"], updates["head"]["projection"]["bias"]):
        np.testing.assert_array_equal(leaf, 0.0)


def test_freeze_bn_freezes_only_backbone_bn_params():
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum = "sgd", 0.1, 0.0
    tx = make_optimizer(cfg, 10, PARAMS, STATS, freeze_bn=True)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_array_equal(updates["backbone"]["bn"]["scale"], 0.0)
    assert np.all(np.asarray(updates["backbone"]["conv"]["kernel"]) < 0)


def test_schedules():
    cfg = default_config().optim
    cfg.lr, cfg.warmup_steps, cfg.schedule = 1.0, 10, "cosine"
    s = learning_rate_schedule(cfg, 110)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.5) and float(s(110)) < 1e-6
    cfg.schedule, cfg.warmup_steps, cfg.step_boundaries = "step", 0, (5, 8)
    s = learning_rate_schedule(cfg, 10)
    assert [float(s(i)) for i in (4, 5, 8)] == pytest.approx([1.0, 0.1, 0.01])


def test_backbone_frozen_during_warm_up():
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum, cfg.freeze_backbone_steps = "sgd", 0.1, 0.0, 2
    tx = make_optimizer(cfg, 10, PARAMS, STATS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    state = tx.init(PARAMS)
    for step in range(3):
        updates, state = tx.update(grads, state, PARAMS)
        backbone = float(updates["backbone"]["conv"]["kernel"].max())
        assert (backbone == 0.0) == (step < 2), step
        assert float(updates["head"]["projection"]["kernel"].max()) < 0
