"""Loss forward+backward time: jaxdml (jitted) vs pytorch-metric-learning on the same inputs, one run.

    python benchmarks/losses.py [--batch 128 1024] [--dim 512] [--repeats 10] [--losses contrastive arcface ...]

For every loss in jaxdml's registry that PML also has: the same float32 embeddings (and, for proxy losses,
the same parameters, copied from PML's module), labels with 4 samples per class, value and gradient with
respect to the embeddings (and parameters). Prints median milliseconds and PML time / ours (> 1: ours faster).
Both libraries use all cores (torch's default thread count is printed).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.losses import LOSSES

# jaxdml name -> (PML class, PML kwargs); proxy losses copy PML's parameters into ours.
PML = {
    "contrastive": ("ContrastiveLoss", {}),
    "multi_similarity": ("MultiSimilarityLoss", {}),
    "triplet_margin": ("TripletMarginLoss", {}),
    "margin": ("MarginLoss", {}),
    "lifted_structure": ("LiftedStructureLoss", {}),
    "n_pairs": ("NPairsLoss", {}),
    "circle": ("CircleLoss", {}),
    "supcon": ("SupConLoss", {}),
    "ntxent": ("NTXentLoss", {}),
    "proxy_nca": ("ProxyNCALoss", {}),
    "proxy_anchor": ("ProxyAnchorLoss", {}),
    "soft_triple": ("SoftTripleLoss", {}),
    "normalized_softmax": ("NormalizedSoftmaxLoss", {}),
    "cosface": ("CosFaceLoss", {}),
    "arcface": ("ArcFaceLoss", {}),
}
PROXY_PARAMS = {"proxy_nca": {"proxies": "proxies"}, "proxy_anchor": {"proxies": "proxies"},
                "soft_triple": {"centers": "fc"}, "normalized_softmax": {"W": "W"}, "cosface": {"W": "W"},
                "arcface": {"W": "W"}}


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def time_loss(name: str, x: np.ndarray, labels: np.ndarray, repeats: int) -> tuple[float, float]:
    """(jaxdml ms, PML ms) for value and gradient of loss ``name`` on ``x``, ``labels``."""
    import torch
    from pytorch_metric_learning import losses as pml_losses

    spec = LOSSES[name]
    cls, kwargs = PML[name]
    e, y = jnp.asarray(x), jnp.asarray(labels)
    if spec.kind == "proxy":
        module = getattr(pml_losses, cls)(num_classes=int(labels.max()) + 1, embedding_size=x.shape[1], **kwargs)
        params = {ours: jnp.asarray(getattr(module, theirs).detach().numpy())
                  for ours, theirs in PROXY_PARAMS[name].items()}
        step = jax.jit(jax.value_and_grad(lambda e, p: spec.fn(e, y, p), argnums=(0, 1)))
        ours = lambda: jax.block_until_ready(step(e, params))
    else:
        module = getattr(pml_losses, cls)(**kwargs)
        step = jax.jit(jax.value_and_grad(lambda e: spec.fn(e, y)))
        ours = lambda: jax.block_until_ready(step(e))
    t_labels = torch.tensor(labels)

    def theirs() -> None:
        t = torch.tensor(x, requires_grad=True)
        module.zero_grad()
        module(t, t_labels).backward()

    return median_ms(ours, repeats), median_ms(theirs, repeats)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--losses", nargs="*", default=None)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()}, torch threads {torch.get_num_threads()}, float32, d={args.dim}, "
          f"median of {args.repeats}; ratio = PML time / jaxdml time")
    names = [n for n in (args.losses or PML) if n in LOSSES and n in PML]
    print(f"{'loss':>20} {'batch':>6} {'jaxdml ms':>10} {'PML ms':>10} {'ratio':>7}")
    for batch in args.batch:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, args.dim)).astype(np.float32)
        labels = np.repeat(np.arange(batch // 4), 4)
        for name in names:
            mine, pml = time_loss(name, x, labels, args.repeats)
            print(f"{name:>20} {batch:>6} {mine:>10.2f} {pml:>10.2f} {pml / mine:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
