"""The classification model: uint8 images -> normalised input -> a CIFAR network (with its inserts) -> logits.

Parameter groups: ``backbone`` (the whole network, LeTKD / template layers included: the student keeps
them at inference) and ``head`` (FitNet's hint regressor, used in training only).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxdml.models.backbones import _batch_norm, conv_init
from jaxdml.models.cifar import Insert, cifar_network

# Per-channel mean / std of the training images (RGB, 0-1), as the KD code base normalises them.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
    "digit_numbers": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


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
        return nn.relu(_batch_norm(self.dtype, "bn")(x, use_running_average=not train))


class ClassificationModel(nn.Module):
    """Returns the network's ``{"logits", "features", "scores"}`` plus ``hint`` when a regressor is set."""

    backbone: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hint_block: str = ""
    head: HintRegressor | None = None  # the "head" parameter group: FitNet's regressor, training only
    dtype: Any = jnp.float32

    def normalize(self, images: jnp.ndarray) -> jnp.ndarray:
        x = images.astype(jnp.float32) / 255.0
        return ((x - jnp.asarray(self.mean)) / jnp.asarray(self.std)).astype(self.dtype)

    def __call__(self, images: jnp.ndarray, train: bool = False) -> dict[str, Any]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got shape {images.shape}")
        out = dict(self.backbone(self.normalize(images), train=train))
        if self.head is not None:
            out["hint"] = self.head(out["features"][self.hint_block], train=train)
        return out

    def refresh(self) -> None:
        """No updates outside gradient steps (the retrieval models' GSP prototypes have some)."""


def student_inserts(cfg: ml_collections.ConfigDict, num_classes: int) -> tuple[Insert, ...]:
    """The layers a config puts into the student: LeTKD (penultimate, intermediate) and the template block."""
    d, inserts = cfg.distill, []
    if d.method == "letkd":
        inserts.append(Insert("final", "letkd", d.letkd.num_words, d.letkd.penultimate_alpha))
        if d.letkd.intermediate:
            inserts.append(Insert(d.letkd.student_block, "letkd", num_classes * d.letkd.subclasses,
                                  d.letkd.intermediate_alpha))
    if d.template.block:
        inserts.append(Insert(d.template.block, "template", num_classes * d.template.templates_per_class))
    return tuple(inserts)


def build_classifier(cfg: ml_collections.ConfigDict, num_classes: int, *, arch: str | None = None,
                     inserts: tuple[Insert, ...] = (), hint: tuple[int, str] | None = None) -> ClassificationModel:
    """The model for ``arch`` (default ``model.backbone``); ``hint`` = (teacher channels, same|down|up) for
    FitNet's regressor."""
    if cfg.data.name not in DATASET_STATS:
        raise ValueError(f"no normalisation statistics for data.name={cfg.data.name!r}; known: {sorted(DATASET_STATS)}")
    mean, std = DATASET_STATS[cfg.data.name]
    dtype = jnp.bfloat16 if cfg.model.compute_dtype == "bfloat16" else jnp.float32
    network = cifar_network(arch or cfg.model.backbone, num_classes, dtype=dtype, inserts=inserts)
    regressor = HintRegressor(hint[0], hint[1], dtype) if hint else None
    return ClassificationModel(network, mean, std, cfg.distill.hint_block if hint else "", regressor, dtype)
