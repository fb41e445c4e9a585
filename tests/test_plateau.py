"""Reduce-on-plateau and gradient clipping as the GSP/CCP release runs them.

The hook is checked against a transcription of Keras' ``ReduceLROnPlateau.on_epoch_end`` (TensorFlow 2.x,
``mode='max'``), the reference the release calls; the clipping order (global norm, then value) against NumPy; and a
real run's reductions, read back from its metrics and checkpoint, resume exactly.
"""

from __future__ import annotations

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import tiny_config

from jaxdml.config import default_config
from jaxdml.errors import ConfigError
from jaxdml.train.hooks import ReduceOnPlateau
from jaxdml.train.optim import lr_factor, make_optimizer, set_lr_factor
from jaxdml.train.writers import NullWriter
from jaxdml.trainers import Resume, create_trainer, resolve_config, train_and_evaluate

PARAMS = {"head": {"projection": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones(2)}}}


class KerasReduceLROnPlateau:
    """Keras' ReduceLROnPlateau (tf.keras.callbacks, TF 2.x), mode 'max', transcribed: the rate it sets."""

    def __init__(self, lr, factor, patience, min_delta, cooldown, min_lr):
        self.lr, self.factor, self.patience, self.min_delta = np.float32(lr), factor, patience, min_delta
        self.cooldown, self.min_lr = cooldown, min_lr
        self.best, self.wait, self.cooldown_counter = -np.inf, 0, 0

    def in_cooldown(self):
        return self.cooldown_counter > 0

    def on_epoch_end(self, current):
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if np.greater(current, self.best + self.min_delta):
            self.best = current
            self.wait = 0
        elif not self.in_cooldown():
            self.wait += 1
            if self.wait >= self.patience:
                old_lr = self.lr
                if old_lr > np.float32(self.min_lr):
                    new_lr = max(old_lr * self.factor, self.min_lr)
                    self.lr = np.float32(new_lr)
                    self.cooldown_counter = self.cooldown
                    self.wait = 0
        return self.lr


def _optimizer(**plateau):
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum = "sgd", 1e-3, 0.0
    for key, value in plateau.items():
        setattr(cfg.plateau, key, value)
    return cfg, make_optimizer(cfg, 100, PARAMS, {})


@pytest.mark.parametrize("settings", [
    dict(factor=0.5, patience=4, min_delta=1e-3, cooldown=2, min_lr=1e-6),  # the release's CUB / Cars
    dict(factor=0.5, patience=1, min_delta=1e-3, cooldown=0, min_lr=2e-4),  # reaches the floor
    dict(factor=0.1, patience=2, min_delta=0.0, cooldown=3, min_lr=0.0),
])
def test_hook_follows_keras(settings):
    cfg, tx = _optimizer(**settings)
    rng = np.random.default_rng(0)
    # plateaus, small gains below min_delta, real gains, ties
    values = np.concatenate([np.linspace(0.1, 0.5, 5), np.full(6, 0.5), 0.5 + rng.uniform(0, 2e-3, 8),
                             np.linspace(0.5, 0.6, 4), np.full(12, 0.6), rng.uniform(0.55, 0.65, 10)])
    loop = types.SimpleNamespace(state=types.SimpleNamespace(opt_state=tx.init(PARAMS)), events={},
                                 echo=lambda message: None)

    def set_factor(state, factor):
        return types.SimpleNamespace(opt_state=set_lr_factor(state.opt_state, factor))

    hook = ReduceOnPlateau(set_factor, NullWriter(), metric="map_at_r", factor=settings["factor"],
                           patience=settings["patience"], min_delta=settings["min_delta"],
                           cooldown=settings["cooldown"], min_factor=settings["min_lr"] / cfg.lr)
    keras = KerasReduceLROnPlateau(cfg.lr, **settings)
    reductions = 0
    for step, value in enumerate(values):
        loop.events = {"eval": {"map_at_r": float(value)}}
        before = lr_factor(loop.state.opt_state)
        hook.after_step(loop, step)
        expected = keras.on_epoch_end(float(value))
        reductions += lr_factor(loop.state.opt_state) != before
        np.testing.assert_allclose(cfg.lr * lr_factor(loop.state.opt_state), expected, rtol=1e-6,
                                   err_msg=f"evaluation {step}")
        assert (hook.wait, hook.cooldown_counter) == (keras.wait, keras.cooldown_counter)
    assert reductions >= 2
    copy = ReduceOnPlateau(set_factor, NullWriter(), metric="map_at_r", factor=0.5, patience=1, min_delta=0.0,
                           cooldown=0, min_factor=0.0)
    copy.load_state_dict(json.loads(json.dumps(hook.state_dict())))
    assert copy.state_dict() == hook.state_dict()


def test_factor_scales_every_update_exactly():
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.weight_decay, cfg.plateau.factor = "adamw", 1e-3, 1e-2, 0.5
    tx = make_optimizer(cfg, 100, PARAMS, {})
    grads = jax.tree.map(lambda p: jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape) - 1.5, PARAMS)
    state = tx.init(PARAMS)
    assert lr_factor(state) == 1.0
    full, _ = tx.update(grads, state, PARAMS)
    quarter, _ = tx.update(grads, set_lr_factor(state, 0.25), PARAMS)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a) * 0.25, b), full, quarter)
    cfg.plateau.factor = 0.0
    assert lr_factor(make_optimizer(cfg, 100, PARAMS, {}).init(PARAMS)) is None


def test_clipping_is_global_norm_then_value():
    cfg = default_config().optim
    cfg.name, cfg.lr, cfg.momentum = "sgd", 1.0, 0.0
    cfg.grad_clip_norm, cfg.grad_clip_value = 3.0, 1.0
    tx = make_optimizer(cfg, 10, PARAMS, {})
    grads = {"head": {"projection": {"kernel": jnp.asarray([[4.0, 0.5], [0.2, -3.0], [0.1, 0.0], [0.0, 0.3]]),
                                     "bias": jnp.asarray([-2.0, 0.7])}}}
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
    scale = min(1.0, 3.0 / np.linalg.norm(flat))
    for got, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
        expected = -np.clip(np.asarray(g) * scale, -1.0, 1.0)  # the release's ClipGradients
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    value_first = np.clip(flat, -1.0, 1.0)
    value_first = value_first * min(1.0, 3.0 / np.linalg.norm(value_first))
    assert not np.allclose(-np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)]), value_first)


def test_plateau_settings_are_validated():
    cfg = tiny_config(**{"optim.plateau.factor": 1.5})
    with pytest.raises(ConfigError, match=r"optim\.plateau\.factor=1\.5 must be in \[0, 1\)"):
        resolve_config(cfg)
    cfg = tiny_config(**{"optim.plateau.patience": 0})
    with pytest.raises(ConfigError, match=r"optim\.plateau\.patience=0 must be >= 1"):
        resolve_config(cfg)


# Evaluations every 2 steps; no gain can exceed min_delta = 1, so every evaluation after the first is a bad one.
PLATEAU = {"optim.plateau.factor": 0.5, "optim.plateau.patience": 1, "optim.plateau.min_delta": 1.0,
           "optim.plateau.cooldown": 2, "optim.plateau.min_lr": 2e-4, "optim.lr": 1e-3, "train.eval_every": 2,
           "train.checkpoint_every": 2, "optim.schedule": "constant", "eval.at_start": False}


def test_a_run_reduces_at_the_keras_evaluations_and_resumes_exactly(tmp_path):
    straight = tiny_config(**{**PLATEAU, "train.num_steps": 12})
    train_and_evaluate(straight, tmp_path / "straight")
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    factors = {r["step"]: r["lr_factor"] for r in records if r["split"] == "plateau"}
    keras = KerasReduceLROnPlateau(1e-3, 0.5, 1, 1.0, 2, 2e-4)
    evaluations = {r["step"]: r["map_at_r"] for r in records if r["split"] == "test"}
    expected = {step: float(keras.on_epoch_end(value)) / 1e-3 for step, value in sorted(evaluations.items())}
    assert sorted(factors) == [2, 4, 6, 8, 10, 12]
    np.testing.assert_allclose([factors[s] for s in sorted(factors)], [expected[s] for s in sorted(factors)],
                               rtol=1e-6)
    assert [factors[s] for s in sorted(factors)] == pytest.approx([1.0, 0.5, 0.5, 0.25, 0.25, 0.2])
    train_and_evaluate(tiny_config(**{**PLATEAU, "train.num_steps": 6}), tmp_path / "resumed")
    train_and_evaluate(straight, tmp_path / "resumed", resume=Resume(extend_steps=True))
    a, b = (create_trainer(straight, tmp_path / w) for w in ("straight", "resumed"))
    for t in (a, b):
        t.close()
    sa, sb = jax.device_get(a.state), jax.device_get(b.state)
    assert lr_factor(sa.opt_state) == pytest.approx(0.2)
    for part in ("params", "opt_state", "model_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(sa, part), getattr(sb, part))
