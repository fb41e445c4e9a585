"""Per-device memory of the sharded exact kNN (``jaxdml.eval.knn`` / ``retrieval_metrics``): a reference set of
1,000,000 × 128 float32 on 8 emulated CPU devices against one device.

    python benchmarks/knn_memory.py                         # 1,000,000 × 128 reference, 2,048 queries, k = 16
    python benchmarks/knn_memory.py --n 200000 --queries 1024

Each device count runs in its own subprocess (XLA_FLAGS fixes the count at JAX start-up), one after the other.
Per device it reports the resident reference shard (rows and label codes) and the compiled kernels'
``memory_analysis()`` (arguments, which hold the reference shard and the replicated query block, + outputs +
temporaries) for the top-k kernel and for the Recall@K rank kernel, at the default CPU block sizes; then it runs
the query set through ``knn`` on that mesh (wall time including compilation) and checks that 8 devices give the
1-device neighbours and distances bit for bit. Prints one table row per device count and the 1 / 8 ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20


def measure(devices: int, n: int, dim: int, n_queries: int, k: int, out: str) -> None:
    """In a fresh process with ``devices`` CPU devices: kernel memory analyses, then one timed kNN run."""
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from jax.sharding import Mesh

    from jaxdml.eval import knn, retrieval

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    queries = rng.standard_normal((n_queries, dim), dtype=np.float32)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    assert mesh.size == devices
    qb, rb = retrieval._default_blocks(None, None)

    # The kernels as knn / retrieval_metrics call them (private helpers: this measures their internals).
    ref = retrieval._Reference(mesh, x, np.zeros(n, np.int32), rb)
    shard_bytes = ref.rows.addressable_shards[0].data.nbytes + ref.labels.addressable_shards[0].data.nbytes
    qb2 = max(1, min(qb, retrieval._RANK_BLOCK_ENTRIES // max(-(-n // rb) * rb, ref.per_device)))
    analyses = {}
    for name, kernel, block, extra in [
        ("topk", retrieval._topk_kernel(mesh, k, rb), qb, [np.full(qb, -1, np.int32)]),
        ("rank", retrieval._rank_kernel(mesh, rb), qb2, [np.zeros(qb2, np.int32), np.full(qb2, -1, np.int32)]),
    ]:
        q = retrieval._query_block(mesh, queries, np.arange(block, dtype=np.int32) % n_queries)
        args = [q, *(retrieval._replicate(mesh, a) for a in extra), *ref.arrays]
        ma = kernel.lower(*args).compile().memory_analysis()
        analyses[name] = {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
                          "temporaries": ma.temp_size_in_bytes, "aliased": ma.alias_size_in_bytes,
                          "query_block": block}
    del ref, q, args

    start = time.perf_counter()
    dist, idx = knn(queries, x, k=k, mesh=mesh)
    seconds = time.perf_counter() - start
    np.savez(out + ".npz", dist=dist, idx=idx)
    with open(out, "w") as f:
        json.dump({"devices": devices, "shard_bytes": shard_bytes, "kernels": analyses, "seconds": seconds,
                   "query_block": qb, "reference_block": rb}, f)


def peak(kernel: dict) -> int:
    """Bytes one device holds while the kernel runs: arguments + outputs + temporaries (less aliased)."""
    return kernel["arguments"] + kernel["outputs"] + kernel["temporaries"] - kernel["aliased"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="reference rows")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--devices", type=int, help=argparse.SUPPRESS)  # internal: one measurement
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.devices:
        measure(args.devices, args.n, args.dim, args.queries, args.k, args.out)
        return

    import numpy as np

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for devices in (1, 8):
            out = os.path.join(tmp, f"{devices}.json")
            cmd = [sys.executable, __file__, "--devices", str(devices), "--out", out, "--n", str(args.n),
                   "--dim", str(args.dim), "--queries", str(args.queries), "--k", str(args.k)]
            subprocess.run(cmd, env=env, check=True)
            with open(out) as f:
                results[devices] = json.load(f)
            results[devices]["knn"] = dict(np.load(out + ".npz"))

    one, eight = results[1], results[8]
    same = (np.array_equal(one["knn"]["idx"], eight["knn"]["idx"])
            and np.array_equal(one["knn"]["dist"].view(np.int32), eight["knn"]["dist"].view(np.int32)))
    print(f"reference {args.n:,} × {args.dim} float32 ({args.n * args.dim * 4 / MIB:,.0f} MiB), {args.queries:,} "
          f"queries, k = {args.k}; blocks {one['query_block']} queries × {one['reference_block']} reference rows "
          f"(rank kernel: {one['kernels']['rank']['query_block']} queries); MiB per device")
    header = (f"{'devices':>7} | {'ref. shard':>10} | {'top-k args':>10} {'out+temp':>9} {'peak':>8} | "
              f"{'rank args':>9} {'out+temp':>9} {'peak':>8} | {'knn wall s':>10}")
    print(header)
    print("-" * len(header))
    for devices, r in results.items():
        t, rk = r["kernels"]["topk"], r["kernels"]["rank"]
        print(f"{devices:>7} | {r['shard_bytes'] / MIB:>10,.1f} | {t['arguments'] / MIB:>10,.1f} "
              f"{(t['outputs'] + t['temporaries']) / MIB:>9,.1f} {peak(t) / MIB:>8,.1f} | "
              f"{rk['arguments'] / MIB:>9,.1f} {(rk['outputs'] + rk['temporaries']) / MIB:>9,.1f} "
              f"{peak(rk) / MIB:>8,.1f} | {r['seconds']:>10.1f}")
    print(f"{'1 / 8':>7} | {one['shard_bytes'] / eight['shard_bytes']:>10.2f} | "
          f"{one['kernels']['topk']['arguments'] / eight['kernels']['topk']['arguments']:>10.2f} "
          f"{'':>9} {peak(one['kernels']['topk']) / peak(eight['kernels']['topk']):>8.2f} | "
          f"{one['kernels']['rank']['arguments'] / eight['kernels']['rank']['arguments']:>9.2f} "
          f"{'':>9} {peak(one['kernels']['rank']) / peak(eight['kernels']['rank']):>8.2f} |")
    print(f"8 devices give the 1-device neighbours and distances bit for bit: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
