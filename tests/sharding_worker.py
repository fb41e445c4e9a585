"""Runs three train steps of the digit-pairs model on however many devices XLA_FLAGS gives; saves results.

Invoked by tests/test_sharding.py in fresh processes (the device count is fixed at JAX start-up):
    python tests/sharding_worker.py OUT.npz
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from train_helpers import tiny_config

from jaxdml.data import pipeline
from jaxdml.data.datasets import load_data
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.losses import make_loss, make_objective
from jaxdml.models import build_model
from jaxdml.train.loop import create_mesh
from jaxdml.train.optim import make_optimizer
from jaxdml.train.step import init_state, init_variables, make_train_step


def main(out: str) -> None:
    cfg = tiny_config(**{"train.batch_size": 32})
    # SGD: parameters move linearly with the gradients (Adam would amplify rounding in near-zero gradients).
    cfg.optim.name, cfg.optim.lr, cfg.optim.momentum = "sgd", 0.1, 0.9
    data = load_data(cfg.data)
    sampler = MPerClassSampler(data.train.labels, 8, 4, seed=0)
    make_batch = pipeline.TrainBatches(data.train, sampler, 0, 16, (0.6, 1.0), (0.75, 1.33), False)
    model = build_model(cfg.model)
    sample = jnp.zeros((1, 16, 16, 3), jnp.uint8)
    rng = jax.random.key(0)
    objective = make_objective(cfg.loss, make_loss("contrastive"), num_classes=50, embedding_dim=16, batch_size=32)
    params, model_state, _ = jax.eval_shape(lambda: init_variables(model, objective, rng, sample))
    tx = make_optimizer(cfg.optim, 10, params, model_state["batch_stats"])
    mesh = create_mesh()
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    create = lambda: init_state(model, objective, tx, rng, sample)
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(create))
    state = jax.jit(create, out_shardings=state_sharding)()
    step = jax.jit(make_train_step(model, objective, tx), in_shardings=(state_sharding, sharded),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    losses = []
    for i in range(3):
        batch = make_batch(i)
        device_batch = {k: jax.device_put(batch[k], sharded) for k in ("images", "labels")}
        assert len(device_batch["images"].sharding.device_set) == len(jax.devices())
        state, metrics = step(state, device_batch)
        losses.append(float(metrics["loss"]))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path({"params": state.params, "stats": state.model_state})}
    np.savez(out, losses=np.array(losses), devices=len(jax.devices()), **flat)


if __name__ == "__main__":
    main(sys.argv[1])
