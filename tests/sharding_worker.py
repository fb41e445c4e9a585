"""Runs three train steps of each task on however many devices XLA_FLAGS gives; saves losses and parameters.

Invoked by tests/test_sharding.py in fresh processes (the device count is fixed at JAX start-up):
    python tests/sharding_worker.py OUT.npz
Both tasks go through the same core: ``setup_training`` (state, jitted step) and ``TrainBatches``.

    python tests/sharding_worker.py OUT.npz WORKDIR STEPS [KEY=VALUE ...]
trains the default experiment (experiments/digit_pairs.py, its optimiser and schedule; overrides as
``section.name=value`` or ``seed=1``) for STEPS steps through the trainer, as ``python -m jaxdml.main`` does,
and saves every step's loss, the initial and final parameters and the final test metrics.
"""

import ast
import json
import sys
from pathlib import Path

import jax
import numpy as np
from train_helpers import REPO, tiny_config

from jaxdml.config import load_config_file
from jaxdml.data import pipeline
from jaxdml.data.datasets import load_data
from jaxdml.data.sampler import build_sampler
from jaxdml.data.sources import num_classes
from jaxdml.train.state import create_mesh
from jaxdml.train.step import batch_sharding
from jaxdml.trainers import (
    create_trainer,
    distillation_procedure,
    metric_learning_procedure,
    resolve_config,
    setup_training,
)


def run(cfg, procedure_of) -> dict[str, np.ndarray]:
    cfg, _ = resolve_config(cfg)
    data = load_data(cfg.data)
    sampler = build_sampler(cfg.data, data.train, cfg.train.batch_size, cfg.seed)
    make_batch = pipeline.TrainBatches.from_config(cfg.data, data.train, sampler, cfg.seed)
    mesh = create_mesh()
    setup = setup_training(cfg, procedure_of(cfg, num_classes(data.train)), mesh)
    state, losses = setup.state, []
    for i in range(3):
        batch = make_batch(i)
        device_batch = {k: jax.device_put(batch[k], batch_sharding(mesh)) for k in ("images", "labels")}
        assert len(device_batch["images"].sharding.device_set) == len(jax.devices())
        state, metrics = setup.train_step(state, device_batch)
        losses.append(float(metrics["loss"]))
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
            jax.tree_util.tree_leaves_with_path({"params": state.params, "stats": state.model_state})}
    return {"losses": np.array(losses), **flat}


def main(out: str) -> None:
    retrieval = tiny_config(**{"train.batch_size": 32})
    # SGD: parameters move linearly with the gradients (Adam would amplify rounding in near-zero gradients).
    retrieval.optim.name, retrieval.optim.lr, retrieval.optim.momentum = "sgd", 0.1, 0.9
    classification = load_config_file(f"{REPO / 'experiments' / 'kd_digits_student.py'}:none")
    classification.model.backbone, classification.train.batch_size = "resnet8", 32
    results = {"devices": len(jax.devices())}
    for task, cfg, procedure_of in (
            ("metric_learning", retrieval, metric_learning_procedure),
            ("distillation", classification, lambda c, k: distillation_procedure(c, k, None, {}))):
        results.update({f"{task}/{k}": v for k, v in run(cfg, procedure_of).items()})
    np.savez(out, **results)


def flat_params(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def run_experiment(out: str, workdir: str, steps: int, overrides: list[str]) -> None:
    cfg = load_config_file(REPO / "experiments" / "digit_pairs.py")
    for item in overrides:
        key, value = item.split("=", 1)
        *sections, name = key.split(".")
        node = cfg
        for section in sections:
            node = node[section]
        setattr(node, name, ast.literal_eval(value))
    t = cfg.train
    # log_every=1: every step's loss, and a host sync every step (with 8 emulated CPU devices on a loaded 2-core
    # machine, 200-400 steps dispatched without a sync have hung in XLA's CPU all-gather rendezvous).
    t.num_steps, t.log_every, t.eval_every, t.checkpoint_every, t.progress_bar = steps, 1, steps, steps, False
    cfg.eval.at_start = False
    trainer = create_trainer(cfg, workdir)
    initial = flat_params(trainer.state.params)
    summary = trainer.run()
    rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == steps
    np.savez(out, devices=len(jax.devices()), losses=np.array(losses),
             **{f"initial/{k}": v for k, v in initial.items()},
             **{f"final/{k}": v for k, v in flat_params(trainer.state.params).items()},
             **{f"metric/{k}": v for k, v in summary["final"].items() if k != "eval_seconds"})


if __name__ == "__main__":
    if len(sys.argv) > 2:
        run_experiment(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        main(sys.argv[1])
