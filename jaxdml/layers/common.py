"""Building blocks shared by every network: BatchNorm with PyTorch's conventions and torchvision's conv init."""

from __future__ import annotations

from typing import Any

import flax.linen as nn

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(dtype: Any, name: str, scale_init: Any = nn.initializers.ones) -> nn.BatchNorm:
    """BatchNorm as torch (and Caffe ports) define it: momentum 0.1 (flax's 0.9), eps 1e-5."""
    return nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name)
