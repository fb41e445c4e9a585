"""The cost of CCP, in one run: its train step against the plain step, and one proxy re-pick at SOP size.

    python benchmarks/ccp.py                                       # a GPU: BN-Inception, batch 32, 227x227
    python benchmarks/ccp.py --steps 3                             # a CPU (minutes)
    python benchmarks/ccp.py --backbone small_cnn --image-size 32  # the embedded-data model (seconds)

1. The jitted train step (forward, base loss, backward, Adam, donated state) of the MLRC recipe's C2 contrastive
   model (experiments/_mlrc_recipe.py: BN-Inception, frozen BatchNorm, GAP, 128-d Lipschitz-normalised embedding,
   batch 8 classes x 4) on synthetic images, plain and under CCP (M proxies per class for a training split of
   ``--classes`` classes, 0.1 L(batch) + 1.0 L(batch, proxies), the proximal term with lambda > 0 as from the second
   round). The paper: 105 vs 97 ms per batch on an RTX 2080 Ti (+8%).
2. One proxy re-pick as a round start runs it, the network aside: greedy k-center for every class over a pool of
   b embeddings seeded with the M best proxies (``jaxdml.losses.ccp.pick_proxies``), for SOP's 3 training folds
   (8,488 classes), b = 7, M = 4, 128-d, plus the pool's draw (``pool_indices``). The paper: 200-400 ms per
   re-initialisation on SOP / In-Shop (with the pool's forward passes, which are an evaluation-sized inference pass
   here as well and not timed).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from train_step import _timed  # benchmarks/ is the script's directory, first on sys.path

from jaxdml.config import load_config_file
from jaxdml.losses import ccp as ccp_math
from jaxdml.train.state import create_mesh
from jaxdml.train.step import batch_sharding
from jaxdml.trainers import ccp_procedure, metric_learning_procedure, resolve_config, setup_training


def step_seconds(variant: str, args: argparse.Namespace) -> float:
    """Median seconds of the MLRC recipe's train step in ``variant`` (any of ``_mlrc_recipe.VARIANTS``)."""
    cfg = load_config_file(f"experiments/ccp_cub.py:{variant}")
    cfg.model.backbone, cfg.model.pretrained = args.backbone, None
    cfg.data.image_size = cfg.data.resize_size = args.image_size
    cfg.model.compute_dtype = args.dtype
    cfg, _ = resolve_config(cfg)
    mesh = create_mesh()
    build = ccp_procedure if variant.endswith("_ccp") else metric_learning_procedure
    setup = setup_training(cfg, build(cfg, args.classes), mesh)
    state = setup.state
    if variant.endswith("_ccp"):  # a later round: lambda > 0 and theta_bar != theta

        def later_round(state):
            extra = dict(state.extra["ccp"], lam=jnp.float32(cfg.ccp.proximal),
                         anchor=jax.tree.map(lambda x: x + 1e-3, state.extra["ccp"]["anchor"]))
            return state.replace(extra={"ccp": extra})

        state = jax.jit(later_round, out_shardings=setup.state_sharding)(state)
    b = cfg.train.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (b, args.image_size, args.image_size, 3), np.uint8)
    labels = np.repeat(rng.choice(args.classes, b // 4, replace=False), 4).astype(np.int32)
    batch = {"images": jax.device_put(images, batch_sharding(mesh)),
             "labels": jax.device_put(labels, batch_sharding(mesh))}

    def step() -> None:
        nonlocal state
        state, metrics = setup.train_step(state, batch)
        jax.block_until_ready(metrics)

    return _timed(step, args.warmup, args.steps)


def repick_seconds(args: argparse.Namespace) -> float:
    classes, pool, per_class, dim = args.repick_classes, 7, 4, 128
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 7)  # SOP: about 5.3 images per class; 7 drawn with repeats
    embeddings = jnp.asarray(rng.normal(size=(classes, pool, dim)).astype(np.float32))
    seeds = jnp.asarray(rng.normal(size=(classes, per_class, dim)).astype(np.float32))

    def repick() -> None:
        ccp_math.pool_indices(labels, classes, pool, seed=0, round_index=1)
        jax.block_until_ready(ccp_math.pick_proxies(embeddings, seeds))

    return _timed(repick, 1, args.repicks)


def main() -> None:
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="bninception")
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32")
    parser.add_argument("--classes", type=int, default=75, help="training classes (CUB's 3 folds: 75)")
    parser.add_argument("--base", default="c2", choices=("c1", "c2", "ms", "triplet"))
    parser.add_argument("--warmup", type=int, default=3 if gpu else 1)
    parser.add_argument("--steps", type=int, default=30 if gpu else 3)
    parser.add_argument("--repick-classes", type=int, default=8488, help="SOP's 3 training folds")
    parser.add_argument("--repicks", type=int, default=5)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind} x {jax.device_count()}), "
          f"{args.backbone}, batch 32, {args.image_size}x{args.image_size}, {args.dtype}, median of {args.steps} "
          f"steps", flush=True)
    plain = step_seconds(args.base, args)
    print(f"{args.base:>7} step: {1e3 * plain:9.1f} ms", flush=True)
    ccp = step_seconds(f"{args.base}_ccp", args)
    print(f"{args.base + '-CCP':>7} step: {1e3 * ccp:9.1f} ms   CCP / plain: {ccp / plain:.3f} "
          f"({100 * (ccp / plain - 1):+.1f}%; paper +8%)", flush=True)
    seconds = repick_seconds(args)
    print(f"proxy re-pick, {args.repick_classes} classes x pool 7 -> 4 proxies, 128-d: {1e3 * seconds:.1f} ms "
          f"(median of {args.repicks})", flush=True)


if __name__ == "__main__":
    main()
