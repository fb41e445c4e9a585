"""The configuration schema: every key an experiment may set, with its default.

Experiment files (``experiments/*.py``) start from :func:`default_config` and change what they need.
:func:`validate` rejects keys the schema does not know (typos in experiment files or in
``--config.a.b=v`` overrides) with the closest valid names, so a misspelt key never silently does nothing.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

# The allowed values of every key with a closed set of values live next to the code that dispatches on them;
# validation reads them from there.
from jaxdml.data.datasets import DATASETS
from jaxdml.data.pipeline import AUGMENTATIONS
from jaxdml.data.sampler import GROUPED_SAMPLERS, SAMPLERS
from jaxdml.errors import ConfigError
from jaxdml.eval import EVALUATORS
from jaxdml.kernels import METHODS as GSP_METHODS
from jaxdml.losses import LOSSES, MINERS
from jaxdml.models.backbones import BACKBONES
from jaxdml.models.cifar import CIFAR_NETWORKS
from jaxdml.models.model import COMPUTE_DTYPES, POOLING_NAMES
from jaxdml.train.optim import OPTIMIZERS, SCHEDULES

__all__ = ["ConfigError", "check_overrides", "default_config", "load_config_file", "load_sibling", "suggest",
           "unknown_keys", "validate"]


def default_config() -> ml_collections.ConfigDict:
    """All keys with their defaults (the embedded digits experiment runs with these)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The procedure (jaxdml.trainers.TRAINERS): metric_learning (embeddings, retrieval metrics) | distillation (a
    # classifier trained with cross-entropy, optionally distilled from a teacher: the `distill` section; accuracy).
    c.trainer = "metric_learning"

    c.data = ml_collections.ConfigDict()
    # retrieval: digit_pairs | digit_collage (embedded) | caltech_birds2011 | cars196 | stanford_online_products |
    # inshop. classification: digit_numbers (embedded) | cifar10 | cifar100 | tiny_imagenet
    c.data.name = "digit_pairs"
    c.data.data_dir = config_dict.placeholder(str)  # TFDS data dir; None = TFDS default (~/tensorflow_datasets)
    c.data.image_size = 224  # train crop and eval centre crop (227 for BN-Inception)
    c.data.resize_size = 256  # eval: shorter side resized to this, then centre-cropped
    c.data.crop_area = (0.16, 1.0)  # random-resized crop: fraction of the image area
    c.data.crop_aspect = (3 / 4, 4 / 3)  # random-resized crop: aspect-ratio range
    c.data.flip = True  # random horizontal flip in training
    c.data.sampler = "m_per_class"  # m_per_class | one_per_class | hierarchical (SOP super-classes)
    c.data.samples_per_class = 4  # m_per_class / hierarchical: images per class in a batch
    c.data.super_classes_per_batch = 2  # hierarchical: super-classes per batch
    c.data.val_fraction = 0.0  # last fraction of the training classes held out for model selection
    c.data.num_workers = 0  # grain worker processes for decoding/augmenting (0 = in the main process)
    # Decode-once image cache (jaxdml.data.cache) for real datasets: decoded images, shorter side data.resize_size,
    # in one memory-mapped file per split shared by all workers. None = off; "default" = <TFDS data_dir>/jaxdml_cache.
    c.data.cache_dir = config_dict.placeholder(str)
    # random_resized_crop | pad_crop (CIFAR: pad, random crop) | rotate (random rotation; Tiny-ImageNet) | none
    c.data.augment = "random_resized_crop"
    c.data.crop_padding = 4  # pad_crop: pixels of zero padding on each side
    c.data.rotation_degrees = 20.0  # rotate: angles uniform in [-degrees, degrees]
    c.data.skip_corrupt = False  # undecodable images: error (False) or replace/skip and count (True)

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "small_cnn"  # see jaxdml.models.BACKBONES
    # Backbone weights: a directory from `python -m jaxdml.models.convert` or a PyTorch .pth (needs torch).
    c.model.pretrained = config_dict.placeholder(str)
    c.model.width = 32  # small_cnn: channels of the first stage
    c.model.embedding_dim = 128
    c.model.pooling = "gap"  # gap | gmp | gap+gmp | gsp
    c.model.gsp = ml_collections.ConfigDict()  # Generalized Sum Pooling head (model.pooling = "gsp")
    c.model.gsp.num_prototypes = 64  # K: 64 for CUB/Cars, 128 for SOP/In-Shop
    c.model.gsp.transport_ratio = 0.3  # mu; 1.0 is exactly GAP
    c.model.gsp.gamma = 5.0  # entropy weight (inverse temperature); the PyTorch release used 0.1
    c.model.gsp.method = "newton"  # newton | fixed_point | ott (see jaxdml.kernels.gsp_transport)
    c.model.gsp.memory_size = 1024  # prototypes by greedy k-center over this many GAP embeddings (GAP until full)
    c.model.gsp.prototypes_file = config_dict.placeholder(str)  # .npy (K, embedding_dim): use these instead
    c.model.gsp.augment_max_pool = False  # add the global max pool of the projected features
    c.model.gsp.gem = False  # GeM (learnable p, init 3) over the GSP-weighted features instead of their sum
    c.model.freeze_bn = False  # backbone BatchNorm uses (and keeps) its running statistics
    c.model.compute_dtype = "float32"  # float32 | bfloat16 (parameters stay float32)

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "contrastive"  # see jaxdml.losses.LOSSES
    c.loss.kwargs = ml_collections.ConfigDict()  # hyper-parameters of the named loss
    c.loss.weight = 1.0
    # More terms of a weighted sum: {term: {name, kwargs, weight}}, e.g. CCP's 0.1 pair + 1.0 proxy loss.
    c.loss.extra_terms = ml_collections.ConfigDict()
    c.loss.miner = ml_collections.ConfigDict()  # pair / triplet mining for pair-based terms
    c.loss.miner.name = ""  # "" = every pair; see jaxdml.losses.MINERS
    c.loss.miner.kwargs = ml_collections.ConfigDict()
    c.loss.xbm = ml_collections.ConfigDict()  # cross-batch memory around the loss
    c.loss.xbm.batches = 0  # memory size in batches (0 = off); GSP recipe: 25 CUB/Cars, 400 In-Shop, 1400 SOP
    c.loss.xbm.start_step = 1000
    c.loss.zsr = ml_collections.ConfigDict()  # GSP's zero-shot loss: total = (1 - weight) L + weight L_zsr
    c.loss.zsr.weight = 0.0  # 0.1 in the GSP recipe; needs model.pooling = "gsp"
    c.loss.zsr.ridge = 0.05
    c.loss.zsr.scale = 9.5

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam | adamw | sgd | rmsprop
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0  # decoupled for adamw; L2 added to gradients otherwise; never on BN/biases
    c.optim.momentum = 0.9  # sgd / rmsprop
    c.optim.nesterov = False  # sgd
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.schedule = "constant"  # constant | cosine | step
    c.optim.warmup_steps = 0
    c.optim.step_boundaries = ()  # step schedule: steps where lr is multiplied by step_factor
    c.optim.step_factor = 0.1
    c.optim.grad_clip_norm = 0.0  # 0 = no clipping
    c.optim.lr_mult = ml_collections.ConfigDict(dict(backbone=1.0, head=1.0, loss=1.0))
    c.optim.freeze_backbone_steps = 0  # warm-up: only head and loss parameters (e.g. proxies) train at first

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global batch; classes per batch = batch_size // data.samples_per_class
    c.train.num_steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2  # latest N kept, plus the best by eval.selection_metric
    c.train.progress_bar = True
    c.train.patience = 0  # early stopping: evaluations without a new best before training ends (0 = never)

    c.distill = ml_collections.ConfigDict()  # task = classification: teacher and distillation terms
    c.distill.method = "none"  # none | kd (Hinton) | fitnet | letkd
    c.distill.teacher_arch = ""  # e.g. resnet56 (jaxdml.models.cifar.CIFAR_NETWORKS)
    # A converted teacher (python -m jaxdml.models.convert), a .pth of the KD code base, or a jaxdml
    # classification workdir (its export/ directory).
    c.distill.teacher = config_dict.placeholder(str)
    c.distill.ce_weight = 1.0
    c.distill.kd_weight = 0.0  # Hinton KD term (set by method = kd; also combinable with the others)
    c.distill.kd_temperature = 4.0
    c.distill.fitnet_weight = 100.0  # method = fitnet: MSE between the regressed student and teacher hints
    c.distill.hint_block = "layer2_0"  # the student block FitNet reads ...
    c.distill.teacher_hint_block = "layer2_0"  # ... and the teacher block it regresses to
    c.distill.letkd = ml_collections.ConfigDict()  # method = letkd (letKD-1: penultimate; letKD-2: + intermediate)
    c.distill.letkd.num_words = 4096  # K: k-means words of the teacher's last-stage features
    c.distill.letkd.temperature = 1.0  # of the teacher's soft assignment
    c.distill.letkd.penultimate_alpha = 1.0
    c.distill.letkd.penultimate_weight = 1.0
    c.distill.letkd.intermediate = True  # letKD-2
    c.distill.letkd.student_block = "layer3_0"  # the first block of stage 3
    c.distill.letkd.teacher_block = "layer3_0"
    c.distill.letkd.lda_dims = 60
    c.distill.letkd.subclasses = 8  # per class
    c.distill.letkd.intermediate_alpha = 1.0
    c.distill.letkd.intermediate_weight = 1.0
    c.distill.letkd.max_points = 1_000_000  # teacher locations sampled for k-means / LDA (memory bound)
    c.distill.template = ml_collections.ConfigDict()  # the template-matching block (no teacher)
    c.distill.template.block = ""  # "" = none; else insert the block after this block, e.g. layer3_0
    c.distill.template.templates_per_class = 1
    c.distill.template.weight = 1.0

    c.eval = ml_collections.ConfigDict()
    c.eval.evaluator = ""  # retrieval | accuracy (jaxdml.eval.EVALUATORS); "" = the trainer's own
    c.eval.batch_size = 256
    c.eval.ks = (1, 2, 4, 8)  # Recall@K values
    c.eval.selection_metric = ""  # metric that picks the best checkpoint; "" = map_at_r (retrieval), accuracy
    c.eval.clustering = True  # NMI / AMI (k-means on the query embeddings)
    c.eval.at_start = True  # evaluate the untrained network too
    return c


def _flatten(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict) and key not in ("kwargs", "extra_terms"):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def suggest(key: str, valid: Iterable[str]) -> str:
    """`` Did you mean: a, b?`` for the valid names closest to ``key`` (empty when none is close)."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    if not close:  # the right name in the wrong section, e.g. 'data.batch_size' for 'train.batch_size'
        leaf = key.rsplit(".", 1)[-1]
        close = [v for v in valid if v.rsplit(".", 1)[-1] == leaf][:3]
    return f" Did you mean: {', '.join(close)}?" if close else ""


def unknown_keys(cfg: ml_collections.ConfigDict) -> list[str]:
    """Dotted keys of ``cfg`` that the schema of :func:`default_config` does not define."""
    valid = _flatten(default_config())
    return [k for k in _flatten(cfg) if k not in valid]


# Keys with a closed set of values -> the allowed values (read from the registries the code dispatches on).
CHOICES: dict[str, Iterable[str]] = {
    "data.name": DATASETS,
    "data.sampler": SAMPLERS,
    "data.augment": AUGMENTATIONS,
    "model.backbone": (*BACKBONES, *CIFAR_NETWORKS),
    "model.pooling": POOLING_NAMES,
    "model.gsp.method": GSP_METHODS,
    "model.compute_dtype": COMPUTE_DTYPES,
    "loss.name": LOSSES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "eval.evaluator": EVALUATORS,
}


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}.{suggest(str(value), allowed)}")


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises :class:`ConfigError` for unknown keys or values outside their allowed set; returns ``cfg``.

    ``trainer``, ``distill.method`` and the procedure-specific rules are checked by the trainers
    (:func:`jaxdml.trainers.resolve_config`), which also fill in ``eval.evaluator`` and ``eval.selection_metric``.
    """
    valid = _flatten(default_config())
    bad = unknown_keys(cfg)
    if bad:
        msgs = [f"unknown config key '{k}'.{suggest(k, valid)}" for k in bad]
        raise ConfigError("; ".join(msgs) + " Valid keys are listed in jaxdml/config.py (default_config).")
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if key == "eval.evaluator" and not value:
            continue
        _check_choice(key, value, allowed)
    if cfg.loss.miner.name:
        _check_choice("loss.miner.name", cfg.loss.miner.name, MINERS)
    if cfg.eval.evaluator and cfg.eval.selection_metric:
        _check_choice("eval.selection_metric", cfg.eval.selection_metric,
                      EVALUATORS[cfg.eval.evaluator].metric_names(cfg.eval))
    if cfg.data.sampler in GROUPED_SAMPLERS and cfg.train.batch_size % cfg.data.samples_per_class:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not a multiple of "
            f"data.samples_per_class={cfg.data.samples_per_class}; choose e.g. "
            f"train.batch_size={cfg.train.batch_size // cfg.data.samples_per_class * cfg.data.samples_per_class}.")
    if cfg.model.pretrained and cfg.model.backbone == "small_cnn":
        raise ConfigError("model.pretrained is set, but small_cnn has no pretrained weights; set model.backbone to "
                          "one of resnet18/34/50/101 or bninception.")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be in [0, 1).")
    if cfg.train.patience < 0:
        raise ConfigError(f"train.patience={cfg.train.patience} must be >= 0 (0 = no early stopping).")
    return cfg


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Imports an experiment file and returns its ``get_config()`` (an optional ``:arg`` suffix is passed on)."""
    path_str, _, arg = str(path).partition(":")
    file = Path(path_str)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; experiment files live in experiments/*.py.")
    spec = importlib.util.spec_from_file_location(f"jaxdml_experiment_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{file} defines no get_config() function.")
    return module.get_config(arg) if arg else module.get_config()


def load_sibling(file: str | Path, name: str):
    """Imports the module ``name``.py next to ``file`` (experiment files share recipes this way)."""
    path = Path(file).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"jaxdml_experiment_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_overrides(cfg: ml_collections.ConfigDict, argv: Sequence[str], flag: str = "config") -> None:
    """Raises :class:`ConfigError` naming each ``--config.a.b=v`` flag whose key ``cfg`` lacks."""
    valid = _flatten(cfg)
    prefix = f"--{flag}."
    for arg in argv:
        if not arg.startswith(prefix):
            continue
        key = arg[len(prefix):].split("=", 1)[0]
        if not _exists(cfg, key):
            raise ConfigError(f"unknown config key '{key}' in {arg.split('=', 1)[0]}.{suggest(key, valid)}")


def _exists(cfg: ml_collections.ConfigDict, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True
