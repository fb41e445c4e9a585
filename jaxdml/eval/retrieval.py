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

The search is sharded over the devices of a 1-D ``"data"`` mesh (by default all devices of all processes):
device j holds the contiguous slice [j·S, (j+1)·S) of the reference rows and runs the blockwise search over
it with global row indices; the devices' top-k lists are then merged (all-gather + ``lax.top_k``). Device
order is index order and ``lax.top_k`` keeps equal values in position order, so the tie-break stays the
lowest index. Each query block is replicated on every device (for a sharded query set, assembled from the
rows each device owns), so per device the largest intermediate is the (query block × reference block)
distance matrix (the Recall@K rank pass: a bounded buffer) and no array of size N × d exists on a device
beyond its own reference slice. Embeddings may be numpy arrays or row-sharded jax.Arrays, also spanning
several processes; only the NMI/AMI clustering gathers the query rows to the host.

The results do not depend on the mesh or on the input type, bit for bit: float matmuls round differently
for different shapes, so every block has the same shape whatever the set and device sizes (a reference
slice shorter than one block is padded to one; the query blocks hold min(query_block_size, queries) rows)
and the squared norms are computed inside the blocks. On a given backend the distances so depend only on the
embeddings and the block shapes (tests/test_retrieval_sharded.py: 1 and 8 CPU devices, 1 and 2 processes).
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdml.eval.clustering import kmeans

_HIGHEST = jax.lax.Precision.HIGHEST
_AXIS = "data"  # the mesh axis the reference rows are split over
_NO_INDEX = np.iinfo(np.int32).max
_PAD_LABEL = -1  # label code of padded or invalid reference rows (real codes are >= 0)
_PAD_QUERY_LABEL = -2  # label code of padded query rows (matches nothing)
_RANK_BLOCK_ENTRIES = 1 << 25  # Recall@K pass: at most this many distances (128 MiB) held per device
_IN_FLIGHT = 2  # query blocks dispatched ahead of the one being fetched (bounds the blocks held on device)


# ----------------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------------


def _rows_over_data_axis(x: jax.Array) -> bool:
    """Sharded as ``NamedSharding(mesh, PartitionSpec("data"))`` over a 1-D "data" mesh."""
    sh = x.sharding
    if not isinstance(sh, NamedSharding) or tuple(sh.mesh.axis_names) != (_AXIS,):
        return False
    spec = tuple(sh.spec)
    return bool(spec) and spec[0] in (_AXIS, (_AXIS,)) and all(s is None for s in spec[1:])


def _is_sharded(x: Any) -> bool:
    """A jax.Array searched where it lies, never fetched to the host: rows split over the devices of a 1-D
    "data" mesh, or any array that no process holds entirely (its layout is checked by ``_resolve_mesh``).
    Other jax.Arrays (one device, replicated, other layouts) are fetched like numpy input."""
    return isinstance(x, jax.Array) and (
        not x.is_fully_addressable or (len(x.sharding.device_set) > 1 and _rows_over_data_axis(x))
    )


def _as_embeddings(x: Any, name: str) -> np.ndarray | jax.Array:
    """``x`` as (n, d) embeddings, with clear errors for bad shapes and dtypes.

    A sharded jax.Array is returned as is (checked by :func:`_embeddings`); anything else becomes a float32
    numpy array (no copy if it is one; bfloat16/float16 are upcast). Finiteness is checked by
    :func:`_embeddings`, over the valid rows only.
    """
    if x is None:
        raise ValueError(f"{name} is None")
    if not _is_sharded(x):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items, embedding_dim), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has embedding dimension 0")
    # jnp.issubdtype knows the ml_dtypes floats (bfloat16, float8) that numpy's does not; all are upcast.
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        raise TypeError(f"{name} must have a real numeric dtype, got {x.dtype}")
    return x if _is_sharded(x) else x.astype(np.float32, copy=False)


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


def _as_mask(valid: Any, name: str, n: int, emb_name: str) -> np.ndarray:
    """Boolean (n,) validity mask (None: every row valid)."""
    if valid is None:
        return np.ones(n, bool)
    valid = np.asarray(valid)
    if valid.dtype != np.bool_ or valid.shape != (n,):
        raise ValueError(f"{name} must be a bool array of shape ({n},) like {emb_name}, got {valid.dtype} "
                         f"{valid.shape}")
    if not valid.any():
        raise ValueError(f"{emb_name} has no valid row ({name} is all False)")
    return valid


def _check_block(value: int | None, name: str) -> None:
    if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def _default_blocks(query_block_size: int | None, reference_block_size: int | None) -> tuple[int, int]:
    """Block sizes measured to be fast: small on CPU (cache), large on accelerators."""
    big = jax.default_backend() != "cpu"
    qb = query_block_size or (4096 if big else 1024)
    rb = reference_block_size or (16384 if big else 4096)
    return int(qb), int(rb)


def _resolve_mesh(mesh: Mesh | None, named: Sequence[tuple[str, Any]]) -> Mesh:
    """The mesh to shard over: ``mesh``, else that of a sharded input, else all devices; checks the layout
    of sharded inputs (rows over a 1-D "data" mesh, a whole number of rows per device)."""
    if mesh is not None and tuple(mesh.axis_names) != (_AXIS,):
        raise ValueError(f"mesh must be 1-D with axis name {_AXIS!r}, got axes {mesh.axis_names}")
    for name, x in named:
        if not _is_sharded(x):
            continue
        sh = x.sharding
        if not _rows_over_data_axis(x):
            raise ValueError(f"{name} is a jax.Array sharded as {sh} over several processes; expected rows "
                             f"sharded over a 1-D mesh, NamedSharding(mesh, PartitionSpec({_AXIS!r}))")
        if mesh is not None and sh.mesh != mesh:
            raise ValueError(f"{name} is sharded over another mesh than the one given ({sh.mesh} vs {mesh})")
        mesh = sh.mesh
        if x.shape[0] % mesh.size:
            raise ValueError(f"{name} has {x.shape[0]} rows, not a multiple of the {mesh.size} devices")
    return mesh if mesh is not None else Mesh(np.array(jax.devices()), (_AXIS,))


# ----------------------------------------------------------------------------------------------------------
# Host and device arrays
# ----------------------------------------------------------------------------------------------------------


def _nonfinite_error(name: str, values: int, rows: int, n: int) -> ValueError:
    return ValueError(
        f"{name} contains {values} NaN/inf values in {rows} of {n} rows; the model probably diverged "
        "(check the loss, learning rate, mixed precision)"
    )


def _overflow_error(name: str) -> ValueError:
    return ValueError(f"{name} has rows whose squared norm overflows float32; rescale the embeddings")


def _checked(x: np.ndarray | jax.Array, name: str, valid: np.ndarray, mesh: Mesh) -> np.ndarray | jax.Array:
    """``x`` (float32) after checking that its valid rows are finite, with finite squared norms.

    Host input is checked with numpy; a sharded array on its devices (one jitted reduction), so that it is
    never gathered. Invalid rows may hold anything: they are never used.
    """
    n_valid = int(valid.sum())
    if isinstance(x, np.ndarray):
        bad = ~np.isfinite(x)
        bad &= valid[:, None]
        if bad.any():
            raise _nonfinite_error(name, int(bad.sum()), int(bad.any(axis=1).sum()), n_valid)
        sqn = np.einsum("ij,ij->i", x, x, dtype=np.float32)
        if not np.isfinite(sqn[valid]).all():
            raise _overflow_error(name)
        return x
    if x.dtype != jnp.float32:
        x = _to_float32(mesh)(x)
    counts = _check_kernel(mesh)(x, _shard_host(mesh, valid, x.shape[0] // mesh.size, False))
    values, rows, overflow = (int(c) for c in _fetch(counts))
    if values:
        raise _nonfinite_error(name, values, rows, n_valid)
    if overflow:
        raise _overflow_error(name)
    return x


@functools.cache
def _to_float32(mesh: Mesh) -> Callable:
    row = NamedSharding(mesh, P(_AXIS))
    return jax.jit(lambda x: x.astype(jnp.float32), out_shardings=row)


@functools.cache
def _check_kernel(mesh: Mesh) -> Callable:
    """(rows, valid) → [NaN/inf values, rows holding one, rows whose squared norm overflows] among the valid
    rows."""

    def check(x, valid):
        sqn = jnp.sum(x * x, axis=1)
        bad = ~jnp.isfinite(x) & valid[:, None]
        bad_rows = jnp.any(bad, axis=1)
        overflow = valid & ~bad_rows & ~jnp.isfinite(sqn)
        counts = jnp.stack([jnp.sum(bad, dtype=jnp.int32), jnp.sum(bad_rows, dtype=jnp.int32),
                            jnp.sum(overflow, dtype=jnp.int32)])
        return counts

    return jax.jit(check, out_shardings=NamedSharding(mesh, P()))


def _shard_host(mesh: Mesh, a: np.ndarray, per_device: int, fill: Any) -> jax.Array:
    """Host rows as a global array sharded by rows: device j gets rows [j·per_device, (j+1)·per_device), the
    rows past the end filled with ``fill``. Each process builds only its own devices' slices."""
    shape = (mesh.size * per_device, *a.shape[1:])
    n = a.shape[0]

    def rows(index: tuple[slice, ...]) -> np.ndarray:
        start, stop, _ = index[0].indices(shape[0])
        if stop <= n:
            return a[start:stop]
        out = np.full((stop - start, *a.shape[1:]), fill, a.dtype)
        out[: max(0, n - start)] = a[start:n]
        return out

    return jax.make_array_from_callback(shape, NamedSharding(mesh, P(_AXIS)), rows)


def _replicate(mesh: Mesh, a: np.ndarray) -> jax.Array:
    """A small host array on every device of the mesh (every process passes the same one)."""
    return jax.make_array_from_callback(a.shape, NamedSharding(mesh, P()), lambda index: a[index])


def _fetch(x: jax.Array) -> np.ndarray:
    """A replicated result on the host (``np.asarray`` refuses arrays that are not fully addressable)."""
    return np.asarray(x.addressable_data(0))


def _query_block(mesh: Mesh, queries: np.ndarray | jax.Array, ids: np.ndarray) -> jax.Array:
    """The rows ``ids`` (global row numbers; -1: padding, a zero row) of the query set on every device: sliced
    on the host, or assembled on device from the rows each device owns."""
    if isinstance(queries, np.ndarray):
        return _replicate(mesh, np.where((ids >= 0)[:, None], queries[np.maximum(ids, 0)], np.float32(0)))
    return _gather_kernel(mesh)(queries, _replicate(mesh, ids))


@functools.cache
def _gather_kernel(mesh: Mesh) -> Callable:
    """(sharded rows, replicated ids) → those rows, replicated, with O(block) memory per device.

    The device owning a row contributes its bits, every other device zeros, and an integer psum adds them:
    exactly the row, bit for bit (also -0.0), and no (N, d) array on any device.
    """

    def gather(x, ids):
        s = x.shape[0]
        local = ids - jax.lax.axis_index(_AXIS) * s
        own = (local >= 0) & (local < s)
        bits = jax.lax.bitcast_convert_type(x[jnp.clip(local, 0, s - 1)], jnp.int32)
        total = jax.lax.psum(jnp.where(own[:, None], bits, 0), _AXIS)
        return jax.lax.bitcast_convert_type(total, jnp.float32)

    return jax.jit(jax.shard_map(gather, mesh=mesh, in_specs=(P(_AXIS), P()), out_specs=P()))


# ----------------------------------------------------------------------------------------------------------
# Blockwise exact kNN, sharded over the reference rows
# ----------------------------------------------------------------------------------------------------------


class _Reference:
    """The reference set sharded over the mesh: device j holds rows [j·S, (j+1)·S) and their label codes
    (``_PAD_LABEL`` for padding and invalid rows); searched in blocks of ``rb`` rows."""

    def __init__(self, mesh: Mesh, rows: np.ndarray | jax.Array, codes: np.ndarray, rb: int):
        n = rows.shape[0]
        s = -(-n // mesh.size)  # numpy input is padded to a whole number of rows per device
        self.rows = _shard_host(mesh, rows, s, 0.0) if isinstance(rows, np.ndarray) else rows
        self.labels = _shard_host(mesh, codes.astype(np.int32), s, _PAD_LABEL)
        self.rb = rb
        self.per_device = -(-max(s, rb) // rb) * rb  # distances per query and device in a full sweep

    @property
    def arrays(self) -> tuple[jax.Array, jax.Array]:
        return self.rows, self.labels


def _block_dist(q: jax.Array, r: jax.Array, r_sqn: jax.Array) -> jax.Array:
    """‖r‖² − 2⟨q, r⟩: the squared distance minus the per-query constant ‖q‖² (same order)."""
    return r_sqn[None, :] - 2.0 * jnp.dot(q, r.T, precision=_HIGHEST)


def _scan_local_blocks(body, init, rows, labels, rb: int, xs=None):
    """``lax.scan`` of ``body(carry, (rows, squared norms, labels, usable, global index), x)`` over this
    device's reference rows in blocks of ``rb`` (inside ``shard_map``).

    The rows are not copied into padded blocks: the last block is shifted back to end at the last row, and its
    rows already seen in the previous block are not ``usable`` (like padding and invalid rows). Only a slice
    shorter than one block is padded (a copy of at most one block).
    """
    s = rows.shape[0]
    offset = jax.lax.axis_index(_AXIS) * s
    if s < rb:
        rows = jnp.pad(rows, ((0, rb - s), (0, 0)))
        labels = jnp.pad(labels, (0, rb - s), constant_values=_PAD_LABEL)
    n = max(s, rb)

    def step(carry, b_x):
        b, x = b_x
        start = jnp.minimum(b * rb, n - rb)
        pos = start + jnp.arange(rb, dtype=jnp.int32)
        r = jax.lax.dynamic_slice_in_dim(rows, start, rb)
        lab = jax.lax.dynamic_slice_in_dim(labels, start, rb)
        blk = (r, jnp.sum(r * r, axis=1), lab, (pos >= b * rb) & (lab != _PAD_LABEL), offset + pos)
        return body(carry, blk, x)

    return jax.lax.scan(step, init, (jnp.arange(-(-n // rb), dtype=jnp.int32), xs))


def _distances(q, q_self, blk) -> jax.Array:
    """Shifted distances of a query block to a reference block; inf for unusable rows and the query itself."""
    r, r_sqn, _, usable, j = blk
    invalid = ~usable[None, :] | (j[None, :] == q_self[:, None])
    return jnp.where(invalid, jnp.inf, _block_dist(q, r, r_sqn))


def _varying(x):
    """Mark replicated values as per-device ones (the scan carries become per-device)."""
    return jax.tree.map(lambda a: jax.lax.pcast(a, _AXIS, to="varying"), x)


@functools.cache
def _topk_kernel(mesh: Mesh, k: int, rb: int) -> Callable:
    """Jitted (q, q_self, rows, labels) → (squared distances (qb, k), indices (qb, k)).

    Top-k by (distance, index) over the whole reference set for one replicated query block: each device runs
    a running top-k over its blocks, then the devices' lists are merged. ``q_self`` holds each query's own
    reference index (excluded) or -1.
    """

    def topk(q, q_self, rows, labels):
        qb = q.shape[0]
        kb = min(k, rb)

        def body(carry, blk, _):
            top_negd, top_idx = carry
            d = _distances(q, q_self, blk)
            # lax.top_k puts equal values in index order, and the running entries (all from earlier blocks, so
            # lower indices) come first in the concatenation: the merged list stays sorted by (distance, index).
            v, p = jax.lax.top_k(-d, kb)
            cat_v = jnp.concatenate([top_negd, v], axis=1)
            cat_i = jnp.concatenate([top_idx, blk[4][p]], axis=1)
            top_negd, p2 = jax.lax.top_k(cat_v, k)
            return (top_negd, jnp.take_along_axis(cat_i, p2, axis=1)), None

        init = (jnp.full((qb, k), -jnp.inf, jnp.float32), jnp.full((qb, k), _NO_INDEX, jnp.int32))
        (top_negd, top_idx), _ = _scan_local_blocks(body, init, rows, labels, rb)
        # The same merge across devices: all-gather stacks the lists in device order, which is index order.
        all_v = jax.lax.all_gather(top_negd, _AXIS, axis=1, tiled=True)
        all_i = jax.lax.all_gather(top_idx, _AXIS, axis=1, tiled=True)
        top_negd, p = jax.lax.top_k(all_v, k)
        q_sqn = jnp.sum(q * q, axis=1)
        return jnp.maximum(-top_negd + q_sqn[:, None], 0.0), jnp.take_along_axis(all_i, p, axis=1)

    # The merged lists are the same on every device, but jax's replication check cannot see through an
    # all-gather: it is turned off for this kernel.
    specs = (P(), P(), P(_AXIS), P(_AXIS))
    return jax.jit(jax.shard_map(topk, mesh=mesh, in_specs=specs, out_specs=(P(), P()), check_vma=False))


@functools.cache
def _rank_kernel(mesh: Mesh, rb: int) -> Callable:
    """Jitted (q, q_lab, q_self, rows, labels) → rank of each query's best positive: 1 + the
    negatives ranked before it by (distance, index), over the whole reference set.

    Each device computes its slice's distances once, block by block, tracking its best positive, and keeps them
    ((qb × S) float32) for a second sweep that counts; the best positive is the lexicographic minimum of the
    devices' ones (distance, then index), and the counts are summed. Both come from the same values.
    """

    def rank(q, q_lab, q_self, rows, labels):
        qb = q.shape[0]

        def dist_body(carry, blk, _):
            bp_d, bp_i = carry
            d = _distances(q, q_self, blk)
            j = blk[4]
            dp = jnp.where(blk[2][None, :] == q_lab[:, None], d, jnp.inf)
            dmin = jnp.min(dp, axis=1)
            imin = jnp.min(jnp.where(dp == dmin[:, None], j[None, :], _NO_INDEX), axis=1)  # lowest index on ties
            better = dmin < bp_d  # strict: on a tie the earlier block (lower index) wins
            return (jnp.where(better, dmin, bp_d), jnp.where(better, imin, bp_i)), d

        init = _varying((jnp.full((qb,), jnp.inf, jnp.float32), jnp.full((qb,), _NO_INDEX, jnp.int32)))
        (bp_d, bp_i), d_all = _scan_local_blocks(dist_body, init, rows, labels, rb)
        bp_d_all = jax.lax.pmin(bp_d, _AXIS)
        bp_i = jax.lax.pmin(jnp.where(bp_d == bp_d_all, bp_i, _NO_INDEX), _AXIS)
        bp_d = bp_d_all

        def count_body(cnt, blk, d):
            r_lab, j = blk[2], blk[4]
            neg = (r_lab[None, :] != q_lab[:, None]) & (d < jnp.inf)  # self, padding and seen rows are at inf
            before = (d < bp_d[:, None]) | ((d == bp_d[:, None]) & (j[None, :] < bp_i[:, None]))
            return cnt + jnp.sum(neg & before, axis=1, dtype=jnp.int32), None

        cnt0 = _varying(jnp.zeros((qb,), jnp.int32))
        cnt, _ = _scan_local_blocks(count_body, cnt0, rows, labels, rb, xs=d_all)
        return jax.lax.psum(cnt, _AXIS) + 1

    specs = (P(), P(), P(), P(_AXIS), P(_AXIS))
    return jax.jit(jax.shard_map(rank, mesh=mesh, in_specs=specs, out_specs=P()))


def _pad_rows(a: np.ndarray, n: int, fill) -> np.ndarray:
    if a.shape[0] == n:
        return a
    out = np.full((n, *a.shape[1:]), fill, a.dtype)
    out[: a.shape[0]] = a
    return out


def _over_query_blocks(
    kernel: Callable, ref: _Reference, mesh: Mesh, queries: np.ndarray | jax.Array, ids: np.ndarray, qb: int,
    *per_query: tuple[np.ndarray, Any],
) -> list[np.ndarray]:
    """Apply a kernel to every (padded) block of the queries ``ids`` (global rows of ``queries``) against the
    reference set; concatenate the outputs on the host.

    ``per_query`` holds (array, pad value) pairs sliced alongside ``ids``. All blocks have the same shape, so
    the kernel compiles once; at most ``_IN_FLIGHT`` blocks run ahead of the one being fetched.
    """
    n = ids.shape[0]
    qb = max(1, min(qb, n))
    pending: collections.deque = collections.deque()
    results = []

    def fetch_oldest() -> None:
        out, m = pending.popleft()
        results.append([_fetch(o)[:m] for o in (out if isinstance(out, tuple) else (out,))])

    for s in range(0, n, qb):
        e = min(s + qb, n)
        q = _query_block(mesh, queries, _pad_rows(ids[s:e], qb, -1))
        extra = [_replicate(mesh, _pad_rows(a[s:e], qb, fill)) for a, fill in per_query]
        pending.append((kernel(q, *extra, *ref.arrays), e - s))  # dispatched asynchronously
        if len(pending) > _IN_FLIGHT:
            fetch_oldest()
    while pending:
        fetch_oldest()
    return [np.concatenate(parts) for parts in zip(*results)]


def knn(
    query,
    reference=None,
    *,
    k: int,
    query_block_size: int | None = None,
    reference_block_size: int | None = None,
    mesh: Mesh | None = None,
    rows=None,
    reference_valid=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by squared Euclidean distance, blockwise in JAX, sharded over ``mesh``.

    ``query`` / ``reference``: numpy arrays, or jax.Arrays with rows sharded over a 1-D "data" mesh
    (``NamedSharding(mesh, PartitionSpec("data"))``, possibly spanning several processes). ``reference=None``
    searches the query set against itself, excluding each query (by index, not by distance). Ties are broken
    by the lower reference index, as faiss ``IndexFlatL2`` does. ``mesh``: the devices the reference rows are
    split over (None: the mesh of a sharded input, else all devices). ``rows``: the query rows to search for
    (default: all). ``reference_valid``: (m,) bool mask of the reference rows that may be neighbours (with
    ``reference=None``, of the query set); the others (padding) may hold anything.
    Returns (squared distances (n, k) float32, indices (n, k) int32 into the reference rows), both sorted,
    as numpy arrays (the same in every process); n is the number of ``rows``.
    """
    q = _as_embeddings(query, "query")
    same = reference is None
    r = q if same else _as_embeddings(reference, "reference")
    if r.shape[1] != q.shape[1]:
        raise ValueError(f"query has embedding dim {q.shape[1]} but reference has {r.shape[1]}")
    mesh = _resolve_mesh(mesh, [("query", q), ("reference", r)])
    ids = np.arange(q.shape[0], dtype=np.int32) if rows is None else np.asarray(rows, np.int32).reshape(-1)
    if ids.size == 0 or ids.min() < 0 or ids.max() >= q.shape[0]:
        raise ValueError(f"rows must be non-empty indices into the {q.shape[0]} query rows")
    r_valid = _as_mask(reference_valid, "reference_valid", r.shape[0], "reference")
    q_valid = np.zeros(q.shape[0], bool)
    q_valid[ids] = True
    q = _checked(q, "query", q_valid | r_valid if same else q_valid, mesh)
    r = q if same else _checked(r, "reference", r_valid, mesh)
    available = int(r_valid.sum()) - int(same)
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
        raise ValueError(f"k must be an integer in [1, {available}] (reference items), got {k!r}")
    _check_block(query_block_size, "query_block_size")
    _check_block(reference_block_size, "reference_block_size")
    qb, rb = _default_blocks(query_block_size, reference_block_size)
    ref = _Reference(mesh, r, np.where(r_valid, 0, _PAD_LABEL).astype(np.int32), rb)
    q_self = ids if same else np.full(ids.size, -1, np.int32)
    d, idx = _over_query_blocks(_topk_kernel(mesh, int(k), rb), ref, mesh, q, ids, qb, (q_self, -1))
    return d, idx


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
    mesh: Mesh | None = None,
    query_valid=None,
    reference_valid=None,
) -> dict[str, float]:
    """P@1, R-precision, MAP@R, Recall@K (each K in ``ks``) and, with ``clustering``, NMI and AMI.

    Args:
      query, query_labels: (n, d) embeddings and (n,) integer labels.
      reference, reference_labels: the gallery. ``None`` (both) means the query set is its own reference
        and every query is excluded from its own neighbours.
      ks: the K of Recall@K; any positive integers.
      clustering: also compute NMI/AMI (k-means on the query embeddings; costly for SOP-sized sets).
      seed: k-means seed. query_block_size / reference_block_size: kNN block shape (None = per-backend
        default); the largest intermediate is (query_block_size × reference_block_size) float32 per device.
      kmeans_iters: Lloyd iterations (PML: 20).
      mesh: 1-D mesh (axis "data") whose devices split the reference rows; None: the mesh of a sharded
        input, else all devices of all processes. The metrics do not depend on it.
      query_valid, reference_valid: optional (n,) bool masks; invalid rows (padding, corrupt images) are
        neither queries nor neighbours, exactly as if they were absent, and may hold anything (also NaN).
        With ``reference=None``, ``query_valid`` masks both.

    The embeddings may be numpy arrays or jax.Arrays with rows sharded over the mesh
    (``NamedSharding(mesh, PartitionSpec("data"))``, rows a multiple of the devices; in a multi-process job
    not fully addressable). A sharded array is validated and searched on its devices; only the clustering needs
    the query rows on the host, gathered with ``multihost_utils.process_allgather`` (every process then runs the
    same k-means). Labels and masks are host arrays of the full length, the same in every process.

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
    (at most 2^25 distances, 128 MiB, held at a time per device) and counts.
    """
    self_mode = reference is None
    if self_mode != (reference_labels is None):
        raise ValueError("pass reference and reference_labels together (or neither, to use the query set)")
    if self_mode and reference_valid is not None:
        raise ValueError("reference_valid needs a reference; with reference=None, query_valid masks both")
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
    q_valid = _as_mask(query_valid, "query_valid", q.shape[0], "query")
    r_valid = q_valid if self_mode else _as_mask(reference_valid, "reference_valid", r.shape[0], "reference")
    mesh = _resolve_mesh(mesh, [("query", q), ("reference", r)])
    q = _checked(q, "query", q_valid, mesh)
    r = q if self_mode else _checked(r, "reference", r_valid, mesh)

    # Dense label codes of the valid rows, shared by query and reference (labels of any integer dtype / range).
    q_rows, r_rows = np.flatnonzero(q_valid), np.flatnonzero(r_valid)
    if self_mode:
        uniq, q_codes = np.unique(ql[q_rows], return_inverse=True)
        r_codes = q_codes
    else:
        uniq, codes = np.unique(np.concatenate([ql[q_rows], rl[r_rows]]), return_inverse=True)
        q_codes, r_codes = codes[: q_rows.size], codes[q_rows.size :]
    q_codes = q_codes.astype(np.int32).reshape(-1)
    r_codes = r_codes.astype(np.int32).reshape(-1)
    r_per_query = np.bincount(r_codes, minlength=len(uniq))[q_codes] - int(self_mode)
    keep = np.flatnonzero(r_per_query > 0)  # non-lone queries, as positions among the valid ones

    out: dict[str, float]
    if keep.size == 0:
        out = _nan_metrics(ks)
    else:
        ref_codes = np.full(r.shape[0], _PAD_LABEL, np.int32)  # by reference row; invalid rows match nothing
        ref_codes[r_rows] = r_codes
        ref = _Reference(mesh, r, ref_codes, rb)
        out = _retrieval(mesh, q, q_rows[keep], q_codes[keep], ref, ref_codes, r_per_query[keep],
                         self_mode, ks, qb)
    if clustering:
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

        x = q if isinstance(q, np.ndarray) else multihost_utils.process_allgather(q, tiled=True)
        x = x if q_rows.size == x.shape[0] else x[q_rows]
        n_classes = int(np.unique(q_codes).size)
        pred = kmeans(x, n_classes, n_iter=kmeans_iters, seed=seed).labels
        out["nmi"] = float(normalized_mutual_info_score(q_codes, pred))
        out["ami"] = float(adjusted_mutual_info_score(q_codes, pred))
    return out


def _retrieval(
    mesh: Mesh,
    queries: np.ndarray | jax.Array,
    q_ids: np.ndarray,
    q_lab: np.ndarray,
    ref: _Reference,
    ref_codes: np.ndarray,
    rq: np.ndarray,
    self_mode: bool,
    ks: tuple[int, ...],
    qb: int,
) -> dict[str, float]:
    """kNN metrics of the queries ``q_ids`` (rows of ``queries``; label codes ``q_lab``, R = ``rq``)."""
    k = int(rq.max())
    q_ids = q_ids.astype(np.int32)
    q_self = q_ids if self_mode else np.full(q_ids.size, -1, np.int32)
    _, idx = _over_query_blocks(_topk_kernel(mesh, k, ref.rb), ref, mesh, queries, q_ids, qb, (q_self, -1))
    rel = ref_codes[idx] == q_lab[:, None]
    out = _knn_metrics(rel, rq)

    # Rank of the best positive: from the top-k list when it holds a positive; otherwise (only if some K
    # exceeds k) counted by a second pass over just those queries, in blocks of at most
    # _RANK_BLOCK_ENTRIES distances per device. The block size is that of one device holding every valid
    # reference row, so that it (and so the rounding of the distances) does not depend on the mesh.
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, np.iinfo(np.int64).max)
    todo = np.flatnonzero(~rel.any(axis=1))
    if ks and max(ks) > k and todo.size:
        one_device = -(-int(np.sum(ref_codes != _PAD_LABEL)) // ref.rb) * ref.rb
        qb2 = max(1, min(qb, _RANK_BLOCK_ENTRIES // max(one_device, ref.per_device)))
        (r_todo,) = _over_query_blocks(_rank_kernel(mesh, ref.rb), ref, mesh, queries, q_ids[todo], qb2,
                                       (q_lab[todo], _PAD_QUERY_LABEL), (q_self[todo], -1))
        first[todo] = np.maximum(r_todo, k + 1)  # rank > k: no positive in the top k
    for kk in ks:
        out[f"recall_at_{kk}"] = float(np.mean(first <= kk))
    return out
