"""Exact retrieval metrics in JAX, at parity with pytorch-metric-learning's ``AccuracyCalculator``.

Metrics (definitions from PML 2.9, ``utils/accuracy_calculator.py``):

* R of a query = number of reference items with its label, minus the query itself when the reference set
  is the query set (``reference=None``). Queries with R = 0 ("lone" queries) are dropped from every kNN
  metric; a metric with no query left is NaN.
* ``precision_at_1``: fraction of queries whose nearest neighbour has their label.
* ``r_precision``: mean of (correct items among the top R) / R.
* ``map_at_r``: mean of (1/R)·Σ_{i≤R} P(i)·rel(i), P(i) = precision over the first i neighbours.
* ``recall_at_{K}``: DML Recall@K, the fraction of queries with at least one correct item among the top K,
  for any K (also K far above max R); ``recall_at_1 == precision_at_1``.
* ``nmi`` / ``ami``: k-means (:func:`jaxdml.eval.clustering.kmeans`, 20 iterations) on the query embeddings
  with k = number of distinct query labels, scored with scikit-learn.

Neighbours are ranked by squared Euclidean distance on the embeddings as given (PML uses faiss
``IndexFlatL2`` on the raw embeddings; for unit vectors this is the cosine ranking), ties broken by the lower
reference index, which is what faiss does too. The search is exact and blockwise: query blocks × reference
blocks, each similarity matmul at ``Precision.HIGHEST`` (full float32 on TF32 GPUs), with a running top-k, so
the N×M distance matrix never exists.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdml.eval.clustering import kmeans

_HIGHEST = jax.lax.Precision.HIGHEST
_NO_INDEX = np.iinfo(np.int32).max
_PAD_LABEL = -1  # label code of padded reference rows (real codes are >= 0)
_PAD_QUERY_LABEL = -2  # label code of padded query rows (matches nothing)
_RANK_BLOCK_ENTRIES = 1 << 25  # Recall@K pass: at most this many distances (128 MiB) held per query block


# ----------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------


def _as_embeddings(x: Any, name: str) -> np.ndarray:
    """``x`` as a float32 (n, d) numpy array (no copy if it is one; bfloat16/float16 are upcast), with clear
    errors for bad input."""
    if x is None:
        raise ValueError(f"{name} is None")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, embedding_dim), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has embedding dimension 0")
    # jnp.issubdtype knows the ml_dtypes floats (bfloat16, float8) that numpy's does not; all are upcast.
    if not (jnp.issubdtype(x.dtype, jnp.floating) or np.issubdtype(x.dtype, np.integer)):
        raise TypeError(f"{name} must have a real numeric dtype, got {x.dtype}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN/inf values in {int(bad.any(axis=1).sum())} of "
            f"{x.shape[0]} rows; the model probably diverged (check the loss, learning rate, mixed precision)"
        )
    sqn = np.einsum("ij,ij->i", x, x, dtype=np.float32)
    if not np.isfinite(sqn).all():
        raise ValueError(f"{name} has rows whose squared norm overflows float32; rescale the embeddings")
    return x


def _as_labels(y: Any, name: str, n: int, emb_name: str) -> np.ndarray:
    """1-D label array of length n (integer, bool, or integral floats)."""
    if y is None:
        raise ValueError(f"{name} is None")
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one integer label per row), got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{emb_name} has {n} rows but {name} has {y.shape[0]}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise TypeError(f"{name} must hold integer class labels, got non-integral {y.dtype} values")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise TypeError(f"{name} must have an integer dtype, got {y.dtype}")
    return y


def _check_block(value: int | None, name: str) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def _default_blocks(query_block_size: int | None, reference_block_size: int | None) -> tuple[int, int]:
    """Block sizes measured to be fast: small on CPU (cache), large on accelerators."""
    big = jax.default_backend() != "cpu"
    qb = query_block_size or (4096 if big else 1024)
    rb = reference_block_size or (16384 if big else 4096)
    return int(qb), int(rb)


# ----------------------------------------------------------------------------------------------------------
# Blockwise exact kNN
# ----------------------------------------------------------------------------------------------------------


class _Reference:
    """Reference set on device, padded to whole blocks: (nb, rb, d) rows, squared norms, label codes."""

    def __init__(self, x: np.ndarray, codes: np.ndarray, block: int):
        n, d = x.shape
        rb = max(1, min(block, n))
        nb = -(-n // rb)
        xp = np.zeros((nb * rb, d), np.float32)
        xp[:n] = x
        lab = np.full(nb * rb, _PAD_LABEL, np.int32)
        lab[:n] = codes
        sqn = np.einsum("ij,ij->i", xp, xp, dtype=np.float32)
        self.n = n
        self.rows = jnp.asarray(xp.reshape(nb, rb, d))
        self.sqn = jnp.asarray(sqn.reshape(nb, rb))
        self.labels = jnp.asarray(lab.reshape(nb, rb))


def _block_dist(q: jax.Array, r: jax.Array, r_sqn: jax.Array) -> jax.Array:
    """‖r‖² − 2⟨q, r⟩: the squared distance minus the per-query constant ‖q‖² (same order)."""
    return r_sqn[None, :] - 2.0 * jnp.dot(q, r.T, precision=_HIGHEST)


def _scan_refs(body, init, ref_rows, ref_sqn, ref_labels):
    nb, rb, _ = ref_rows.shape
    offsets = jnp.arange(nb, dtype=jnp.int32) * rb
    return jax.lax.scan(body, init, (ref_rows, ref_sqn, ref_labels, offsets))


@functools.partial(jax.jit, static_argnames=("k",))
def _topk_block(q, q_self, ref_rows, ref_sqn, ref_labels, *, k: int):
    """Top-k (smallest distance, then lowest index) over all reference blocks for one query block.

    A running top-k is merged with each reference block's top-k. Returns (shifted distances (qb, k),
    indices (qb, k)); ``q_self`` holds each query's own reference index (excluded) or -1.
    """
    qb = q.shape[0]
    rb = ref_rows.shape[1]
    kb = min(k, rb)

    def body(carry, blk):
        top_negd, top_idx = carry
        r, r_sqn, r_lab, off = blk
        j = off + jnp.arange(rb, dtype=jnp.int32)
        invalid = (r_lab[None, :] == _PAD_LABEL) | (j[None, :] == q_self[:, None])
        d = jnp.where(invalid, jnp.inf, _block_dist(q, r, r_sqn))
        # lax.top_k puts equal values in index order, and the running entries (all from earlier blocks, so
        # lower indices) come first in the concatenation: the merged list stays sorted by (distance, index).
        v, p = jax.lax.top_k(-d, kb)
        cat_v = jnp.concatenate([top_negd, v], axis=1)
        cat_i = jnp.concatenate([top_idx, j[p]], axis=1)
        top_negd, p2 = jax.lax.top_k(cat_v, k)
        return (top_negd, jnp.take_along_axis(cat_i, p2, axis=1)), None

    init = (jnp.full((qb, k), -jnp.inf, jnp.float32), jnp.full((qb, k), _NO_INDEX, jnp.int32))
    (top_negd, top_idx), _ = _scan_refs(body, init, ref_rows, ref_sqn, ref_labels)
    return -top_negd, top_idx


@jax.jit
def _rank_block(q, q_lab, q_self, ref_rows, ref_sqn, ref_labels):
    """Rank of each query's best positive: 1 + negatives ranked before it by (distance, index).

    The query block's distances to the whole reference set are computed once, reference block by block,
    while tracking the best positive, and kept ((qb × M) float32) for a second sweep that counts; the best
    positive and the count so come from the same values.
    """
    qb = q.shape[0]
    rb = ref_rows.shape[1]

    def dist_body(carry, blk):
        bp_d, bp_i = carry
        r, r_sqn, r_lab, off = blk
        j = off + jnp.arange(rb, dtype=jnp.int32)
        invalid = (r_lab[None, :] == _PAD_LABEL) | (j[None, :] == q_self[:, None])
        d = jnp.where(invalid, jnp.inf, _block_dist(q, r, r_sqn))
        dp = jnp.where(r_lab[None, :] == q_lab[:, None], d, jnp.inf)
        dmin = jnp.min(dp, axis=1)
        imin = jnp.min(jnp.where(dp == dmin[:, None], j[None, :], _NO_INDEX), axis=1)  # lowest index on ties
        better = dmin < bp_d  # strict: on a tie the earlier block (lower index) wins
        return (jnp.where(better, dmin, bp_d), jnp.where(better, imin, bp_i)), d

    init = (jnp.full((qb,), jnp.inf, jnp.float32), jnp.full((qb,), _NO_INDEX, jnp.int32))
    (bp_d, bp_i), d_all = _scan_refs(dist_body, init, ref_rows, ref_sqn, ref_labels)

    def count_body(cnt, blk):
        d, r_lab, off = blk
        j = off + jnp.arange(rb, dtype=jnp.int32)
        neg = (r_lab[None, :] != q_lab[:, None]) & (d < jnp.inf)  # self and padding are at inf
        before = (d < bp_d[:, None]) | ((d == bp_d[:, None]) & (j[None, :] < bp_i[:, None]))
        return cnt + jnp.sum(neg & before, axis=1, dtype=jnp.int32), None

    offsets = jnp.arange(ref_rows.shape[0], dtype=jnp.int32) * rb
    cnt, _ = jax.lax.scan(count_body, jnp.zeros((qb,), jnp.int32), (d_all, ref_labels, offsets))
    return cnt + 1


def _pad_rows(a: np.ndarray, n: int, fill) -> np.ndarray:
    if a.shape[0] == n:
        return a
    out = np.full((n, *a.shape[1:]), fill, a.dtype)
    out[: a.shape[0]] = a
    return out


def _over_query_blocks(fn, qb: int, q: np.ndarray, *per_query: tuple[np.ndarray, Any]) -> list[np.ndarray]:
    """Apply a jitted block function to every (padded) block of query rows; concatenate the outputs.

    ``per_query`` holds (array, pad value) pairs sliced alongside the query rows. All blocks have the same
    shape, so the function compiles once.
    """
    n = q.shape[0]
    qb = max(1, min(qb, n))
    outs = []
    for s in range(0, n, qb):
        e = min(s + qb, n)
        args = [jnp.asarray(_pad_rows(q[s:e], qb, 0.0))]
        args += [jnp.asarray(_pad_rows(a[s:e], qb, fill)) for a, fill in per_query]
        outs.append((fn(*args), e - s))  # dispatched asynchronously; fetched below
    results = []
    for out, m in outs:
        out = out if isinstance(out, tuple) else (out,)
        results.append([np.asarray(o)[:m] for o in out])
    return [np.concatenate(parts) for parts in zip(*results)]


def knn(
    query,
    reference=None,
    *,
    k: int,
    query_block_size: int | None = None,
    reference_block_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by squared Euclidean distance, blockwise in JAX.

    ``reference=None`` searches the query set against itself, excluding each query (by index, not by
    distance). Ties are broken by the lower reference index, as faiss ``IndexFlatL2`` does.
    Returns (squared distances (n, k) float32, indices (n, k) int32), both sorted.
    """
    q = _as_embeddings(query, "query")
    same = reference is None
    r = q if same else _as_embeddings(reference, "reference")
    if r.shape[1] != q.shape[1]:
        raise ValueError(f"query has embedding dim {q.shape[1]} but reference has {r.shape[1]}")
    available = r.shape[0] - int(same)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
        raise ValueError(f"k must be an integer in [1, {available}] (reference items), got {k!r}")
    _check_block(query_block_size, "query_block_size")
    _check_block(reference_block_size, "reference_block_size")
    qb, rb = _default_blocks(query_block_size, reference_block_size)
    ref = _Reference(r, np.zeros(r.shape[0], np.int32), rb)
    q_self = np.arange(q.shape[0], dtype=np.int32) if same else np.full(q.shape[0], -1, np.int32)
    fn = functools.partial(_topk_block, ref_rows=ref.rows, ref_sqn=ref.sqn, ref_labels=ref.labels, k=int(k))
    d, idx = _over_query_blocks(fn, qb, q, (q_self, -1))
    q_sqn = np.einsum("ij,ij->i", q, q, dtype=np.float32)
    return np.maximum(d + q_sqn[:, None], 0.0), idx


# ----------------------------------------------------------------------------------------------------------
# Metrics from the neighbour lists
# ----------------------------------------------------------------------------------------------------------


def _knn_metrics(rel: np.ndarray, r: np.ndarray) -> dict[str, float]:
    """P@1, R-precision and MAP@R from the (n, k) relevance matrix of the top-k lists and R per query."""
    k = rel.shape[1]
    in_r = np.arange(1, k + 1)[None, :] <= r[:, None]
    hits = rel & in_r
    cum = np.cumsum(hits, axis=1)
    prec_at_i = cum / np.arange(1, k + 1)[None, :]
    return {
        "precision_at_1": float(np.mean(rel[:, 0])),
        "r_precision": float(np.mean(hits.sum(axis=1) / r)),
        "map_at_r": float(np.mean((prec_at_i * hits).sum(axis=1) / r)),
    }


def _nan_metrics(ks: Sequence[int]) -> dict[str, float]:
    out = {"precision_at_1": float("nan"), "r_precision": float("nan"), "map_at_r": float("nan")}
    out.update({f"recall_at_{kk}": float("nan") for kk in ks})
    return out


def retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    clustering: bool = True,
    seed: int = 0,
    query_block_size: int | None = None,
    reference_block_size: int | None = None,
    kmeans_iters: int = 20,
) -> dict[str, float]:
    """P@1, R-precision, MAP@R, Recall@K (each K in ``ks``) and, with ``clustering``, NMI and AMI.

    Args:
      query, query_labels: (n, d) embeddings and (n,) integer labels.
      reference, reference_labels: the gallery. ``None`` (both) means the query set is its own reference
        and every query is excluded from its own neighbours.
      ks: the K of Recall@K; any positive integers.
      clustering: also compute NMI/AMI (k-means on the query embeddings; costly for SOP-sized sets).
      seed: k-means seed. query_block_size / reference_block_size: kNN block shape (None = per-backend
        default); the largest intermediate is (query_block_size × reference_block_size) float32.
      kmeans_iters: Lloyd iterations (PML: 20).

    Returns plain Python floats keyed ``precision_at_1``, ``r_precision``, ``map_at_r``, ``recall_at_{K}``,
    and ``nmi``, ``ami``. Identical to PML ``AccuracyCalculator(k="max_bin_count")`` (up to float rounding of
    near-tied distances, since faiss computes them with a different formula).

    Self-match exclusion: the query is removed from its own neighbour list by index. Only k = max R
    neighbours are retrieved. Old PML versions (< 1.0) instead dropped the first neighbour column, which
    removes the wrong item when an exact duplicate of the query comes first (tie broken by a lower index);
    PML 2.x also removes by index (``return_results`` in ``utils/inference.py``), and so gives the same result
    as this function.

    Recall@K for K > max R uses the rank of each query's best positive, 1 + the number of negatives ranked
    before it (same tie-break), so no top-K list is ever built. Only the queries whose top-k list holds no
    positive need it; a second pass computes their distances to the whole reference set block by block
    (at most 2^25 distances, 128 MiB, held at a time) and counts.
    """
    self_mode = reference is None
    if self_mode != (reference_labels is None):
        raise ValueError("pass reference and reference_labels together (or neither, to use the query set)")
    q = _as_embeddings(query, "query")
    ql = _as_labels(query_labels, "query_labels", q.shape[0], "query")
    if self_mode:
        r, rl = q, ql
    else:
        r = _as_embeddings(reference, "reference")
        rl = _as_labels(reference_labels, "reference_labels", r.shape[0], "reference")
        if r.shape[1] != q.shape[1]:
            raise ValueError(f"query has embedding dim {q.shape[1]} but reference has {r.shape[1]}")
    ks = tuple(ks)
    for kk in ks:
        if not isinstance(kk, (int, np.integer)) or isinstance(kk, bool) or kk < 1:
            raise ValueError(f"ks must hold positive integers, got {kk!r}")
    _check_block(query_block_size, "query_block_size")
    _check_block(reference_block_size, "reference_block_size")
    qb, rb = _default_blocks(query_block_size, reference_block_size)

    # Dense label codes shared by query and reference (labels of any integer dtype / range).
    if self_mode:
        uniq, q_codes = np.unique(ql, return_inverse=True)
        r_codes = q_codes
    else:
        uniq, codes = np.unique(np.concatenate([ql, rl]), return_inverse=True)
        q_codes, r_codes = codes[: len(ql)], codes[len(ql) :]
    q_codes = q_codes.astype(np.int32).reshape(-1)
    r_codes = r_codes.astype(np.int32).reshape(-1)
    r_per_query = np.bincount(r_codes, minlength=len(uniq))[q_codes] - int(self_mode)
    keep = np.flatnonzero(r_per_query > 0)  # non-lone queries

    out: dict[str, float]
    if keep.size == 0:
        out = _nan_metrics(ks)
    else:
        out = _retrieval(q, q_codes, r, r_codes, r_per_query, keep, self_mode, ks, qb, rb)
    if clustering:
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

        n_classes = int(np.unique(q_codes).size)
        pred = kmeans(q, n_classes, n_iter=kmeans_iters, seed=seed).labels
        out["nmi"] = float(normalized_mutual_info_score(q_codes, pred))
        out["ami"] = float(adjusted_mutual_info_score(q_codes, pred))
    return out


def _retrieval(
    q: np.ndarray,
    q_codes: np.ndarray,
    r: np.ndarray,
    r_codes: np.ndarray,
    r_per_query: np.ndarray,
    keep: np.ndarray,
    self_mode: bool,
    ks: tuple[int, ...],
    qb: int,
    rb: int,
) -> dict[str, float]:
    """kNN metrics over the non-lone queries ``keep``."""
    rq = r_per_query[keep]
    k = int(rq.max())
    ref = _Reference(r, r_codes, rb)
    qk = q[keep]
    q_lab = q_codes[keep]
    q_self = keep.astype(np.int32) if self_mode else np.full(keep.size, -1, np.int32)

    top = functools.partial(_topk_block, ref_rows=ref.rows, ref_sqn=ref.sqn, ref_labels=ref.labels, k=k)
    _, idx = _over_query_blocks(top, qb, qk, (q_self, -1))
    rel = r_codes[idx] == q_lab[:, None]
    out = _knn_metrics(rel, rq)

    # Rank of the best positive: from the top-k list when it holds a positive; otherwise (only if some K
    # exceeds k) counted by a second pass over just those queries, in blocks of at most
    # _RANK_BLOCK_ENTRIES distances.
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    todo = np.flatnonzero(~rel.any(axis=1))
    if ks and max(ks) > k and todo.size:
        qb2 = max(1, min(qb, _RANK_BLOCK_ENTRIES // (ref.rows.shape[0] * ref.rows.shape[1])))
        rank = functools.partial(_rank_block, ref_rows=ref.rows, ref_sqn=ref.sqn, ref_labels=ref.labels)
        (r_todo,) = _over_query_blocks(
            rank, qb2, qk[todo], (q_lab[todo], _PAD_QUERY_LABEL), (q_self[todo], -1)
        )
        first[todo] = np.maximum(r_todo, k + 1)  # rank > k: no positive in the top k
    for kk in ks:
        out[f"recall_at_{kk}"] = float(np.mean(first <= kk))
    return out
