"""Miners as pure functions: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None, **hp)``.

Each pair miner returns a boolean ``pair_mask`` (B, M) for the pair losses of :mod:`jaxdml.losses.pair`:
``mask[a, j]`` says the pair (anchor ``a``, reference ``j``) is kept; whether it is a positive or a negative
pair follows from the labels. The masks select exactly the pairs pytorch-metric-learning's miner of the same
name returns (PML's ``(a1, p, a2, n)`` is the set ``mask[a1, p]`` and ``mask[a2, n]``), with static shapes
and O(B M) memory, so they run inside ``jit``. The reference set is the batch unless given; without one the
diagonal (i, i) is never a pair. Mining sees no gradient (PML mines under ``torch.no_grad``).

``pair_mask`` (B, M), optional, restricts the candidates: pairs outside it are neither selected nor influence
the selection (the hardest negative of batch-hard, the thresholds of multi-similarity). Pass the filled slots
of a cross-batch memory, and the result equals PML's miner run on the filled part only. (PML's
``CrossBatchMemory`` mines with the batch's own copies in the memory and removes those self-pairs afterwards;
excluding them in ``pair_mask`` beforehand selects the same pairs, since a self-pair, at distance 0, is never
the hardest positive nor decides a threshold unless it is the anchor's only positive, when either way the
anchor keeps no positive.)

The triplet-margin miner selects triplets (a, p, n) jointly, which a (B, M) mask cannot express; it
returns a :class:`~jaxdml.losses.pair.TripletSelection` that the triplet loss evaluates anchor by anchor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxdml.layers import l2_normalize
from jaxdml.losses.pair import TripletSelection, cosine_similarities, euclidean_distances, pair_masks


def _no_grad(embeddings: jnp.ndarray, ref_embeddings: jnp.ndarray | None
             ) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    sg = jax.lax.stop_gradient
    return sg(embeddings), None if ref_embeddings is None else sg(ref_embeddings)


def _lp_distances(embeddings: jnp.ndarray, ref_embeddings: jnp.ndarray | None) -> jnp.ndarray:
    """PML's default ``LpDistance()``: L2 distances between L2-normalised embeddings."""
    return euclidean_distances(l2_normalize(embeddings), None if ref_embeddings is None
                               else l2_normalize(ref_embeddings))


def multi_similarity_miner(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                           ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                           epsilon: float = 0.1) -> jnp.ndarray:
    """PML ``MultiSimilarityMiner`` (cosine similarity s): informative pairs of Wang et al. 2019.

    Keeps a positive (a, p) if s_ap - epsilon < max_n s_an and a negative (a, n) if s_an + epsilon > min_p s_ap
    (max/min over the anchor's negatives/positives; an anchor without negatives keeps no positive and vice versa).
    """
    embeddings, ref_embeddings = _no_grad(embeddings, ref_embeddings)
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    s = cosine_similarities(embeddings, ref_embeddings)
    hardest_neg = jnp.max(jnp.where(neg, s, -jnp.inf), axis=1, keepdims=True)
    hardest_pos = jnp.min(jnp.where(pos, s, jnp.inf), axis=1, keepdims=True)
    return (pos & (s - epsilon < hardest_neg)) | (neg & (s + epsilon > hardest_pos))


def pair_margin_miner(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                      ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                      pos_margin: float = 0.2, neg_margin: float = 0.8) -> jnp.ndarray:
    """PML ``PairMarginMiner`` (L2 distance d of normalised embeddings): the pairs that violate a margin.

    Keeps positives with d > pos_margin and negatives with d < neg_margin.
    """
    embeddings, ref_embeddings = _no_grad(embeddings, ref_embeddings)
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    d = _lp_distances(embeddings, ref_embeddings)
    return (pos & (d > pos_margin)) | (neg & (d < neg_margin))


def batch_hard_miner(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                     ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """PML ``BatchHardMiner`` (L2 distance of normalised embeddings): per anchor its farthest positive and
    nearest negative, ties going to the lowest reference index as in PML.

    Anchors lacking a positive or a negative keep no pair. Each kept anchor has exactly one positive and one
    negative in the mask, so the triplets {(a, p, n): mask[a, p] & mask[a, n]} are PML's mined triplets.
    """
    embeddings, ref_embeddings = _no_grad(embeddings, ref_embeddings)
    pos, neg = pair_masks(labels, ref_labels, pair_mask)
    d = _lp_distances(embeddings, ref_embeddings)
    hardest_pos = jnp.argmax(jnp.where(pos, d, -jnp.inf), axis=1)  # argmax/argmin: the first on ties
    hardest_neg = jnp.argmin(jnp.where(neg, d, jnp.inf), axis=1)
    keep = (jnp.any(pos, axis=1) & jnp.any(neg, axis=1))[:, None]
    columns = jnp.arange(d.shape[1])[None, :]
    return keep & ((columns == hardest_pos[:, None]) | (columns == hardest_neg[:, None]))


def triplet_margin_miner(embeddings: jnp.ndarray, labels: jnp.ndarray, ref_embeddings: jnp.ndarray | None = None,
                         ref_labels: jnp.ndarray | None = None, *, pair_mask: jnp.ndarray | None = None,
                         margin: float = 0.2,
                         type_of_triplets: Literal["all", "hard", "semihard", "easy"] = "all") -> TripletSelection:
    """PML ``TripletMarginMiner`` (L2 distance d of normalised embeddings), as a lazy :class:`TripletSelection`.

    With m = d(a, n) - d(a, p): ``"all"`` keeps m <= margin, ``"hard"`` m <= min(margin, 0), ``"semihard"``
    0 < m <= margin, ``"easy"`` m > margin. The choice depends on (a, p, n) jointly, so it is not a pair mask
    (that would take B M² memory): pass the result as ``triplets=`` to a triplet loss, which evaluates it on its
    own distances (the same L2 distances) anchor by anchor. The embeddings are not needed until then.
    """
    del embeddings, labels, ref_embeddings, ref_labels, pair_mask  # evaluated inside the loss (with its pair_mask)
    return TripletSelection(kind=type_of_triplets, margin=margin)


MINERS: dict[str, Callable[..., Any]] = {
    "multi_similarity": multi_similarity_miner,
    "pair_margin": pair_margin_miner,
    "batch_hard": batch_hard_miner,
    "triplet_margin": triplet_margin_miner,
}
