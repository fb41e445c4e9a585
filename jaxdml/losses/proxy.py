"""Proxy- and classifier-based losses, as pytorch-metric-learning (PML 2.9) defines them.

Each loss is a pure function ``loss(embeddings, labels, params, **hyper_parameters) -> scalar``; its learnable
parameters (proxies, class weights, SoftTriple centres) come in ``params`` and are created by the matching
``init_*`` function, with PML's shapes and initial distributions. Layouts are PML's, with no transposition:

* ``"proxies"`` (C, D): ProxyNCA, ProxyNCA++, ProxyAnchor (PML ``proxies``);
* ``"centers"`` (D, C·K): SoftTriple, column ``c·K + k`` is centre k of class c (PML ``fc``);
* ``"W"`` (D, C): NormalizedSoftmax, CosFace, ArcFace (PML ``W``).

Embeddings and parameters are L2-normalised inside, as PML's distances do, so raw vectors are accepted.
Labels are integers in [0, C). Hyper-parameters are Python numbers (static under jit), defaults PML's. Memory is
O(B·C) (O(B·C·K) for SoftTriple).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdml.layers import l2_normalize
from jaxdml.losses.pair import cosine_similarities

Params = dict[str, jax.Array]


def _one_hot(labels: jax.Array, num_classes: int, dtype: Any) -> jax.Array:
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def _mean_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """torch ``cross_entropy(logits, labels)`` averaged over the batch (PML's MeanReducer)."""
    target = jnp.sum(logits * _one_hot(labels, logits.shape[1], logits.dtype), axis=1)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - target)


def _log1p_sum_exp_over_batch(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Per column, log(1 + sum_i mask_ic exp(x_ic)) (PML ``logsumexp(add_one=True, dim=0)``); 0 for empty columns."""
    masked = jnp.where(mask, x, -jnp.inf)
    with_one = jnp.concatenate([masked, jnp.zeros((1, x.shape[1]), x.dtype)], axis=0)
    return jax.nn.logsumexp(with_one, axis=0)


def _squared_distance_logits(embeddings: jax.Array, proxies: jax.Array, scale: float) -> jax.Array:
    """-scale ||x̂ - p̂||² for unit vectors x̂, p̂, written as scale (2 cos - 2)."""
    return scale * (2.0 * cosine_similarities(embeddings, proxies) - 2.0)


def proxy_nca_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *,
                   softmax_scale: float = 1.0) -> jax.Array:
    """ProxyNCA (Movshovitz-Attias et al. 2017) exactly as PML ``ProxyNCALoss``.

    Per sample, -log softmax_c(-softmax_scale ||x̂ - p̂_c||²)_y over all C proxies (the positive included),
    averaged over the batch. As PML, a sample whose positive probability underflows to 0 (below half the
    smallest subnormal, decided in log space: -log p > ~104 in float32, ~745 in float64, so only when
    4·softmax_scale exceeds that) is left out of the mean; if every sample is left out we return 0 where PML
    returns NaN. ``params["proxies"]``: (C, D).
    """
    logits = _squared_distance_logits(embeddings, params["proxies"], softmax_scale)
    one_hot = _one_hot(labels, logits.shape[1], logits.dtype)
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.sum(logits * one_hot, axis=1)
    # torch's softmax keeps subnormals, XLA's CPU exp flushes them: decide the underflow in log space instead.
    kept = nll < math.log(2.0) - math.log(float(jnp.finfo(logits.dtype).smallest_subnormal))
    return jnp.sum(jnp.where(kept, nll, 0.0)) / jnp.maximum(jnp.sum(kept), 1)


def proxy_nca_pp_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *,
                      temperature: float = 1.0 / 9.0) -> jax.Array:
    """ProxyNCA++ (Teh et al., ECCV 2020), the loss of the official code (``ProxyNCA_prob``).

    L = mean_i -log [ exp(-||x̂_i - p̂_y||² / T) / sum_c exp(-||x̂_i - p̂_c||² / T) ]: unit embeddings and proxies,
    squared Euclidean distance, temperature T, positive proxy in the denominator. The paper's other changes
    (fast-moving proxies = a large proxy learning rate, global max pooling) live outside the loss.

    Equals PML ``ProxyNCALoss(softmax_scale=1/T)`` except that no sample is dropped when its probability
    underflows (the log-softmax here stays finite). Since ||x̂ - p̂||² = 2 - 2 cos, this is softmax(2 cos / T):
    the CCP reference's ProxyNCA++, softmax(cos / t) with t = 0.1 (0.11 in its code), is temperature = 2 t.
    ``params["proxies"]``: (C, D), see :func:`init_proxy_nca_pp_loss`.
    """
    logits = _squared_distance_logits(embeddings, params["proxies"], 1.0 / temperature)
    return _mean_cross_entropy(logits, labels)


def proxy_anchor_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *,
                      margin: float = 0.1, alpha: float = 32.0) -> jax.Array:
    """Proxy-Anchor (Kim et al. 2020) as PML ``ProxyAnchorLoss`` (cosine similarity s).

    sum_{c with positives} log(1 + sum_{i in c} exp(-alpha (s_ic - margin))) / #classes in the batch
    + sum_{all c} log(1 + sum_{i not in c} exp(alpha (s_ic + margin))) / C. ``params["proxies"]``: (C, D).
    """
    proxies = params["proxies"]
    cos = cosine_similarities(embeddings, proxies)
    pos = _one_hot(labels, proxies.shape[0], bool)
    pos_term = _log1p_sum_exp_over_batch(alpha * (margin - cos), pos)
    neg_term = _log1p_sum_exp_over_batch(alpha * (cos + margin), ~pos)
    classes_in_batch = jnp.sum(jnp.any(pos, axis=0))
    return jnp.sum(pos_term) / jnp.maximum(classes_in_batch, 1) + jnp.sum(neg_term) / proxies.shape[0]


def _soft_triple_classes(centers: jax.Array, centers_per_class: int) -> int:
    if centers.shape[1] % centers_per_class:
        raise ValueError(f"centers {centers.shape} do not hold centers_per_class={centers_per_class} centres per "
                         "class; init and loss must use the same centers_per_class")
    return centers.shape[1] // centers_per_class


def soft_triple_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *, centers_per_class: int = 10,
                     la: float = 20.0, gamma: float = 0.1, margin: float = 0.01, tau: float = 0.0) -> jax.Array:
    """SoftTriple (Qian et al. 2019) as PML ``SoftTripleLoss``, plus the paper's optional centre regulariser.

    Class similarity S_ic = sum_k softmax_k(s_ick / gamma) s_ick over the K centres of class c (cosine s);
    loss = cross-entropy of la (S - margin·onehot), batch mean. PML 2.9 adds no regulariser by default
    (``tau=0``, the default here). ``tau > 0`` adds tau · sum_c sum_{k<j} sqrt(2 + tiny - 2 s(w_ck, w_cj))
    / (C K (K-1)), the paper's term, equal to PML's ``weight_regularizer=SparseCentersRegularizer(C, K)``
    with ``weight_reg_weight=tau``; it is computed per class block, O(C K²) memory, not PML's (CK)².
    ``params["centers"]``: (D, C·K), PML's ``fc``.
    """
    centers = params["centers"]
    num_classes = _soft_triple_classes(centers, centers_per_class)
    sim = cosine_similarities(embeddings, centers.T).reshape(-1, num_classes, centers_per_class)
    prob = jax.nn.softmax(sim * (1.0 / gamma), axis=2)
    sim_to_classes = jnp.sum(prob * sim, axis=2)
    logits = la * (sim_to_classes - margin * _one_hot(labels, num_classes, sim.dtype))
    loss = _mean_cross_entropy(logits, labels)
    if tau and centers_per_class > 1:
        unit = l2_normalize(centers.T).reshape(num_classes, centers_per_class, -1)
        sims = jnp.einsum("ckd,cjd->ckj", unit, unit, precision=jax.lax.Precision.HIGHEST)
        upper = jnp.triu(jnp.ones((centers_per_class, centers_per_class), bool), k=1)
        inside = 2.0 + jnp.finfo(sims.dtype).tiny - jnp.minimum(2.0 * sims, 2.0)
        reg = jnp.sum(jnp.where(upper, jnp.sqrt(jnp.where(upper, inside, 1.0)), 0.0))
        loss = loss + tau * reg / (num_classes * centers_per_class * (centers_per_class - 1))
    return loss


def normalized_softmax_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *,
                            temperature: float = 0.05) -> jax.Array:
    """Normalized softmax (Zhai & Wu 2018) as PML ``NormalizedSoftmaxLoss``: cross-entropy of cos(x, w_c) / T.

    ``params["W"]``: (D, C), columns are the class weights.
    """
    logits = cosine_similarities(embeddings, params["W"].T) / temperature
    return _mean_cross_entropy(logits, labels)


def cosface_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *,
                 margin: float = 0.35, scale: float = 64.0) -> jax.Array:
    """CosFace (Wang et al. 2018) as PML ``CosFaceLoss``: cross-entropy of scale (cos - margin·onehot).

    ``params["W"]``: (D, C).
    """
    cos = cosine_similarities(embeddings, params["W"].T)
    return _mean_cross_entropy(scale * (cos - margin * _one_hot(labels, cos.shape[1], cos.dtype)), labels)


def arcface_loss(embeddings: jax.Array, labels: jax.Array, params: Params, *,
                 margin: float = 28.6, scale: float = 64.0) -> jax.Array:
    """ArcFace (Deng et al. 2019) as PML ``ArcFaceLoss``; ``margin`` is in degrees, as in PML.

    Target logit cos(θ + m) with θ = acos(clip(cos, -1, 1)), replaced by cos θ - m sin m where θ > π - m (keeps
    it decreasing in θ); cross-entropy of scale · logits. The target is patched in as PML does,
    cos + onehot (f(cos_y) - cos_y), so value and gradient equal PML's wherever PML's are finite. One deliberate
    difference: where |cos_y| >= 1 numerically (an embedding on its class weight's direction, which float32
    rounding makes reachable) PML's gradient is NaN (clip's 0 times acos' infinite slope); here the acos path
    then contributes 0, so the gradient stays finite. ``params["W"]``: (D, C).
    """
    m = margin * (math.pi / 180.0)
    cos = cosine_similarities(embeddings, params["W"].T)
    one_hot = _one_hot(labels, cos.shape[1], cos.dtype)
    cos_target = jnp.sum(cos * one_hot, axis=1)
    inside = jnp.abs(cos_target) < 1.0  # acos(clip(c, -1, 1)) with a zero (not NaN) gradient where clipped
    angles = jnp.where(inside, jnp.arccos(jnp.where(inside, cos_target, 0.0)), jnp.where(cos_target > 0, 0.0, jnp.pi))
    sin_m = math.sin(m) if isinstance(m, float) else jnp.sin(m)
    modified = jnp.where(angles <= math.radians(180.0) - m, jnp.cos(angles + m), jnp.cos(angles) - m * sin_m)
    logits = cos + one_hot * (modified - cos_target)[:, None]
    return _mean_cross_entropy(scale * logits, labels)


# --- initialisers ---------------------------------------------------------------------------------------------


def _check_hyper_parameters(loss: Callable[..., jax.Array], hyper_parameters: Mapping[str, Any]) -> None:
    """Initialisers take the loss's hyper-parameters (and ignore those they don't need); reject anything else."""
    accepted = [p.name for p in inspect.signature(loss).parameters.values() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(hyper_parameters) - set(accepted))
    if unknown:
        raise ValueError(f"{loss.__name__} has no hyper-parameter(s) {unknown}; it accepts {accepted}")


def init_proxy_nca_loss(rng: jax.Array, num_classes: int, embedding_dim: int, **hyper_parameters: Any) -> Params:
    """``{"proxies": (C, D)}`` ~ N(0, 1), PML's default ``torch.nn.init.normal_``."""
    _check_hyper_parameters(proxy_nca_loss, hyper_parameters)
    return {"proxies": jax.random.normal(rng, (num_classes, embedding_dim))}


def init_proxy_nca_pp_loss(rng: jax.Array, num_classes: int, embedding_dim: int, *, std: float = 0.125,
                           **hyper_parameters: Any) -> Params:
    """``{"proxies": (C, D)}`` ~ N(0, std²); std 1/8 as the official code (``torch.randn(C, D) / 8``).

    ``std`` is an initialiser-only option (PML's ProxyNCALoss draws N(0, 1)); it matters only through the
    optimiser, since the loss normalises the proxies.
    """
    _check_hyper_parameters(proxy_nca_pp_loss, hyper_parameters)
    return {"proxies": std * jax.random.normal(rng, (num_classes, embedding_dim))}


def init_proxy_anchor_loss(rng: jax.Array, num_classes: int, embedding_dim: int, **hyper_parameters: Any) -> Params:
    """``{"proxies": (C, D)}`` ~ N(0, 2/C): ``kaiming_normal_(mode="fan_out")`` on (C, D), as PML."""
    _check_hyper_parameters(proxy_anchor_loss, hyper_parameters)
    return {"proxies": math.sqrt(2.0 / num_classes) * jax.random.normal(rng, (num_classes, embedding_dim))}


def init_soft_triple_loss(rng: jax.Array, num_classes: int, embedding_dim: int, **hyper_parameters: Any) -> Params:
    """``{"centers": (D, C·K)}`` ~ U(±1/sqrt(C·K)): ``kaiming_uniform_(a=sqrt(5))`` on (D, C·K), as PML."""
    _check_hyper_parameters(soft_triple_loss, hyper_parameters)
    default = inspect.signature(soft_triple_loss).parameters["centers_per_class"].default
    total = num_classes * hyper_parameters.get("centers_per_class", default)
    bound = 1.0 / math.sqrt(total)
    return {"centers": jax.random.uniform(rng, (embedding_dim, total), minval=-bound, maxval=bound)}


def _init_class_weights(rng: jax.Array, num_classes: int, embedding_dim: int) -> Params:
    return {"W": jax.random.normal(rng, (embedding_dim, num_classes))}


def init_normalized_softmax_loss(rng: jax.Array, num_classes: int, embedding_dim: int,
                                 **hyper_parameters: Any) -> Params:
    """``{"W": (D, C)}`` ~ N(0, 1), PML's default ``torch.nn.init.normal_``."""
    _check_hyper_parameters(normalized_softmax_loss, hyper_parameters)
    return _init_class_weights(rng, num_classes, embedding_dim)


def init_cosface_loss(rng: jax.Array, num_classes: int, embedding_dim: int, **hyper_parameters: Any) -> Params:
    """``{"W": (D, C)}`` ~ N(0, 1), PML's default ``torch.nn.init.normal_``."""
    _check_hyper_parameters(cosface_loss, hyper_parameters)
    return _init_class_weights(rng, num_classes, embedding_dim)


def init_arcface_loss(rng: jax.Array, num_classes: int, embedding_dim: int, **hyper_parameters: Any) -> Params:
    """``{"W": (D, C)}`` ~ N(0, 1), PML's default ``torch.nn.init.normal_``."""
    _check_hyper_parameters(arcface_loss, hyper_parameters)
    return _init_class_weights(rng, num_classes, embedding_dim)


PROXY_LOSSES: dict[str, tuple[Callable[..., jax.Array], Callable[..., Params]]] = {
    "proxy_nca": (proxy_nca_loss, init_proxy_nca_loss),
    "proxy_nca_pp": (proxy_nca_pp_loss, init_proxy_nca_pp_loss),
    "proxy_anchor": (proxy_anchor_loss, init_proxy_anchor_loss),
    "soft_triple": (soft_triple_loss, init_soft_triple_loss),
    "normalized_softmax": (normalized_softmax_loss, init_normalized_softmax_loss),
    "cosface": (cosface_loss, init_cosface_loss),
    "arcface": (arcface_loss, init_arcface_loss),
}
"""name -> (loss, initialiser) for the registry."""
