"""The zero-shot (ZSR) loss of GSP: attributes of one half of the batch must predict the other half's classes.

The batch is split into two class-disjoint halves A and B (the first half of its classes, in order of
appearance, and the rest). A ridge predictor from attributes to learnable class embeddings ``Y`` is fitted on
A, ``W = X_A^T (X_A X_A^T + lambda I)^-1 Y_A``, and predicts ``Y_B_hat = X_B W``; the logits
``scale * Y_B_hat Y^T`` over all classes are scored with cross-entropy against B's labels, and symmetrically
from B to A. Defaults are the released code's (lambda 0.05, scale 9.5). The same cross-batch ridge mechanism
is XBML's (``jaxdml.losses.xbml``), on the coefficients of its prototype head.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def class_disjoint_halves(labels: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Boolean masks (A, B) over the batch: the first half of its classes (by first appearance) and the rest."""
    same = labels[:, None] == labels[None, :]
    first_index = jnp.argmax(same, axis=1)  # first position holding each sample's class
    is_first = first_index == jnp.arange(labels.shape[0])
    class_rank = (jnp.cumsum(is_first) - 1)[first_index]
    num_classes = jnp.sum(is_first)
    in_a = class_rank < num_classes // 2
    return in_a, ~in_a


def ridge_weights(x: jnp.ndarray, targets: jnp.ndarray, fit: jnp.ndarray, ridge: float) -> jnp.ndarray:
    """The ridge-regression map W (K, D) from the rows ``x`` (B, K) to ``targets`` (B, D) where ``fit`` is True.

    ``W = argmin ||X W - Y||^2 + ridge ||W||^2 = X^T (X X^T + ridge I)^-1 Y``, solved in the dual (B x B): the
    batch usually has fewer rows than K. Rows outside ``fit`` are zeroed, which leaves W unchanged (their block of
    the Gram matrix is ``ridge I`` and their targets are 0). Float32 or wider, full matmul precision.
    """
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    x_fit = jnp.where(fit[:, None], x, 0.0).astype(dtype)
    y_fit = jnp.where(fit[:, None], targets, 0.0).astype(dtype)
    gram = jnp.matmul(x_fit, x_fit.T, precision=_HIGHEST) + ridge * jnp.eye(x.shape[0], dtype=dtype)
    return jnp.matmul(x_fit.T, jnp.linalg.solve(gram, y_fit), precision=_HIGHEST)


def cross_batch_predict(x: jnp.ndarray, targets: jnp.ndarray, labels: jnp.ndarray, ridge: float
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(predictions (B, D), valid): each row of one class-disjoint half predicted as ``x_i W`` with W the ridge
    fit (:func:`ridge_weights`) of ``targets`` on the other half; ``valid`` is False when the batch has fewer
    than two classes (the predictions are then meaningless)."""
    in_a, in_b = class_disjoint_halves(labels)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    from_a = jnp.matmul(x, ridge_weights(x, targets, in_a, ridge), precision=_HIGHEST)
    from_b = jnp.matmul(x, ridge_weights(x, targets, in_b, ridge), precision=_HIGHEST)
    return jnp.where(in_b[:, None], from_a, from_b), jnp.any(in_a) & jnp.any(in_b)


def zero_shot_loss(attributes: jnp.ndarray, labels: jnp.ndarray, class_embeddings: jnp.ndarray, *,
                   ridge: float = 0.05, scale: float = 9.5) -> jnp.ndarray:
    """Mean cross-entropy of every sample's class, predicted from the other half's ridge fit (0 if < 2 classes)."""
    predicted, valid = cross_batch_predict(attributes, class_embeddings[labels], labels, ridge)
    logits = scale * jnp.matmul(predicted, class_embeddings.T, precision=_HIGHEST)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    return jnp.where(valid, jnp.mean(nll), 0.0)
