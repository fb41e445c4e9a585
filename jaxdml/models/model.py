"""The embedding model: uint8 images -> normalised input -> backbone -> head -> {"embedding", ...}."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdml.models.backbones import backbone_spec
from jaxdml.models.heads import EmbeddingHead, GSPHead


class EmbeddingModel(nn.Module):
    """Owns two parameter groups, ``backbone`` and ``head`` (optimised with their own LR multipliers).

    Returns a dict with ``embedding`` (unit vectors, float32) and whatever else the head provides
    (``attributes`` for GSP). ``freeze_bn`` runs the backbone's BatchNorm on its running statistics in
    training too and never updates them (the MLRC protocol).
    """

    backbone: nn.Module
    head: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dtype: Any = jnp.float32
    freeze_bn: bool = False
    input_range: float = 1.0  # 255 for Caffe-style networks
    bgr: bool = False  # the network expects BGR channels

    def normalize(self, images: jnp.ndarray) -> jnp.ndarray:
        """uint8 RGB -> the backbone's input convention (see :class:`~jaxdml.models.backbones.BackboneSpec`)."""
        x = images.astype(jnp.float32) * (self.input_range / 255.0)
        if self.bgr:
            x = x[..., ::-1]
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return x.astype(self.dtype)

    def __call__(self, images: jnp.ndarray, train: bool = False, **head_kwargs: Any) -> dict[str, jnp.ndarray]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {images.shape}")
        features = self.backbone(self.normalize(images), train=train and not self.freeze_bn)
        return self.head(features, train=train, **head_kwargs)

    def refresh(self) -> None:
        """Parameter updates that are not gradient steps (GSP's prototype initialisation); run after each step."""
        if hasattr(self.head, "refresh"):
            self.head.refresh()


def build_head(model_cfg: ml_collections.ConfigDict, dtype: Any) -> nn.Module:
    if model_cfg.pooling != "gsp":
        return EmbeddingHead(model_cfg.embedding_dim, model_cfg.pooling, dtype)
    g = model_cfg.gsp
    kwargs: dict[str, Any] = {}
    memory_size = g.memory_size
    if g.prototypes_file:
        given = np.load(g.prototypes_file).astype(np.float32)
        if given.shape != (g.num_prototypes, model_cfg.embedding_dim):
            raise ValueError(f"model.gsp.prototypes_file holds shape {given.shape}; expected "
                             f"({g.num_prototypes}, {model_cfg.embedding_dim}) = (num_prototypes, embedding_dim)")
        kwargs["prototype_init"] = lambda *_: jnp.asarray(given)
        memory_size = 0
    return GSPHead(model_cfg.embedding_dim, g.num_prototypes, g.transport_ratio, g.gamma, g.method, memory_size,
                   g.augment_max_pool, g.gem, dtype=dtype, **kwargs)


def build_model(model_cfg: ml_collections.ConfigDict) -> EmbeddingModel:
    """The model described by the ``model`` section of a config."""
    spec = backbone_spec(model_cfg.backbone)
    dtype = jnp.bfloat16 if model_cfg.compute_dtype == "bfloat16" else jnp.float32
    backbone = spec.build(dtype, width=model_cfg.width)
    return EmbeddingModel(backbone, build_head(model_cfg, dtype), spec.mean, spec.std, dtype, model_cfg.freeze_bn,
                          spec.input_range, spec.bgr)
