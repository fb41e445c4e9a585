"""CIFAR classifiers of the knowledge-distillation literature, with the common KD code base's layouts.

The CRD / RepDistiller ``models/`` are the de-facto standard (their CIFAR-100 teachers are what every KD paper
distils from): ``resnet8/14/20/32/44/56/110`` (widths 16-16-32-64), ``resnet8x4/32x4`` (32-64-128-256),
``wrn_16_1/16_2/40_1/40_2``. Module names follow them (``layer1_0/conv1`` <-> ``layer1.0.conv1``,
``block1_0/convShortcut`` <-> ``block1.layer.0.convShortcut``, ``fc``), so ``jaxdml.models.convert`` maps their
checkpoints key by key.

Every network returns ``{"logits", "features", "scores"}``: ``features`` maps each block's name (and
``"final"``, the map that is average-pooled) to its output, for the teacher's artefacts and for FitNet hints;
``inserts`` put a template-matching block or a LeTKD layer after named blocks (``"final"`` included), whose
output then continues through the network and whose per-location scores land in ``scores``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.layers.template import LeTKDLayer, TemplateMatchingBlock
from jaxdml.models.backbones import BasicBlock, Bottleneck, _batch_norm, conv_init


@dataclasses.dataclass(frozen=True)
class Insert:
    """A layer after block ``after``: ``kind`` "letkd" (K = ``size`` words, residual weight ``alpha``) or
    "template" (``size`` templates)."""

    after: str
    kind: str
    size: int
    alpha: float = 1.0


class _Inserts:
    """Applies the configured inserts after a block and records features and scores."""

    def __init__(self, owner: nn.Module, inserts: tuple[Insert, ...], train: bool):
        self.owner, self.train = owner, train
        self.by_block = {i.after: i for i in inserts}
        self.features: dict[str, jnp.ndarray] = {}
        self.scores: dict[str, jnp.ndarray] = {}

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
        return x


def _check_inserts(inserts: tuple[Insert, ...], blocks: list[str]) -> None:
    unknown = [i.after for i in inserts if i.after not in blocks]
    if unknown:
        raise ValueError(f"inserts after unknown block(s) {unknown}; this network's blocks: {blocks}")


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs (3x3 stem, three stages, ``depth = 6n + 2`` basic / ``9n + 2`` bottleneck)."""

    depth: int
    widths: tuple[int, int, int, int]
    num_classes: int
    bottleneck: bool = False
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        n = (self.depth - 2) // (9 if self.bottleneck else 6)
        return [f"layer{s + 1}_{j}" for s in range(3) for j in range(n)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        names = self.block_names()
        _check_inserts(self.inserts, names)
        after = _Inserts(self, self.inserts, train)
        block = Bottleneck if self.bottleneck else BasicBlock
        x = nn.Conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init, name="conv1")(x.astype(self.dtype))
        x = nn.relu(_batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        for name in names[:-1]:
            stage, j = (int(v) for v in name[len("layer"):].split("_"))
            stride = 2 if stage > 1 and j == 0 else 1
            x = after(name, block(self.widths[stage], stride, self.dtype, name=name)(x, train))
        x = after("final", x)
        return _classify(self, x, after)


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
        activated = nn.relu(_batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        y = conv(self.features, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv1")(activated)
        y = nn.relu(_batch_norm(self.dtype, "bn2")(y, use_running_average=not train))
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
        _check_inserts(self.inserts, names)
        after = _Inserts(self, self.inserts, train)
        x = nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, kernel_init=conv_init,
                    name="conv1")(x.astype(self.dtype))
        for name in names[:-1]:
            stage, j = (int(v) for v in name[len("block"):].split("_"))
            stride = 2 if stage > 1 and j == 0 else 1
            x = after(name, WideBasicBlock(16 * 2 ** (stage - 1) * self.widen, stride, self.dtype, name=name)(x, train))
        x = nn.relu(_batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        x = after("final", x)
        return _classify(self, x, after)


def _classify(module: nn.Module, x: jnp.ndarray, after: _Inserts) -> dict[str, Any]:
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(module.num_classes, dtype=jnp.float32, name="fc")(pooled)
    return {"logits": logits, "features": after.features, "scores": after.scores}


def _resnet(depth: int, widths: tuple[int, int, int, int]) -> Callable[..., nn.Module]:
    return lambda num_classes, dtype=jnp.float32, inserts=(): CifarResNet(depth, widths, num_classes,
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
}


def cifar_network(name: str, num_classes: int, *, dtype: Any = jnp.float32,
                  inserts: tuple[Insert, ...] = ()) -> nn.Module:
    """The classifier ``name`` (see ``CIFAR_NETWORKS``) with ``num_classes`` outputs."""
    if name not in CIFAR_NETWORKS:
        raise ValueError(f"unknown CIFAR network {name!r}; choose one of {sorted(CIFAR_NETWORKS)}")
    return CIFAR_NETWORKS[name](num_classes, dtype=dtype, inserts=inserts)
