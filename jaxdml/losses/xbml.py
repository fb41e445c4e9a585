"""XBML's cross-batch loss: prototypes fitted to one half of the batch must serve the other, class-disjoint half.

XBML ("Generalizable Embeddings with Cross-batch Metric Learning", Gurbuz and Alatan, ICIP 2023) released no code
and only its abstract is available to us. The abstract states: (i) GAP is a convex combination of learnable
prototypes (``jaxdml.layers.xbml``: ``GAP(x) = sum_k a_k mu_k``); (ii) learning the prototypes is a recursive
process that fits a linear predictor to a batch; (iii) each iteration draws two batches of disjoint classes and
expresses each batch's samples with the prototypes fitted to the other. Everything below that is more specific
is inferred, and both readings are offered (``loss.xbml.reading``):

* ``r1`` (code-backed): the GSP release's zero-shot mechanism (``zsr_loss.py``) on the coefficients. A ridge map
  from half A's coefficients to learnable class embeddings predicts half B's class embeddings; cross-entropy of
  ``scale * <prediction, class embeddings>`` against B's labels, and symmetrically (ridge 0.05, scale 9.5:
  the release's values). This is :func:`jaxdml.losses.zero_shot_loss`.
* ``r2`` (the abstract's wording): the prototypes fitted to half A are the ridge solution mapping A's
  coefficients to A's embeddings, ``W_A = A_A^T (A_A A_A^T + lambda I)^-1 E_A`` (K, D) (``E``: the raw GAP
  embeddings, before normalisation); half B is re-expressed as ``A_B W_A``, normalised as the embeddings are,
  and the configured metric-learning loss is applied to the re-expressed half with B's labels (pairs within
  the half), and symmetrically.

The halves are the first half of the batch's classes (in order of appearance) and the rest; an M-per-class batch
of 2P classes is thereby two M-per-class batches of P disjoint classes. The ridge system is solved in the dual
(B x B) since a half (16 rows under the MLRC batch of 8 x 4) has fewer rows than K = 32. The total is
``(1 - weight) * L + weight * L_xbml``, as GSP's ZSR (weight 0.1 there; XBML's own weight is not known).
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from jaxdml.losses.pair import normalize_embeddings
from jaxdml.losses.zsr import class_disjoint_halves, cross_batch_predict, ridge_weights, zero_shot_loss

# loss.xbml.reading -> what it is; the one list of valid names.
READINGS: dict[str, str] = {
    "r1": "ridge from coefficients to learnable class embeddings, cross-entropy on the other half (ZSR)",
    "r2": "prototypes fitted to one half re-express the other half under the metric-learning loss",
}

__all__ = ["READINGS", "cross_batch_prototypes", "reexpressed_embeddings", "reexpressed_loss", "ridge_weights",
           "same_half_pairs", "zero_shot_loss"]


def cross_batch_prototypes(coefficients: jnp.ndarray, embeddings: jnp.ndarray, fit: jnp.ndarray,
                           ridge: float = 0.05) -> jnp.ndarray:
    """The prototypes (K, D) that best express the ``fit`` rows' embeddings (B, D) from their coefficients (B, K):
    ``W = A^T (A A^T + ridge I)^-1 E`` over those rows."""
    return ridge_weights(coefficients, embeddings, fit, ridge)


def reexpressed_embeddings(coefficients: jnp.ndarray, embeddings: jnp.ndarray, labels: jnp.ndarray,
                           ridge: float = 0.05) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(re-expressed (B, D), valid): each sample as ``a_i W`` with W the prototypes fitted to the other half."""
    return cross_batch_predict(coefficients, embeddings, labels, ridge)


def same_half_pairs(labels: jnp.ndarray) -> jnp.ndarray:
    """(B, B) mask of the pairs within one class-disjoint half (the pairs reading r2 scores)."""
    in_a, _ = class_disjoint_halves(labels)
    return in_a[:, None] == in_a[None, :]


def reexpressed_loss(loss: Callable[..., jnp.ndarray], coefficients: jnp.ndarray, embeddings: jnp.ndarray,
                     labels: jnp.ndarray, *, ridge: float = 0.05, normalize: str = "l2") -> jnp.ndarray:
    """Reading r2 for one pair loss ``loss(embeddings, labels, pair_mask=...)``: the loss of the re-expressed
    embeddings (normalised as ``normalize`` says), pairs within each half; 0 with fewer than two classes."""
    reexpressed, valid = reexpressed_embeddings(coefficients, embeddings, labels, ridge)
    value = loss(normalize_embeddings(reexpressed, normalize), labels, pair_mask=same_half_pairs(labels))
    return jnp.where(valid, value, 0.0)
