"""The classification model: a CIFAR or ImageNet network (with its inserts) in the shared
:class:`~jaxdml.models.model.Model`.

Parameter groups: ``backbone`` (the whole network, LeTKD / template layers included: the student keeps
them at inference) and ``head`` (FitNet's hint regressor, used in training only).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxdml.distill.terms import letkd_parts
from jaxdml.layers.common import batch_norm, conv_init
from jaxdml.models.backbones import IMAGENET_MEAN, IMAGENET_STD
from jaxdml.models.cifar import CIFAR_NETWORKS, Insert, cifar_network, classifier_name
from jaxdml.models.imagenet import IMAGENET_NETWORKS, imagenet_network
from jaxdml.models.imagenet import classifier_name as imagenet_classifier_name
from jaxdml.models.model import Model, compute_dtype

# Per-channel mean / std of the training images (RGB, 0-1), as the KD code base normalises them.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "digit_numbers": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet2012": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision's
}
# Every classifier the distillation trainer builds: the CIFAR / Tiny-ImageNet networks and the ImageNet ones.
CLASSIFIERS: tuple[str, ...] = (*CIFAR_NETWORKS, *IMAGENET_NETWORKS)


def classifier_network(arch: str, num_classes: int, *, dtype: Any = jnp.float32,
                       inserts: tuple[Insert, ...] = ()) -> nn.Module:
    """The network ``arch`` from :data:`~jaxdml.models.cifar.CIFAR_NETWORKS` or
    :data:`~jaxdml.models.imagenet.IMAGENET_NETWORKS`."""
    if arch in IMAGENET_NETWORKS:
        return imagenet_network(arch, num_classes, dtype=dtype, inserts=inserts)
    return cifar_network(arch, num_classes, dtype=dtype, inserts=inserts)


def classifier_layer(arch: str) -> str:
    """The Flax name of ``arch``'s final linear layer."""
    return imagenet_classifier_name(arch) if arch in IMAGENET_NETWORKS else classifier_name(arch)


class HintRegressor(nn.Module):
    """FitNet's regressor (the KD code base's ``ConvReg``): conv -> BN -> ReLU from the student's hint map to the
    teacher's channels and size: a 1x1 conv at equal sizes, a 3x3 stride-2 conv when the student map is twice
    as large, a 4x4 stride-2 transposed conv when it is half as large."""

    features: int
    scale: str = "same"  # same | down | up (the student map relative to the teacher's)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.scale == "up":
            x = nn.ConvTranspose(self.features, (4, 4), (2, 2), padding="SAME", dtype=self.dtype,
                                 kernel_init=conv_init, name="conv")(x)
        else:
            down = self.scale == "down"
            x = nn.Conv(self.features, (3, 3) if down else (1, 1), (2, 2) if down else (1, 1),
                        padding=((1, 1), (1, 1)) if down else ((0, 0), (0, 0)), dtype=self.dtype,
                        kernel_init=conv_init, name="conv")(x)
        return nn.relu(batch_norm(self.dtype, "bn")(x, use_running_average=not train))


class HintHead(nn.Module):
    """The classification model's head in FitNet training: the network's outputs plus ``hint``, the regressed
    map of block ``block``."""

    regressor: HintRegressor
    block: str

    def __call__(self, outputs: dict[str, Any], train: bool = False) -> dict[str, Any]:
        return {**outputs, "hint": self.regressor(outputs["features"][self.block], train=train)}


def student_inserts(cfg: ml_collections.ConfigDict, num_classes: int) -> tuple[Insert, ...]:
    """The layers a config puts into the student: LeTKD (penultimate, intermediate) and the template block."""
    d, inserts = cfg.distill, []
    parts = letkd_parts(d)
    if parts["penultimate"]:
        inserts.append(Insert("final", "letkd", d.letkd.num_words, d.letkd.penultimate_alpha))
    if parts["intermediate"]:
        inserts.append(Insert(d.letkd.student_block, "letkd", num_classes * d.letkd.subclasses,
                              d.letkd.intermediate_alpha))
    if d.template.block:
        inserts.append(Insert(d.template.block, "template", num_classes * d.template.templates_per_class))
    return tuple(inserts)


def build_classifier(cfg: ml_collections.ConfigDict, num_classes: int, *, arch: str | None = None,
                     inserts: tuple[Insert, ...] = (), hint: tuple[int, str] | None = None) -> Model:
    """The classifier ``arch`` (default ``model.backbone``) as a :class:`~jaxdml.models.model.Model` returning
    ``{"logits", "features", "scores", "inserted"}`` (+ ``hint`` when ``hint`` = (teacher channels,
    same|down|up) asks for FitNet's regressor, the ``head`` parameter group)."""
    if cfg.data.name not in DATASET_STATS:
        raise ValueError(f"no normalisation statistics for data.name={cfg.data.name!r}; known: {sorted(DATASET_STATS)}")
    mean, std = DATASET_STATS[cfg.data.name]
    dtype = compute_dtype(cfg.model)
    network = classifier_network(arch or cfg.model.backbone, num_classes, dtype=dtype, inserts=inserts)
    head = HintHead(HintRegressor(hint[0], hint[1], dtype), cfg.distill.hint_block) if hint else None
    return Model(backbone=network, head=head, mean=mean, std=std, dtype=dtype,
                 freeze_bn=cfg.model.freeze_bn and arch is None)
