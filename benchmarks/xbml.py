"""The cost of XBML, in one run: its train step in both readings against the GAP step, and the cross-batch loss alone.

    python benchmarks/xbml.py                                       # a GPU: BN-Inception, batch 32, 227x227
    python benchmarks/xbml.py --steps 3                             # a CPU (minutes)
    python benchmarks/xbml.py --backbone small_cnn --image-size 32  # the embedded-data model (seconds)

1. The jitted train step (forward, loss, backward, Adam, donated state) of the MLRC recipe
   (experiments/_mlrc_recipe.py: BN-Inception, frozen BatchNorm, 128-d Lipschitz-normalised embedding, batch 8
   classes x 4, base loss ``--base``) on synthetic images: with the GAP head (``<base>``) and with the XBML head and
   0.9 L + 0.1 L_xbml in reading r1 (``<base>_xbml``) and r2 (``<base>_xbml_r2``), K = 32.
2. The cross-batch loss alone, forward and backward, from the head's outputs (coefficients (B, K), embeddings
   (B, D)) at the MLRC batch: two ridge fits in the dual (B x B) and the loss on the predictions.

XBML's paper gives no timing; the ratios are the cost of the head's assignment branch and the two ridge solves.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from ccp import step_seconds  # the MLRC recipe's step; benchmarks/ is the script's directory, first on sys.path
from train_step import _timed

from jaxdml.losses import contrastive_loss
from jaxdml.losses import xbml as xbml_loss


def loss_seconds(reading: str, args: argparse.Namespace) -> float:
    rng = np.random.default_rng(0)
    labels = jnp.asarray(np.repeat(np.arange(8), 4))
    coefficients = jnp.asarray(rng.dirichlet(np.ones(32), size=32).astype(np.float32))
    embeddings = jnp.asarray(rng.normal(size=(32, 128)).astype(np.float32))
    classes = jnp.asarray(rng.normal(size=(args.classes, 128)).astype(np.float32))
    if reading == "r1":
        loss = lambda a, e, c: xbml_loss.zero_shot_loss(a, labels, c)
    else:
        loss = lambda a, e, c: xbml_loss.reexpressed_loss(contrastive_loss, a, e, labels, normalize="lipschitz")
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    return _timed(lambda: jax.block_until_ready(grad(coefficients, embeddings, classes)), 3, args.loss_repeats)


def main() -> None:
    gpu = jax.default_backend() != "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="bninception")
    parser.add_argument("--image-size", type=int, default=227)
    parser.add_argument("--dtype", default="bfloat16" if gpu else "float32")
    parser.add_argument("--classes", type=int, default=75, help="training classes (CUB's 3 folds: 75)")
    parser.add_argument("--base", default="c2", choices=("c1", "c2", "ms"))
    parser.add_argument("--warmup", type=int, default=3 if gpu else 1)
    parser.add_argument("--steps", type=int, default=30 if gpu else 3)
    parser.add_argument("--loss-repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind} x {jax.device_count()}), "
          f"{args.backbone}, batch 32, {args.image_size}x{args.image_size}, {args.dtype}, median of {args.steps} "
          f"steps", flush=True)
    plain = step_seconds(args.base, args)
    print(f"{'GAP ' + args.base:>12} step: {1e3 * plain:9.1f} ms", flush=True)
    for reading, suffix in (("r1", "_xbml"), ("r2", "_xbml_r2")):
        seconds = step_seconds(args.base + suffix, args)
        print(f"{'XBML ' + reading:>12} step: {1e3 * seconds:9.1f} ms   XBML / GAP: {seconds / plain:.3f} "
              f"({100 * (seconds / plain - 1):+.1f}%)", flush=True)
    for reading in ("r1", "r2"):
        print(f"cross-batch loss {reading} alone (batch 32, K 32, 128-d, forward + backward): "
              f"{1e6 * loss_seconds(reading, args):.0f} us (median of {args.loss_repeats})", flush=True)


if __name__ == "__main__":
    main()
