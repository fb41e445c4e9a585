"""ImageNet classifiers of the letKD ImageNet benchmark (supplement Table 2), for the distillation trainer.

* ``imagenet_resnet18/34/50``: torchvision's ResNets *with* their 1,000-way ``fc`` (teachers and students;
  ``jaxdml.models.backbones`` has the same networks without the classifier, for metric learning);
* ``imagenet_mobilenet``: the release's ``distillation/architectures/feature_extractors/MobileNetV2_ImageNet.py``,
  which despite its file name is MobileNet (V1): a 3x3 stride-2 stem and 13 depthwise-separable blocks
  (``features.0`` ... ``features.13``) to 1,024 channels at 7x7, ``AvgPool2d(7)`` and ``classifier.2`` (Linear).
  Its Table 2(b) numbers (student 68.87, KD 68.58, AT 69.56, DKD 72.05) are the common ResNet-50 -> MobileNet-V1
  numbers of the KD literature.

They return ``{"logits", "features", "scores", "inserted"}`` and take ``inserts`` as the CIFAR networks do
(:mod:`jaxdml.models.cifar`), so LeTKD layers and FitNet hints work unchanged. Flax names follow the PyTorch
modules, so torchvision (and release) checkpoints convert key by key, classifier kept, with the one converter:

    python -m jaxdml.models.convert --arch imagenet_resnet34 --src resnet34-b627a593.pth \\
        --out weights/imagenet_resnet34
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdml.layers.common import batch_norm, conv_init
from jaxdml.models.backbones import BasicBlock, Bottleneck
from jaxdml.models.cifar import Insert, InsertRecorder, check_inserts, conv_bn, pool_and_classify


class ImageNetResNet(nn.Module):
    """torchvision ResNet: 7x7 stride-2 stem, 3x3 stride-2 max pool, four stages, average pool, ``fc``."""

    stage_sizes: tuple[int, ...]
    num_classes: int
    bottleneck: bool = False
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        return [f"layer{s + 1}_{j}" for s, n in enumerate(self.stage_sizes) for j in range(n)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        check_inserts(self.inserts, self.block_names())
        after = InsertRecorder(self, self.inserts, train)
        x = nn.Conv(64, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False, dtype=self.dtype,
                    kernel_init=conv_init, name="conv1")(x.astype(self.dtype))
        x = nn.relu(batch_norm(self.dtype, "bn1")(x, use_running_average=not train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        block = Bottleneck if self.bottleneck else BasicBlock
        for s, n in enumerate(self.stage_sizes):
            for j in range(n):
                name = f"layer{s + 1}_{j}"
                x = after(name, block(64 * 2**s, 2 if s > 0 and j == 0 else 1, self.dtype, name=name)(x, train))
        x = after("final", x)
        return pool_and_classify(self, x, after, name="fc")


# The release's MobileNet: (output channels, stride) of features.1 ... features.13 (features.0: 32, stride 2).
MOBILENET_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1))


class ImageNetMobileNet(nn.Module):
    """The release's ImageNet MobileNet (V1): conv_bn(3, 32, 2), then ``conv_dw`` blocks (3x3 depthwise -> BN ->
    ReLU -> 1x1 -> BN -> ReLU); blocks are named ``features1`` ... ``features13`` (their output)."""

    num_classes: int
    inserts: tuple[Insert, ...] = ()
    dtype: Any = jnp.float32

    def block_names(self) -> list[str]:
        return [f"features{i}" for i in range(1, len(MOBILENET_BLOCKS) + 1)] + ["final"]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        check_inserts(self.inserts, self.block_names())
        after = InsertRecorder(self, self.inserts, train)
        d = self.dtype
        x = conv_bn(x.astype(d), 32, 3, 2, 1, ("features_0_0", "features_0_1"), d, train, relu=True)
        for i, (features, stride) in enumerate(MOBILENET_BLOCKS, start=1):
            c = x.shape[-1]
            x = conv_bn(x, c, 3, stride, c, (f"features_{i}_0", f"features_{i}_1"), d, train, relu=True)
            x = conv_bn(x, features, 1, 1, 1, (f"features_{i}_3", f"features_{i}_4"), d, train, relu=True)
            x = after(f"features{i}", x)
        x = after("final", x)
        return pool_and_classify(self, x, after, name="classifier_2")


def _resnet(stages: tuple[int, ...], bottleneck: bool) -> Callable[..., nn.Module]:
    return lambda num_classes, dtype=jnp.float32, inserts=(): ImageNetResNet(
        stages, num_classes, bottleneck, inserts=tuple(inserts), dtype=dtype)


IMAGENET_NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "imagenet_resnet18": _resnet((2, 2, 2, 2), False),
    "imagenet_resnet34": _resnet((3, 4, 6, 3), False),
    "imagenet_resnet50": _resnet((3, 4, 6, 3), True),
    "imagenet_mobilenet": lambda num_classes, dtype=jnp.float32, inserts=(): ImageNetMobileNet(
        num_classes, inserts=tuple(inserts), dtype=dtype),
}
TORCH_SOURCES = {"imagenet_resnet18": "torchvision.models.resnet18", "imagenet_resnet34": "torchvision.models.resnet34",
                 "imagenet_resnet50": "torchvision.models.resnet50",
                 "imagenet_mobilenet": "letKD release, MobileNetV2_ImageNet.MobileNet"}


def imagenet_network(name: str, num_classes: int = 1000, *, dtype: Any = jnp.float32,
                     inserts: tuple[Insert, ...] = ()) -> nn.Module:
    """The classifier ``name`` (see ``IMAGENET_NETWORKS``) with ``num_classes`` outputs."""
    if name not in IMAGENET_NETWORKS:
        raise ValueError(f"unknown ImageNet network {name!r}; choose one of {sorted(IMAGENET_NETWORKS)}")
    return IMAGENET_NETWORKS[name](num_classes, dtype=dtype, inserts=inserts)


def classifier_name(arch: str) -> str:
    """The Flax name of ``arch``'s final linear layer."""
    return "classifier_2" if arch == "imagenet_mobilenet" else "fc"

