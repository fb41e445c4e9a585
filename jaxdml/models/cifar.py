"""CIFAR classifiers of the knowledge-distillation literature, with the common KD code base's layouts.

The CRD / RepDistiller ``models/`` are the de-facto standard (their CIFAR-100 teachers are what every KD paper
distils from): ``resnet8/14/20/32/44/56/110`` (widths 16-16-32-64), ``resnet8x4/32x4`` (32-64-128-256),
``wrn_16_1/16_2/40_1/40_2``, ``cifar_resnet50`` (their ``ResNet50``), ``mobilenetv2`` (their ``mobile_half``:
expansion 6, width 0.5),
``shufflev1`` (groups 3) and ``shufflev2`` (net size 1). Module names follow them (``layer1_0/conv1`` <->
``layer1.0.conv1``, ``block1_0/convShortcut`` <-> ``block1.layer.0.convShortcut``, MobileNetV2's
``blocks3_1/project_conv`` <-> ``blocks.3.1.conv.6``; see ``jaxdml.models.convert``), so their checkpoints map
key by key.

Every network returns ``{"logits", "features", "scores", "inserted"}``: ``features`` maps each block's name
(and ``"final"``, the map that is average-pooled) to its output, for the teacher's artefacts and for FitNet
hints; ``inserts`` put a template-matching block or a LeTKD layer after named blocks (``"final"`` included),
whose output (``inserted``, by block: the x-hat of the LeTKD layer whose input x is ``features``) then continues
through the network and whose per-location scores land in ``scores``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.layers.common import batch_norm, conv_init
from jaxdml.layers.template import LeTKDLayer, TemplateMatchingBlock
from jaxdml.models.backbones import BasicBlock, Bottleneck


@dataclasses.dataclass(frozen=True)
class Insert:
    """A layer after block ``after``: ``kind`` "letkd" (K = ``size`` words, residual weight ``alpha``) or
    "template" (``size`` templates)."""

    after: str
    kind: str
    size: int
    alpha: float = 1.0


class InsertRecorder:
    """Records each named block's output (``features``) and applies the insert configured after it (its scores in
    ``scores``, its output in ``inserted``)."""

    def __init__(self, owner: nn.Module, inserts: tuple[Insert, ...], train: bool):
        self.owner, self.train = owner, train
        self.by_block = {i.after: i for i in inserts}
        self.features: dict[str, jnp.ndarray] = {}
        self.scores: dict[str, jnp.ndarray] = {}
        self.inserted: dict[str, jnp.ndarray] = {}

    def __call__(self, name: str, x: jnp.ndarray) -> jnp.ndarray:
        self.features[name] = x
        insert = self.by_block.get(name)
        if insert is None:
            return x
        if insert.kind == "letkd":
            layer = LeTKDLayer(insert.size, insert.alpha, dtype=self.owner.dtype, name=f"letkd_{name}")
        elif insert.kind == "template":
            layer = TemplateMatchingBlock(insert.size, dtype=self.owner.dtype, name=f"template_{name}")
        else:
            raise ValueError(f"insert kind {insert.kind!r}: use 'letkd' or 'template'")
        x, self.scores[name] = layer(x, train=self.train)
        self.inserted[name] = x
        return x


def check_inserts(inserts: tuple[Insert, ...], blocks: list[str]) -> None:
    """Raises ValueError for an insert after a block the network does not have (``blocks``: its block names)."""
    unknown = [i.after for i in inserts if i.after not in blocks]
    if unknown:
        raise ValueError(f"inserts after unknown block(s) {unknown}; this network's blocks: {blocks}")


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: a 3x3 stride-1 stem, then stages of basic or bottleneck blocks (the first block
    of every stage after the first strides by 2), global average pooling and the classifier.

    The KD code base's ``resnet*`` have three stages of ``(depth - 2) / 6`` basic blocks; its CIFAR ``ResNet50``
    (``resnetv2.py``, the letKD paper's teacher for MobileNetV2) has four bottleneck stages and ``linear``.
    """

    stage_sizes: tuple[int, ...]
    widths: tuple[int, ...]  # stem, then one per stage
    num_classes: int
    bottleneck: bool = False
    classifier: str = "fc"
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        return [f"layer{s + 1}_{j}" for s, n in enumerate(self.stage_sizes) for j in range(n)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        check_inserts(self.inserts, self.block_names())
        after = InsertRecorder(self, self.inserts, train)
        block = Bottleneck if self.bottleneck else BasicBlock
        x = nn.Conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init, name="conv1")(x.astype(self.dtype))
        x = nn.relu(batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        for s, n in enumerate(self.stage_sizes):
            for j in range(n):
                name = f"layer{s + 1}_{j}"
                stride = 2 if s > 0 and j == 0 else 1
                x = after(name, block(self.widths[s + 1], stride, self.dtype, name=name)(x, train))
        x = after("final", x)
        return pool_and_classify(self, x, after, name=self.classifier)


class WideBasicBlock(nn.Module):
    """Pre-activation WRN block: BN-ReLU -> 3x3 (stride) -> BN-ReLU -> 3x3, plus the identity or a 1x1
    ``convShortcut`` of the *activated* input (when the width changes), as the KD code base's ``wrn.py``."""

    features: int
    stride: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=conv_init)
        equal = x.shape[-1] == self.features
        activated = nn.relu(batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        y = conv(self.features, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv1")(activated)
        y = nn.relu(batch_norm(self.dtype, "bn2")(y, use_running_average=not train))
        y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        shortcut = x if equal else conv(self.features, (1, 1), (self.stride, self.stride),
                                        name="convShortcut")(activated)
        return shortcut + y


class WideResNet(nn.Module):
    """WRN-d-k for 32x32 inputs (``depth = 6n + 4``): stem, three stages, final BN-ReLU, GAP, ``fc``."""

    depth: int
    widen: int
    num_classes: int
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        n = (self.depth - 4) // 6
        return [f"block{s + 1}_{j}" for s in range(3) for j in range(n)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        names = self.block_names()
        check_inserts(self.inserts, names)
        after = InsertRecorder(self, self.inserts, train)
        x = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                    name="conv1")(x.astype(self.dtype))
        for name in names[:-1]:
            stage, j = (int(v) for v in name[len("block"):].split("_"))
            stride = 2 if stage > 1 and j == 0 else 1
            x = after(name, WideBasicBlock(16 * 2 ** (stage - 1) * self.widen, stride, self.dtype, name=name)(x, train))
        x = nn.relu(batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        x = after("final", x)
        return pool_and_classify(self, x, after)


def pool_and_classify(module: nn.Module, x: jnp.ndarray, after: InsertRecorder,
                      name: str = "fc") -> dict[str, Any]:
    """Global average pooling and ``module``'s ``num_classes``-way Dense ``name``: the network's output dict."""
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(module.num_classes, dtype=jnp.float32, name=name)(pooled)
    return {"logits": logits, "features": after.features, "scores": after.scores, "inserted": after.inserted}


def conv_bn(x: jnp.ndarray, features: int, kernel: int, stride: int, groups: int, name: str | tuple[str, str],
            dtype: Any, train: bool, relu: bool) -> jnp.ndarray:
    """conv (no bias, 'same' padding, ``groups``) -> BN [-> ReLU], named ``{name}_conv`` / ``{name}_bn`` or by
    the given (conv, bn) pair."""
    conv_name, bn_name = name if isinstance(name, tuple) else (f"{name}_conv", f"{name}_bn")
    pad = kernel // 2
    x = nn.Conv(features, (kernel, kernel), (stride, stride), padding=((pad, pad), (pad, pad)),
                feature_group_count=groups, use_bias=False, dtype=dtype, kernel_init=conv_init, name=conv_name)(x)
    x = batch_norm(dtype, bn_name)(x, use_running_average=not train)
    return nn.relu(x) if relu else x


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
    """ShuffleNet's shuffle in NHWC: channels (g, C/g) -> (C/g, g), as the NCHW view/permute/reshape."""
    n, h, w, c = x.shape
    return x.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)


class InvertedResidual(nn.Module):
    """MobileNetV2 block of the KD code base: 1x1 expand (always, also at ratio 1) -> 3x3 depthwise (stride)
    -> 1x1 project, BN after each, ReLU after the first two; identity added at stride 1 with equal widths."""

    features: int
    stride: int
    expand: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        hidden = x.shape[-1] * self.expand
        y = conv_bn(x, hidden, 1, 1, 1, "expand", self.dtype, train, relu=True)
        y = conv_bn(y, hidden, 3, self.stride, hidden, "depthwise", self.dtype, train, relu=True)
        y = conv_bn(y, self.features, 1, 1, 1, "project", self.dtype, train, relu=False)
        return x + y if self.stride == 1 and x.shape[-1] == self.features else y


class MobileNetV2(nn.Module):
    """The KD code base's CIFAR MobileNetV2 (``mobile_half``: expansion 6, width 0.5; a stride-2 stem)."""

    num_classes: int
    expand: int = 6
    width: float = 0.5
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def stages(self) -> list[tuple[int, int, int, int]]:  # (expansion, channels, blocks, stride)
        t = self.expand
        return [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2), (t, 96, 3, 1), (t, 160, 3, 2),
                (t, 320, 1, 1)]

    def block_names(self) -> list[str]:
        return [f"blocks{i}_{j}" for i, (_, _, n, _) in enumerate(self.stages()) for j in range(n)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        check_inserts(self.inserts, self.block_names())
        after = InsertRecorder(self, self.inserts, train)
        x = conv_bn(x.astype(self.dtype), int(32 * self.width), 3, 2, 1, "stem", self.dtype, train, relu=True)
        for i, (t, c, n, s) in enumerate(self.stages()):
            for j in range(n):
                name = f"blocks{i}_{j}"
                x = after(name, InvertedResidual(int(c * self.width), s if j == 0 else 1, t, self.dtype,
                                                 name=name)(x, train))
        last = int(1280 * self.width) if self.width > 1.0 else 1280
        x = after("final", conv_bn(x, last, 1, 1, 1, "head", self.dtype, train, relu=True))
        return pool_and_classify(self, x, after, name="classifier")


class ShuffleV1Block(nn.Module):
    """ShuffleNet unit: 1x1 group conv -> shuffle -> 3x3 depthwise (stride) -> 1x1 group conv; at stride 2 the
    3x3 average-pooled input is concatenated, else added; ReLU after. The first unit's 1x1 is ungrouped."""

    features: int  # output channels of the residual branch
    stride: int
    groups: int
    first_groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        mid = self.features // 4
        y = conv_bn(x, mid, 1, 1, self.first_groups, ("conv1", "bn1"), self.dtype, train, relu=True)
        y = channel_shuffle(y, self.first_groups)
        y = conv_bn(y, mid, 3, self.stride, mid, ("conv2", "bn2"), self.dtype, train, relu=True)
        y = conv_bn(y, self.features, 1, 1, self.groups, ("conv3", "bn3"), self.dtype, train, relu=False)
        if self.stride == 2:
            shortcut = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
            return nn.relu(jnp.concatenate([y, shortcut], axis=-1))
        return nn.relu(y + x)


class ShuffleNetV1(nn.Module):
    """The KD code base's CIFAR ShuffleNet (``ShuffleV1``: groups 3, widths 240/480/960, 4/8/4 units)."""

    num_classes: int
    widths: tuple[int, int, int] = (240, 480, 960)
    blocks: tuple[int, int, int] = (4, 8, 4)
    groups: int = 3
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        return [f"layer{s + 1}_{j}" for s in range(3) for j in range(self.blocks[s])] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        check_inserts(self.inserts, self.block_names())
        after = InsertRecorder(self, self.inserts, train)
        x = conv_bn(x.astype(self.dtype), 24, 1, 1, 1, ("conv1", "bn1"), self.dtype, train, relu=True)
        for s in range(3):
            for j in range(self.blocks[s]):
                name = f"layer{s + 1}_{j}"
                width = self.widths[s] - (x.shape[-1] if j == 0 else 0)
                first_groups = 1 if x.shape[-1] == 24 else self.groups
                x = after(name, ShuffleV1Block(width, 2 if j == 0 else 1, self.groups, first_groups, self.dtype,
                                               name=name)(x, train))
        x = after("final", x)
        return pool_and_classify(self, x, after, name="linear")


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit. Stride 1: split the channels in halves, transform the second (1x1 -> 3x3 depthwise ->
    1x1), concatenate, shuffle. Down-sampling unit: both branches see the whole input (3x3 dw s2 -> 1x1; 1x1 ->
    3x3 dw s2 -> 1x1), concatenated to ``features`` channels, shuffled."""

    features: int
    down: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        d = self.dtype
        if self.down:
            c, mid = x.shape[-1], self.features // 2
            left = conv_bn(x, c, 3, 2, c, ("conv1", "bn1"), d, train, relu=False)
            left = conv_bn(left, mid, 1, 1, 1, ("conv2", "bn2"), d, train, relu=True)
            right = conv_bn(x, mid, 1, 1, 1, ("conv3", "bn3"), d, train, relu=True)
            right = conv_bn(right, mid, 3, 2, mid, ("conv4", "bn4"), d, train, relu=False)
            right = conv_bn(right, mid, 1, 1, 1, ("conv5", "bn5"), d, train, relu=True)
            return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)
        half = x.shape[-1] // 2
        keep, y = x[..., :half], x[..., half:]
        c = y.shape[-1]
        y = conv_bn(y, c, 1, 1, 1, ("conv1", "bn1"), d, train, relu=True)
        y = conv_bn(y, c, 3, 1, c, ("conv2", "bn2"), d, train, relu=False)
        y = conv_bn(y, c, 1, 1, 1, ("conv3", "bn3"), d, train, relu=True)
        return channel_shuffle(jnp.concatenate([keep, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
    """The KD code base's CIFAR ShuffleNetV2 (``ShuffleV2``, net size 1: 116/232/464 channels, 3/7/3 units
    after each down-sampling unit, a 1x1 to 1,024 before pooling)."""

    num_classes: int
    widths: tuple[int, int, int, int] = (116, 232, 464, 1024)
    blocks: tuple[int, int, int] = (3, 7, 3)
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        return [f"layer{s + 1}_{j}" for s in range(3) for j in range(self.blocks[s] + 1)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        check_inserts(self.inserts, self.block_names())
        after = InsertRecorder(self, self.inserts, train)
        x = conv_bn(x.astype(self.dtype), 24, 1, 1, 1, ("conv1", "bn1"), self.dtype, train, relu=True)
        for s in range(3):
            for j in range(self.blocks[s] + 1):
                name = f"layer{s + 1}_{j}"
                x = after(name, ShuffleV2Block(self.widths[s], j == 0, self.dtype, name=name)(x, train))
        x = after("final", conv_bn(x, self.widths[3], 1, 1, 1, ("conv2", "bn2"), self.dtype, train, relu=True))
        return pool_and_classify(self, x, after, name="linear")


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> Callable[..., nn.Module]:
    n = (depth - 2) // 6
    return lambda num_classes, dtype=jnp.float32, inserts=(): CifarResNet((n, n, n), widths, num_classes,
                                                                          inserts=tuple(inserts), dtype=dtype)


def _wrn(depth: int, widen: int) -> Callable[..., nn.Module]:
    return lambda num_classes, dtype=jnp.float32, inserts=(): WideResNet(depth, widen, num_classes,
                                                                         inserts=tuple(inserts), dtype=dtype)


_NARROW, _WIDE = (16, 16, 32, 64), (32, 64, 128, 256)
CIFAR_NETWORKS: dict[str, Callable[..., nn.Module]] = {
    **{f"resnet{d}": _resnet(d, _NARROW) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": _resnet(8, _WIDE),
    "resnet32x4": _resnet(32, _WIDE),
    **{f"wrn_{d}_{k}": _wrn(d, k) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    "cifar_resnet50": lambda num_classes, dtype=jnp.float32, inserts=(): CifarResNet(
        (3, 4, 6, 3), (64, 64, 128, 256, 512), num_classes, bottleneck=True, classifier="linear",
        inserts=tuple(inserts), dtype=dtype),
    "mobilenetv2": lambda num_classes, dtype=jnp.float32, inserts=(): MobileNetV2(
        num_classes, inserts=tuple(inserts), dtype=dtype),
    "shufflev1": lambda num_classes, dtype=jnp.float32, inserts=(): ShuffleNetV1(
        num_classes, inserts=tuple(inserts), dtype=dtype),
    "shufflev2": lambda num_classes, dtype=jnp.float32, inserts=(): ShuffleNetV2(
        num_classes, inserts=tuple(inserts), dtype=dtype),
}


def classifier_name(arch: str) -> str:
    """The Flax name of ``arch``'s final linear layer (the KD code base's name for it)."""
    return {"mobilenetv2": "classifier", "shufflev1": "linear", "shufflev2": "linear",
            "cifar_resnet50": "linear"}.get(arch, "fc")


def cifar_network(name: str, num_classes: int, *, dtype: Any = jnp.float32,
                  inserts: tuple[Insert, ...] = ()) -> nn.Module:
    """The classifier ``name`` (see ``CIFAR_NETWORKS``) with ``num_classes`` outputs."""
    if name not in CIFAR_NETWORKS:
        raise ValueError(f"unknown CIFAR network {name!r}; choose one of {sorted(CIFAR_NETWORKS)}")
    return CIFAR_NETWORKS[name](num_classes, dtype=dtype, inserts=inserts)
