"""Knowledge-distillation and per-location supervision losses (pure functions, float32 reductions).

* :func:`location_kl`: LeTKD's loss, ``KL(p_T ‖ softmax(scores))`` at every location, summed over words and
  averaged over the B·H·W locations (``F.kl_div(log_softmax(s), p_T, reduction="batchmean")`` on the
  flattened locations, as the letKD code).
* :func:`hinton_kd`: Hinton et al.'s ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over the batch (the
  common KD code base's ``DistillKL``; T = 4 in the CIFAR-100 benchmarks).
* :func:`fitnet_hint`: FitNet's mean squared error between the student's regressed hint and the teacher's
  feature map.
* :func:`template_matching_loss`: the template-matching block's per-location supervision by the image label.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _f32(x: jnp.ndarray) -> jnp.ndarray:
    """At least float32 (bfloat16 activations are reduced in float32; float64 stays float64)."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _kl_rows(target: jnp.ndarray, log_q: jnp.ndarray) -> jnp.ndarray:
    """Σ_k t_k (log t_k - log q_k) per row, with 0 log 0 = 0 (``torch.nn.functional.kl_div`` pointwise)."""
    return jnp.sum(jax.scipy.special.xlogy(target, target) - target * log_q, axis=-1)


def location_kl(scores: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Mean over locations of ``KL(targets ‖ softmax(scores))``; both (..., K), targets rows sum to 1."""
    if scores.shape != targets.shape:
        raise ValueError(f"location_kl: scores {scores.shape} and targets {targets.shape} must have one shape "
                         f"(..., K); resize the teacher map (downscale_2x2) or match K")
    log_q = jax.nn.log_softmax(_f32(scores), axis=-1)
    return jnp.mean(_kl_rows(jax.lax.stop_gradient(_f32(targets)), log_q))


def hinton_kd(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, temperature: float = 4.0) -> jnp.ndarray:
    """``T² · mean_b KL(softmax(teacher / T) ‖ softmax(student / T))``; no gradient reaches the teacher."""
    t = float(temperature)
    p_teacher = jax.nn.softmax(jax.lax.stop_gradient(_f32(teacher_logits)) / t, axis=-1)
    log_p_student = jax.nn.log_softmax(_f32(student_logits) / t, axis=-1)
    return t * t * jnp.mean(_kl_rows(p_teacher, log_p_student))


def fitnet_hint(student_hint: jnp.ndarray, teacher_feature: jnp.ndarray) -> jnp.ndarray:
    """Mean squared error (``nn.MSELoss()``) between the regressed student map and the teacher's map."""
    if student_hint.shape != teacher_feature.shape:
        raise ValueError(f"fitnet_hint: student hint {student_hint.shape} vs teacher {teacher_feature.shape}; "
                         f"the regressor must map the student's map to the teacher's shape")
    diff = _f32(student_hint) - jax.lax.stop_gradient(_f32(teacher_feature))
    return jnp.mean(jnp.square(diff))


def template_matching_loss(scores: jnp.ndarray, labels: jnp.ndarray, templates_per_class: int = 1
                           ) -> jnp.ndarray:
    """Cross-entropy of every location's class scores against its image's label.

    ``scores`` (B, H, W, C·m): m templates per class, consecutive per class; a class scores the log-sum-exp of
    its m templates (the soft maximum over the templates it owns), so each location is free to match any one.
    Inferred from the BMVC 2022 abstract and the letKD appendix (no released code): the paper supervises the
    template scores "according to the classes that the corresponding region matches".
    """
    b, h, w, k = scores.shape
    if k % templates_per_class:
        raise ValueError(f"template_matching_loss: {k} templates are not {templates_per_class} per class")
    per_class = _f32(scores).reshape(b, h, w, k // templates_per_class, templates_per_class)
    class_scores = jax.nn.logsumexp(per_class, axis=-1)
    log_p = jax.nn.log_softmax(class_scores, axis=-1)
    picked = jnp.take_along_axis(log_p, labels.reshape(b, 1, 1, 1).astype(jnp.int32), axis=-1)
    return -jnp.mean(picked)
