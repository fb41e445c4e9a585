"""The teacher artefacts LeTKD distils from, computed once from a frozen teacher's feature maps.

Penultimate layer (letKD-1 and -2, after QuEST):
  * :func:`kmeans_codebook`: K (4,096) k-means words of the teacher's last-stage local features;
  * :func:`soft_assignment`: ``p_T = softmax(-‖f_T - ρ_k‖² / T)`` (T = 1) for every location, computed online.

Intermediate layer (letKD-2, after the first block of stage 3):
  * :func:`fit_lda`: Fisher LDA of the local features (labelled by their image's class) to 60 dimensions;
  * :func:`subclass_centres`: k-means with 8 sub-classes inside every class (800 for CIFAR-100), centres
    ordered class by class;
  * :func:`score_matrix`: row s = among the samples of sub-class s, the fraction whose nearest centre over
    all sub-classes is s';
  * :func:`subclass_targets`: the score row of the nearest sub-class *within the ground-truth class*,
    computed online for every location.

The offline parts are numpy/scipy on the host (run once per teacher); the online parts are JAX.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from jaxdml.eval.clustering import kmeans


def _subsample(features: np.ndarray, labels: np.ndarray | None, max_points: int | None, seed: int):
    if max_points is None or len(features) <= max_points:
        return features, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(features), max_points, replace=False))
    return features[keep], (None if labels is None else labels[keep])


def kmeans_codebook(features: np.ndarray, num_words: int, *, seed: int = 0, n_iter: int = 20,
                    max_points: int | None = None) -> np.ndarray:
    """(num_words, C) k-means centres of the rows of ``features`` (optionally of a random subsample)."""
    features, _ = _subsample(np.asarray(features, np.float32), None, max_points, seed)
    return np.asarray(kmeans(features, num_words, n_iter=n_iter, seed=seed).centroids)


def squared_distances(x: jnp.ndarray, centres: jnp.ndarray) -> jnp.ndarray:
    """‖x - c‖² for every row of x (..., C) and every centre (K, C), at full float32 precision."""
    x = x.astype(jnp.float32)
    centres = centres.astype(jnp.float32)
    cross = jnp.einsum("...c,kc->...k", x, centres, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(x * x, axis=-1, keepdims=True) + jnp.sum(centres * centres, axis=-1) - 2.0 * cross


def soft_assignment(features: jnp.ndarray, codebook: jnp.ndarray, temperature: float = 1.0) -> jnp.ndarray:
    """``softmax(-‖f - ρ_k‖² / temperature)`` over the K words, for features (..., C)."""
    return jax.nn.softmax(-squared_distances(features, codebook) / temperature, axis=-1)


@dataclasses.dataclass(frozen=True)
class LDAProjection:
    """``project(x) = (x - mean) @ scalings`` (scalings (C, n), sorted by decreasing discriminant ratio)."""

    scalings: np.ndarray
    mean: np.ndarray
    ratios: np.ndarray  # between / within-class variance along each direction

    def project(self, x):
        xp = jnp if isinstance(x, jax.Array) else np
        return (x - xp.asarray(self.mean)) @ xp.asarray(self.scalings)


def fit_lda(features: np.ndarray, labels: np.ndarray, num_components: int, *, shrinkage: float = 1e-6
            ) -> LDAProjection:
    """Fisher LDA: directions w maximising wᵀS_b w / wᵀS_w w, normalised to unit within-class variance.

    S_w is the pooled within-class scatter divided by N, S_b the covariance of the class means weighted by
    class frequency (so the projected classes have unit within-class variance, as scikit-learn's scalings).
    The generalised symmetric eigenproblem S_b w = λ S_w w is solved in float64 (S_w gets ``shrinkage`` x its
    mean eigenvalue on the diagonal against rank deficiency). The projection equals scikit-learn's
    ``LinearDiscriminantAnalysis`` (svd solver; the original code's) up to the sign of each component.
    """
    x = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes, inverse = np.unique(labels, return_inverse=True)
    if num_components > min(len(classes) - 1, x.shape[1]):
        raise ValueError(f"fit_lda: at most min(classes - 1, dims) = {min(len(classes) - 1, x.shape[1])} "
                         f"components, asked for {num_components}")
    counts = np.bincount(inverse).astype(np.float64)
    means = np.zeros((len(classes), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    mean = (counts / counts.sum()) @ means
    within = x - means[inverse]
    s_w = within.T @ within / len(x)
    centred_means = (means - mean) * np.sqrt(counts / counts.sum())[:, None]
    s_b = centred_means.T @ centred_means
    s_w += shrinkage * np.trace(s_w) / len(s_w) * np.eye(len(s_w))
    ratios, vectors = scipy.linalg.eigh(s_b, s_w)  # ascending; vectorsᵀ S_w vectors = I
    order = np.argsort(ratios)[::-1][:num_components]
    return LDAProjection(vectors[:, order].astype(np.float32), mean.astype(np.float32),
                         ratios[order].astype(np.float32))


@dataclasses.dataclass(frozen=True)
class SubclassCentres:
    centres: np.ndarray  # (classes * per_class, n); class c owns rows c*per_class ... (c+1)*per_class - 1
    assignment: np.ndarray  # (N,) the sub-class of every sample (within its own class's clustering)
    per_class: int


def subclass_centres(projected: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int = 8, *,
                     seed: int = 0, n_iter: int = 20) -> SubclassCentres:
    """k-means with ``per_class`` clusters inside every class 0..num_classes-1 (each needs that many samples)."""
    projected = np.asarray(projected, np.float32)
    labels = np.asarray(labels)
    centres = np.zeros((num_classes * per_class, projected.shape[1]), np.float32)
    assignment = np.zeros(len(projected), np.int64)
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise ValueError(f"subclass_centres: class {c} has {len(rows)} samples, fewer than {per_class} "
                             f"sub-classes")
        result = kmeans(projected[rows], per_class, n_iter=n_iter, seed=seed + c)
        centres[c * per_class:(c + 1) * per_class] = np.asarray(result.centroids)
        assignment[rows] = c * per_class + np.asarray(result.labels)
    return SubclassCentres(centres, assignment, per_class)


def score_matrix(projected: np.ndarray, assignment: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(S, S): row s = distribution, over the samples of sub-class s, of their nearest centre s' (all S).

    A sub-class without samples (possible only with given centres) gets the one-hot row of itself.
    """
    num = len(centres)
    nearest = np.asarray(jnp.argmin(squared_distances(jnp.asarray(projected), jnp.asarray(centres)), axis=-1))
    counts = np.zeros((num, num), np.float64)
    np.add.at(counts, (np.asarray(assignment), nearest), 1.0)
    totals = counts.sum(axis=1, keepdims=True)
    empty = totals[:, 0] == 0
    counts[empty, np.flatnonzero(empty)] = 1.0
    totals[empty] = 1.0
    return (counts / totals).astype(np.float32)


def subclass_targets(projected: jnp.ndarray, labels: jnp.ndarray, centres: jnp.ndarray, scores: jnp.ndarray,
                     per_class: int) -> jnp.ndarray:
    """Score rows of each location's nearest sub-class within its label: projected (B, H, W, n), labels (B,)."""
    distances = squared_distances(projected, centres)  # (B, H, W, S)
    num_classes = centres.shape[0] // per_class
    own = jnp.repeat(jax.nn.one_hot(labels, num_classes, dtype=bool), per_class, axis=-1)  # (B, S)
    own = own.reshape(own.shape[0], *([1] * (distances.ndim - 2)), own.shape[-1])
    nearest = jnp.argmin(jnp.where(own, distances, jnp.inf), axis=-1)
    return jnp.asarray(scores)[nearest]
