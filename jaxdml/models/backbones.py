"""Convolutional backbones (NHWC) that return the final feature map ``(B, h, w, C)``.

``resnet18/34/50/101`` follow torchvision's layout and names (``conv1``, ``bn1``, ``layer{i}_{j}`` with
``conv1..3``, ``bn1..3``, ``downsample_conv``, ``downsample_bn``; v1.5 stride on the 3x3 convolution), so
torchvision checkpoints map onto them key by key. ``small_cnn`` is a CPU-friendly network for the embedded
digits set. All compute in ``dtype`` (e.g. bfloat16) with float32 parameters.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# torchvision initialises convolutions with kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _batch_norm(dtype: Any, name: str, scale_init=nn.initializers.ones) -> nn.BatchNorm:
    # PyTorch's momentum 0.1 is flax's 0.9; eps 1e-5 as torch.
    return nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 -> BN -> ReLU -> 3x3 -> BN, plus the (projected) shortcut."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        y = conv(self.features, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(_batch_norm(self.dtype, "bn1")(y, use_running_average=not train))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = _batch_norm(self.dtype, "bn2")(y, use_running_average=not train)
        return nn.relu(y + _shortcut(x, self.features, self.stride, self.dtype, train))


class Bottleneck(nn.Module):
    """ResNet-50/101 block: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels), BN after each, plus the shortcut."""

    features: int
    stride: int = 1
    dtype: Any = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        y = conv(self.features, (1, 1), name="conv1")(x)
        y = nn.relu(_batch_norm(self.dtype, "bn1")(y, use_running_average=not train))
        y = conv(self.features, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(_batch_norm(self.dtype, "bn2")(y, use_running_average=not train))
        y = conv(self.features * 4, (1, 1), name="conv3")(y)
        y = _batch_norm(self.dtype, "bn3")(y, use_running_average=not train)
        return nn.relu(y + _shortcut(x, self.features * 4, self.stride, self.dtype, train))


def _shortcut(x: jnp.ndarray, features: int, stride: int, dtype: Any, train: bool) -> jnp.ndarray:
    """Identity, or torchvision's ``downsample`` (1x1 strided conv + BN) when the shape changes.

    Called from inside a block's compact ``__call__``, so the submodules are named in that block.
    """
    if x.shape[-1] == features and stride == 1:
        return x
    y = nn.Conv(features, (1, 1), (stride, stride), use_bias=False, dtype=dtype, kernel_init=conv_init,
                name="downsample_conv")(x)
    return _batch_norm(dtype, "downsample_bn")(y, use_running_average=not train)


class ResNet(nn.Module):
    """torchvision ResNet without the classifier: returns the stage-4 feature map."""

    block: type[BasicBlock] | type[Bottleneck]
    stage_sizes: Sequence[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init, name="conv1")(x)
        x = nn.relu(_batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = self.block(64 * 2**i, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        return x


class SmallCNN(nn.Module):
    """Three stages of two 3x3 conv-BN-ReLU layers (width, 2x, 4x), 2x2 max-pooling between stages."""

    width: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for stage in range(3):
            if stage:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for layer in range(2):
                name = f"stage{stage + 1}_{layer}"
                x = nn.Conv(self.width * 2**stage, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                            dtype=self.dtype, kernel_init=conv_init, name=f"{name}_conv")(x)
                x = nn.relu(_batch_norm(self.dtype, f"{name}_bn")(x, use_running_average=not train))
        return x


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and how its input is normalised (``(x/255 - mean) / std`` on RGB)."""

    build: Callable[..., nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


BACKBONES: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec(lambda dtype, width=32: SmallCNN(width=width, dtype=dtype),
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "resnet18": BackboneSpec(lambda dtype, **_: ResNet(BasicBlock, (2, 2, 2, 2), dtype)),
    "resnet34": BackboneSpec(lambda dtype, **_: ResNet(BasicBlock, (3, 4, 6, 3), dtype)),
    "resnet50": BackboneSpec(lambda dtype, **_: ResNet(Bottleneck, (3, 4, 6, 3), dtype)),
    "resnet101": BackboneSpec(lambda dtype, **_: ResNet(Bottleneck, (3, 4, 23, 3), dtype)),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]
