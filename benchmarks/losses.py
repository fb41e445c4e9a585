"""Loss forward+backward time: jaxdml (jitted) vs pytorch-metric-learning on the same inputs, one run.

    python benchmarks/losses.py [--batch 128 1024] [--dim 512] [--repeats 10] [--losses contrastive arcface ...]

For every loss in jaxdml's registry that PML also has: the same float32 embeddings (and, for proxy losses,
the same parameters, copied from PML's module), labels with 4 samples per class, value and gradient with
respect to the embeddings (and parameters). Prints median milliseconds and PML time / ours (> 1: ours faster).
Both libraries use all cores (torch's default thread count is printed). PML runs in a child process capped at
12 GiB of address space, so a loss that needs more prints OOM instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


PML_MEMORY_LIMIT = 12 * 2**30  # bytes of address space for the PML side (PML's lifted structure is O(B^3))


def inputs(batch: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(batch, dim)).astype(np.float32), np.repeat(np.arange(batch // 4), 4)


def pml_module(name: str, labels: np.ndarray, dim: int):
    from pytorch_metric_learning import losses as pml_losses

    cls, kwargs = PML[name]
    if LOSSES[name].kind == "proxy":
        return getattr(pml_losses, cls)(num_classes=int(labels.max()) + 1, embedding_size=dim, **kwargs)
    return getattr(pml_losses, cls)(**kwargs)


def time_ours(name: str, x: np.ndarray, labels: np.ndarray, repeats: int) -> float:
    """Median ms of jaxdml's jitted value and gradient (proxy parameters copied from PML's module)."""
    spec = LOSSES[name]
    e, y = jnp.asarray(x), jnp.asarray(labels)
    if spec.kind == "proxy":
        module = pml_module(name, labels, x.shape[1])
        params = {ours: jnp.asarray(getattr(module, theirs).detach().numpy())
                  for ours, theirs in PROXY_PARAMS[name].items()}
        step = jax.jit(jax.value_and_grad(lambda e, p: spec.fn(e, y, p), argnums=(0, 1)))
        return median_ms(lambda: jax.block_until_ready(step(e, params)), repeats)
    step = jax.jit(jax.value_and_grad(lambda e: spec.fn(e, y)))
    return median_ms(lambda: jax.block_until_ready(step(e)), repeats)


def time_pml(name: str, batch: int, dim: int, repeats: int) -> str:
    """Median ms of PML's forward + backward, in a child process with a memory cap ('OOM' if it exceeds it)."""
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({PML_MEMORY_LIMIT}, {PML_MEMORY_LIMIT})); "
            f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import losses as b, torch; "
            f"x, y = b.inputs({batch}, {dim}); m = b.pml_module({name!r}, y, {dim}); t_y = torch.tensor(y)\n"
            "def run():\n t = torch.tensor(x, requires_grad=True); m.zero_grad(); m(t, t_y).backward()\n"
            f"print(b.median_ms(run, {repeats}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1] if result.returncode == 0 else "OOM"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--losses", nargs="*", default=None)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()}, torch threads {torch.get_num_threads()}, float32, d={args.dim}, "
          f"median of {args.repeats}; ratio = PML time / jaxdml time; PML limited to "
          f"{PML_MEMORY_LIMIT // 2**30} GiB")
    names = [n for n in (args.losses or PML) if n in LOSSES and n in PML]
    print(f"{'loss':>20} {'batch':>6} {'jaxdml ms':>10} {'PML ms':>10} {'ratio':>7}")
    for batch in args.batch:
        x, labels = inputs(batch, args.dim)
        for name in names:
            mine, pml = time_ours(name, x, labels, args.repeats), time_pml(name, batch, args.dim, args.repeats)
            ratio = f"{float(pml) / mine:7.2f}" if pml != "OOM" else "    inf"
            pml = f"{float(pml):10.2f}" if pml != "OOM" else f"{'OOM':>10}"
            print(f"{name:>20} {batch:>6} {mine:>10.2f} {pml} {ratio}", flush=True)


if __name__ == "__main__":
    main()
