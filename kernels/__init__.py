"""Differentiable optimal-transport kernels for jaxdml (Generalized Sum Pooling's partial transport)."""

from jaxdml.kernels.gsp import METHODS, gsp_transport

__all__ = ["METHODS", "gsp_transport"]
