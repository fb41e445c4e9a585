"""Pair-based losses, as pytorch-metric-learning defines them.

Each anchor of the batch is paired with every item of a reference set: by default the batch itself
(the pair (i, i) excluded, every other pair used in both orders), or a memory of past embeddings
(cross-batch memory), where ``pair_mask`` (B, M) says which pairs exist. Positives are pairs with equal
labels. Embeddings are L2-normalised inside (PML's distances do the same), so raw vectors are accepted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdml.layers import l2_normalize

_HIGHEST = jax.lax.Precision.HIGHEST


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


def _mean_of_positive(losses: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """PML's AvgNonZeroReducer: the mean of the masked losses that are > 0 (0 if there are none)."""
    active = mask & (losses > 0)
    return jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(active), 1)


def contrastive_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                     ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                     pos_margin: float = 0.0, neg_margin: float = 1.0, distance: str = "euclidean") -> jnp.ndarray:
    """Contrastive loss (PML ``ContrastiveLoss``; defaults equal PML's).

    ``distance="euclidean"``: [d - pos_margin]+ on positives, [neg_margin - d]+ on negatives.
    ``distance="cosine"`` (similarity s): [pos_margin - s]+ and [s - neg_margin]+. Positive and negative
    terms are each averaged over their non-zero entries, then summed.
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    if distance == "euclidean":
        d = euclidean_distances(l2_normalize(embeddings),
                                None if ref_embeddings is None else l2_normalize(ref_embeddings))
        pos_losses, neg_losses = jax.nn.relu(d - pos_margin), jax.nn.relu(neg_margin - d)
    elif distance == "cosine":
        s = cosine_similarities(embeddings, ref_embeddings)
        pos_losses, neg_losses = jax.nn.relu(pos_margin - s), jax.nn.relu(s - neg_margin)
    else:
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    return _mean_of_positive(pos_losses, pos) + _mean_of_positive(neg_losses, neg)


def _log1p_sum_exp(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Row-wise log(1 + sum_j mask_ij exp(x_ij)), stable and with zero gradient on masked-out entries."""
    masked = jnp.where(mask, x, -jnp.inf)
    with_one = jnp.concatenate([masked, jnp.zeros((x.shape[0], 1), x.dtype)], axis=1)
    return jax.nn.logsumexp(with_one, axis=1)


def multi_similarity_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                          ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                          alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> jnp.ndarray:
    """Multi-similarity loss (Wang et al. 2019; PML ``MultiSimilarityLoss``, cosine similarity).

    Per anchor: 1/alpha log(1 + sum_pos exp(-alpha (s - base))) + 1/beta log(1 + sum_neg exp(beta (s - base))),
    averaged over all anchors of the batch.
    """
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    s = cosine_similarities(embeddings, ref_embeddings)
    per_anchor = (_log1p_sum_exp(alpha * (base - s), pos) / alpha
                  + _log1p_sum_exp(beta * (s - base), neg) / beta)
    return jnp.mean(per_anchor)
