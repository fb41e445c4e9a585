"""Template matching as a layer: the template-matching ResNet block and the LeTKD distillation layer.

The view (Gurbuz & Alatan, BMVC 2022; the letKD supplement's appendix): a local feature x is embedded by the
1x1 template ω_k it matches best, or by nothing when no score ω_kᵀx clears a threshold μ. Entropy smoothing
gives p_k ∝ exp(ε ω_kᵀx) / (exp(εμ) + Σ_k' exp(ε ω_k'ᵀx)), and BatchNorm followed by ReLU approximates that
soft arg-max to first order (BN learns the threshold and the temperature; ReLU cuts below the threshold).
So "1x1 templates -> BN -> ReLU -> 1x1 semantic vectors -> add to the input" is a block whose first 1x1
scores can be supervised per location: by the labels (template-matching block) or by a teacher's decisions
(LeTKD). Both return the scores next to the output so that the supervision is a loss on them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.layers.common import batch_norm, conv_init
from jaxdml.layers.pooling import l2_normalize


def cosine_conv1x1(x: jnp.ndarray, kernel: jnp.ndarray, scale: jnp.ndarray | float) -> jnp.ndarray:
    """``scale * cos(x, w_k)`` at every location: ``x`` (..., C_in) and ``kernel`` (C_in, C_out) are both
    L2-normalised along C_in (the QuEST / letKD ``Conv2dCos``)."""
    return scale * (l2_normalize(x) @ l2_normalize(kernel, axis=0).astype(x.dtype))


class CosineConv1x1(nn.Module):
    """Thin module owning a cosine 1x1 kernel (init N(0, 2/C_in)) and a scalar scale (learnable or fixed)."""

    features: int
    scale_init: float = 1.0
    learn_scale: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.normal(jnp.sqrt(2.0 / fan_in)), (fan_in, self.features))
        if self.learn_scale:
            scale = self.param("scale", nn.initializers.constant(self.scale_init), ())
        else:
            scale = jnp.asarray(self.scale_init, jnp.float32)
        return cosine_conv1x1(x.astype(self.dtype), kernel, scale.astype(self.dtype))


class TemplateMatchingBlock(nn.Module):
    """1x1 templates -> BN -> ReLU (soft arg-max) -> 1x1 -> + input; returns ``(output, template_scores)``.

    ``num_templates`` templates (``templates_per_class`` per class when they are supervised by labels, see
    :func:`jaxdml.losses.distill.template_matching_loss`). The second 1x1 starts at zero (``zero_init``) so
    that the block starts as the identity, as a ResNet's last BN is often zero-initialised.
    """

    num_templates: int
    zero_init: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        scores = nn.Conv(self.num_templates, (1, 1), use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                         name="templates")(x)
        assignment = nn.relu(batch_norm(self.dtype, "bn")(scores, use_running_average=not train))
        init = nn.initializers.zeros if self.zero_init else conv_init
        value = nn.Conv(x.shape[-1], (1, 1), use_bias=False, dtype=self.dtype, kernel_init=init,
                        name="semantic")(assignment)
        return x + value, scores


class LeTKDLayer(nn.Module):
    """The LeTKD layer (letKD ``BoW_predictor`` + ``valueLayer``), kept by the student at inference.

    ``scores = 3.0-scaled cosine 1x1 (C -> K)``; ``out = ReLU(BN(scores))``; ``value = cosine 1x1 (K -> C,
    scale 1)``; returns ``(alpha * value + x, scores)``. Both scales are learnable, neither 1x1 has a bias.
    The scores are trained to match the teacher's soft decisions (:func:`jaxdml.losses.distill.location_kl`).
    """

    num_words: int  # K: 4,096 codebook words (penultimate) or classes x sub-classes (intermediate)
    alpha: float = 1.0
    score_scale: float = 3.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
        scores = CosineConv1x1(self.num_words, self.score_scale, dtype=self.dtype, name="scores")(x)
        out = nn.relu(batch_norm(self.dtype, "bn")(scores, use_running_average=not train))
        value = CosineConv1x1(x.shape[-1], 1.0, dtype=self.dtype, name="value")(out)
        return self.alpha * value + x, scores


def downscale_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 average pooling, stride 2 (a teacher map twice the student's size, as letKD's ``downscale``)."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


__all__ = ["CosineConv1x1", "LeTKDLayer", "TemplateMatchingBlock", "cosine_conv1x1", "downscale_2x2"]
