"""k-means in JAX for the NMI/AMI metrics.

PML clusters the query embeddings with faiss k-means (20 Lloyd iterations, k = number of query classes) and
scores the partition with scikit-learn's NMI/AMI. This module provides the clustering without faiss: Lloyd's
algorithm with k-means++ seeding, deterministic from a seed, and a blockwise assignment step so that
Stanford-Online-Products-sized problems (60k points, 11k clusters, 512 dims) never build an n×k matrix.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST

# k-means++ draws ceil(k / _MAX_SEEDING_ROUNDS) centres per round, so seeding costs at most this many passes
# over the data (exact sequential k-means++ for k <= 256).
_MAX_SEEDING_ROUNDS = 256
# Greedy k-means++ scores its candidates on at most this many points.
_SEEDING_SUBSAMPLE = 8192
# Entries of one (points × centroids) distance block in the assignment step (2^23 float32 = 32 MiB).
_ASSIGN_BLOCK_ENTRIES = 1 << 23


class KMeansResult(NamedTuple):
    """Output of :func:`kmeans`."""

    labels: np.ndarray  # (n,) int32: nearest final centroid of every point (ties → lower index)
    centroids: np.ndarray  # (k, d) float32
    inertia: float  # sum of squared distances of the points to their assigned centroid
    n_iter: int  # Lloyd iterations run (stops early once the assignment no longer changes)


def _default_block_size(n: int, k: int) -> int:
    """Points per assignment block: a (block × k) float32 matrix of at most 32 MiB, a multiple of 8."""
    b = max(8, min(4096, _ASSIGN_BLOCK_ENTRIES // max(k, 1)))
    b -= b % 8
    return max(1, min(b, n))


def _assign(xb: jax.Array, x_sqn: jax.Array, valid: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest centroid of every point, blockwise over points.

    xb: (nb, pb, d) padded points; x_sqn: (nb, pb) squared norms; valid: (nb, pb). Returns flat (nb*pb,)
    labels (int32, ties → lower centroid index) and squared distances (padded points: -inf, so that they are
    never picked as "far" points).
    """
    c_sqn = jnp.sum(c * c, axis=1)

    def body(_, blk):
        x, xs, v = blk
        d = c_sqn[None, :] - 2.0 * jnp.dot(x, c.T, precision=_HIGHEST)
        lab = jnp.argmin(d, axis=1).astype(jnp.int32)
        dmin = jnp.maximum(jnp.take_along_axis(d, lab[:, None], axis=1)[:, 0] + xs, 0.0)
        return None, (lab, jnp.where(v, dmin, -jnp.inf))

    _, (lab, dmin) = jax.lax.scan(body, None, (xb, x_sqn, valid))
    return lab.reshape(-1), dmin.reshape(-1)


def _update(x: jax.Array, valid: jax.Array, labels: jax.Array, dmin: jax.Array, k: int) -> jax.Array:
    """Centroids as cluster means; an empty cluster is moved onto a point far from its current centroid.

    The empty clusters, in index order, take the points with the largest distance to their assigned centroid
    (distinct points, farthest first), as scikit-learn does.
    """
    seg = jnp.where(valid, labels, k)  # padded points go to a dropped extra segment
    sums = jax.ops.segment_sum(x, seg, num_segments=k + 1)[:k]
    counts = jax.ops.segment_sum(valid.astype(jnp.float32), seg, num_segments=k + 1)[:k]
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    empty = counts == 0
    far = jnp.argsort(-dmin)  # valid points first (padded ones have -inf), farthest first
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, x.shape[0] - 1)
    return jnp.where(empty[:, None], x[far[rank]], means)


def _seed_kmeanspp(
    key: jax.Array, x: jax.Array, x_sqn: jax.Array, valid: jax.Array, n: int, k: int, trials: int
) -> jax.Array:
    """k-means++ seeding (D² sampling), greedy with ``trials`` candidates per centre, batched for k > 256.

    Each round draws ``per_round × trials`` candidates without replacement with probability ∝ D² (Gumbel
    top-k) and keeps the ``per_round`` candidates that alone would lower the potential Σ D² the most
    (scikit-learn's "greedy k-means++" when per_round = 1). per_round = ceil(k / 256), so seeding takes at
    most 256 rounds. For n > 8192 the candidates' potentials are estimated on a fixed random subset of 8192
    points (exact below that), so greedy seeding costs about one Lloyd iteration on SOP-sized data.
    """
    per_round = max(1, math.ceil(k / _MAX_SEEDING_ROUNDS))
    n_cand = min(per_round * trials, x.shape[0])
    rounds = math.ceil((k - 1) / per_round)
    k0, k1, key = jax.random.split(key, 3)
    first = jax.random.randint(k0, (), 0, n)
    centers = jnp.zeros((1 + rounds * per_round, x.shape[1]), x.dtype).at[0].set(x[first])
    sub = None if n <= _SEEDING_SUBSAMPLE else jax.random.choice(k1, n, (_SEEDING_SUBSAMPLE,), replace=False)

    def sqdist(rows, c):  # (len(rows), m) squared distances from x[rows] to the rows of c; 0 for padding
        xr, sr, vr = (x, x_sqn, valid) if rows is None else (x[rows], x_sqn[rows], valid[rows])
        d = sr[:, None] + jnp.sum(c * c, axis=1)[None, :] - 2.0 * jnp.dot(xr, c.T, precision=_HIGHEST)
        return jnp.where(vr[:, None], jnp.maximum(d, 0.0), 0.0)

    d2 = sqdist(None, x[first][None])[:, 0]

    def body(r, carry):
        centers, d2 = carry
        g = jax.random.gumbel(jax.random.fold_in(key, r), d2.shape)
        score = jnp.where(d2 > 0, jnp.log(jnp.where(d2 > 0, d2, 1.0)) + g, -jnp.inf)
        _, cand = jax.lax.top_k(score, n_cand)
        if n_cand > per_round:  # greedy: keep the candidates with the lowest potential after adding them
            d2_sub = d2 if sub is None else d2[sub]
            pot = jnp.sum(jnp.minimum(d2_sub[:, None], sqdist(sub, x[cand])), axis=0)
            _, best = jax.lax.top_k(-pot, per_round)
            cand = cand[best]
        centers = jax.lax.dynamic_update_slice(centers, x[cand], (1 + r * per_round, 0))
        return centers, jnp.minimum(d2, jnp.min(sqdist(None, x[cand]), axis=1))

    centers, _ = jax.lax.fori_loop(0, rounds, body, (centers, d2))
    return centers[:k]


@functools.partial(jax.jit, static_argnames=("n", "k", "n_iter", "init", "trials"))
def _kmeans_jit(xb, x_sqn, valid, key, *, n: int, k: int, n_iter: int, init: str, trials: int):
    nb, pb, d = xb.shape
    x = xb.reshape(nb * pb, d)
    xs = x_sqn.reshape(-1)
    v = valid.reshape(-1)
    if init == "k-means++":
        c = _seed_kmeanspp(key, x, xs, v, n, k, trials)
    else:  # "random": k distinct points, uniformly (faiss's default)
        c = x[jax.random.choice(key, n, (k,), replace=False)]

    def cond(state):
        _, _, it, changed = state
        return (it < n_iter) & changed

    def body(state):
        c, prev, it, _ = state
        lab, dmin = _assign(xb, x_sqn, valid, c)
        c = _update(x, v, lab, dmin, k)
        return c, lab, it + 1, jnp.any((lab != prev) & v)

    init_labels = jnp.full((nb * pb,), -1, jnp.int32)
    c, _, it, _ = jax.lax.while_loop(cond, body, (c, init_labels, jnp.int32(0), jnp.bool_(True)))
    lab, _ = _assign(xb, x_sqn, valid, c)
    dist = jnp.sum(jnp.square(x - c[lab]), axis=1)  # exact, not via the norm expansion
    return c, lab, dist, it


def kmeans(
    x,
    k: int,
    *,
    n_iter: int = 20,
    seed: int = 0,
    init: str = "k-means++",
    seeding_trials: int | None = None,
    block_size: int | None = None,
) -> KMeansResult:
    """Lloyd's k-means on the rows of ``x`` (float32, squared Euclidean distance).

    Args:
      x: (n, d) points. k: number of clusters, 1 <= k <= n.
      n_iter: maximum Lloyd iterations (assign + update); stops earlier once no label changes. PML's default
        faiss clustering runs 20.
      seed: the run is a deterministic function of (x, k, seed, init).
      init: "k-means++" (D² seeding, see :func:`_seed_kmeanspp`) or "random" (k distinct data points, as
        faiss does).
      seeding_trials: k-means++ candidates per centre; None: scikit-learn's 2 + ln k; 1 gives plain
        (non-greedy) k-means++.
      block_size: points per assignment block; the largest intermediate is (block_size × k) float32.

    Returns the final assignment (each point to its nearest final centroid), centroids, inertia, iterations.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be 2-D (n, dim), got shape {x.shape}")
    n, d = x.shape
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be an integer in [1, n={n}], got {k!r}")
    if init not in ("k-means++", "random"):
        raise ValueError(f"kmeans: init must be 'k-means++' or 'random', got {init!r}")
    if n_iter < 0:
        raise ValueError(f"kmeans: n_iter must be >= 0, got {n_iter}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"kmeans: x contains {int((~np.isfinite(x)).sum())} NaN/inf values")
    if seeding_trials is None:
        seeding_trials = 2 + int(math.log(k))
    if seeding_trials < 1:
        raise ValueError(f"kmeans: seeding_trials must be >= 1, got {seeding_trials}")
    pb = _default_block_size(n, int(k)) if block_size is None else int(block_size)
    if pb < 1:
        raise ValueError(f"kmeans: block_size must be >= 1, got {block_size}")
    nb = -(-n // pb)
    xp = np.zeros((nb * pb, d), np.float32)
    xp[:n] = x
    valid = np.zeros(nb * pb, bool)
    valid[:n] = True
    x_sqn = np.einsum("ij,ij->i", xp, xp, dtype=np.float32)
    c, lab, dmin, it = _kmeans_jit(
        jnp.asarray(xp.reshape(nb, pb, d)),
        jnp.asarray(x_sqn.reshape(nb, pb)),
        jnp.asarray(valid.reshape(nb, pb)),
        jax.random.key(seed),
        n=n,
        k=int(k),
        n_iter=int(n_iter),
        init=init,
        trials=int(seeding_trials),
    )
    dmin = np.asarray(dmin)[:n]
    return KMeansResult(
        labels=np.asarray(lab)[:n].copy(),
        centroids=np.asarray(c),
        inertia=float(dmin.sum(dtype=np.float64)),
        n_iter=int(it),
    )
