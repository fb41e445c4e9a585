"""The one model wrapper of every task: uint8 images -> the backbone's input convention -> backbone -> head.

Metric learning: the backbone returns a feature map and the head (``EmbeddingHead`` / ``GSPHead`` /
``XBMLHead``) returns ``{"embedding", ...}``. Classification (distillation): a CIFAR network returns
``{"logits", "features", "scores", "inserted"}`` and the optional head (FitNet's regressor) adds ``hint``.
Parameters come in two groups, ``backbone`` and ``head``, which the optimiser treats separately (LR multipliers,
frozen BatchNorm).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdml.layers import POOLINGS
from jaxdml.models.backbones import backbone_spec
from jaxdml.models.heads import EmbeddingHead, GSPHead, XBMLHead
from jaxdml.models.pooling_heads import POOLING_HEADS


class Model(nn.Module):
    """``images`` (B, H, W, 3) uint8 RGB -> ``(images / 255 * input_range [BGR] - mean) / std`` in ``dtype`` ->
    ``backbone`` -> ``head`` (when set).

    ``freeze_bn`` runs the backbone's BatchNorm on its running statistics in training too and never updates
    them (the MLRC protocol).
    """

    backbone: nn.Module
    head: nn.Module | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_range: float = 1.0  # 255 for Caffe-style networks
    bgr: bool = False  # the network expects BGR channels
    dtype: Any = jnp.float32
    freeze_bn: bool = False

    def normalize(self, images: jnp.ndarray) -> jnp.ndarray:
        x = images.astype(jnp.float32) / 255.0
        if self.input_range != 1.0:
            x = x * self.input_range
        if self.bgr:
            x = x[..., ::-1]
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        return x.astype(self.dtype)

    def __call__(self, images: jnp.ndarray, train: bool = False, **head_kwargs: Any) -> Any:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {images.shape}")
        features = self.backbone(self.normalize(images), train=train and not self.freeze_bn)
        if self.head is None:
            return features
        return self.head(features, train=train, **head_kwargs)

    def refresh(self) -> None:
        """Parameter updates that are not gradient steps (GSP's prototype initialisation); the train step runs it
        after each update when :func:`has_refresh` says the head has any."""
        self.head.refresh()


def has_refresh(model: Model) -> bool:
    """Whether the model changes parameters outside gradient steps (the train step then runs :meth:`refresh`)."""
    return model.head is not None and hasattr(model.head, "refresh")


def build_head(model_cfg: ml_collections.ConfigDict, dtype: Any) -> nn.Module:
    """The embedding head of ``model_cfg.pooling`` (GSP / XBML settings by keyword from ``model_cfg.gsp`` /
    ``model_cfg.xbml``)."""
    if model_cfg.pooling == "xbml":
        return XBMLHead(embedding_dim=model_cfg.embedding_dim, embedding_norm=model_cfg.embedding_norm, dtype=dtype,
                        **model_cfg.xbml.to_dict())
    if model_cfg.pooling in POOLING_HEADS:
        head, section = POOLING_HEADS[model_cfg.pooling]
        settings = model_cfg[section].to_dict() if section else {}
        return head(embedding_dim=model_cfg.embedding_dim, embedding_norm=model_cfg.embedding_norm, dtype=dtype,
                    **settings)
    if model_cfg.pooling != "gsp":
        return EmbeddingHead(embedding_dim=model_cfg.embedding_dim, pooling=model_cfg.pooling,
                             embedding_norm=model_cfg.embedding_norm, dtype=dtype)
    g = model_cfg.gsp.to_dict()
    prototypes_file = g.pop("prototypes_file")
    if prototypes_file:
        given = np.load(prototypes_file).astype(np.float32)
        if given.shape != (g["num_prototypes"], model_cfg.embedding_dim):
            raise ValueError(f"model.gsp.prototypes_file holds shape {given.shape}; expected "
                             f"({g['num_prototypes']}, {model_cfg.embedding_dim}) = (num_prototypes, embedding_dim)")
        g.update(prototype_init=lambda *_: jnp.asarray(given), memory_size=0)
    return GSPHead(embedding_dim=model_cfg.embedding_dim, embedding_norm=model_cfg.embedding_norm, dtype=dtype, **g)


# model.compute_dtype -> dtype of activations (parameters stay float32); the one list of valid names.
COMPUTE_DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# model.pooling: the heads' poolings, Generalized Sum Pooling (GSPHead), XBML's prototype GAP (XBMLHead) or one of
# the baselines GSP is compared with (jaxdml.models.pooling_heads).
POOLING_NAMES: tuple[str, ...] = (*POOLINGS, "gsp", "xbml", *POOLING_HEADS)


def compute_dtype(model_cfg: ml_collections.ConfigDict) -> Any:
    return COMPUTE_DTYPES[model_cfg.compute_dtype]


def build_model(model_cfg: ml_collections.ConfigDict) -> Model:
    """The metric-learning model described by the ``model`` section of a config."""
    spec = backbone_spec(model_cfg.backbone)
    dtype = compute_dtype(model_cfg)
    return Model(backbone=spec.build(dtype, width=model_cfg.width), head=build_head(model_cfg, dtype),
                 mean=spec.mean, std=spec.std, input_range=spec.input_range, bgr=spec.bgr, dtype=dtype,
                 freeze_bn=model_cfg.freeze_bn)
