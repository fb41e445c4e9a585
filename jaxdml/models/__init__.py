"""Backbones, heads and the embedding model."""

from jaxdml.models.backbones import BACKBONES, BackboneSpec, BNInception, ResNet, SmallCNN, backbone_spec
from jaxdml.models.heads import EmbeddingHead, GSPHead, XBMLHead
from jaxdml.models.model import Model, build_model

__all__ = [
           "BACKBONES",
           "BNInception",
           "BackboneSpec",
           "EmbeddingHead",
           "GSPHead",
           "Model",
           "ResNet",
           "SmallCNN",
           "XBMLHead",
           "backbone_spec",
           "build_model",
]
