"""Imports PyTorch checkpoints exactly: torchvision ResNets and the ``pretrainedmodels`` BN-Inception (DML
backbones, ImageNet classifier dropped), the KD code base's CIFAR classifiers and the letKD ImageNet classifiers
(``imagenet_*``: torchvision's ResNets and the release's MobileNet; these keep their classifier: teachers).

    python -m jaxdml.models.convert --arch resnet50 --src resnet50-11ad3fa6.pth --out weights/resnet50
    python -m jaxdml.models.convert --arch imagenet_resnet34 --src resnet34-b627a593.pth \\
        --out weights/imagenet_resnet34

writes an orbax checkpoint of the backbone's ``{"params", "batch_stats"}`` plus ``jaxdml_pretrained.json``
(architecture, source, SHA-256, dropped keys). A config then sets ``model.pretrained = "weights/resnet50"``
(a ``.pth`` file works too, converted on the fly when torch is installed); a classifier's directory is a
``distill.teacher``.

Every key is accounted for: each Flax leaf names the PyTorch key it comes from; a key the checkpoint lacks, a
key left over (other than the ImageNet classifier and BatchNorm's ``num_batches_tracked``) or a shape that
does not fit stops the conversion with the full list. Convolution kernels go from OIHW to HWIO.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxdml import distributed
from jaxdml.errors import UserError
from jaxdml.models.backbones import BACKBONES, backbone_spec
from jaxdml.models.cifar import CIFAR_NETWORKS, cifar_network
from jaxdml.models.cifar import classifier_name as cifar_classifier_name
from jaxdml.models.imagenet import IMAGENET_NETWORKS, TORCH_SOURCES, imagenet_network
from jaxdml.models.imagenet import classifier_name as imagenet_classifier_name

METADATA_FILE = "jaxdml_pretrained.json"
# The ImageNet classifier of each DML backbone: in the checkpoint, never in the backbone.
CLASSIFIER_PREFIXES = {"resnet": "fc.", "bninception": "last_linear."}
# Classifiers (distillation teachers and students) keep their classifier layer; DML backbones drop it.
CLASSIFIERS = tuple(CIFAR_NETWORKS) + tuple(IMAGENET_NETWORKS)
CONVERTIBLE = tuple(name for name in BACKBONES if name != "small_cnn") + CLASSIFIERS


class ConversionError(UserError, ValueError):
    """Weights that cannot be used: missing, unreadable, or not fitting the architecture (every key listed)."""


_MOBILENET_NAMES = {"stem_conv": "conv1.0", "stem_bn": "conv1.1", "head_conv": "conv2.0", "head_bn": "conv2.1",
                    "expand_conv": "conv.0", "expand_bn": "conv.1", "depthwise_conv": "conv.3",
                    "depthwise_bn": "conv.4", "project_conv": "conv.6", "project_bn": "conv.7",
                    "classifier": "classifier.0"}


def _torch_module(arch: str, flax_module: str) -> str:
    """Flax module name -> PyTorch module path (``layer1_0`` -> ``layer1.0``, ``downsample_bn`` -> ``downsample.1``,
    WRN ``block1_0`` -> ``block1.layer.0``, MobileNetV2 ``blocks3_1`` -> ``blocks.3.1``, ``project_bn`` ->
    ``conv.7``, ImageNet MobileNet ``features_3_0`` -> ``features.3.0``)."""
    if arch == "imagenet_mobilenet":
        return re.sub(r"_(\d+)", r".\1", flax_module)
    if arch == "mobilenetv2":
        match = re.fullmatch(r"blocks(\d+)_(\d+)", flax_module)
        return f"blocks.{match[1]}.{match[2]}" if match else _MOBILENET_NAMES.get(flax_module, flax_module)
    if arch.startswith("shufflev") or arch == "cifar_resnet50":
        match = re.fullmatch(r"layer(\d+)_(\d+)", flax_module)
        if match:
            return f"layer{match[1]}.{match[2]}"
        return {"downsample_conv": "shortcut.0", "downsample_bn": "shortcut.1"}.get(flax_module, flax_module)
    if arch.startswith("wrn_"):
        match = re.fullmatch(r"block(\d+)_(\d+)", flax_module)
        return f"block{match[1]}.layer.{match[2]}" if match else flax_module
    if not arch.startswith(("resnet", "imagenet_resnet")):
        return flax_module
    match = re.fullmatch(r"layer(\d+)_(\d+)", flax_module)
    if match:
        return f"layer{match[1]}.{match[2]}"
    return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(flax_module, flax_module)


_LEAF_NAMES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
               ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_key(arch: str, collection: str, path: Sequence[str]) -> str:
    """The PyTorch state-dict key of the Flax leaf ``collection/path`` of backbone ``arch``."""
    *modules, leaf = path
    return ".".join([_torch_module(arch, m) for m in modules] + [_LEAF_NAMES[(collection, leaf)]])


def _to_flax(value: np.ndarray, leaf: str) -> np.ndarray:
    """PyTorch layout -> Flax layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def _to_torch(value: np.ndarray, leaf: str) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    return value


def classifier_name(arch: str) -> str:
    """The Flax name of classifier ``arch``'s final linear layer (CIFAR or ImageNet network)."""
    return imagenet_classifier_name(arch) if arch in IMAGENET_NETWORKS else cifar_classifier_name(arch)


def backbone_shapes(arch: str, num_classes: int | None = None) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of ``arch`` as shape/dtype structs (nothing is computed); classifiers
    include their ``num_classes``-way classifier (default 100 for CIFAR, 1,000 for ImageNet networks)."""
    if arch in IMAGENET_NETWORKS:
        module, size = imagenet_network(arch, num_classes or 1000), 224
    elif arch in CIFAR_NETWORKS:
        module, size = cifar_network(arch, num_classes or 100), 32
    else:
        module, size = backbone_spec(arch).build(jnp.float32), 64
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return flax.core.unfreeze(variables)


def convert_state_dict(arch: str, state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """PyTorch state dict -> (Flax ``{"params", "batch_stats"}`` of float32 numpy arrays, dropped keys)."""
    if arch not in CONVERTIBLE:
        raise ConversionError(f"--arch {arch!r} has no PyTorch original; choose one of {list(CONVERTIBLE)}")
    state_dict = {k: np.asarray(v) for k, v in _strip_wrapper_prefix(state_dict).items()}
    classifier_weight = f"{_torch_module(arch, classifier_name(arch))}.weight"
    num_classes = int(state_dict[classifier_weight].shape[0]) if classifier_weight in state_dict else None
    shapes = backbone_shapes(arch, num_classes)
    missing, misfit, used = [], [], set()
    converted: dict[str, Any] = {}
    for collection, tree in shapes.items():
        flat = flax.traverse_util.flatten_dict(tree)
        out = {}
        for path, struct in flat.items():
            key = torch_key(arch, collection, path)
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = _to_flax(state_dict[key], path[-1])
            if value.shape != tuple(struct.shape):
                misfit.append(f"{key}: checkpoint {tuple(state_dict[key].shape)} -> {value.shape}, "
                              f"{arch} needs {tuple(struct.shape)}")
                continue
            out[path] = value.astype(np.float32)
        converted[collection] = flax.traverse_util.unflatten_dict(out)
    # DML backbones drop the ImageNet classifier; classifiers keep theirs (nothing else is dropped).
    family = "resnet" if arch.startswith("resnet") else arch
    classifier = None if arch in CLASSIFIERS else CLASSIFIER_PREFIXES[family]
    dropped = sorted(k for k in state_dict if k not in used
                     and ((classifier and k.startswith(classifier)) or k.endswith("num_batches_tracked")))
    left_over = sorted(set(state_dict) - used - set(dropped))
    problems = []
    if missing:
        problems.append(f"{len(missing)} key(s) the checkpoint lacks: {missing}")
    if left_over:
        problems.append(f"{len(left_over)} key(s) left over: {left_over}")
    if misfit:
        problems.append(f"{len(misfit)} shape(s) that do not fit: {misfit}")
    if problems:
        origin = f" ({TORCH_SOURCES[arch]})" if arch in TORCH_SOURCES else ""
        raise ConversionError(f"this checkpoint is not a {arch}{origin}: " + "; ".join(problems))
    return converted, dropped


def export_state_dict(arch: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of :func:`convert_state_dict` (without the classifier): Flax variables -> PyTorch-named arrays."""
    state = {}
    for collection, tree in variables.items():
        for path, value in flax.traverse_util.flatten_dict(dict(tree)).items():
            state[torch_key(arch, collection, path)] = _to_torch(np.asarray(value), path[-1])
    return state


def _strip_wrapper_prefix(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
    """Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and a ``module.`` prefix (DataParallel)."""
    for wrapper in ("state_dict", "model"):
        if set(state_dict) == {wrapper} or (wrapper in state_dict and isinstance(state_dict[wrapper], Mapping)):
            state_dict = state_dict[wrapper]
            break
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def read_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """A ``.pth``/``.pt`` (needs torch; tensors only) or ``.npz`` file of PyTorch-named arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {str(path)!r}")
    if path.suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    try:
        import torch
    except ImportError as error:
        raise ImportError(f"reading {path.name} needs PyTorch (pip install torch); or convert it elsewhere with "
                          f"`python -m jaxdml.models.convert` and point model.pretrained at the output") from error
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = _strip_wrapper_prefix(state)
    return {k: v.detach().float().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def save_converted(variables: dict[str, Any], out_dir: str | Path, metadata: dict[str, Any]) -> Path:
    """Writes the orbax checkpoint (``out_dir/variables``) and the metadata JSON. In a multi-process run every
    process calls it (orbax saves collectively) and process 0 writes the files."""
    import orbax.checkpoint as ocp

    out_dir = Path(out_dir).absolute()
    primary = distributed.is_primary()
    if primary:
        out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "variables"
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, variables, force=True)
    if primary:
        (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return target


def load_pretrained(path: str | Path, arch: str, *, key: str = "model.pretrained",
                    arch_key: str = "model.backbone") -> dict[str, Any]:
    """``{"params", "batch_stats"}`` of backbone ``arch`` from a converted directory or a checkpoint file;
    errors name the config keys ``key`` (the path) and ``arch_key`` (the architecture)."""
    path = Path(path)
    if path.is_dir():
        meta_file = path / METADATA_FILE
        if not meta_file.is_file():
            raise ConversionError(f"{key} = {str(path)!r} is not a converted backbone (no {METADATA_FILE}); make one "
                                  f"with `python -m jaxdml.models.convert --arch {arch} --src CHECKPOINT --out {path}`")
        meta = json.loads(meta_file.read_text())
        if meta["arch"] != arch:
            raise ConversionError(f"{key} = {str(path)!r} holds a {meta['arch']} backbone, but {arch_key} = {arch!r}")
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(path.absolute() / "variables")
        return jax.tree.map(np.asarray, restored)
    if not path.exists():
        raise ConversionError(f"{key} = {str(path)!r} does not exist; convert a PyTorch checkpoint with "
                              f"`python -m jaxdml.models.convert --arch {arch} --src FILE.pth --out DIR`")
    try:
        state_dict = read_checkpoint(path)
    except ImportError as error:
        raise ConversionError(str(error)) from error
    variables, _ = convert_state_dict(arch, state_dict)
    return variables


def check_fits(variables: dict[str, Any], expected: dict[str, Any], source: str) -> None:
    """Raises unless ``variables`` has exactly the leaves and shapes of ``expected`` (the model's backbone)."""
    problems = []
    for collection in sorted(set(variables) | set(expected)):
        have = flax.traverse_util.flatten_dict(variables.get(collection, {}), sep="/")
        want = flax.traverse_util.flatten_dict(expected.get(collection, {}), sep="/")
        problems += [f"{collection}/{k}: missing" for k in sorted(set(want) - set(have))]
        problems += [f"{collection}/{k}: unexpected" for k in sorted(set(have) - set(want))]
        problems += [f"{collection}/{k}: shape {tuple(np.shape(have[k]))}, model needs {tuple(want[k].shape)}"
                     for k in sorted(set(have) & set(want)) if tuple(np.shape(have[k])) != tuple(want[k].shape)]
    if problems:
        raise ConversionError(f"pretrained weights {source!r} do not fit the backbone ({len(problems)} problem(s)): "
                              f"{problems[:20]}")


def _sha256(path: Path) -> str:
    """The hex SHA-256 of the file ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxdml.models.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", required=True, choices=CONVERTIBLE)
    parser.add_argument("--src", required=True, help="PyTorch checkpoint (.pth/.pt, or .npz of named arrays)")
    parser.add_argument("--out", required=True, help="output directory (orbax checkpoint + metadata)")
    args = parser.parse_args(argv)
    try:
        variables, dropped = convert_state_dict(args.arch, read_checkpoint(args.src))
    except (ConversionError, FileNotFoundError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    src = Path(args.src)
    count = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(variables["params"]))
    meta = {"arch": args.arch, "source": str(src.absolute()), "sha256": _sha256(src), "num_params": count,
            "dropped_keys": dropped}
    if args.arch in CLASSIFIERS:
        meta["num_classes"] = int(variables["params"][classifier_name(args.arch)]["kernel"].shape[-1])
    target = save_converted(variables, args.out, meta)
    kept = "num_batches_tracked; classifier kept" if args.arch in CLASSIFIERS else "classifier, num_batches_tracked"
    print(f"{args.arch}: {count:,} parameters from {src.name} -> {target}; dropped {len(dropped)} key(s) ({kept})")
    out = Path(args.out).absolute()
    if args.arch in CLASSIFIERS:
        print(f"use it as a teacher with --config.distill.teacher_arch={args.arch} --config.distill.teacher={out}")
    else:
        print(f"use it with --config.model.backbone={args.arch} --config.model.pretrained={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
