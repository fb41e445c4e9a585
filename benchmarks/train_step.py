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
import numpy as np

from jaxdml.config import default_config
from jaxdml.train.loop import build_training, create_mesh


def step_seconds(pooling: str, zsr: float, args: argparse.Namespace) -> float:
    cfg = default_config()
    cfg.model.backbone, cfg.model.embedding_dim, cfg.model.pooling = args.backbone, 512, pooling
    cfg.model.compute_dtype = args.dtype
    cfg.model.gsp.memory_size = 0  # prototypes ready from the first step
    cfg.model.gsp.num_prototypes = args.prototypes
    cfg.loss.zsr.weight = zsr
    cfg.data.image_size, cfg.train.batch_size = args.image_size, args.batch
    classes = args.batch // 4
    setup = build_training(cfg, create_mesh(), classes)
    images = np.random.default_rng(0).integers(0, 256, (args.batch, args.image_size, args.image_size, 3), np.uint8)
    batch = {"images": jax.device_put(images, setup.batch_sharding),
             "labels": jax.device_put(np.repeat(np.arange(classes), 4).astype(np.int32), setup.batch_sharding)}
    state = setup.state
    for _ in range(args.warmup):
        state, metrics = setup.train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        state, metrics = setup.train_step(state, batch)
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
