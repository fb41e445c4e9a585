"""Pair-based losses, as pytorch-metric-learning (PML) defines them.

Each anchor of the batch is paired with every item of a reference set: by default the batch itself
(the pair (i, i) excluded, every other pair used in both orders), or a memory of past embeddings
(cross-batch memory), where ``pair_mask`` (B, M) says which pairs exist. Positives are pairs with equal
labels. Embeddings are L2-normalised inside (PML's default distances do the same), so raw vectors are accepted.

Every loss here has the signature ``loss(embeddings, labels, ref_embeddings=None, ref_labels=None, *,
pair_mask=None, **hyper_parameters) -> scalar`` (defaults = PML's; hyper-parameters are static Python values), is
jit-able with static shapes, and needs O(B M) memory, triplet losses included (never B M²). A ``pair_mask`` plays
the role of a PML miner's pair tuple ``(a1, p, a2, n)``: the positive pairs are the allowed equal-label pairs,
the negative pairs the allowed different-label ones, and triplet losses use the triplets (a, p, n) with both
(a, p) and (a, n) allowed (PML's ``convert_to_triplets``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxdml.layers import l2_normalize, lipschitz_normalize

_HIGHEST = jax.lax.Precision.HIGHEST

# How a loss normalises the embeddings (and reference items) before its distances or similarities: "l2" (PML's
# default distances), "lipschitz" (v / max(1, ||v||), the GSP/CCP TensorFlow framework's ``lipschitz_cont``: its
# euclidean distances and dot-product "cosine" similarities are taken between these) or "none".
Normalize = Literal["l2", "lipschitz", "none"]
NORMALIZATIONS: tuple[str, ...] = ("l2", "lipschitz", "none")


def normalize_embeddings(x: jnp.ndarray, normalize: str) -> jnp.ndarray:
    """``x`` normalised as ``normalize`` (one of :data:`NORMALIZATIONS`) says."""
    if normalize == "l2":
        return l2_normalize(x)
    if normalize == "lipschitz":
        return lipschitz_normalize(x)
    if normalize == "none":
        return x
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def pair_masks(labels: jnp.ndarray, ref_labels: jnp.ndarray | None = None, pair_mask: jnp.ndarray | None = None
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(positive, negative) boolean (B, M) masks of the pairs ``pair_mask`` allows (all if None).

    Without a reference set the reference is the batch and the diagonal (i, i) is never a pair.
    """
    allowed = jnp.ones((labels.shape[0], (labels if ref_labels is None else ref_labels).shape[0]), bool)
    if ref_labels is None:
        ref_labels = labels
        allowed = ~jnp.eye(labels.shape[0], dtype=bool)
    if pair_mask is not None:
        allowed = allowed & pair_mask
    same = labels[:, None] == ref_labels[None, :]
    return same & allowed, ~same & allowed


def euclidean_distances(x: jnp.ndarray, y: jnp.ndarray | None = None) -> jnp.ndarray:
    """Pairwise L2 distances (B, M) in O(B M) memory, with a zero (not NaN) gradient where vectors coincide."""
    y = x if y is None else y
    sq = (jnp.sum(jnp.square(x), axis=-1)[:, None] + jnp.sum(jnp.square(y), axis=-1)[None, :]
          - 2.0 * jnp.matmul(x, y.T, precision=_HIGHEST))
    sq = jnp.maximum(sq, 0.0)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def cosine_similarities(x: jnp.ndarray, y: jnp.ndarray | None = None) -> jnp.ndarray:
    x = l2_normalize(x)
    y = x if y is None else l2_normalize(y)
    return jnp.matmul(x, y.T, precision=_HIGHEST)


def _lp_distances(embeddings: jnp.ndarray, ref_embeddings: jnp.ndarray | None, normalize: str = "l2"
                  ) -> jnp.ndarray:
    """PML's default ``LpDistance(normalize_embeddings=True)``: L2 distances of the normalised vectors (of the
    Lipschitz-normalised or raw ones with ``normalize="lipschitz"`` / ``"none"``)."""
    return euclidean_distances(normalize_embeddings(embeddings, normalize),
                               None if ref_embeddings is None else normalize_embeddings(ref_embeddings, normalize))


def _similarities(embeddings: jnp.ndarray, ref_embeddings: jnp.ndarray | None, normalize: str = "l2"
                  ) -> jnp.ndarray:
    """PML's ``CosineSimilarity`` (``normalize="l2"``), else dot products of the vectors normalised as said."""
    if normalize == "l2":
        return cosine_similarities(embeddings, ref_embeddings)
    x = normalize_embeddings(embeddings, normalize)
    y = x if ref_embeddings is None else normalize_embeddings(ref_embeddings, normalize)
    return jnp.matmul(x, y.T, precision=_HIGHEST)


def _mean_of_positive(losses: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """PML's AvgNonZeroReducer: the mean of the masked losses that are > 0 (0 if there are none)."""
    active = mask & (losses > 0)
    return jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(active), 1)


def _masked_logsumexp(x: jnp.ndarray, mask: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """log sum_mask exp(x) along ``axis``; 0 where the mask is empty (PML's ``lmu.logsumexp``), finite gradients."""
    top = jax.lax.stop_gradient(jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jnp.sum(jnp.exp(jnp.where(mask, x - top, -jnp.inf)), axis=axis)
    present = jnp.any(mask, axis=axis)
    return jnp.where(present, jnp.log(jnp.where(present, total, 1.0)) + jnp.squeeze(top, axis), 0.0)


def _generic_pair_guard(loss: jnp.ndarray, pos: jnp.ndarray, neg: jnp.ndarray) -> jnp.ndarray:
    """PML's ``GenericPairLoss`` returns 0 when there is at most one positive and at most one negative pair."""
    return jnp.where((jnp.sum(pos) <= 1) & (jnp.sum(neg) <= 1), 0.0, loss)


# --------------------------------------------------------------------------------------------- contrastive / MS


def contrastive_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                     ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                     pos_margin: float = 0.0, neg_margin: float = 1.0, distance: str = "euclidean",
                     reduction: str = "avg_nonzero",
                     normalize: Normalize = "l2") -> jnp.ndarray:
    """Contrastive loss (PML ``ContrastiveLoss``; defaults equal PML's).

    ``distance="euclidean"``: [d - pos_margin]+ on positives, [neg_margin - d]+ on negatives.
    ``distance="cosine"`` (similarity s): [pos_margin - s]+ and [s - neg_margin]+.
    ``reduction="avg_nonzero"`` (PML): positive and negative terms are each averaged over their non-zero
    entries, then summed. ``reduction="sum_per_anchor"``: the sum of all pair terms divided by the number of
    anchors (rows), as the GSP/CCP TensorFlow code's ``original_contrastive`` (PML: ``SumReducer`` / B).

    The seed papers' variants: **C2** = ``contrastive_loss(pos_margin=m+, neg_margin=m-)`` (the TF
    ``contrastive``, identical to PML's; CUB (0, 0.3841), Cars (0.2652, 0.5409), SOP/In-shop (0.2858, 0.5130)).
    **C1** = ``contrastive_loss(distance="cosine", pos_margin=1.0, neg_margin=0.5, reduction="sum_per_anchor")``:
    the TF ``original_contrastive`` computes (sum_pos [1 - s - 1e-5]+ + sum_neg [s - 0.5]+) / B, so
    ``pos_margin=1 - 1e-5`` reproduces it to the last digit (the 1e-5 only keeps s = 1 self-pairs inactive).
    That framework takes distances and similarities between Lipschitz-normalised vectors (``lipschitz_cont``):
    ``normalize="lipschitz"`` (see :data:`NORMALIZATIONS`).
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    if distance == "euclidean":
        d = _lp_distances(embeddings, ref_embeddings, normalize)
        pos_losses, neg_losses = jax.nn.relu(d - pos_margin), jax.nn.relu(neg_margin - d)
    elif distance == "cosine":
        s = _similarities(embeddings, ref_embeddings, normalize)
        pos_losses, neg_losses = jax.nn.relu(pos_margin - s), jax.nn.relu(s - neg_margin)
    else:
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    if reduction == "avg_nonzero":
        return _mean_of_positive(pos_losses, pos) + _mean_of_positive(neg_losses, neg)
    if reduction == "sum_per_anchor":
        total = jnp.sum(jnp.where(pos, pos_losses, 0.0)) + jnp.sum(jnp.where(neg, neg_losses, 0.0))
        return total / embeddings.shape[0]
    raise ValueError(f"reduction must be 'avg_nonzero' or 'sum_per_anchor', got {reduction!r}")


def _log1p_sum_exp(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Row-wise log(1 + sum_j mask_ij exp(x_ij)), stable and with zero gradient on masked-out entries."""
    masked = jnp.where(mask, x, -jnp.inf)
    with_one = jnp.concatenate([masked, jnp.zeros((x.shape[0], 1), x.dtype)], axis=1)
    return jax.nn.logsumexp(with_one, axis=1)


def multi_similarity_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                          ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                          alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                          normalize: Normalize = "l2") -> jnp.ndarray:
    """Multi-similarity loss (Wang et al. 2019; PML ``MultiSimilarityLoss``, cosine similarity).

    Per anchor: 1/alpha log(1 + sum_pos exp(-alpha (s - base))) + 1/beta log(1 + sum_neg exp(beta (s - base))),
    averaged over all anchors of the batch.
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    s = _similarities(embeddings, ref_embeddings, normalize)
    per_anchor = (_log1p_sum_exp(alpha * (base - s), pos) / alpha
                  + _log1p_sum_exp(beta * (s - base), neg) / beta)
    return jnp.mean(per_anchor)


# ------------------------------------------------------------------------------------------------- triplets


_Bound = tuple[float, bool]  # (value, inclusive)


def _tighter(a: _Bound | None, b: _Bound | None, upper: bool) -> _Bound | None:
    """The intersection of two one-sided bounds on the same side (an exclusive bound wins a tie)."""
    if a is None or b is None:
        return a if b is None else b
    if a[0] == b[0]:
        return a[0], a[1] and b[1]
    return min(a, b) if upper else max(a, b)


@dataclasses.dataclass(frozen=True)
class TripletSelection:
    """The triplets PML's ``TripletMarginMiner(margin, type_of_triplets=kind)`` keeps, described lazily.

    A miner returns this instead of a (B, M, M) mask, and ``triplet_margin_loss`` / ``margin_loss(...,
    triplets=...)`` apply it without materialising the triplets. ``margin`` is the miner's own, independent of the
    loss's. With triplet_margin = d(a, n) - d(a, p) (LpDistance of the normalised embeddings, the miner's default):
    ``"all"`` keeps triplet_margin <= margin, ``"hard"`` additionally <= 0, ``"semihard"`` additionally > 0,
    ``"easy"`` keeps triplet_margin > margin. Candidates are the triplets of ``pair_mask`` (all triplets of the
    batch or the memory if None). Static (hashable, a pytree without leaves), so it can cross ``jit``.
    """

    kind: Literal["all", "hard", "semihard", "easy"] = "all"
    margin: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in ("all", "hard", "semihard", "easy"):
            raise ValueError(f"TripletSelection.kind must be 'all', 'hard', 'semihard' or 'easy', got {self.kind!r}")

    def bounds(self) -> tuple[_Bound | None, _Bound | None]:
        """(lower, upper) bounds, each (value, inclusive) or None, on triplet_margin = d(a, n) - d(a, p)."""
        margin = float(self.margin)
        if self.kind == "easy":
            return (margin, False), None
        if self.kind == "hard":
            return None, _tighter((margin, True), (0.0, True), upper=True)
        if self.kind == "semihard":
            return (0.0, False), (margin, True)
        return None, (margin, True)

    def keep(self, triplet_margin: jnp.ndarray) -> jnp.ndarray:
        """Which triplets, given d(a, n) - d(a, p), the miner keeps."""
        lower, upper = self.bounds()
        return _within(triplet_margin, lower, upper)


def _within(t: jnp.ndarray, lower: _Bound | None, upper: _Bound | None) -> jnp.ndarray:
    kept = jnp.ones(t.shape, bool)
    if lower is not None:
        kept = kept & ((t >= lower[0]) if lower[1] else (t > lower[0]))
    if upper is not None:
        kept = kept & ((t <= upper[0]) if upper[1] else (t < upper[0]))
    return kept


jax.tree_util.register_dataclass(TripletSelection, data_fields=[], meta_fields=["kind", "margin"])


def _count_below(sorted_rows: jnp.ndarray, queries: jnp.ndarray, inclusive: bool) -> jnp.ndarray:
    """Per row, how many entries of ``sorted_rows`` are <= (``inclusive``) or < each query."""
    search = functools.partial(jnp.searchsorted, side="right" if inclusive else "left")
    return jax.vmap(search)(sorted_rows, queries)


def _triplet_counts(d: jnp.ndarray, pos: jnp.ndarray, neg: jnp.ndarray, lower: _Bound | None = None,
                    upper: _Bound | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(k, c), int (B, M): k[a, p] = #{n: (a, p, n) a triplet with d(a, n) - d(a, p) within the bounds},
    c[a, n] = #{p: the same}; 0 off the positive (k) and negative (c) pairs.

    Non-differentiable. Sorting each anchor's positive and negative distances turns every count into two
    binary searches: O(B M log M) time, O(B M) memory, whatever the number of triplets.
    """
    d = jax.lax.stop_gradient(d)
    n_pos, n_neg = jnp.sum(pos, axis=1, keepdims=True), jnp.sum(neg, axis=1, keepdims=True)
    if lower is None and upper is None:
        return jnp.where(pos, n_neg, 0), jnp.where(neg, n_pos, 0)
    pos_sorted = jnp.sort(jnp.where(pos, d, jnp.inf), axis=1)  # invalid entries last, never counted
    neg_sorted = jnp.sort(jnp.where(neg, d, jnp.inf), axis=1)
    # k: negatives n with lower < d_an - d_ap < upper, i.e. d_an in (d_ap + lower, d_ap + upper).
    k_upper = n_neg if upper is None else _count_below(neg_sorted, d + upper[0], upper[1])
    k_lower = 0 if lower is None else _count_below(neg_sorted, d + lower[0], not lower[1])
    # c: positives p with d_ap in (d_an - upper, d_an - lower).
    c_lower = n_pos if lower is None else _count_below(pos_sorted, d - lower[0], lower[1])
    c_upper = 0 if upper is None else _count_below(pos_sorted, d - upper[0], not upper[1])
    return (jnp.where(pos, jnp.maximum(k_upper - k_lower, 0), 0),
            jnp.where(neg, jnp.maximum(c_lower - c_upper, 0), 0))


def _straight_through(value: jnp.ndarray, x: jnp.ndarray, grad: jnp.ndarray) -> jnp.ndarray:
    """``value`` with d/dx = ``grad`` (first order): value + sum(grad * (x - stop_gradient(x)))."""
    return value + jnp.sum(jax.lax.stop_gradient(grad) * (x - jax.lax.stop_gradient(x)))


def triplet_margin_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                        ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                        triplets: TripletSelection | None = None, margin: float = 0.05, swap: bool = False,
                        smooth_loss: bool = False, triplets_per_anchor: str = "all",
                        normalize: Normalize = "l2") -> jnp.ndarray:
    """Triplet margin loss (PML ``TripletMarginLoss`` with ``LpDistance`` and ``AvgNonZeroReducer``).

    Over every triplet (a, p, n) (restricted by ``pair_mask`` and the mined selection ``triplets``):
    [d(a, p) - d(a, n) + margin]+ (softplus of it with ``smooth_loss``), averaged over the triplets whose loss is
    > 0. ``swap`` replaces d(a, n) by d(p, n) where that is smaller (batch-only: PML indexes its query-by-memory
    matrix with two memory indices there, so a reference set raises). Only ``triplets_per_anchor="all"``
    (PML's random sampling of triplets is not reproduced; use a miner).

    Memory O(B M): the hinge is linear in the distances on its active set, so it is computed from per-pair
    counts of active triplets (:func:`_triplet_counts`, exact value and derivatives). ``smooth_loss`` and ``swap``
    are not; they loop over each anchor's positives (one (B, M) slab per step, as many steps as the largest number
    of positives of an anchor) without gradient and get their exact first-order gradient (straight-through).
    """
    if triplets_per_anchor != "all":
        raise ValueError("triplet_margin_loss supports triplets_per_anchor='all' only (mine triplets instead)")
    if swap and ref_embeddings is not None:
        raise ValueError("swap=True needs distances between reference items; it is not defined with a reference set")
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    d = _lp_distances(embeddings, ref_embeddings, normalize)
    if not (swap or smooth_loss):  # active: d_ap - d_an + margin > 0, i.e. d_an - d_ap < margin
        lower, upper = (None, None) if triplets is None else triplets.bounds()
        k, c = _triplet_counts(d, pos, neg, lower, _tighter(upper, (float(margin), False), upper=True))
        k, c = k.astype(d.dtype), c.astype(d.dtype)
        count = jnp.sum(k)
        return (jnp.sum((k - c) * d) + margin * count) / jnp.maximum(count, 1.0)
    return _triplet_loop_loss(d, pos, neg, triplets, margin, swap, smooth_loss)


def _triplet_loop_loss(d: jnp.ndarray, pos: jnp.ndarray, neg: jnp.ndarray, triplets: TripletSelection | None,
                       margin: float, swap: bool, smooth_loss: bool) -> jnp.ndarray:
    """The triplet margin loss as a loop over positive slots: step j takes every anchor's j-th positive against all
    its negatives, a (B, M) slab; as many steps as the largest number of positives of an anchor."""
    d_fixed = jax.lax.stop_gradient(d)
    rows = jnp.arange(d.shape[0])
    n_pos = jnp.sum(pos, axis=1)
    positives_first = jnp.argsort(~pos, axis=1, stable=True)

    def step(j: jnp.ndarray, carry: tuple[jnp.ndarray, ...]) -> tuple[jnp.ndarray, ...]:
        total, count, g, g_pn = carry
        p = jax.lax.dynamic_index_in_dim(positives_first, j, axis=1, keepdims=False)  # (B,) j-th positive
        d_ap = d_fixed[rows, p][:, None]
        valid = (j < n_pos)[:, None] & neg
        d_an = d_fixed
        if triplets is not None:
            valid = valid & triplets.keep(d_an - d_ap)
        if swap:
            d_pn = d_fixed[p]  # (B, M): d(p, n), rows of the batch-by-batch distances
            use_pn = d_pn < d_an
            d_an = jnp.where(use_pn, d_pn, d_an)
        violation = d_ap - d_an + margin
        losses = jax.nn.softplus(violation) if smooth_loss else jax.nn.relu(violation)
        counted = valid & (losses > 0)
        weight = jnp.where(counted, jax.nn.sigmoid(violation) if smooth_loss else 1.0, 0.0).astype(d.dtype)
        g = g.at[rows, p].add(jnp.sum(weight, axis=1))
        if swap:
            g = g - jnp.where(use_pn, 0.0, weight)
            g_pn = g_pn.at[p].add(-jnp.where(use_pn, weight, 0.0))
        else:
            g = g - weight
        total = total + jnp.sum(jnp.where(counted, losses, 0.0))
        count = count + jnp.sum(counted).astype(d.dtype)
        return total, count, g, g_pn

    zero = jnp.zeros((), d.dtype)
    init = (zero, zero, jnp.zeros_like(d_fixed), jnp.zeros_like(d_fixed) if swap else zero)
    total, count, g, g_pn = jax.lax.fori_loop(0, jnp.max(n_pos), step, init)
    loss = _straight_through(total, d, g + g_pn if swap else g)
    return loss / jnp.maximum(count, 1.0)


# ----------------------------------------------------------------------------------------------- margin loss


def init_margin_beta(beta: float = 1.2, num_classes: int | None = None) -> jnp.ndarray:
    """The initial β of :func:`margin_loss` as PML creates it: shape (1,), or (num_classes,) per class."""
    return jnp.full((num_classes or 1,), beta, jnp.float32)


def margin_loss_init(_rng: jax.Array, _dataset_classes: int, _embedding_dim: int, /, *, beta: float = 1.2,
                     learn_beta: bool = False, num_classes: int | None = None, **_: Any) -> dict[str, jnp.ndarray]:
    """Trainable parameters of :func:`margin_loss`: ``{"beta": init_margin_beta(...)}`` if ``learn_beta``, else {}."""
    return {"beta": init_margin_beta(beta, num_classes)} if learn_beta else {}


def margin_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                triplets: TripletSelection | None = None, margin: float = 0.2, nu: float = 0.0,
                beta: float | jnp.ndarray = 1.2, triplets_per_anchor: str = "all", learn_beta: bool = False,
                num_classes: int | None = None,
                normalize: Normalize = "l2") -> jnp.ndarray:
    """Margin loss (Wu et al. 2017; PML ``MarginLoss`` with ``LpDistance`` and ``DivisorReducer``).

    Over every triplet (a, p, n): [d(a, p) - β + margin]+ + [β - d(a, n) + margin]+, summed and divided by the
    number of non-zero terms; plus, with ``learn_beta``, PML's regulariser ν·β (shared β: added once whenever
    there are triplets; per-class β: ν·sum over triplets of β[label(a)] / the same divisor).

    ``beta`` is a scalar, shape (1,) (shared) or (C,) (per class, indexed by the anchor's label). PML learns β as
    a loss parameter; here the caller owns it: store ``margin_loss_init(...)["beta"]`` (``init_margin_beta``;
    shape (num_classes,) when ``num_classes`` is given) with the trainable parameters and pass it as ``beta=``
    with ``learn_beta=True``. With ``learn_beta=False`` β is a constant (gradient stopped) and ν is ignored, as
    in PML. The loss needs only the pair distances and per-pair triplet counts: O(B M) memory.
    """
    if triplets_per_anchor != "all":
        raise ValueError("margin_loss supports triplets_per_anchor='all' only (mine triplets instead)")
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    d = _lp_distances(embeddings, ref_embeddings, normalize)
    beta = jnp.asarray(beta, d.dtype)
    if not learn_beta:
        beta = jax.lax.stop_gradient(beta)
    if num_classes and beta.size == 1:
        beta = jnp.broadcast_to(beta.reshape(()), (num_classes,))
    per_class = beta.size > 1
    beta_a = beta[labels] if per_class else beta.reshape(())
    beta_rows = beta_a[:, None] if per_class else beta_a
    t_ap, t_an = _triplet_counts(d, pos, neg, *(triplets.bounds() if triplets is not None else (None, None)))
    t_ap, t_an = t_ap.astype(d.dtype), t_an.astype(d.dtype)
    pos_losses = jax.nn.relu(d - beta_rows + margin)
    neg_losses = jax.nn.relu(beta_rows - d + margin)
    divisor = jnp.sum(jnp.where(pos_losses > 0, t_ap, 0.0)) + jnp.sum(jnp.where(neg_losses > 0, t_an, 0.0))
    safe_divisor = jnp.maximum(divisor, 1.0)
    total = jnp.sum(t_ap * pos_losses) + jnp.sum(t_an * neg_losses)
    loss = jnp.where(divisor > 0, total / safe_divisor, 0.0)
    if learn_beta:
        per_anchor = jnp.sum(t_ap, axis=1)  # triplets per anchor
        if per_class:
            reg = jnp.where(divisor > 0, nu * jnp.sum(per_anchor * beta_a) / safe_divisor, 0.0)
        else:
            reg = nu * beta_a
        loss = loss + jnp.where(jnp.sum(per_anchor) > 0, reg, 0.0)
    return loss


# ------------------------------------------------------------------------------------------- lifted structure


def lifted_structure_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                          ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                          neg_margin: float = 1.0, pos_margin: float = 0.0,
                          normalize: Normalize = "l2") -> jnp.ndarray:
    """Lifted structure loss (Oh Song et al. 2016; PML ``LiftedStructureLoss``, LpDistance, mean reducer).

    For each positive pair (a, p): 1/2 [log(sum_{n in N(a) ∪ N(p)} exp(neg_margin - d)) + d(a, p) - pos_margin]+²,
    where N(i) are the negative pairs anchored at i; averaged over all positive pairs (the log-term is 0 when
    both have no negatives). With a reference set N(p) is empty: the positive is a reference item, whose
    distances to other reference items are not computed (PML instead matches the reference index p against
    batch indices there, which mixes unrelated items).
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    d = _lp_distances(embeddings, ref_embeddings, normalize)
    scores = neg_margin - d  # in [neg_margin - 2, neg_margin]: exp is safe after shifting by the max
    top = jax.lax.stop_gradient(jnp.max(jnp.where(neg, scores, -jnp.inf)))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    mass = jnp.sum(jnp.exp(jnp.where(neg, scores - top, -jnp.inf)), axis=1)  # per anchor, 0 without negatives
    union = mass[:, None] + (mass[None, :] if ref_embeddings is None else 0.0)
    present = union > 0
    log_term = jnp.where(present, jnp.log(jnp.where(present, union, 1.0)) + top, 0.0)
    losses = jnp.square(jax.nn.relu(log_term + d - pos_margin)) / 2
    loss = jnp.sum(jnp.where(pos, losses, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
    return _generic_pair_guard(jnp.where(jnp.any(pos) & jnp.any(neg), loss, 0.0), pos, neg)


def generalized_lifted_structure_loss(embeddings: jnp.ndarray, labels: jnp.ndarray,
                                      ref_embeddings: jnp.ndarray | None = None,
                                      ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                                      neg_margin: float = 1.0, pos_margin: float = 0.0,
                                      normalize: Normalize = "l2") -> jnp.ndarray:
    """Generalised lifted structure loss (Hermans et al. 2017; PML ``GeneralizedLiftedStructureLoss``).

    Per anchor: [log sum_pos exp(d - pos_margin) + log sum_neg exp(neg_margin - d)]+ (an empty sum's log is 0),
    averaged over all anchors.
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    d = _lp_distances(embeddings, ref_embeddings, normalize)
    per_anchor = jax.nn.relu(_masked_logsumexp(d - pos_margin, pos) + _masked_logsumexp(neg_margin - d, neg))
    return _generic_pair_guard(jnp.mean(per_anchor), pos, neg)


# ----------------------------------------------------------------------------------------------------- N-pairs


def n_pairs_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                 ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """N-pairs loss (Sohn 2016; PML ``NPairsLoss``: normalised dot product, i.e. cosine similarity, temperature 1).

    One positive pair per class, chosen exactly as PML does: in row-major order of the positive pairs, the
    first pair of each label, i.e. anchor = the first sample of the class that has a positive, positive = that
    anchor's first positive (without ``pair_mask``: the class's first and second samples in the batch). Classes
    without a positive pair are left out. Loss: cross-entropy of each chosen anchor against all chosen
    positives (its own is the target), averaged. No reference set (PML raises too).
    """
    if ref_embeddings is not None or ref_labels is not None:
        raise ValueError("n_pairs_loss does not support a reference set (neither does PML's NPairsLoss)")
    pos, _ = pair_masks(labels, None, pair_mask)
    has_pos = jnp.any(pos, axis=1)
    index = jnp.arange(labels.shape[0])
    earlier_same = (labels[:, None] == labels[None, :]) & (index[None, :] < index[:, None]) & has_pos[None, :]
    chosen = has_pos & ~jnp.any(earlier_same, axis=1)
    # At most B // 2 pairs exist: gather them to the front so the logits are (B/2, B/2), not (B, B).
    slots = max(1, labels.shape[0] // 2)
    rows = jnp.argsort(~chosen, stable=True)[:slots]
    valid = chosen[rows]
    x = l2_normalize(embeddings)
    anchors, positives = x[rows], x[jnp.argmax(pos, axis=1)[rows]]
    logits = jnp.matmul(anchors, positives.T, precision=_HIGHEST)
    cross_entropy = _masked_logsumexp(logits, valid[None, :]) - jnp.diagonal(logits)
    return jnp.sum(jnp.where(valid, cross_entropy, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# ------------------------------------------------------------------------------------------------------ circle


def circle_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                m: float = 0.4, gamma: float = 80.0,
                normalize: Normalize = "l2") -> jnp.ndarray:
    """Circle loss (Sun et al. 2020; PML ``CircleLoss``, cosine similarity, ``AvgNonZeroReducer``).

    Per anchor: softplus(logsumexp_pos(-γ [1 + m - s]+ (s - (1 - m))) + logsumexp_neg(γ [s + m]+ (s - m))), the
    weights [·]+ gradient-stopped; anchors without a positive or a negative count 0; mean over non-zero anchors.
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    s = _similarities(embeddings, ref_embeddings, normalize)
    s_fixed = jax.lax.stop_gradient(s)
    pos_logits = -gamma * jax.nn.relu(1 + m - s_fixed) * (s - (1 - m))
    neg_logits = gamma * jax.nn.relu(s_fixed + m) * (s - m)
    per_anchor = jax.nn.softplus(_masked_logsumexp(pos_logits, pos) + _masked_logsumexp(neg_logits, neg))
    per_anchor = jnp.where(jnp.any(pos, axis=1) & jnp.any(neg, axis=1), per_anchor, 0.0)
    return _generic_pair_guard(_mean_of_positive(per_anchor, per_anchor > 0), pos, neg)


# ------------------------------------------------------------------------------------------- SupCon / NT-Xent


def supcon_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                temperature: float = 0.1,
                normalize: Normalize = "l2") -> jnp.ndarray:
    """Supervised contrastive loss (Khosla et al. 2020; PML ``SupConLoss``, cosine similarity).

    Per anchor: -mean_pos log(exp(s_ap / T) / sum_{pos ∪ neg} exp(s / T)); mean over the anchors whose loss is
    > 0; 0 unless the batch has a positive and a negative pair.
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    logits = _similarities(embeddings, ref_embeddings, normalize) / temperature
    log_prob = logits - _masked_logsumexp(logits, pos | neg)[:, None]
    n_pos = jnp.sum(pos, axis=1)
    per_anchor = -jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.maximum(n_pos, 1)
    loss = _mean_of_positive(per_anchor, per_anchor > 0)
    return _generic_pair_guard(jnp.where(jnp.any(pos) & jnp.any(neg), loss, 0.0), pos, neg)


def ntxent_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                temperature: float = 0.07,
                normalize: Normalize = "l2") -> jnp.ndarray:
    """NT-Xent / InfoNCE (Chen et al. 2020; PML ``NTXentLoss``, cosine similarity).

    Per positive pair (a, p): -log(exp(s_ap / T) / (exp(s_ap / T) + sum_{n in N(a)} exp(s_an / T))), averaged over
    all positive pairs; 0 unless the batch has a positive and a negative pair. (PML adds the smallest normal
    float inside the log; that changes nothing above ~1e-300.)
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    logits = _similarities(embeddings, ref_embeddings, normalize) / temperature
    neg_lse = _masked_logsumexp(logits, neg)
    has_neg = jnp.any(neg, axis=1)[:, None]
    denominator = jnp.where(has_neg, jnp.logaddexp(logits, neg_lse[:, None]), logits)
    losses = denominator - logits
    loss = jnp.sum(jnp.where(pos, losses, 0.0)) / jnp.maximum(jnp.sum(pos), 1)
    return _generic_pair_guard(jnp.where(jnp.any(pos) & jnp.any(neg), loss, 0.0), pos, neg)
