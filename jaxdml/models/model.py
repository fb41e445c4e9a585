"""The embedding model: uint8 images -> normalised input -> backbone -> head -> unit embeddings."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxdml.models.backbones import backbone_spec
from jaxdml.models.heads import EmbeddingHead


class EmbeddingModel(nn.Module):
    """Owns two parameter groups, ``backbone`` and ``head`` (optimised with their own LR multipliers).

    ``freeze_bn`` runs the backbone's BatchNorm on its running statistics in training too and never
    updates them (the MLRC protocol).
    """

    backbone: nn.Module
    head: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: Any = jnp.float32
    freeze_bn: bool = False

    def normalize(self, images: jnp.ndarray) -> jnp.ndarray:
        x = images.astype(jnp.float32) / 255.0
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return x.astype(self.dtype)

    def __call__(self, images: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {images.shape}")
        features = self.backbone(self.normalize(images), train=train and not self.freeze_bn)
        return self.head(features, train=train)


def build_model(model_cfg: ml_collections.ConfigDict) -> EmbeddingModel:
    """The model described by the ``model`` section of a config."""
    spec = backbone_spec(model_cfg.backbone)
    dtype = jnp.bfloat16 if model_cfg.compute_dtype == "bfloat16" else jnp.float32
    backbone = spec.build(dtype, width=model_cfg.width)
    head = EmbeddingHead(model_cfg.embedding_dim, model_cfg.pooling, dtype)
    return EmbeddingModel(backbone, head, spec.mean, spec.std, dtype, model_cfg.freeze_bn)
