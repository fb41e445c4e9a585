"""CCP-DML: the proximal gradient, the seeded k-center pick against brute force, the round rule against a hand-made
sequence, the rounds of a real run read back from its checkpoints, and an exact resume after SIGTERM mid-round."""

from __future__ import annotations

import json
import os
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from train_helpers import REPO, cli, tiny_config

from jaxdml.errors import ConfigError
from jaxdml.losses import ccp as ccp_math
from jaxdml.losses import make_loss
from jaxdml.train.checkpoint import Checkpointer, abstract_like
from jaxdml.train.state import model_variables
from jaxdml.train.step import StepContext, apply_model
from jaxdml.trainers import create_trainer, resolve_config, train_and_evaluate
from jaxdml.trainers.ccp import EXTRA, RoundTracker, ccp_procedure, network

# A CCP run on the tiny digits: validation every 2 steps, and a gain threshold no MAP@R can pass, so every round is
# one gain (its first evaluation) then one evaluation without: round r starts at step 4 r.
CCP = {"trainer": "ccp", "data.val_fraction": 0.25, "train.eval_every": 2, "ccp.round_patience": 1,
       "ccp.min_gain": 1.0, "ccp.proxies_per_class": 2, "ccp.pool_per_class": 3, "model.embedding_norm": "lipschitz"}


def ccp_config(**overrides):
    return tiny_config(**{**CCP, **overrides})


# --- the loss ----------------------------------------------------------------------------------------------------


def test_proximal_gradient_is_lambda_times_the_distance_on_network_weights_and_zero_on_proxies():
    cfg, _ = resolve_config(ccp_config())
    procedure = ccp_procedure(cfg, num_classes=5)
    params, model_state, _ = jax.jit(procedure.init_fn)()
    rng = np.random.default_rng(1)
    anchor = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.normal(size=p.shape).astype(np.float32),
                          network(params))
    images = rng.integers(0, 255, (8, 16, 16, 3)).astype(np.uint8)
    batch = {"images": images, "labels": jnp.asarray([0, 0, 1, 1, 2, 2, 3, 3])}

    @jax.jit
    def grads(lam: jnp.ndarray):
        extra = {EXTRA: {"anchor": anchor, "best": anchor, "best_proxies": params["loss"]["proxies"], "lam": lam}}

        def objective(p):
            outputs, _ = apply_model(procedure.model, model_variables(p, model_state), batch["images"], train=True,
                                     mutable=list(model_state))
            return procedure.loss_fn(p, outputs, batch, StepContext(jnp.int32(0), {}, extra, None))[0]

        return jax.grad(objective)(params)

    lam = 0.5  # large enough that the term stands well above the rounding of the base loss's gradient
    with_term, without = grads(jnp.float32(lam)), grads(jnp.float32(0.0))
    with_term, without, params = jax.device_get((with_term, without, params))  # NumPy from here on
    difference = jax.tree.map(lambda a, b: a - b, with_term, without)
    expected = jax.tree.map(lambda p, a: np.float32(lam) * (p - a), network(params), anchor)
    jax.tree.map(lambda d, e: np.testing.assert_allclose(d, e, rtol=1e-4, atol=1e-8), network(difference), expected)
    assert all(np.abs(e).max() > 1e-3 for e in jax.tree.leaves(expected)), "a term worth testing"
    np.testing.assert_array_equal(difference["loss"]["proxies"], 0.0)


def test_proximal_penalty_closed_form():
    params = {"a": jnp.asarray([1.0, 2.0]), "b": jnp.asarray([[3.0]])}
    anchor = {"a": jnp.asarray([0.0, 0.0]), "b": jnp.asarray([[1.0]])}
    value, grad = jax.value_and_grad(ccp_math.proximal_penalty)(params, anchor, jnp.float32(0.5))
    assert float(value) == pytest.approx(0.25 * (1 + 4 + 4))
    np.testing.assert_allclose(grad["a"], [0.5, 1.0])
    np.testing.assert_allclose(grad["b"], [[1.0]])


def test_ccp_loss_pairs_the_batch_with_every_proxy():
    rng = np.random.default_rng(0)
    e, proxies = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(2 * 3, 4)).astype(np.float32)
    labels = np.asarray([0, 0, 1, 1, 2, 2])
    base = make_loss("contrastive", {"pos_margin": 0.1, "neg_margin": 0.9, "normalize": "lipschitz"})
    loss, terms = ccp_math.ccp_loss(base, e, labels, proxies, 2, 3, pair_weight=0.1, proxy_weight=1.0)

    def lip(x):
        return x / np.maximum(1.0, np.linalg.norm(x, axis=-1, keepdims=True))

    d = np.linalg.norm(lip(e)[:, None] - lip(proxies)[None], axis=-1)
    same = labels[:, None] == np.tile(np.arange(3), 2)[None]  # row j * C + c is proxy j of class c
    pos, neg = np.maximum(d - 0.1, 0)[same], np.maximum(0.9 - d, 0)[~same]
    expected = pos[pos > 0].mean() + neg[neg > 0].mean()  # PML's AvgNonZero on each side
    assert float(terms["proxy_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(0.1 * float(terms["pair_loss"]) + expected, rel=1e-5)


def test_proxy_layout_round_trips():
    proxies = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(6, 4)
    grouped = ccp_math.by_class(proxies, 2)
    assert grouped.shape == (3, 2, 4)
    np.testing.assert_array_equal(grouped[1, 1], proxies[1 * 3 + 1])
    np.testing.assert_array_equal(ccp_math.flat(grouped), proxies)


# --- the pick ----------------------------------------------------------------------------------------------------


def brute_k_center(pool: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Farthest-point picks by exhaustive search: each pick maximises the squared distance to its nearest chosen
    point (seeds included, seeds never returned)."""
    chosen, picks = [*seeds], []
    for _ in range(len(seeds)):
        nearest = [min(float(np.sum((p - c) ** 2)) for c in chosen) for p in pool]
        best = int(np.argmax(nearest))
        picks.append(pool[best])
        chosen.append(pool[best])
    return np.stack(picks)


@pytest.mark.parametrize("zero_seeds", [True, False])
def test_seeded_k_center_matches_brute_force(zero_seeds):
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(5, 12, 6)).astype(np.float32)
    seeds = np.zeros((5, 4, 6), np.float32) if zero_seeds else rng.normal(size=(5, 4, 6)).astype(np.float32)
    got = np.asarray(ccp_math.pick_proxies(jnp.asarray(pool), jnp.asarray(seeds)))
    for c in range(5):
        np.testing.assert_array_equal(got[c], brute_k_center(pool[c], seeds[c]))


def test_pool_size_rule_and_pool_draws():
    assert ccp_math.pool_size(12, 8) == 12 and ccp_math.pool_size(7, 4) == 7 and ccp_math.pool_size(3, 4) == 12
    labels = np.repeat(np.arange(4), [10, 2, 5, 7])
    a = ccp_math.pool_indices(labels, 4, 5, seed=0, round_index=2)
    np.testing.assert_array_equal(a, ccp_math.pool_indices(labels, 4, 5, seed=0, round_index=2))
    assert not np.array_equal(a, ccp_math.pool_indices(labels, 4, 5, seed=0, round_index=3))
    for c in range(4):
        assert (labels[a[c]] == c).all()
        members = np.flatnonzero(labels == c)
        if len(members) >= 5:
            assert len(set(a[c])) == 5
        else:
            assert set(a[c]) == set(members)  # every record, then repeats


# --- the rounds --------------------------------------------------------------------------------------------------


def test_round_rule_follows_a_hand_made_sequence():
    tracker = RoundTracker(patience=3, min_gain=1e-5)
    values = [0.10, 0.20, 0.200005, 0.19, 0.15,  # gain, gain, too small, worse, worse -> a new round
              0.05, 0.06, 0.06, 0.07, 0.01, 0.02, 0.03]  # (new round: its first value always gains)
    expected = [(True, False), (True, False), (False, False), (False, False), (False, True),
                (True, False), (True, False), (False, False), (True, False), (False, False), (False, False),
                (False, True)]
    assert [tracker.update(v) for v in values] == expected
    assert tracker.round == 2 and tracker.best is None
    copy = RoundTracker(3, 1e-5)
    copy.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert copy == tracker


def test_config_refusals():
    with pytest.raises(ConfigError, match="pair loss without parameters"):
        resolve_config(ccp_config(**{"loss.name": "proxy_anchor", "loss.kwargs": ml_collections.ConfigDict()}))
    with pytest.raises(ConfigError, match=r"loss\.xbm\.batches"):
        resolve_config(ccp_config(**{"loss.xbm.batches": 2}))
    with pytest.raises(ConfigError, match=r"data\.val_fraction"):
        resolve_config(ccp_config(**{"data.val_fraction": 0.0}))


@pytest.fixture(scope="module")
def rounds_run(tmp_path_factory):
    """20 steps of CCP, a checkpoint at every evaluation (every 2 steps), all kept."""
    workdir = tmp_path_factory.mktemp("ccp")
    cfg = ccp_config(**{"train.num_steps": 20, "train.checkpoint_every": 2, "train.keep_checkpoints": 100})
    summary = train_and_evaluate(cfg, workdir)
    return cfg, workdir, summary


def _checkpoints(cfg, workdir):
    trainer = create_trainer(cfg, workdir)
    trainer.close()
    abstract = abstract_like(trainer.state)
    source = Checkpointer(workdir / "checkpoints", keep=100, selection_metric="map_at_r", read_only=True)
    return trainer, {step: jax.device_get(source.restore(step, abstract)[0]) for step in source.steps()}


def test_rounds_of_a_real_run_read_back_from_its_checkpoints(rounds_run):
    cfg, workdir, _ = rounds_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    rounds = {r["step"]: r["round"] for r in records if r["split"] == "ccp"}
    assert rounds == {s: s // 4 for s in range(2, 21, 2)}, "round r starts at step 4 r"
    trainer, states = _checkpoints(cfg, workdir)
    hook = trainer.extra_hooks()[0]
    for r in range(1, 5):
        start, gain = 4 * r, 4 * r - 2
        at_start, at_gain = states[start].extra[EXTRA], states[gain]
        # theta_bar <- the round's best weights (those of its gain), theta itself kept; lambda from round 1 on
        jax.tree.map(np.testing.assert_array_equal, at_start["anchor"], network(at_gain.params))
        jax.tree.map(np.testing.assert_array_equal, at_start["best"], network(at_gain.params))
        kept = jax.tree.leaves(network(states[start].params))
        assert any(not np.array_equal(a, b) for a, b in zip(kept, jax.tree.leaves(at_start["anchor"])))
        assert float(at_start["lam"]) == pytest.approx(cfg.ccp.proximal)
        np.testing.assert_array_equal(at_start["best_proxies"], at_gain.params["loss"]["proxies"])
        # the new proxies: the seeded pick from this round's pool, embedded by the network of that step
        pool = hook.pool_embeddings(jax.device_put(states[start]), r)
        seeds = ccp_math.by_class(jnp.asarray(at_gain.params["loss"]["proxies"]), cfg.ccp.proxies_per_class)
        expected = np.stack([brute_k_center(pool[c], np.asarray(seeds[c])) for c in range(pool.shape[0])])
        np.testing.assert_allclose(ccp_math.by_class(states[start].params["loss"]["proxies"],
                                                     cfg.ccp.proxies_per_class), expected, rtol=1e-6, atol=1e-6)
    assert float(states[2].extra[EXTRA]["lam"]) == 0.0, "no proximal term in the first round"


def test_exact_resume_after_sigterm_in_the_third_round(rounds_run, tmp_path):
    cfg, reference, _ = rounds_run
    overrides = {**CCP, "train.num_steps": 20, "train.checkpoint_every": 2, "train.keep_checkpoints": 100}
    flags, extra = overrides, []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(cli(workdir, **flags) + extra, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        lines = (workdir / "metrics.jsonl").read_text().splitlines() if (workdir / "metrics.jsonl").exists() else []
        if any(json.loads(x)["split"] == "train" and json.loads(x)["step"] >= 9 for x in lines):
            break
        time.sleep(0.02)
    process.terminate()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + 15, err.decode()
    stopped = Checkpointer(workdir / "checkpoints", keep=100, selection_metric="map_at_r").steps()[-1]
    assert 9 <= stopped < 20, stopped
    resumed = subprocess.run(cli(workdir, **flags) + extra, cwd=REPO, env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()
    a, b = (create_trainer(cfg, w) for w in (reference, workdir))
    for t in (a, b):
        t.close()
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(a.state), jax.device_get(b.state))
    sa, sb = (json.loads((w / "summary.json").read_text()) for w in (reference, workdir))
    assert sa["final"]["map_at_r"] == sb["final"]["map_at_r"] and sa["best_step"] == sb["best_step"]
