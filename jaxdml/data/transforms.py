"""Image transforms on the host (numpy + PIL), with torchvision's semantics.

Train: random-resized crop (area and aspect-ratio ranges, 10 attempts then a centre fallback, exactly as
``torchvision.transforms.RandomResizedCrop``) and a random horizontal flip. Eval: shorter side resized to
``resize_size``, then a centre crop of ``image_size`` (``Resize(256)`` + ``CenterCrop(224)``).
Images stay uint8 here; per-backbone normalisation happens on the device, inside the jitted step, so the
host sends 4x fewer bytes.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            area: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) as torchvision's ``RandomResizedCrop.get_params``."""
    total = height * width
    log_ratio = (math.log(aspect[0]), math.log(aspect[1]))
    for _ in range(10):
        target_area = total * rng.uniform(area[0], area[1])
        ratio = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = round(math.sqrt(target_area * ratio))
        h = round(math.sqrt(target_area / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(aspect):
        w, h = width, round(width / min(aspect))
    elif in_ratio > max(aspect):
        h, w = height, round(height * max(aspect))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image: np.ndarray, rng: np.random.Generator, *, size: int,
                    area: tuple[float, float], aspect: tuple[float, float], flip: bool) -> np.ndarray:
    """Random-resized crop to ``size`` x ``size`` (bilinear) and optional random horizontal flip."""
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, area, aspect)
    out = np.asarray(Image.fromarray(image).resize(
        (size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)))
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


# data.pad_mode -> np.pad's mode (torchvision RandomCrop's padding_mode "constant" with fill 0, or "reflect").
PAD_MODES: dict[str, str] = {"zeros": "constant", "reflect": "reflect"}


def pad_crop_transform(image: np.ndarray, rng: np.random.Generator, *, size: int, padding: int,
                       flip: bool, pad_mode: str = "zeros") -> np.ndarray:
    """Pad by ``padding`` pixels (zeros, or a reflection without the edge repeated), take a random ``size`` x
    ``size`` crop, optionally flip (the CIFAR augmentation, ``RandomCrop(32, padding=4, padding_mode=...)`` +
    ``RandomHorizontalFlip``; letKD's release reflects)."""
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=PAD_MODES[pad_mode])
    top = int(rng.integers(0, padded.shape[0] - size + 1))
    left = int(rng.integers(0, padded.shape[1] - size + 1))
    out = padded[top:top + size, left:left + size]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def rotate_flip_transform(image: np.ndarray, rng: np.random.Generator, *, degrees: float, flip: bool) -> np.ndarray:
    """A rotation by a uniform angle in [-degrees, degrees] about the centre (nearest neighbour, same size, zero
    fill: ``RandomRotation(degrees)``) and an optional random horizontal flip (letKD's Tiny-ImageNet
    augmentation)."""
    angle = float(rng.uniform(-degrees, degrees))
    out = np.asarray(Image.fromarray(image).rotate(angle, resample=Image.Resampling.NEAREST, expand=False,
                                                   fillcolor=0))
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return out


def eval_transform(image: np.ndarray, *, resize_size: int, size: int) -> np.ndarray:
    """Shorter side to ``resize_size`` (aspect kept), then the central ``size`` x ``size`` crop."""
    height, width = image.shape[:2]
    if height <= width:
        new_h, new_w = resize_size, int(resize_size * width / height)
    else:
        new_h, new_w = int(resize_size * height / width), resize_size
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    if new_h < size or new_w < size:
        raise ValueError(f"data.resize_size={resize_size} is smaller than data.image_size={size}")
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return resized[top:top + size, left:left + size]
