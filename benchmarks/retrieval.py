"""Time and memory of ``jaxdml.eval.retrieval_metrics`` against PML's AccuracyCalculator (faiss).

Each measurement runs in a fresh subprocess so that its peak RSS (``ru_maxrss`` after minus before the call)
is its own. Prints a table; no assertions.

    python benchmarks/retrieval.py                 # 10k×128, 20k×512, SOP size (60,502×512), k-means
    python benchmarks/retrieval.py --quick         # 10k×128 only
    python benchmarks/retrieval.py --no-pml-sop    # skip PML at SOP size (it needs a few GiB)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SOP_N, SOP_CLASSES = 60502, 11316


def make_data(n: int, n_classes: int, dim: int, seed: int = 0):
    """SOP-like data: classes of 2-12 items; per-class noise from easy to hopeless; unit vectors."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = np.full(n_classes, 2)
    while sizes.sum() < n:
        np.add.at(sizes, rng.integers(0, n_classes, n - sizes.sum()), 1)
        sizes = np.minimum(sizes, 12)
    y = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32)
    sigma = rng.uniform(1.0, 4.0, n_classes).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 4096):  # in chunks: no full-size temporaries to inflate the baseline peak RSS
        yc = y[s : s + 4096]
        xc = centres[yc] + sigma[yc, None] * rng.standard_normal((len(yc), dim), dtype=np.float32)
        x[s : s + 4096] = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    return x, y


def worker(spec: dict) -> dict:
    """One measurement (run in a subprocess): returns seconds, extra peak RSS and the metrics."""
    import resource

    import numpy as np

    x, y = make_data(spec["n"], spec["classes"], spec["dim"])
    ks = tuple(spec["ks"])
    what = spec["what"]
    if what in ("ours", "ours_kmeans"):
        import jax

        from jaxdml.eval import kmeans, retrieval_metrics

        jax.numpy.zeros(1).block_until_ready()
    else:
        import faiss
        import torch
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        torch.zeros(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if what == "ours":
        out = retrieval_metrics(x, y, ks=ks, clustering=False)
        if spec.get("warm"):  # time a second call (compiled); the memory figure covers both
            t0 = time.perf_counter()
            out = retrieval_metrics(x, y, ks=ks, clustering=False)
    elif what == "pml":
        calc = AccuracyCalculator(
            include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
            k="max_bin_count",
            device=torch.device("cpu"),
        )
        out = calc.get_accuracy(x, y)
    elif what == "ours_kmeans":
        res = kmeans(x, len(np.unique(y)), n_iter=20, seed=0)
        out = {"inertia": res.inertia, "n_iter": res.n_iter}
    elif what == "faiss_kmeans":
        km = faiss.Kmeans(x.shape[1], len(np.unique(y)), niter=20, seed=1234)
        km.train(x)
        d, _ = km.index.search(x, 1)
        out = {"inertia": float(d.sum(dtype=np.float64))}
    else:
        raise ValueError(what)
    seconds = time.perf_counter() - t0
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"seconds": seconds, "extra_rss_mib": extra, "metrics": out}


def run(spec: dict) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        return {
            "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"rc {res.returncode}"
        }
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="10k×128 only")
    p.add_argument("--no-pml-sop", action="store_true", help="skip PML at the SOP size")
    p.add_argument("--no-kmeans", action="store_true", help="skip the SOP-size k-means timing")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    sizes = [(10_000, 1_870, 128)]
    if not args.quick:
        sizes += [(20_000, 3_740, 512), (SOP_N, SOP_CLASSES, 512)]
    print("ours: P@1, RP, MAP@R (ks=(1,), what PML computes); +R@K: also ks=(1,10,100,1000). Small sizes:")
    print("ours timed on a second call (compiled); SOP size: first call. MiB: extra peak RSS.")
    print(
        f"{'size':>14} {'ours s':>8} {'ours MiB':>9} {'PML s':>8} {'PML MiB':>8} {'PML/ours':>8} "
        f"{'+R@K s':>8} {'+R@K MiB':>8}  max |metric Δ|"
    )
    for n, c, d in sizes:
        spec = {"n": n, "classes": c, "dim": d, "ks": [1], "warm": n < SOP_N}
        ours = run({**spec, "what": "ours"})
        ours_rk = run({**spec, "ks": [1, 10, 100, 1000], "what": "ours"})
        skip_pml = args.no_pml_sop and n == SOP_N
        pml = {"error": "skipped"} if skip_pml else run({**spec, "what": "pml"})
        line = f"{f'{n}x{d}':>14} "
        line += (
            f"{ours['seconds']:8.1f} {ours['extra_rss_mib']:9.0f} "
            if "seconds" in ours
            else f"{'err':>8} {'':>9} "
        )
        if "seconds" in pml and "seconds" in ours:
            key = {"precision_at_1": "precision_at_1", "r_precision": "r_precision"}
            key["mean_average_precision_at_r"] = "map_at_r"
            diff = max(abs(pml["metrics"][a] - ours["metrics"][b]) for a, b in key.items())
            ratio = pml["seconds"] / ours["seconds"]
            line += f"{pml['seconds']:8.1f} {pml['extra_rss_mib']:8.0f} {ratio:8.2f} "
        else:
            line += f"{'-':>8} {'-':>8} {'-':>8} "
            diff = None
        if "seconds" in ours_rk:
            line += f"{ours_rk['seconds']:8.1f} {ours_rk['extra_rss_mib']:8.0f}"
        line += f"  {diff:.1e}" if diff is not None else f"  ({pml.get('error', ours.get('error'))})"
        print(line, flush=True)
        if diff is not None and diff > 1e-6:
            print(f"{'':>14} PML: {pml['metrics']}\n{'':>14} ours: {ours['metrics']}", flush=True)
        if "metrics" in ours_rk:
            print(f"{'':>14} " + ", ".join(f"{k}={v:.4f}" for k, v in ours_rk["metrics"].items()), flush=True)

    if not args.quick and not args.no_kmeans:
        spec = {"n": SOP_N, "classes": SOP_CLASSES, "dim": 512, "ks": [1]}
        for what in ("ours_kmeans", "faiss_kmeans"):
            r = run({**spec, "what": what})
            if "seconds" in r:
                print(
                    f"SOP-size k-means (k={SOP_CLASSES}, 20 iterations) {what}: {r['seconds']:.1f} s, "
                    f"+{r['extra_rss_mib']:.0f} MiB, {r['metrics']}",
                    flush=True,
                )
            else:
                print(f"SOP-size k-means {what}: {r['error']}", flush=True)


if __name__ == "__main__":
    main()
