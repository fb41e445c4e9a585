"""Pair-based losses on a batch of embeddings, as pytorch-metric-learning defines them.

Every pair (i, j), i != j, of the batch is used in both orders, positives are pairs with equal labels.
Embeddings are L2-normalised inside (PML's distances do the same), so the losses accept raw vectors too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdml.layers import l2_normalize


def pair_masks(labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(positive, negative) boolean (B, B) masks; the diagonal is neither."""
    same = labels[:, None] == labels[None, :]
    eye = jnp.eye(labels.shape[0], dtype=bool)
    return same & ~eye, ~same


def euclidean_distances(x: jnp.ndarray) -> jnp.ndarray:
    """Pairwise L2 distances in O(B^2) memory, with a zero (not NaN) gradient where vectors coincide."""
    sq_norms = jnp.sum(jnp.square(x), axis=-1)
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * gram, 0.0)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def cosine_similarities(x: jnp.ndarray) -> jnp.ndarray:
    x = l2_normalize(x)
    return jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)


def _mean_of_positive(losses: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """PML's AvgNonZeroReducer: the mean of the masked losses that are > 0 (0 if there are none)."""
    active = mask & (losses > 0)
    return jnp.sum(jnp.where(active, losses, 0.0)) / jnp.maximum(jnp.sum(active), 1)


def contrastive_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, *, pos_margin: float = 0.0,
                     neg_margin: float = 1.0, distance: str = "euclidean") -> jnp.ndarray:
    """Contrastive loss (PML ``ContrastiveLoss``; defaults equal PML's).

    ``distance="euclidean"``: [d - pos_margin]+ on positives, [neg_margin - d]+ on negatives.
    ``distance="cosine"`` (similarity s): [pos_margin - s]+ and [s - neg_margin]+. Positive and negative
    terms are each averaged over their non-zero entries, then summed.
    """
    pos, neg = pair_masks(labels)
    if distance == "euclidean":
        d = euclidean_distances(l2_normalize(embeddings))
        pos_losses, neg_losses = jax.nn.relu(d - pos_margin), jax.nn.relu(neg_margin - d)
    elif distance == "cosine":
        s = cosine_similarities(embeddings)
        pos_losses, neg_losses = jax.nn.relu(pos_margin - s), jax.nn.relu(s - neg_margin)
    else:
        raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
    return _mean_of_positive(pos_losses, pos) + _mean_of_positive(neg_losses, neg)


def _log1p_sum_exp(x: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Row-wise log(1 + sum_j mask_ij exp(x_ij)), stable and with zero gradient on masked-out entries."""
    masked = jnp.where(mask, x, -jnp.inf)
    with_one = jnp.concatenate([masked, jnp.zeros((x.shape[0], 1), x.dtype)], axis=1)
    return jax.nn.logsumexp(with_one, axis=1)


def multi_similarity_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, *, alpha: float = 2.0,
                          beta: float = 50.0, base: float = 0.5) -> jnp.ndarray:
    """Multi-similarity loss (Wang et al. 2019; PML ``MultiSimilarityLoss``, cosine similarity).

    Per anchor: 1/alpha log(1 + sum_pos exp(-alpha (s - base))) + 1/beta log(1 + sum_neg exp(beta (s - base))),
    averaged over all anchors of the batch.
    """
    pos, neg = pair_masks(labels)
    s = cosine_similarities(embeddings)
    per_anchor = (_log1p_sum_exp(alpha * (base - s), pos) / alpha
                  + _log1p_sum_exp(beta * (s - base), neg) / beta)
    return jnp.mean(per_anchor)
