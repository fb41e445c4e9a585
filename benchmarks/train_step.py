"""Metric-learning train step throughput: ResNet-50 with GAP vs with GSP (and GSP + ZSR), one run.

    python benchmarks/train_step.py                      # on a GPU: batch 128, 224x224, bfloat16
    python benchmarks/train_step.py --batch 16 --steps 3 # on a CPU

The full jitted train step of jaxdml (forward, contrastive loss, backward, Adam update, donated state) on
synthetic images, after compilation; prints images/s per head and the step-time ratio against GAP. GSP
starts with its prototypes ready (no k-center warm-up) so every timed step solves the transport problem.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxdml.config import default_config
from jaxdml.losses import make_loss, make_objective
from jaxdml.models import build_model
from jaxdml.train.loop import create_mesh
from jaxdml.train.optim import make_optimizer
from jaxdml.train.step import init_state, init_variables, make_train_step


def step_seconds(pooling: str, zsr: float, args: argparse.Namespace) -> float:
    cfg = default_config()
    cfg.model.backbone, cfg.model.embedding_dim, cfg.model.pooling = args.backbone, 512, pooling
    cfg.model.compute_dtype = args.dtype
    cfg.model.gsp.memory_size = 0  # prototypes ready from the first step
    cfg.model.gsp.num_prototypes = args.prototypes
    cfg.loss.zsr.weight = zsr
    classes = args.batch // 4
    model = build_model(cfg.model)
    objective = make_objective(cfg.loss, make_loss("contrastive"), num_classes=classes, embedding_dim=512,
                               batch_size=args.batch)
    rng = jax.random.key(0)
    sample = jnp.zeros((1, args.image_size, args.image_size, 3), jnp.uint8)
    params, model_state, _ = jax.eval_shape(lambda: init_variables(model, objective, rng, sample))
    tx = make_optimizer(cfg.optim, 1000, params, model_state.get("batch_stats", {}))
    mesh = create_mesh()
    replicated, sharded = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    create = lambda: init_state(model, objective, tx, rng, sample)
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(create))
    state = jax.jit(create, out_shardings=state_sharding)()
    step = jax.jit(make_train_step(model, objective, tx), in_shardings=(state_sharding, sharded),
                   out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.image_size, args.image_size, 3), np.uint8)
    batch = {"images": jax.device_put(images, sharded),
             "labels": jax.device_put(np.repeat(np.arange(classes), 4).astype(np.int32), sharded)}
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=128 if gpu else 16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32")
    parser.add_argument("--prototypes", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3 if gpu else 1)
    parser.add_argument("--steps", type=int, default=20 if gpu else 3)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind} x {jax.device_count()}), "
          f"{args.backbone}, batch {args.batch}, {args.image_size}x{args.image_size}, {args.dtype}, "
          f"median of {args.steps} steps")
    results = {}
    for name, pooling, zsr in (("GAP", "gap", 0.0), ("GSP", "gsp", 0.0), ("GSP + ZSR", "gsp", 0.1)):
        seconds = step_seconds(pooling, zsr, args)
        results[name] = seconds
        print(f"{name:>10}: {1e3 * seconds:9.1f} ms/step  {args.batch / seconds:9.1f} images/s  "
              f"step time / GAP's: {seconds / results['GAP']:.3f}", flush=True)


if __name__ == "__main__":
    main()
