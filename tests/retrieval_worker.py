"""Sharded exact kNN and retrieval metrics against one device and brute force; run by
tests/test_retrieval_sharded.py in fresh processes (the device count is fixed at JAX start-up):

    python tests/retrieval_worker.py OUT.json                   # one process, 8 CPU devices (from XLA_FLAGS)
    python tests/retrieval_worker.py OUT.json PROCESS PORT      # process PROCESS of 2, 4 CPU devices each

Every comparison is recorded as checked, and as failed with a message when it does not hold; OUT.json holds
{"checked": {group: count}, "failures": {group: [messages]}, "stats": {...}} for the test to assert on.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from test_retrieval_metrics import _brute as brute_reference

KS = tuple(range(1, 210))  # every rank of the best positive counts; most K exceed max R: the rank pass


class Report:
    def __init__(self):
        self.checked: Counter = Counter()
        self.failures: dict[str, list[str]] = defaultdict(list)
        self.stats: dict[str, float] = {}

    def expect(self, group: str, ok: bool, message: str) -> None:
        self.checked[group] += 1
        if not ok:
            self.failures[group].append(message)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"checked": self.checked, "failures": self.failures, "stats": self.stats}, f)


# ----------------------------------------------------------------------------------------------------------
# Data and independent references
# ----------------------------------------------------------------------------------------------------------


def grid(rng, n: int, d: int = 3) -> np.ndarray:
    """Points of {0,1,2}^d: exact float32 distances, ties everywhere, also across device slices."""
    return rng.integers(0, 3, (n, d)).astype(np.float32)


def duplicated(rng, n: int, d: int = 8) -> np.ndarray:
    """Unit vectors whose first n - 100 rows reappear 100 rows later (on another device's slice)."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[100:] = x[: n - 100]
    return x


def continuous(rng, n: int, d: int = 16) -> np.ndarray:
    return rng.standard_normal((n, d)).astype(np.float32)


def brute_order(q, r, self_mode: bool, tie: str = "low") -> tuple[np.ndarray, np.ndarray]:
    """Every reference row of every query sorted by (float64 distance, index); the query itself last."""
    dist = ((q.astype(np.float64)[:, None] - r.astype(np.float64)[None]) ** 2).sum(-1)
    if self_mode:
        np.fill_diagonal(dist, np.inf)
    idx = np.broadcast_to(np.arange(r.shape[0]), dist.shape)
    order = np.lexsort((idx if tie == "low" else -idx, dist), axis=1)
    return np.take_along_axis(dist, order, axis=1), order


def brute_metrics(q, ql, r=None, rl=None, tie: str = "low") -> dict[str, float]:
    """Every kNN metric from the full sorted neighbour lists (no blocks, no top-k, no rank pass): the brute-force
    reference of tests/test_retrieval_metrics.py."""
    return brute_reference(q, ql, r, rl, ks=KS, tie=tie)


def close(a: dict, b: dict, tol: float = 1e-12) -> bool:
    return all(abs(a[k] - b[k]) <= tol for k in b)


def diff(a: dict, b: dict) -> str:
    """The keys where two metric dicts differ, for messages."""
    keys = [k for k in b if a.get(k) != b[k]]
    return ", ".join(f"{k}: {a.get(k)} vs {b[k]}" for k in keys[:6]) + (" ..." if len(keys) > 6 else "")


def rank_pass_queries(q, ql, r=None, rl=None) -> int:
    """Queries whose best positive ranks beyond max R (only the rank pass sees it)."""
    self_mode = r is None
    r, rl = (q, ql) if self_mode else (r, rl)
    _, order = brute_order(q, r, self_mode)
    rel = rl[order[:, : len(r) - self_mode]] == ql[:, None]
    big_r = rel.sum(axis=1)
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, 0)
    return int(np.sum(first > big_r[big_r > 0].max()))


def same_knn(a, b) -> bool:
    """Same indices and bit-identical distances."""
    return bool(np.array_equal(a[1], b[1]) and np.array_equal(a[0].view(np.int32), b[0].view(np.int32)))


def error_of(fn) -> str:
    try:
        fn()
    except (ValueError, TypeError) as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


# ----------------------------------------------------------------------------------------------------------
# One process, 8 devices
# ----------------------------------------------------------------------------------------------------------


def knn_cases(rng) -> list[tuple[str, np.ndarray, np.ndarray | None, int, dict, bool]]:
    """(name, query, reference or None, k, block sizes, brute force applies)."""
    g203, g67, dup = grid(rng, 203), grid(rng, 67), duplicated(rng, 150)
    return [
        ("grid self, 26 rows per device in blocks of 5", g203, None, 40, dict(query_block_size=16,
                                                                              reference_block_size=5), True),
        ("grid self, default blocks (slices shorter than a block)", g203, None, 40, {}, True),
        ("grid query/reference, k = all 203 rows", g67, g203, 203, dict(query_block_size=16,
                                                                         reference_block_size=7), True),
        ("grid, 5 reference rows on 8 devices", g67[:30], g203[:5], 5, {}, True),
        ("duplicated unit vectors self", dup, None, 25, dict(query_block_size=32, reference_block_size=8), True),
        ("continuous self", continuous(rng, 203), None, 10, {}, False),
        ("continuous query/reference", continuous(rng, 64), continuous(rng, 203), 10,
         dict(query_block_size=16, reference_block_size=5), False),
    ]


def check_knn(report: Report, rng, one: Mesh, knn) -> None:
    for name, q, r, k, blocks, brute in knn_cases(rng):
        single = knn(q, r, k=k, mesh=one, **blocks)
        eight = knn(q, r, k=k, **blocks)
        report.expect("knn: 8 devices = 1 device", same_knn(single, eight), name)
        if brute:
            dist, order = brute_order(q, q if r is None else r, r is None)
            report.expect("knn: = brute force", bool(np.array_equal(eight[1], order[:, :k])), name)
            report.expect("knn: = brute force", bool(np.allclose(eight[0], dist[:, :k], atol=1e-5)), name)


def labelled_cases(rng) -> list[tuple[str, tuple, dict, bool]]:
    """(name, (query, labels[, reference, labels]), keyword arguments, brute force applies)."""
    g = grid(rng, 203)
    gl = rng.integers(0, 50, 203)  # R of about 4: many queries without a positive in their top R
    gl[:5] = 1000 + np.arange(5)  # lone queries
    gq, gql = grid(rng, 67), rng.integers(0, 60, 67)  # labels 50-59: absent from the gallery, lone
    dup = duplicated(rng, 150)
    dl = rng.integers(0, 30, 150)
    dl[120:] = (dl[20:50] + 1) % 30  # duplicates with another label
    c, cl = continuous(rng, 203), rng.integers(0, 40, 203)
    small = dict(query_block_size=16, reference_block_size=5)
    return [
        ("grid self, blocks (16, 5)", (g, gl), small, True),
        ("grid self, default blocks", (g, gl), {}, True),
        ("grid query/reference", (gq, gql, g, gl), small, True),
        ("duplicated self", (dup, dl), dict(reference_block_size=8), True),
        ("continuous self with clustering", (c, cl), dict(clustering=True), False),
    ]


def check_metrics(report: Report, rng, one: Mesh, retrieval_metrics) -> None:
    for name, args, kw, brute in labelled_cases(rng):
        kw = {"clustering": False, **kw}
        single = retrieval_metrics(*args, ks=KS, mesh=one, **kw)
        eight = retrieval_metrics(*args, ks=KS, **kw)
        report.expect("metrics: 8 devices = 1 device", single == eight, f"{name}: {diff(eight, single)}")
        if brute:
            low = brute_metrics(*args)
            report.expect("metrics: = brute force", close(eight, low), f"{name}: {diff(eight, low)}")
            high = brute_metrics(*args, tie="high")
            report.stats[f"tie order changes the metrics by: {name}"] = max(abs(high[k] - low[k]) for k in low)
            report.stats[f"rank-pass queries: {name}"] = rank_pass_queries(*args)


def check_masks(report: Report, rng, one: Mesh, retrieval_metrics) -> None:
    """Invalid rows (NaN embeddings, junk labels) give exactly the metrics of the set without them."""
    g, gl = grid(rng, 203), rng.integers(0, 50, 203)
    q, ql = grid(rng, 67), rng.integers(0, 50, 67)
    gv, qv = rng.random(203) < 0.8, rng.random(67) < 0.8
    gx, glx, qx, qlx = g.copy(), gl.copy(), q.copy(), ql.copy()
    gx[~gv], glx[~gv], qx[~qv], qlx[~qv] = np.nan, -7, np.inf, 10**9
    small = dict(query_block_size=16, reference_block_size=5)
    for name, masked, kw, absent in [
        ("self, with clustering", (gx, glx), dict(query_valid=gv, clustering=True), (g[gv], gl[gv])),
        ("query/reference", (qx, qlx, gx, glx), dict(query_valid=qv, reference_valid=gv, **small),
         (q[qv], ql[qv], g[gv], gl[gv])),
    ]:
        kw = {"clustering": False, **kw}
        want = retrieval_metrics(*absent, ks=KS, mesh=one, **{k: v for k, v in kw.items() if "valid" not in k})
        for mesh_name, mesh in (("1 device", one), ("8 devices", None)):
            got = retrieval_metrics(*masked, ks=KS, mesh=mesh, **kw)
            report.expect("masks: = rows absent", got == want, f"{name}, {mesh_name}: {diff(got, want)}")


def check_sharded_inputs(report: Report, rng, one: Mesh, eight: Mesh, knn, retrieval_metrics) -> None:
    """jax.Arrays sharded over the 8 devices give what the numpy arrays give on one device."""
    row = NamedSharding(eight, P("data"))

    def put(x):
        return jax.device_put(x, row)

    # An evaluator's layout: 203 rows padded to 208 (a multiple of the devices), the padding masked.
    g, gl = grid(rng, 203), rng.integers(0, 50, 203)
    q, ql = grid(rng, 67), rng.integers(0, 60, 67)
    gp, glp = np.concatenate([g, np.full((5, 3), np.nan, np.float32)]), np.concatenate([gl, np.full(5, -1)])
    qp, qlp = np.concatenate([q, np.zeros((5, 3), np.float32)]), np.concatenate([ql, np.zeros(5, int)])
    gv, qv = np.arange(208) < 203, np.arange(72) < 67
    small = dict(query_block_size=16, reference_block_size=5)
    for name, got, want in [
        ("self, padded and masked, with clustering",
         lambda: retrieval_metrics(put(gp), glp, ks=KS, query_valid=gv),
         lambda: retrieval_metrics(g, gl, ks=KS, mesh=one)),
        ("query/reference, both sharded",
         lambda: retrieval_metrics(put(qp), qlp, put(gp), glp, ks=KS, clustering=False, query_valid=qv,
                                   reference_valid=gv, **small),
         lambda: retrieval_metrics(q, ql, g, gl, ks=KS, clustering=False, mesh=one, **small)),
        ("numpy query, sharded reference",
         lambda: retrieval_metrics(q, ql, put(gp), glp, ks=KS, clustering=False, reference_valid=gv),
         lambda: retrieval_metrics(q, ql, g, gl, ks=KS, clustering=False, mesh=one)),
    ]:
        a, b = got(), want()
        report.expect("sharded input: metrics = numpy on 1 device", a == b, f"{name}: {diff(a, b)}")

    c, cq = continuous(rng, 200), continuous(rng, 48)
    for name, got, want in [
        ("self", lambda: knn(put(c), k=12), lambda: knn(c, k=12, mesh=one)),
        ("query/reference", lambda: knn(put(cq), put(c), k=12, **small), lambda: knn(cq, c, k=12, mesh=one, **small)),
        ("sharded query, numpy reference", lambda: knn(put(cq), c, k=12), lambda: knn(cq, c, k=12, mesh=one)),
        ("bfloat16", lambda: knn(put(jnp.asarray(c, jnp.bfloat16)), k=12),
         lambda: knn(c.astype(jnp.bfloat16), k=12, mesh=one)),
        ("replicated over the devices: fetched like numpy", lambda: knn(jax.device_put(c, NamedSharding(eight, P())),
                                                                        k=12), lambda: knn(c, k=12, mesh=one)),
    ]:
        report.expect("sharded input: knn = numpy on 1 device", same_knn(got(), want()), name)

    # Validation on device: the numpy messages; invalid rows may hold NaN.
    bad = c.copy()
    bad[[3, 150], 1] = np.nan
    bad[7, :2] = np.inf
    valid = np.ones(200, bool)
    for name, x, kw in [("NaN/inf", bad, {}), ("NaN/inf in valid rows only", bad, dict(query_valid=valid)),
                        ("overflow", np.where(np.arange(200)[:, None] == 9, np.float32(1e20), c), {})]:
        valid[150] = False  # the second case: one of the NaN rows is invalid
        want = error_of(lambda x=x, kw=kw: retrieval_metrics(x, np.zeros(200, int), clustering=False, mesh=one,
                                                             **kw))
        got = error_of(lambda x=x, kw=kw: retrieval_metrics(put(x), np.zeros(200, int), clustering=False, **kw))
        report.expect("sharded input: validation", got == want and "ValueError" in got, f"{name}: {got} | {want}")
    y = np.zeros(200, int)
    for name, call, match in [
        ("another mesh", lambda: knn(put(c), k=3, mesh=one), "another mesh"),
        ("2-D mesh", lambda: knn(c, k=3, mesh=Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))),
         "1-D with axis name"),
        ("mask dtype", lambda: retrieval_metrics(c, y, query_valid=np.ones(200, int)), "bool array of shape"),
        ("empty mask", lambda: retrieval_metrics(c, y, query_valid=np.zeros(200, bool)), "no valid row"),
        ("reference mask without reference", lambda: retrieval_metrics(c, y, reference_valid=valid),
         "reference_valid needs a reference"),
    ]:
        got = error_of(call)
        report.expect("sharded input: validation", got.startswith("ValueError") and match in got, f"{name}: {got}")


def check_broken_merges_are_caught(report: Report, rng, one: Mesh, retrieval, knn, retrieval_metrics) -> None:
    """The comparisons above detect a merge that puts devices in the wrong order, or a rank pass that picks the
    highest index among tied best positives: the data's ties really cross device slices."""
    _, q, r, k, blocks, _ = knn_cases(rng)[0]
    _, args, kw, _ = labelled_cases(np.random.default_rng(1))[0]
    real_gather, real_pmin = jax.lax.all_gather, jax.lax.pmin

    def reversed_gather(x, axis_name, *, axis=0, tiled=False):  # device pieces in reverse order
        g = jnp.flip(real_gather(x, axis_name, axis=axis), axis=axis)
        return g.reshape(*g.shape[:axis], -1, *g.shape[axis + 2 :]) if tiled else g

    def highest_tied_index(x, axis_name):  # the rank pass's index minimum turned into a maximum
        if x.dtype != jnp.int32:
            return real_pmin(x, axis_name)
        return jax.lax.pmax(jnp.where(x == np.iinfo(np.int32).max, -1, x), axis_name)

    want_knn = knn(q, r, k=k, mesh=one, **blocks)
    want_metrics = retrieval_metrics(*args, ks=KS, mesh=one, clustering=False, **kw)
    for mutant, patch in (("devices merged in reverse order", ("all_gather", reversed_gather)),
                          ("rank pass keeps the highest tied index", ("pmin", highest_tied_index))):
        setattr(jax.lax, *patch)
        retrieval._topk_kernel.cache_clear()
        retrieval._rank_kernel.cache_clear()
        try:
            got_knn = knn(q, r, k=k, **blocks)
            got_metrics = retrieval_metrics(*args, ks=KS, clustering=False, **kw)
        finally:
            jax.lax.all_gather, jax.lax.pmin = real_gather, real_pmin
            retrieval._topk_kernel.cache_clear()
            retrieval._rank_kernel.cache_clear()
        caught = not same_knn(got_knn, want_knn) if patch[0] == "all_gather" else got_metrics != want_metrics
        report.expect("mutants are caught", caught, mutant)
    report.expect("mutants are caught", same_knn(knn(q, r, k=k, **blocks), want_knn), "restored kernels agree again")


def single_process(out: str) -> None:
    from jaxdml.eval import knn, retrieval, retrieval_metrics

    assert len(jax.devices()) == 8, jax.devices()
    report = Report()
    one, eight = Mesh(np.array(jax.devices()[:1]), ("data",)), Mesh(np.array(jax.devices()), ("data",))
    check_knn(report, np.random.default_rng(0), one, knn)
    check_metrics(report, np.random.default_rng(1), one, retrieval_metrics)
    check_masks(report, np.random.default_rng(2), one, retrieval_metrics)
    check_sharded_inputs(report, np.random.default_rng(3), one, eight, knn, retrieval_metrics)
    check_broken_merges_are_caught(report, np.random.default_rng(0), one, retrieval, knn, retrieval_metrics)
    report.save(out)


# ----------------------------------------------------------------------------------------------------------
# Two processes, 4 devices each: arrays that no process holds entirely
# ----------------------------------------------------------------------------------------------------------


def multi_process(out: str, process: int, port: int) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process)
    from jaxdml.eval import knn, retrieval_metrics

    assert len(jax.devices()) == 8 and len(jax.local_devices()) == 4
    report = Report()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    local = Mesh(np.array(jax.local_devices()[:1]), ("data",))  # this process alone, one device

    def put(x):
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P("data")), lambda i: x[i])

    rng = np.random.default_rng(4)  # the same data in both processes
    g, gl = grid(rng, 203), rng.integers(0, 50, 203)
    gp, glp = np.concatenate([g, np.full((5, 3), np.nan, np.float32)]), np.concatenate([gl, np.full(5, -1)])
    c, cq = continuous(rng, 200), continuous(rng, 48)
    report.expect("multi-process: inputs are not fully addressable", not put(c).is_fully_addressable, "")
    a, b = knn(put(cq), put(c), k=12), knn(cq, c, k=12, mesh=local)
    report.expect("multi-process: knn = numpy on 1 device", same_knn(a, b), "query/reference")
    a, b = knn(put(c), k=12, query_block_size=16, reference_block_size=5), knn(c, k=12, mesh=local,
                                                                               query_block_size=16,
                                                                               reference_block_size=5)
    report.expect("multi-process: knn = numpy on 1 device", same_knn(a, b), "self, small blocks")
    a = retrieval_metrics(put(gp), glp, ks=KS, query_valid=np.arange(208) < 203)
    b = retrieval_metrics(g, gl, ks=KS, mesh=local)
    report.expect("multi-process: metrics = numpy on 1 device", a == b, f"self with clustering: {diff(a, b)}")
    report.expect("multi-process: metrics = brute force", close(a, brute_metrics(g, gl)), "self")
    bad = c.copy()
    bad[3, 1] = np.nan
    got = error_of(lambda: knn(put(bad), k=3))
    report.expect("multi-process: validation", "query contains 1 NaN/inf values in 1 of 200 rows" in got, got)
    replicated = jax.make_array_from_callback(c.shape, NamedSharding(mesh, P()), lambda i: c[i])
    got = error_of(lambda: knn(replicated, k=3))
    report.expect("multi-process: validation", "expected rows sharded over a 1-D mesh" in got, got)
    report.save(out)
    jax.distributed.shutdown()


if __name__ == "__main__":
    if len(sys.argv) == 2:
        single_process(sys.argv[1])
    else:
        multi_process(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
