"""Backbones, heads and the embedding model."""

from jaxdml.models.backbones import BACKBONES, BackboneSpec, BNInception, ResNet, SmallCNN, backbone_spec
from jaxdml.models.heads import EmbeddingHead, GSPHead, XBMLHead
from jaxdml.models.model import Model, build_model
from jaxdml.models.pooling_heads import (
    POOLING_HEADS,
    CBAMHead,
    CroWHead,
    DELFHead,
    GeMHead,
    GSoPHead,
    NetVLADHead,
    OTPHead,
    SOAPHead,
    WELDONHead,
)

__all__ = [
    "BACKBONES",
    "POOLING_HEADS",
    "BNInception",
    "BackboneSpec",
    "CBAMHead",
    "CroWHead",
    "DELFHead",
    "EmbeddingHead",
    "GSPHead",
    "GSoPHead",
    "GeMHead",
    "Model",
    "NetVLADHead",
    "OTPHead",
    "ResNet",
    "SOAPHead",
    "SmallCNN",
    "WELDONHead",
    "XBMLHead",
    "backbone_spec",
    "build_model",
]
