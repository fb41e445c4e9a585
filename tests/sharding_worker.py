"""Runs three train steps of the digit-pairs model on however many devices XLA_FLAGS gives; saves results.

Invoked by tests/test_sharding.py in fresh processes (the device count is fixed at JAX start-up):
    python tests/sharding_worker.py OUT.npz
"""

import sys

import jax
import numpy as np
from train_helpers import tiny_config

from jaxdml.data import pipeline
from jaxdml.data.datasets import load_data
from jaxdml.data.sampler import MPerClassSampler
from jaxdml.data.sources import num_classes
from jaxdml.train.loop import build_training, create_mesh


def main(out: str) -> None:
    cfg = tiny_config(**{"train.batch_size": 32})
    # SGD: parameters move linearly with the gradients (Adam would amplify rounding in near-zero gradients).
    cfg.optim.name, cfg.optim.lr, cfg.optim.momentum = "sgd", 0.1, 0.9
    data = load_data(cfg.data)
    sampler = MPerClassSampler(data.train.labels, 8, 4, seed=0)
    make_batch = pipeline.TrainBatches(data.train, sampler, 0, 16, (0.6, 1.0), (0.75, 1.33), False)
    setup = build_training(cfg, create_mesh(), num_classes(data.train))
    state, losses = setup.state, []
    for i in range(3):
        batch = make_batch(i)
        device_batch = {k: jax.device_put(batch[k], setup.batch_sharding) for k in ("images", "labels")}
        assert len(device_batch["images"].sharding.device_set) == len(jax.devices())
        state, metrics = setup.train_step(state, device_batch)
        losses.append(float(metrics["loss"]))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path({"params": state.params, "stats": state.model_state})}
    np.savez(out, losses=np.array(losses), devices=len(jax.devices()), **flat)


if __name__ == "__main__":
    main(sys.argv[1])
