"""Convolutional backbones (NHWC) that return the final feature map ``(B, h, w, C)`` (or, with
``pooled=True``, its spatial mean ``(B, C)``).

``resnet18/34/50/101`` follow torchvision's layout and names (``conv1``, ``bn1``, ``layer{i}_{j}`` with
``conv1..3``, ``bn1..3``, ``downsample_conv``, ``downsample_bn``; v1.5 stride on the 3x3 convolution), so
torchvision checkpoints map onto them key by key. ``bninception`` is the DML standard (Ioffe & Szegedy 2015)
with the names of the widely used PyTorch port (Cadene's ``pretrainedmodels``: ``conv1_7x7_s2``,
``inception_3a_1x1_bn``, ...), ceil-mode pooling included, and Caffe-style input (BGR, 0-255, mean
subtracted). ``small_cnn`` is a CPU-friendly network for the embedded digits set. All compute in ``dtype``
(e.g. bfloat16) with float32 parameters; ``jaxdml.models.convert`` imports the PyTorch weights.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.layers.common import batch_norm, conv_init


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
        y = nn.relu(batch_norm(self.dtype, "bn1")(y, use_running_average=not train))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = batch_norm(self.dtype, "bn2")(y, use_running_average=not train)
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
        y = nn.relu(batch_norm(self.dtype, "bn1")(y, use_running_average=not train))
        y = conv(self.features, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(batch_norm(self.dtype, "bn2")(y, use_running_average=not train))
        y = conv(self.features * 4, (1, 1), name="conv3")(y)
        y = batch_norm(self.dtype, "bn3")(y, use_running_average=not train)
        return nn.relu(y + _shortcut(x, self.features * 4, self.stride, self.dtype, train))


def _shortcut(x: jnp.ndarray, features: int, stride: int, dtype: Any, train: bool) -> jnp.ndarray:
    """Identity, or torchvision's ``downsample`` (1x1 strided conv + BN) when the shape changes.

    Called from inside a block's compact ``__call__``, so the submodules are named in that block.
    """
    if x.shape[-1] == features and stride == 1:
        return x
    y = nn.Conv(features, (1, 1), (stride, stride), use_bias=False, dtype=dtype, kernel_init=conv_init,
                name="downsample_conv")(x)
    return batch_norm(dtype, "downsample_bn")(y, use_running_average=not train)


class ResNet(nn.Module):
    """torchvision ResNet without the classifier: returns the stage-4 feature map."""

    block: type[BasicBlock] | type[Bottleneck]
    stage_sizes: Sequence[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, pooled: bool = False) -> jnp.ndarray:
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init, name="conv1")(x)
        x = nn.relu(batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                x = self.block(64 * 2**i, stride, self.dtype, name=f"layer{i + 1}_{j}")(x, train)
        return _spatial_mean(x) if pooled else x


def _spatial_mean(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def _max_pool_ceil(x: jnp.ndarray, window: int = 3, stride: int = 2) -> jnp.ndarray:
    """PyTorch ``MaxPool2d(window, stride, ceil_mode=True)`` without padding: the last, partial window counts."""
    pads = []
    for size in x.shape[1:3]:
        out = -(-(size - window) // stride) + 1
        pads.append((0, (out - 1) * stride + window - size))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


# BN-Inception's mixed blocks: (1x1, (3x3 reduce, 3x3), (double 3x3 reduce, double 3x3), pool, pool projection,
# stride). Stride-2 blocks (3c, 4e) have no 1x1 branch and pass the max-pooled input on unprojected.
BN_INCEPTION_BLOCKS: dict[str, tuple[int, tuple[int, int], tuple[int, int], str, int, int]] = {
    "3a": (64, (64, 64), (64, 96), "avg", 32, 1),
    "3b": (64, (64, 96), (64, 96), "avg", 64, 1),
    "3c": (0, (128, 160), (64, 96), "max", 0, 2),
    "4a": (224, (64, 96), (96, 128), "avg", 128, 1),
    "4b": (192, (96, 128), (96, 128), "avg", 128, 1),
    "4c": (160, (128, 160), (128, 160), "avg", 128, 1),
    "4d": (96, (128, 192), (160, 192), "avg", 128, 1),
    "4e": (0, (128, 192), (192, 256), "max", 0, 2),
    "5a": (352, (192, 320), (160, 224), "avg", 128, 1),
    "5b": (352, (192, 320), (192, 224), "max", 128, 1),
}


class BNInception(nn.Module):
    """BN-Inception without the classifier: returns the 1,024-channel ``inception_5b`` map (7x7 at 224-227²).

    Layout, names and pooling of the ``pretrainedmodels`` port: convolutions with biases, BatchNorm after
    each (eps 1e-5), 3x3 max pools in ceil mode, 3x3 average pools counting the zero padding. The
    ``inception_5b`` pool branch max-pools with stride 1 (as the port; the paper's table says average).
    """

    dtype: Any = jnp.float32

    def _conv_bn_relu(self, x: jnp.ndarray, name: str, features: int, kernel: int, stride: int,
                      train: bool) -> jnp.ndarray:
        pad = kernel // 2
        x = nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                    dtype=self.dtype, kernel_init=conv_init, name=name)(x)
        return nn.relu(batch_norm(self.dtype, f"{name}_bn")(x, use_running_average=not train))

    def _mixed(self, x: jnp.ndarray, block: str, train: bool) -> jnp.ndarray:
        one, (reduce3, out3), (reduce_d, out_d), pool, pool_proj, stride = BN_INCEPTION_BLOCKS[block]
        prefix = f"inception_{block}"
        branches = []
        if one:
            branches.append(self._conv_bn_relu(x, f"{prefix}_1x1", one, 1, 1, train))
        y = self._conv_bn_relu(x, f"{prefix}_3x3_reduce", reduce3, 1, 1, train)
        branches.append(self._conv_bn_relu(y, f"{prefix}_3x3", out3, 3, stride, train))
        y = self._conv_bn_relu(x, f"{prefix}_double_3x3_reduce", reduce_d, 1, 1, train)
        y = self._conv_bn_relu(y, f"{prefix}_double_3x3_1", out_d, 3, 1, train)
        branches.append(self._conv_bn_relu(y, f"{prefix}_double_3x3_2", out_d, 3, stride, train))
        if stride == 2:
            branches.append(_max_pool_ceil(x))
        else:
            window = dict(window_shape=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
            y = nn.avg_pool(x, count_include_pad=True, **window) if pool == "avg" else nn.max_pool(x, **window)
            branches.append(self._conv_bn_relu(y, f"{prefix}_pool_proj", pool_proj, 1, 1, train))
        return jnp.concatenate(branches, axis=-1)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, pooled: bool = False) -> jnp.ndarray:
        x = self._conv_bn_relu(x, "conv1_7x7_s2", 64, 7, 2, train)
        x = _max_pool_ceil(x)
        x = self._conv_bn_relu(x, "conv2_3x3_reduce", 64, 1, 1, train)
        x = self._conv_bn_relu(x, "conv2_3x3", 192, 3, 1, train)
        x = _max_pool_ceil(x)
        for block in BN_INCEPTION_BLOCKS:
            x = self._mixed(x, block, train)
        return _spatial_mean(x) if pooled else x


class SmallCNN(nn.Module):
    """Three stages of two 3x3 conv-BN-ReLU layers (width, 2x, 4x), 2x2 max-pooling between stages."""

    width: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, pooled: bool = False) -> jnp.ndarray:
        for stage in range(3):
            if stage:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for layer in range(2):
                name = f"stage{stage + 1}_{layer}"
                x = nn.Conv(self.width * 2**stage, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                            dtype=self.dtype, kernel_init=conv_init, name=f"{name}_conv")(x)
                x = nn.relu(batch_norm(self.dtype, f"{name}_bn")(x, use_running_average=not train))
        return _spatial_mean(x) if pooled else x


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# Caffe-style input of the BN-Inception port: BGR channels in 0-255 minus these per-channel means.
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """How to build a backbone and how its uint8 RGB input is normalised.

    ``x = images / 255 * input_range`` (channels reversed if ``bgr``), then ``(x - mean) / std`` with mean and std
    in the channel order the network expects.
    """

    build: Callable[..., nn.Module]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_range: float = 1.0
    bgr: bool = False


BACKBONES: dict[str, BackboneSpec] = {
    "small_cnn": BackboneSpec(lambda dtype, width=32: SmallCNN(width=width, dtype=dtype),
                              mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "resnet18": BackboneSpec(lambda dtype, **_: ResNet(BasicBlock, (2, 2, 2, 2), dtype)),
    "resnet34": BackboneSpec(lambda dtype, **_: ResNet(BasicBlock, (3, 4, 6, 3), dtype)),
    "resnet50": BackboneSpec(lambda dtype, **_: ResNet(Bottleneck, (3, 4, 6, 3), dtype)),
    "resnet101": BackboneSpec(lambda dtype, **_: ResNet(Bottleneck, (3, 4, 23, 3), dtype)),
    "bninception": BackboneSpec(lambda dtype, **_: BNInception(dtype), mean=CAFFE_BGR_MEAN, std=(1.0, 1.0, 1.0),
                                input_range=255.0, bgr=True),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]
