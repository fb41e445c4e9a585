"""Retrieval metrics: parity with pytorch-metric-learning's AccuracyCalculator, brute force and hand cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jaxdml.eval import kmeans, knn, retrieval_metrics

PML_KEYS = {
    "precision_at_1": "precision_at_1",
    "r_precision": "r_precision",
    "mean_average_precision_at_r": "map_at_r",
}


# ---------------------------------------------------------------------------------------------------------
# Reference implementations
# ---------------------------------------------------------------------------------------------------------


def _pml(q, ql, r=None, rl=None, **kw):
    """PML AccuracyCalculator (faiss IndexFlatL2), renamed to our keys."""
    pytest.importorskip("pytorch_metric_learning")
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=tuple(PML_KEYS), k="max_bin_count", device=torch.device("cpu"), **kw)
    out = calc.get_accuracy(q, ql) if r is None else calc.get_accuracy(q, ql, r, rl)
    return {PML_KEYS[k]: v for k, v in out.items()}


def _brute(q, ql, r=None, rl=None, ks=(), tie="low"):
    """Every metric from the full distance matrix (float64), ties by lower (or higher) reference index."""
    self_mode = r is None
    if self_mode:
        r, rl = q, ql
    q64, r64 = np.asarray(q, np.float64), np.asarray(r, np.float64)
    dist = ((q64[:, None, :] - r64[None, :, :]) ** 2).sum(-1)
    idx = np.arange(len(r))
    p1, rp, mapr, first = [], [], [], []
    for i in range(len(q)):
        cand = idx[idx != i] if self_mode else idx
        tiebreak = cand if tie == "low" else -cand
        order = cand[np.lexsort((tiebreak, dist[i, cand]))]
        rel = rl[order] == ql[i]
        big_r = int(rel.sum())
        if big_r == 0:
            continue  # lone query
        top = rel[:big_r]
        p1.append(float(rel[0]))
        rp.append(top.sum() / big_r)
        mapr.append(float((np.cumsum(top) / np.arange(1, big_r + 1) * top).sum() / big_r))
        first.append(int(np.argmax(rel)) + 1)
    if not p1:
        nan = float("nan")
        return {
            "precision_at_1": nan,
            "r_precision": nan,
            "map_at_r": nan,
            **{f"recall_at_{k}": nan for k in ks},
        }
    first = np.array(first)
    out = {"precision_at_1": np.mean(p1), "r_precision": np.mean(rp), "map_at_r": np.mean(mapr)}
    out.update({f"recall_at_{k}": float(np.mean(first <= k)) for k in ks})
    return out


def _close(ours, ref, tol=1e-6):
    for key, val in ref.items():
        assert ours[key] == pytest.approx(val, abs=tol), (key, ours[key], val)


def _data(seed, n, d=16, n_classes=None, normalize=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, n_classes or n // 4, n)
    return x, y


# ---------------------------------------------------------------------------------------------------------
# Parity with PML
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pml_parity_single_set(seed, normalize):
    x, y = _data(seed, 600, n_classes=150, normalize=normalize)
    y[:5] = 10_000 + np.arange(5)  # singleton classes: lone queries
    ours = retrieval_metrics(x, y, clustering=False)
    _close(ours, _pml(x, y))
    assert ours["recall_at_1"] == ours["precision_at_1"]


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pml_parity_query_gallery(seed, normalize):
    q, ql = _data(seed, 400, n_classes=120, normalize=normalize)
    g, gl = _data(seed + 100, 700, n_classes=110, normalize=normalize)
    assert np.isin(ql, gl, invert=True).any()  # some query classes are absent from the gallery: lone
    ours = retrieval_metrics(q, ql, g, gl, clustering=False)
    _close(ours, _pml(q, ql, g, gl))


def _faiss_order_is_lexicographic(q, r, k):
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexFlatL2(q.shape[1])
    index.add(np.ascontiguousarray(r))
    _, got = index.search(np.ascontiguousarray(q), k)
    dist = ((q[:, None].astype(np.float64) - r[None]) ** 2).sum(-1)
    want = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return bool((got == want).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("self_mode", [True, False])
def test_pml_parity_with_exact_ties(seed, self_mode):
    """Embeddings on a {0,1,2}^3 grid: distances tie exactly and the tie-break decides the metrics."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 3, (300, 3)).astype(np.float32)
    ql = rng.integers(0, 12, 300)
    r, rl = (
        (None, None)
        if self_mode
        else (rng.integers(0, 3, (500, 3)).astype(np.float32), rng.integers(0, 12, 500))
    )
    assert _faiss_order_is_lexicographic(q, q if self_mode else r, 40)  # faiss: ties → lower index first
    ours = retrieval_metrics(q, ql, r, rl, ks=(1, 5, 50, 400), clustering=False)
    _close(ours, _pml(q, ql, r, rl))
    low = _brute(q, ql, r, rl, ks=(1, 5, 50, 400))
    _close(ours, low, tol=1e-12)
    high = _brute(q, ql, r, rl, tie="high")  # the data really exercises ties among non-self items
    assert max(abs(high[key] - low[key]) for key in high) > 1e-5


@pytest.mark.parametrize("seed", [0, 1])
def test_pml_parity_duplicated_vectors(seed):
    """Exact duplicates (also of the query itself) of float data with conflicting labels."""
    x, y = _data(seed, 300, n_classes=60, normalize=True)
    x[150:250] = x[:100]
    y[200:250] = (y[50:100] + 1) % 60  # half of the duplicates carry another label
    ours = retrieval_metrics(x, y, ks=(1, 3, 1000), clustering=False)
    _close(ours, _pml(x, y))
    _close(ours, _brute(x, y, ks=(1, 3, 1000)), tol=1e-12)


def test_nmi_ami_match_pml_given_same_clustering():
    pytest.importorskip("pytorch_metric_learning")
    torch = pytest.importorskip("torch")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, 8)).astype(np.float32)
    y = rng.integers(0, 30, 500) * 7 + 3  # sparse label values
    x = centres[(y - 3) // 7] + 0.6 * rng.standard_normal((500, 8)).astype(np.float32)

    def our_kmeans(emb, n_clusters):
        return torch.as_tensor(kmeans(emb.cpu().numpy(), n_clusters, seed=0).labels)

    calc = AccuracyCalculator(include=("NMI", "AMI"), kmeans_func=our_kmeans, device=torch.device("cpu"))
    ref = calc.get_accuracy(x, y)
    ours = retrieval_metrics(x, y, clustering=True, seed=0)
    assert ours["nmi"] == pytest.approx(ref["NMI"], abs=1e-6)
    assert ours["ami"] == pytest.approx(ref["AMI"], abs=1e-6)
    assert 0.3 < ours["nmi"] < 1.0


# ---------------------------------------------------------------------------------------------------------
# Recall@K
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("self_mode", [True, False])
def test_recall_at_k_matches_brute_force(seed, self_mode):
    q, ql = _data(seed, 300, d=8, n_classes=70)
    r, rl = (None, None) if self_mode else _data(seed + 7, 450, d=8, n_classes=70)
    ks = (1, 2, 3, 7, 20, 100, 299, 5000)  # max R is ~12: most K exceed it
    want = _brute(q, ql, r, rl, ks=ks)
    for qb, rb in [(None, None), (16, 32)]:  # the count pass over several blocks too
        ours = retrieval_metrics(
            q, ql, r, rl, ks=ks, clustering=False, query_block_size=qb, reference_block_size=rb
        )
        _close(ours, want, tol=1e-12)
        assert ours["recall_at_1"] == ours["precision_at_1"]
        assert ours["recall_at_5000"] == 1.0


# ---------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------------------


def test_hand_computed_single_set():
    # 1-D points. Neighbour orders (self excluded), R = 2 for label 0, R = 1 for label 1:
    #   q0 (0,l0): 1(l0) 3(l1) 4(l0) 10(l1) -> P@1 1, RP 1/2, MAP@R 1/2, best positive rank 1
    #   q1 (1,l0): 0(l0) 3(l1) 4(l0) 10(l1) -> 1, 1/2, 1/2, rank 1
    #   q2 (3,l1): 4(l0) 1(l0) 0(l0) 10(l1) -> 0, 0, 0, rank 4
    #   q3 (4,l0): 3(l1) 1(l0) 0(l0) 10(l1) -> 0, 1/2, (1/2)(1/2) = 1/4, rank 2
    #   q4 (10,l1): 4(l0) 3(l1) 1(l0) 0(l0) -> 0, 0, 0, rank 2
    # The point at -50 has a label of its own: a lone query, dropped, and last in everyone's list.
    x = np.array([[0.0], [1.0], [3.0], [4.0], [10.0], [-50.0]], np.float32)
    y = np.array([0, 0, 1, 0, 1, 7])
    out = retrieval_metrics(x, y, ks=(1, 2, 3, 4), clustering=False)
    assert out["precision_at_1"] == pytest.approx(2 / 5)
    assert out["r_precision"] == pytest.approx(1.5 / 5)
    assert out["map_at_r"] == pytest.approx(1.25 / 5)
    assert [out[f"recall_at_{k}"] for k in (1, 2, 3, 4)] == pytest.approx([2 / 5, 4 / 5, 4 / 5, 1.0])
    _close(out, _pml(x, y))


def test_hand_computed_query_gallery_with_tie():
    # Gallery 1(l1) 2(l0) 4(l1) 6(l0). q0 = 0 (l0): 1 2 4 6 -> rel 0 1 0 1: P@1 0, RP 1/2, MAP 1/4.
    # q1 = 5 (l1): 4 and 6 tie at distance 1, the lower index (4, l1) first: 4 6 2 1 -> rel 1 0 0 1:
    # P@1 1, RP 1/2, MAP 1/2. q2 has a label absent from the gallery: lone, dropped.
    q = np.array([[0.0], [5.0], [3.0]], np.float32)
    ql = np.array([0, 1, 9], np.int64)
    g = np.array([[1.0], [2.0], [4.0], [6.0]], np.float32)
    gl = np.array([1, 0, 1, 0], np.int64)
    out = retrieval_metrics(q, ql, g, gl, ks=(1, 2), clustering=False)
    assert out == pytest.approx(
        {"precision_at_1": 0.5, "r_precision": 0.5, "map_at_r": 0.375, "recall_at_1": 0.5, "recall_at_2": 1.0}
    )
    _close(out, _pml(q, ql, g, gl))


def _drop_first_column_metrics(x, y):
    """The naive self-exclusion of old PML versions: retrieve k+1 and drop the first column."""
    dist = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, 1:]  # stable: ties → lower index, like faiss
    p1, rp, mapr = [], [], []
    for i in range(len(x)):
        big_r = int((y == y[i]).sum()) - 1
        rel = y[order[i, :big_r]] == y[i]
        p1.append(float(rel[0]))
        rp.append(rel.mean())
        mapr.append(float((np.cumsum(rel) / np.arange(1, big_r + 1) * rel).sum() / big_r))
    return {"precision_at_1": np.mean(p1), "r_precision": np.mean(rp), "map_at_r": np.mean(mapr)}


def test_self_match_excluded_by_identity_not_by_position():
    # Points 0 and 1 are exact duplicates with different labels. For query 1 the sorted list including
    # itself is [0 (d=0, lower index), 1 (self, d=0), 2, 3]. Dropping the first column would remove point 0
    # and keep query 1 as its own nearest "neighbour" (a false hit); excluding by identity gives [0, 2, 3].
    #   by identity:  q0: 1(l0) 2(l0) 3(l1) -> miss;  q1: 0(l1) 2(l0) 3 -> miss (R=1);
    #                 q2: 0(l1) 1(l0) tie, lower index first -> miss; q3: 2(l0) ... -> miss.  All metrics 0.
    #   drop-first:   q1's list becomes [1 (itself, l0), ...] -> hit: P@1 = RP = MAP@R = 1/4.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [5.0, 0.0]], np.float32)
    y = np.array([1, 0, 0, 1])
    ours = retrieval_metrics(x, y, ks=(1, 2, 3), clustering=False)
    assert ours == pytest.approx(
        {
            "precision_at_1": 0.0,
            "r_precision": 0.0,
            "map_at_r": 0.0,
            "recall_at_1": 0.0,
            "recall_at_2": 0.75,
            "recall_at_3": 1.0,
        }
    )
    assert _drop_first_column_metrics(x, y) == pytest.approx(
        {"precision_at_1": 0.25, "r_precision": 0.25, "map_at_r": 0.25}
    )
    # PML 2.x removes the self-match by index as well (utils/inference.py: return_results).
    _close(ours, _pml(x, y), tol=0.0)


def test_all_lone_queries_give_nan():
    x, _ = _data(0, 20)
    out = retrieval_metrics(x, np.arange(20), ks=(1, 5), clustering=True)
    for key in ("precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_5"):
        assert math.isnan(out[key])
    assert out["nmi"] == pytest.approx(1.0)  # 20 clusters for 20 points: one per point
    q, _ = _data(1, 10)
    out = retrieval_metrics(q, np.zeros(10, int), x, np.ones(20, int), clustering=False)
    assert math.isnan(out["map_at_r"]) and math.isnan(out["recall_at_8"])


# ---------------------------------------------------------------------------------------------------------
# API properties
# ---------------------------------------------------------------------------------------------------------


def test_output_keys_and_types():
    x, y = _data(0, 200, n_classes=20)
    out = retrieval_metrics(x, y, ks=(1, 10))
    assert list(out) == [
        "precision_at_1",
        "r_precision",
        "map_at_r",
        "recall_at_1",
        "recall_at_10",
        "nmi",
        "ami",
    ]
    assert all(type(v) is float for v in out.values())
    assert "nmi" not in retrieval_metrics(x, y, clustering=False)


@pytest.mark.parametrize("self_mode", [True, False])
def test_block_size_invariance(self_mode):
    rng = np.random.default_rng(3)
    q = rng.integers(0, 3, (257, 4)).astype(np.float32)  # exact distances, many ties
    ql = rng.integers(0, 30, 257)
    r, rl = (
        (None, None)
        if self_mode
        else (rng.integers(0, 3, (301, 4)).astype(np.float32), rng.integers(0, 30, 301))
    )
    ks = (1, 4, 30, 200)
    one = retrieval_metrics(
        q, ql, r, rl, ks=ks, clustering=False, query_block_size=4096, reference_block_size=4096
    )
    for qb, rb in [(1, 1), (3, 5), (64, 7), (100, 300)]:
        assert (
            retrieval_metrics(
                q, ql, r, rl, ks=ks, clustering=False, query_block_size=qb, reference_block_size=rb
            )
            == one
        )
    x, y = _data(5, 300, n_classes=50)  # continuous data
    a = retrieval_metrics(x, y, ks=ks, clustering=False, query_block_size=13, reference_block_size=17)
    b = retrieval_metrics(x, y, ks=ks, clustering=False)
    assert a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize("dtype", [np.int8, np.uint16, np.int32, np.int64, np.uint64])
def test_label_dtypes(dtype):
    x, y = _data(0, 200, n_classes=25)
    ref = retrieval_metrics(x, y.astype(np.int64), clustering=False)
    assert retrieval_metrics(x, y.astype(dtype), clustering=False) == ref
    big = y.astype(np.int64) * 10**15 - 7  # values far outside int32
    assert retrieval_metrics(x, big, clustering=False) == ref
    assert retrieval_metrics(x, y.astype(np.float32), clustering=False) == ref  # integral floats


def test_accepts_jax_and_float64_inputs():
    import jax.numpy as jnp

    x, y = _data(0, 150, n_classes=20)
    ref = retrieval_metrics(x, y, clustering=False)
    assert retrieval_metrics(jnp.asarray(x), jnp.asarray(y), clustering=False) == ref
    assert retrieval_metrics(x.astype(np.float64), y, clustering=False) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("self_mode", [True, False])
def test_knn_matches_lexicographic_brute_force(self_mode):
    rng = np.random.default_rng(0)
    q = rng.integers(-2, 3, (70, 3)).astype(np.float32)
    r = q if self_mode else rng.integers(-2, 3, (90, 3)).astype(np.float32)
    dist = ((q[:, None].astype(np.float64) - r[None]) ** 2).sum(-1)
    if self_mode:
        np.fill_diagonal(dist, np.inf)
    want = np.argsort(dist, axis=1, kind="stable")[:, :25]
    d, i = knn(q, None if self_mode else r, k=25, query_block_size=8, reference_block_size=6)
    np.testing.assert_array_equal(i, want)
    np.testing.assert_allclose(d, np.take_along_axis(dist, want, axis=1), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------------


def _bad(**kw):
    x, y = _data(0, 100, d=8)
    base = dict(query=x, query_labels=y, clustering=False)
    base.update(kw)
    return base


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(query_labels=np.zeros(99, int)), ValueError, "query has 100 rows but query_labels has 99"),
        (dict(query=np.zeros((100,), np.float32)), ValueError, "query must be 2-D"),
        (dict(query=np.zeros((100, 8, 1), np.float32)), ValueError, "query must be 2-D"),
        (
            dict(query=np.zeros((0, 8), np.float32), query_labels=np.zeros(0, int)),
            ValueError,
            "query is empty",
        ),
        (dict(query_labels=np.zeros((100, 2), int)), ValueError, "query_labels must be 1-D"),
        (dict(query_labels=np.linspace(0, 1, 100)), TypeError, "integer class labels"),
        (dict(query_labels=np.array(["a"] * 100)), TypeError, "integer dtype"),
        (
            dict(reference=np.zeros((50, 4), np.float32), reference_labels=np.zeros(50, int)),
            ValueError,
            "query has embedding dim 8 but reference has 4",
        ),
        (
            dict(reference=np.zeros((50, 8), np.float32), reference_labels=np.zeros(49, int)),
            ValueError,
            "reference has 50 rows but reference_labels has 49",
        ),
        (
            dict(reference=np.zeros((50, 8), np.float32)),
            ValueError,
            "reference and reference_labels together",
        ),
        (
            dict(reference=np.zeros((0, 8), np.float32), reference_labels=np.zeros(0, int)),
            ValueError,
            "reference is empty",
        ),
        (dict(ks=(1, 0)), ValueError, "positive integers"),
        (dict(ks=(1, 2.5)), ValueError, "positive integers"),
        (dict(query_block_size=0), ValueError, "query_block_size"),
    ],
)
def test_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        retrieval_metrics(**_bad(**kwargs))


def test_nonfinite_embeddings_name_count_and_divergence():
    x, y = _data(0, 100, d=8)
    x[3, 1] = np.nan
    x[7, :2] = np.inf
    with pytest.raises(
        ValueError, match=r"query contains 3 NaN/inf values in 2 of 100 rows; the model probably diverged"
    ):
        retrieval_metrics(x, y)
    g, gl = _data(1, 50, d=8)
    g[0, 0] = np.nan
    with pytest.raises(ValueError, match="reference contains 1 NaN/inf"):
        retrieval_metrics(_data(0, 100, d=8)[0], y, g, gl)


# ---------------------------------------------------------------------------------------------------------
# SOP size: memory and time
# ---------------------------------------------------------------------------------------------------------

_SOP_SCRIPT = textwrap.dedent(
    """
    import json, resource, time
    import numpy as np
    import jax
    from jaxdml.eval import retrieval_metrics

    rng = np.random.default_rng(0)
    n, n_classes, dim = 60502, 11316, 512
    sizes = np.full(n_classes, 2)  # SOP test split: 11,316 classes of 2-12 images
    while sizes.sum() < n:
        np.add.at(sizes, rng.integers(0, n_classes, n - sizes.sum()), 1)
        sizes = np.minimum(sizes, 12)
    y = rng.permutation(np.repeat(np.arange(n_classes), sizes))
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32)
    sigma = rng.uniform(1.0, 4.0, n_classes).astype(np.float32)  # easy to hopeless classes
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 4096):  # in chunks: no full-size temporaries to inflate the baseline peak RSS
        yc = y[s : s + 4096]
        xc = centres[yc] + sigma[yc, None] * rng.standard_normal((len(yc), dim), dtype=np.float32)
        x[s : s + 4096] = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    del xc
    jax.numpy.zeros(1).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    out = retrieval_metrics(x, y, ks=(1, 10, 100, 1000), clustering=False)
    out["seconds"] = time.perf_counter() - t
    out["extra_rss_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(json.dumps(out))
    """
)


@pytest.mark.slow
def test_sop_size_memory_and_time():
    res = subprocess.run([sys.executable, "-c", _SOP_SCRIPT], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"SOP-size retrieval_metrics: {out['seconds']:.1f} s, +{out['extra_rss_mib']:.0f} MiB peak RSS")
    assert out["extra_rss_mib"] < 4096
    recalls = [out[f"recall_at_{k}"] for k in (1, 10, 100, 1000)]
    assert recalls == sorted(recalls) and recalls[0] == out["precision_at_1"]
    assert 0.2 < out["precision_at_1"] < 0.9 and recalls[-1] < 0.99  # both the top-k and the count paths
