"""GSP solvers: forward and forward+backward time per batch, and the ratios, measured in one run.

    python benchmarks/gsp.py [--batch 128] [--locations 49] [--dim 512] [--prototypes 64 128] [--repeats 20]

Two rows per (method, K): ``pool`` is the whole GSP pooling (features (B, N, D) and prototypes (K, D) ->
costs -> plan -> pooled (B, D) + attributes (B, K)); ``transport`` is the solver alone on a (B, K, N) cost.
Times are medians over ``--repeats`` calls of the jitted function (compilation excluded). Prints the backend,
so GPU figures are labelled as such.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.kernels import METHODS, gsp_transport
from jaxdml.layers.gsp import gsp_pool


def median_ms(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--locations", type=int, default=49)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--prototypes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--transport-ratio", type=float, default=0.3)
    parser.add_argument("--gamma", type=float, default=5.0)
    args = parser.parse_args()
    mu, gamma = args.transport_ratio, args.gamma
    print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), B={args.batch} N={args.locations} "
          f"D={args.dim}, mu={mu}, gamma={gamma}, float32, median of {args.repeats}")
    rng = np.random.default_rng(0)
    features = jnp.asarray(rng.normal(size=(args.batch, args.locations, args.dim)), jnp.float32)
    print(f"{'K':>4} {'what':>9} {'method':>12} {'fwd ms':>9} {'fwd+bwd ms':>11}")
    results = {}
    for k in args.prototypes:
        prototypes = jnp.asarray(rng.normal(size=(k, args.dim)) / np.sqrt(args.dim), jnp.float32)
        cost = jnp.asarray(rng.uniform(0, 2, size=(args.batch, k, args.locations)), jnp.float32)
        for method in METHODS:
            def pool_loss(x, p, m=method):
                pooled, attributes = gsp_pool(x, p, transport_ratio=mu, gamma=gamma, method=m)
                return jnp.sum(pooled**2) + jnp.sum(attributes**2)

            def transport_loss(c, m=method):
                return jnp.sum(gsp_transport(c, mu, gamma, method=m) ** 2)

            rows = {
                "pool": (jax.jit(lambda x, p, m=method: gsp_pool(x, p, transport_ratio=mu, gamma=gamma, method=m)),
                         jax.jit(jax.value_and_grad(pool_loss, argnums=(0, 1))), (features, prototypes)),
                "transport": (jax.jit(lambda c, m=method: gsp_transport(c, mu, gamma, method=m)),
                              jax.jit(jax.value_and_grad(transport_loss)), (cost,)),
            }
            for what, (forward, both, inputs) in rows.items():
                f = median_ms(forward, *inputs, repeats=args.repeats)
                fb = median_ms(both, *inputs, repeats=args.repeats)
                results[(k, what, method)] = (f, fb)
                print(f"{k:>4} {what:>9} {method:>12} {f:>9.3f} {fb:>11.3f}", flush=True)
    print("\nratios (time of the other method / time of newton; > 1 means newton is faster)")
    for (k, what, method), (f, fb) in results.items():
        if method == "newton":
            continue
        nf, nfb = results[(k, what, "newton")]
        print(f"{k:>4} {what:>9} {method:>12}: forward {f / nf:5.2f}x   forward+backward {fb / nfb:5.2f}x")


if __name__ == "__main__":
    main()
