"""The configuration schema: every key an experiment may set, with its default.

Experiment files (``experiments/*.py``) start from :func:`default_config` and change what they need.
:func:`validate` rejects keys the schema does not know (typos in experiment files or in
``--config.a.b=v`` overrides) with the closest valid names, so a misspelt key never silently does nothing, and
every value that breaks its rule, before any work: the type of its default, its range (``RULES``: counts,
fractions, intervals, increasing tuples; never NaN or inf), its allowed names (``CHOICES``, read from the
registries), the rules between keys (``CROSS_KEY_RULES``) and, for ``loss.kwargs``, ``loss.miner.kwargs`` and
``loss.extra_terms.<term>.kwargs``, the signature of the loss or miner named. Each message is one line: the key,
the bad value, the rule and a valid value (``train.log_every=0 must be >= 1; e.g. train.log_every=1.``).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import importlib.util
import inspect
import math
import numbers
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

# The allowed values of every key with a closed set of values live next to the code that dispatches on them;
# validation reads them from there.
from jaxdml.data.datasets import DATASETS
from jaxdml.data.folder import LAYOUT as FOLDER_LAYOUT
from jaxdml.data.folder import NAME as FOLDER
from jaxdml.data.pipeline import AUGMENTATIONS
from jaxdml.data.sampler import GROUPED_SAMPLERS, SAMPLERS
from jaxdml.data.transforms import PAD_MODES
from jaxdml.errors import ConfigError
from jaxdml.eval import EVALUATORS
from jaxdml.kernels import METHODS as GSP_METHODS
from jaxdml.losses import LOSSES, MINERS, XBM_MODES, make_objective
from jaxdml.losses.registry import loss_hyper_parameters, miner_hyper_parameters
from jaxdml.losses.xbml import READINGS as XBML_READINGS
from jaxdml.models.backbones import BACKBONES
from jaxdml.models.cifar import CIFAR_NETWORKS
from jaxdml.models.heads import EMBEDDING_NORMS
from jaxdml.models.imagenet import IMAGENET_NETWORKS
from jaxdml.models.model import COMPUTE_DTYPES, POOLING_NAMES
from jaxdml.train.optim import OPTIMIZERS, SCHEDULES

__all__ = ["CHOICES", "RULES", "ConfigError", "check_hyper_parameter", "check_overrides", "default_config", "has_key",
           "hyper_parameter_owner", "load_config_file", "load_sibling", "parse_hyper_parameter", "rule_of", "suggest",
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
    # inshop | folder (your own images: data.path). classification: digit_numbers (embedded) | cifar10 | cifar100 |
    # tiny_imagenet
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
    # Class-disjoint folds of the training classes (the MLRC protocol: 4). With data.folds > 0 one model is trained
    # per fold, each on the other folds and selected on its own, then evaluated alone and concatenated
    # (jaxdml.trainers.folds); data.fold = k trains only model k (-1: all, in sequence, then their concatenation).
    c.data.folds = 0
    c.data.fold = -1
    c.data.num_workers = 0  # grain worker processes for decoding/augmenting (0 = in the main process)
    # Decode-once image cache (jaxdml.data.cache) for real datasets and folder: decoded images, shorter side
    # data.resize_size, in one memory-mapped file per split shared by all workers. None = off; "default" =
    # <TFDS data_dir>/jaxdml_cache.
    c.data.cache_dir = config_dict.placeholder(str)
    # random_resized_crop | pad_crop (CIFAR: pad, random crop) | rotate (random rotation; Tiny-ImageNet) | none
    c.data.augment = "random_resized_crop"
    c.data.crop_padding = 4  # pad_crop: pixels of padding on each side
    c.data.pad_mode = "zeros"  # pad_crop: zeros | reflect (torchvision padding_mode="reflect"; the letKD release)
    c.data.rotation_degrees = 20.0  # rotate: angles uniform in [-degrees, degrees]
    c.data.skip_corrupt = False  # undecodable images: error (False) or replace/skip and count (True)
    # data.name = "folder" (your own images, jaxdml.data.folder): data.path is a folder with one sub-folder of images
    # per class (ImageFolder layout) or a CSV file of path,label rows (relative paths: from the CSV's folder). The
    # test classes: data.test_path (same layout), or else a class-disjoint random data.test_fraction of data.path's
    # classes drawn with data.split_seed (a fixed split: runs with other seeds test on the same classes).
    c.data.path = config_dict.placeholder(str)
    c.data.test_path = config_dict.placeholder(str)
    c.data.test_fraction = 0.5
    c.data.split_seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.backbone = "small_cnn"  # see jaxdml.models.BACKBONES
    # Backbone weights: a directory from `python -m jaxdml.models.convert` or a PyTorch .pth (needs torch).
    c.model.pretrained = config_dict.placeholder(str)
    c.model.width = 32  # small_cnn: channels of the first stage
    c.model.embedding_dim = 128
    # gap | gmp | gap+gmp | gsp | xbml, or a baseline: cbam | crow | delf | gem | gsop | netvlad | otp | soap | weldon
    c.model.pooling = "gap"
    c.model.gsp = ml_collections.ConfigDict()  # Generalized Sum Pooling head (model.pooling = "gsp")
    c.model.gsp.num_prototypes = 64  # K: 64 for CUB/Cars, 128 for SOP/In-Shop
    c.model.gsp.transport_ratio = 0.3  # mu; 1.0 is exactly GAP
    c.model.gsp.gamma = 5.0  # entropy weight (inverse temperature); the PyTorch release used 0.1
    c.model.gsp.method = "newton"  # newton | fixed_point | ott (see jaxdml.kernels.gsp_transport)
    c.model.gsp.memory_size = 1024  # prototypes by greedy k-center over this many GAP embeddings (GAP until full)
    c.model.gsp.prototypes_file = config_dict.placeholder(str)  # .npy (K, embedding_dim): use these instead
    c.model.gsp.augment_max_pool = False  # add the global max pool of the projected features
    c.model.gsp.gem = False  # GeM (learnable p, init 3) over the GSP-weighted features instead of their sum
    c.model.xbml = ml_collections.ConfigDict()  # XBML head (model.pooling = "xbml"): GAP + prototype coefficients
    c.model.xbml.num_prototypes = 32  # K (the GSP release's MetaGlobalPooling default; XBML's own is not known)
    c.model.xbml.softmax_scale = 10.0  # of the soft assignment of locations to prototypes
    # The poolings GSP is compared with (jaxdml.models.pooling_heads), the GSP release's defaults; crow has none.
    c.model.cbam = ml_collections.ConfigDict({"channel_reduction": 16, "conv_size": 3})
    c.model.delf = ml_collections.ConfigDict({"num_filters": 512, "conv_size": 1})
    c.model.gem = ml_collections.ConfigDict({"power": 3.0, "learn_power": True})  # GeM over the backbone map
    c.model.gsop = ml_collections.ConfigDict({"attention_dim": 128})
    c.model.netvlad = ml_collections.ConfigDict({"num_centers": 16})  # embedding_dim / num_centers per centre
    # support_size K: embedding_dim / K per support point; k-center over memory_size GAP vectors (<= K: none)
    c.model.otp = ml_collections.ConfigDict({"support_size": 64, "memory_size": 1024, "gamma": 2.0, "iterations": 10})
    c.model.soap = ml_collections.ConfigDict({"channel_reduction": 1, "power": 3.0})
    c.model.weldon = ml_collections.ConfigDict({"k_max": 3, "k_min": 3})
    c.model.freeze_bn = False  # backbone BatchNorm uses (and keeps) its running statistics
    # l2 | lipschitz: the embedding's normalisation, seen by the losses and the evaluation (lipschitz: v / max(1, |v|),
    # the GSP/CCP TensorFlow framework's)
    c.model.embedding_norm = "l2"
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
    # pml: batch vs memory from start_step (PML's CrossBatchMemory) | release: batch vs batch + batch vs memory
    # once filled after start_step (the GSP/CCP TensorFlow release); see jaxdml.losses.objective
    c.loss.xbm.mode = "pml"
    c.loss.zsr = ml_collections.ConfigDict()  # GSP's zero-shot loss: total = (1 - weight) L + weight L_zsr
    c.loss.zsr.weight = 0.0  # 0.1 in the GSP recipe; needs model.pooling = "gsp"
    c.loss.zsr.ridge = 0.05
    c.loss.zsr.scale = 9.5
    # XBML's cross-batch loss (jaxdml.losses.xbml): total = (1 - weight) L + weight L_xbml; needs model.pooling = "xbml"
    c.loss.xbml = ml_collections.ConfigDict()
    c.loss.xbml.weight = 0.0  # 0 = off (the XBML head is then plain GAP)
    c.loss.xbml.reading = "r1"  # r1: ZSR on the coefficients (code-backed) | r2: prototypes fitted to the other half
    c.loss.xbml.ridge = 0.05  # lambda of the ridge fits
    c.loss.xbml.scale = 9.5  # r1: logit scale of the class-embedding cross-entropy

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam | adamw | sgd | rmsprop
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0  # decoupled for adamw; L2 added to gradients otherwise; never on BN/biases ...
    c.optim.decay_all = False  # ... unless True: every trained parameter (torch's SGD weight_decay; the letKD release)
    c.optim.momentum = 0.9  # sgd / rmsprop
    c.optim.nesterov = False  # sgd
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.schedule = "constant"  # constant | cosine | step
    c.optim.warmup_steps = 0
    c.optim.step_boundaries = ()  # step schedule: steps where lr is multiplied by step_factor
    c.optim.step_factor = 0.1
    c.optim.grad_clip_norm = 0.0  # 0 = no clipping; clips to this global norm
    c.optim.grad_clip_value = 0.0  # 0 = no clipping; then clips each entry to [-v, v] (the GSP/CCP release: 10, 10)
    # Reduce-on-plateau of the evaluation's selection metric (Keras' ReduceLROnPlateau, mode max; the GSP release's
    # conventional recipe: factor 0.5, patience 4 CUB/Cars or 3 SOP/In-Shop evaluations, min_lr 1e-6).
    c.optim.plateau = ml_collections.ConfigDict()
    c.optim.plateau.factor = 0.0  # 0 = off; the learning rate is multiplied by this after a plateau
    c.optim.plateau.patience = 5  # evaluations without an improvement larger than min_delta
    c.optim.plateau.min_delta = 1e-3
    c.optim.plateau.cooldown = 2  # evaluations after a reduction before the counting resumes
    c.optim.plateau.min_lr = 1e-6  # optim.lr x the factor never goes below this
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

    c.ccp = ml_collections.ConfigDict()  # trainer = "ccp": DML with chance constraints (jaxdml.trainers.ccp)
    c.ccp.proxies_per_class = 8  # M: 8 CUB/Cars, 4 SOP/In-Shop
    c.ccp.pool_per_class = 12  # b, per class for a re-pick (pool b if b >= M else b * M): 12 CUB/Cars, 7 SOP/In-Shop
    c.ccp.pair_weight = 0.1  # weight of the base loss over the batch ...
    c.ccp.proxy_weight = 1.0  # ... and over (batch anchors, all proxies)
    c.ccp.proximal = 2e-4  # lambda of the proximal term lambda/2 |theta - theta_bar|^2 from the second round on
    c.ccp.round_patience = 3  # evaluations (epochs: train.eval_every steps) without a gain before a new round
    c.ccp.min_gain = 1e-5  # a gain in the selection metric counts when larger than this

    c.distill = ml_collections.ConfigDict()  # task = classification: teacher and distillation terms
    # none, or terms joined by "+" (jaxdml.distill.terms): kd (Hinton) | fitnet | letkd, e.g. "fitnet+letkd";
    # each term keeps its own weight below.
    c.distill.method = "none"
    c.distill.teacher_arch = ""  # e.g. resnet56 (jaxdml.models.cifar / imagenet: CIFAR_NETWORKS, IMAGENET_NETWORKS)
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
    c.distill.letkd.penultimate = True  # the penultimate layer (False: intermediate only, supp. Table 5)
    c.distill.letkd.penultimate_alpha = 1.0  # residual weight; 0 = the layer adds nothing (supp. Table 5)
    c.distill.letkd.penultimate_weight = 1.0
    c.distill.letkd.intermediate = True  # letKD-2
    c.distill.letkd.student_block = "layer3_0"  # the first block of stage 3
    c.distill.letkd.teacher_block = "layer3_0"
    c.distill.letkd.lda_dims = 60
    c.distill.letkd.subclasses = 8  # per class
    c.distill.letkd.intermediate_alpha = 1.0  # 0 = scores only, features unchanged (supp. Tables 4-5)
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
    # Retrieval picture at each evaluation (TensorBoard + <workdir>/pictures): the first image of the first N query
    # classes with their top-k neighbours (green border: same class, red: another); 0 = no picture.
    c.eval.pictures = 8
    c.eval.picture_k = 5
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
# ``trainer`` and ``distill.method`` are checked by the trainers (jaxdml.trainers.resolve_config).
CHOICES: dict[str, Iterable[str]] = {
    "data.name": DATASETS,
    "data.sampler": SAMPLERS,
    "data.augment": AUGMENTATIONS,
    "data.pad_mode": PAD_MODES,
    "model.backbone": (*BACKBONES, *CIFAR_NETWORKS, *IMAGENET_NETWORKS),
    "model.pooling": POOLING_NAMES,
    "model.gsp.method": GSP_METHODS,
    "model.compute_dtype": COMPUTE_DTYPES,
    "model.embedding_norm": EMBEDDING_NORMS,
    "loss.name": LOSSES,
    "loss.miner.name": MINERS,
    "loss.xbm.mode": XBM_MODES,
    "loss.xbml.reading": XBML_READINGS,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "distill.teacher_arch": (*CIFAR_NETWORKS, *IMAGENET_NETWORKS),
    "eval.evaluator": EVALUATORS,
}
# Of those, the keys where "" means none (no miner, no teacher, the trainer's evaluator).
OPTIONAL_CHOICES = ("loss.miner.name", "distill.teacher_arch", "eval.evaluator")


def _show(value: Any) -> str:
    """A value as it would be written in a ``--config.key=value`` flag (strings quoted, tuples as tuples)."""
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _is_mapping(value: Any) -> bool:
    return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Rule:
    """What a key's value must be. :meth:`problem` returns None for a valid value, else (what it must be, the
    valid value closest to it); :meth:`check` raises :class:`ConfigError` with the one-line message."""

    def problem(self, value: Any, default: Any) -> tuple[str, Any] | None:
        raise NotImplementedError

    def check(self, key: str, value: Any, default: Any) -> None:
        problem = self.problem(value, default)
        if problem is not None:
            raise ConfigError(_message(key, value, *problem))


def _message(key: str, value: Any, requirement: str, suggestion: Any) -> str:
    return f"{key}={_show(value)} {requirement}; e.g. {key}={_show(suggestion)}."


@dataclasses.dataclass(frozen=True)
class Number(Rule):
    """A finite number (``kind=int``: a whole number, e.g. a count) within the given bounds."""

    kind: type = float
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    @property
    def noun(self) -> str:
        return "an integer" if self.kind is int else "a number"

    def rule(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]``, ... (empty for any number)."""
        lo = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        hi = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f">= {self.ge:g}" if self.ge is not None else f"> {self.gt:g}"
        if hi:
            return f"<= {self.le:g}" if self.le is not None else f"< {self.lt:g}"
        return ""

    def _typed(self, value: Any) -> bool:
        return (_is_int(value) if self.kind is int else _is_real(value)) and math.isfinite(value)

    def holds(self, value: Any) -> bool:
        """Whether ``value`` has the right type, is finite and lies within the bounds."""
        return self._typed(value) and ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                                       and (self.le is None or value <= self.le)
                                       and (self.lt is None or value < self.lt))

    def closest(self, value: Any, default: Any) -> Any:
        """The valid value nearest ``value`` (a closed bound, or ``default`` beyond an open one)."""
        if not _is_real(value) or not math.isfinite(value):
            return default if self.holds(default) else self.closest(0, None)
        if self.kind is int:
            value = round(value)
        if self.ge is not None and value < self.ge:
            value = self.kind(self.ge)
        if self.le is not None and value > self.le:
            value = self.kind(self.le)
        if self.holds(value):
            return value
        return default if default is not None and self.holds(default) else value

    def problem(self, value: Any, default: Any) -> tuple[str, Any] | None:
        if self.holds(value):
            return None
        rule = self.rule()
        if self._typed(value):
            requirement = f"must be {rule}"  # the right type, out of range
        else:
            noun = "a finite number" if _is_real(value) and not math.isfinite(value) else self.noun
            requirement = f"must be {noun}" + (f" {rule}" if rule else "")
        return requirement, self.closest(value, default)


@dataclasses.dataclass(frozen=True)
class Interval(Rule):
    """A pair ``(lo, hi)``, ``lo <= hi``, of numbers that each satisfy ``bound``."""

    bound: Number

    def problem(self, value: Any, default: Any) -> tuple[str, Any] | None:
        pair = isinstance(value, (tuple, list)) and len(value) == 2
        if pair and all(self.bound.holds(v) for v in value) and value[0] <= value[1]:
            return None
        fixed = tuple(sorted(self.bound.closest(v, d) for v, d in zip(value if pair else default, default)))
        return f"must be a pair (lo, hi) with lo <= hi, both {self.bound.rule()}", fixed


@dataclasses.dataclass(frozen=True)
class Increasing(Rule):
    """A tuple of numbers that each satisfy ``item``, in strictly increasing order (possibly empty)."""

    item: Number

    def problem(self, value: Any, default: Any) -> tuple[str, Any] | None:
        items = value if isinstance(value, (tuple, list)) else None
        if items is not None and all(self.item.holds(v) for v in items) and list(items) == sorted(set(items)):
            return None
        if items is None:
            fixed = tuple(default)
        else:
            near = {self.item.closest(v, None) for v in items if _is_real(v) and math.isfinite(v)}
            fixed = tuple(sorted(v for v in near if self.item.holds(v)))
        plural = "integers" if self.item.kind is int else "numbers"
        return f"must be a tuple of {plural} {self.item.rule()} in increasing order", fixed


@dataclasses.dataclass(frozen=True)
class OfType(Rule):
    """A value of the default's type: a bool, a string, or (``optional``) a string or None."""

    kind: type
    optional: bool = False

    def problem(self, value: Any, default: Any) -> tuple[str, Any] | None:
        if isinstance(value, self.kind) or (self.optional and value is None):
            return None
        noun = {bool: "True or False", str: "a string"}.get(self.kind, self.kind.__name__)
        return f"must be {noun}" + (" or None" if self.optional else ""), default


COUNT = Number(int, ge=1)  # a positive integer: sizes, steps, intervals
INDEX = Number(int, ge=0)  # a non-negative integer: workers, step offsets, "0 = off" switches
POSITIVE = Number(gt=0)
NON_NEGATIVE = Number(ge=0)
UNIT = Number(ge=0, lt=1)  # a fraction or decay rate below one

# Every numeric key -> its range. Keys missing here are strings or bools (checked against their default's type).
RULES: dict[str, Rule] = {
    "seed": INDEX,
    "data.image_size": COUNT,
    "data.resize_size": COUNT,
    "data.crop_area": Interval(Number(gt=0, le=1)),
    "data.crop_aspect": Interval(POSITIVE),
    "data.samples_per_class": COUNT,
    "data.super_classes_per_batch": COUNT,
    "data.val_fraction": UNIT,
    "data.folds": INDEX,  # and 0 or >= 2, with data.val_fraction = 0: _folds
    "data.fold": Number(int, ge=-1),  # and < data.folds: _folds
    "data.num_workers": INDEX,
    "data.crop_padding": INDEX,
    "data.rotation_degrees": Number(ge=0, le=180),
    "data.test_fraction": Number(gt=0, lt=1),
    "data.split_seed": INDEX,
    "model.width": COUNT,
    "model.embedding_dim": COUNT,
    "model.gsp.num_prototypes": COUNT,
    "model.gsp.transport_ratio": Number(gt=0, le=1),
    "model.gsp.gamma": POSITIVE,
    "model.gsp.memory_size": INDEX,  # 0: the prototypes start from their initialiser (or prototypes_file)
    "model.xbml.num_prototypes": COUNT,
    "model.xbml.softmax_scale": POSITIVE,
    "model.cbam.channel_reduction": COUNT,
    "model.cbam.conv_size": COUNT,
    "model.delf.num_filters": COUNT,
    "model.delf.conv_size": COUNT,
    "model.gem.power": POSITIVE,
    "model.gsop.attention_dim": COUNT,
    "model.netvlad.num_centers": COUNT,  # and divides model.embedding_dim: _pooling_splits_embedding
    "model.otp.support_size": COUNT,  # and divides model.embedding_dim: _pooling_splits_embedding
    "model.otp.memory_size": INDEX,  # <= support_size: no memory, the support starts from its initialiser
    "model.otp.gamma": POSITIVE,
    "model.otp.iterations": COUNT,
    "model.soap.channel_reduction": COUNT,
    "model.soap.power": POSITIVE,
    "model.weldon.k_max": COUNT,
    "model.weldon.k_min": COUNT,
    "loss.weight": NON_NEGATIVE,
    "loss.xbm.batches": INDEX,
    "loss.xbm.start_step": INDEX,
    "loss.zsr.weight": UNIT,  # (1 - w) L + w L_zsr; w = 1 would train the ZSR term alone
    "loss.zsr.ridge": POSITIVE,
    "loss.zsr.scale": POSITIVE,
    "loss.xbml.weight": UNIT,  # (1 - w) L + w L_xbml
    "loss.xbml.ridge": POSITIVE,
    "loss.xbml.scale": POSITIVE,
    "optim.lr": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.momentum": UNIT,
    "optim.b1": UNIT,
    "optim.b2": UNIT,
    "optim.warmup_steps": INDEX,
    "optim.step_boundaries": Increasing(COUNT),  # and within (optim.warmup_steps, train.num_steps): _cross_key
    "optim.step_factor": POSITIVE,
    "optim.grad_clip_value": NON_NEGATIVE,
    "optim.plateau.factor": UNIT,
    "optim.plateau.patience": COUNT,
    "optim.plateau.min_delta": NON_NEGATIVE,
    "optim.plateau.cooldown": INDEX,
    "optim.plateau.min_lr": NON_NEGATIVE,
    "optim.grad_clip_norm": NON_NEGATIVE,
    "optim.lr_mult.backbone": NON_NEGATIVE,
    "optim.lr_mult.head": NON_NEGATIVE,
    "optim.lr_mult.loss": NON_NEGATIVE,
    "optim.freeze_backbone_steps": INDEX,
    "train.batch_size": COUNT,
    "train.num_steps": COUNT,
    "train.log_every": COUNT,
    "train.eval_every": COUNT,
    "train.checkpoint_every": COUNT,
    "train.keep_checkpoints": COUNT,
    "train.patience": INDEX,
    "ccp.proxies_per_class": COUNT,
    "ccp.pool_per_class": COUNT,
    "ccp.pair_weight": NON_NEGATIVE,
    "ccp.proxy_weight": NON_NEGATIVE,
    "ccp.proximal": NON_NEGATIVE,
    "ccp.round_patience": COUNT,
    "ccp.min_gain": NON_NEGATIVE,
    "distill.ce_weight": NON_NEGATIVE,
    "distill.kd_weight": NON_NEGATIVE,
    "distill.kd_temperature": POSITIVE,
    "distill.fitnet_weight": NON_NEGATIVE,
    "distill.letkd.num_words": COUNT,
    "distill.letkd.temperature": POSITIVE,
    "distill.letkd.penultimate_alpha": NON_NEGATIVE,
    "distill.letkd.penultimate_weight": NON_NEGATIVE,
    "distill.letkd.lda_dims": COUNT,
    "distill.letkd.subclasses": COUNT,
    "distill.letkd.intermediate_alpha": NON_NEGATIVE,
    "distill.letkd.intermediate_weight": NON_NEGATIVE,
    "distill.letkd.max_points": COUNT,
    "distill.template.templates_per_class": COUNT,
    "distill.template.weight": NON_NEGATIVE,
    "eval.batch_size": COUNT,
    "eval.ks": Increasing(COUNT),
    "eval.pictures": INDEX,
    "eval.picture_k": COUNT,
}


def rule_of(key: str, default: Any) -> Rule:
    """The rule a key's value must satisfy: its range (``RULES``), else its default's type."""
    if key in RULES:
        return RULES[key]
    if default is None:  # config_dict.placeholder(str): a path or None
        return OfType(str, optional=True)
    return OfType(type(default))


def _get(cfg: ml_collections.ConfigDict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _check_choice(key: str, value: Any, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}.{suggest(str(value), allowed)}")


# ---------------------------------------------------------------------------------------------- hyper-parameters

def hyper_parameter_owner(cfg: ml_collections.ConfigDict, section: str) -> tuple[str, dict[str, inspect.Parameter]]:
    """For a section with ``kwargs`` (``loss``, ``loss.miner``, ``loss.extra_terms.<term>``): a description of the
    loss or miner its ``name`` selects and that function's hyper-parameters (name -> signature parameter)."""
    name = _get(cfg, section)["name"]
    if section == "loss.miner":
        if not name:
            raise ConfigError("loss.miner.kwargs is set but loss.miner.name is empty (no miner); set loss.miner.name "
                              f"to one of: {', '.join(MINERS)}.")
        _check_choice("loss.miner.name", name, MINERS)
        return f"miner {name!r}", miner_hyper_parameters(name)
    _check_choice(f"{section}.name", name, LOSSES)
    return f"loss {name!r}", loss_hyper_parameters(name)


def _parameter_type(param: inspect.Parameter) -> tuple[type | None, tuple[Any, ...], bool]:
    """(type, allowed values of a ``Literal``, whether None is allowed) of a hyper-parameter: the type of its
    default (bool, int, float, str, tuple), else the first of these its annotation names."""
    annotation, choices = param.annotation, ()
    if typing.get_origin(annotation) is typing.Literal:
        choices, annotation = typing.get_args(annotation), ""
    elif not isinstance(annotation, str):  # a type, or no annotation
        annotation = getattr(annotation, "__name__", "")
    elif annotation.startswith("Literal["):  # postponed annotations (from __future__ import annotations)
        choices = tuple(ast.literal_eval(f"({annotation[len('Literal['):-1]},)"))
    default = param.default
    if default is not None and default is not inspect.Parameter.empty:
        return type(default), choices, False
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("str", str), ("tuple", tuple)):
        if name in re.split(r"[^\w.]+", annotation):
            return kind, choices, default is None
    return None, choices, True


def _value_fits(value: Any, kind: type | None, optional: bool) -> bool:
    if value is None:
        return optional
    if kind is None:
        return True
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_real(value) and math.isfinite(value)
    if kind is tuple:
        return isinstance(value, (tuple, list))
    return isinstance(value, kind)


_NOUNS = {bool: "True or False", int: "an integer", float: "a finite number", str: "a string", tuple: "a tuple"}


def check_hyper_parameter(key: str, owner: str, params: Mapping[str, inspect.Parameter], value: Any) -> None:
    """Raises :class:`ConfigError` unless ``key`` (``<section>.kwargs.<name>``) names a hyper-parameter of the loss
    or miner ``owner`` and ``value`` has its type (and one of its ``Literal`` values)."""
    name = key.rsplit(".", 1)[-1]
    listed = ", ".join(params) or "none"
    if name not in params:
        close = difflib.get_close_matches(name, list(params), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"{key}: {owner} has no hyper-parameter {name!r}.{hint} Its hyper-parameters: {listed}.")
    kind, choices, optional = _parameter_type(params[name])
    default = params[name].default
    if not _value_fits(value, kind, optional):
        noun = _NOUNS.get(kind, kind.__name__) + (" or None" if optional else "")
        raise ConfigError(f"{key}={_show(value)} must be {noun} (a hyper-parameter of {owner}); "
                          f"e.g. {key}={_show(default)}.")
    if choices and value not in choices:
        raise ConfigError(f"{key}={_show(value)} is not one of: {', '.join(choices)} (a hyper-parameter of "
                          f"{owner}).{suggest(str(value), choices)}")


def parse_hyper_parameter(key: str, text: str, owner: str, params: Mapping[str, inspect.Parameter]) -> Any:
    """The value of the flag ``--config.<key>=<text>``, parsed as the type of the hyper-parameter's default (bool,
    int, float, str, tuple) and checked by :func:`check_hyper_parameter`."""
    name = key.rsplit(".", 1)[-1]
    if name not in params:
        check_hyper_parameter(key, owner, params, None)  # raises: unknown hyper-parameter
    kind, _, optional = _parameter_type(params[name])
    stripped = text.strip()
    value: Any = text
    if optional and stripped == "None":
        value = None
    elif kind is bool:
        value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(stripped.lower(),
                                                                                                   text)
    elif kind is int:
        try:
            value = int(stripped)
        except ValueError:
            pass
    elif kind is float:
        try:
            value = float(stripped)
        except ValueError:
            pass
    elif kind is tuple or kind is None:
        try:
            value = ast.literal_eval(stripped)
        except (ValueError, SyntaxError):
            value = text
        if kind is tuple and not isinstance(value, (tuple, list)):
            value = (value,) if not isinstance(value, str) else text
        value = tuple(value) if isinstance(value, list) else value
    check_hyper_parameter(key, owner, params, value)
    return value


def _kwargs_sections(cfg: ml_collections.ConfigDict) -> list[str]:
    """The sections whose ``kwargs`` hold hyper-parameters: ``loss``, ``loss.miner`` (with a miner) and each
    ``loss.extra_terms.<term>``."""
    sections = ["loss"] + (["loss.miner"] if cfg.loss.miner.name or len(cfg.loss.miner.kwargs) else [])
    return sections + [f"loss.extra_terms.{term}" for term in cfg.loss.extra_terms]


def _check_loss_terms(cfg: ml_collections.ConfigDict) -> None:
    """Extra terms' structure, every term's and the miner's hyper-parameters (names, types and what the function
    itself rejects), and the objective's own rules (e.g. no cross-batch memory for n-pairs)."""
    for term, spec in cfg.loss.extra_terms.items():
        where = f"loss.extra_terms.{term}"
        if not _is_mapping(spec) or "name" not in spec or set(spec) - {"name", "kwargs", "weight"}:
            got = sorted(spec) if _is_mapping(spec) else _show(spec)
            raise ConfigError(f"{where} must be a dict with keys name, kwargs (optional) and weight (optional); "
                              f"got {got}. E.g. {where} = dict(name='contrastive', kwargs={{}}, weight=0.1).")
        _check_choice(f"{where}.name", spec["name"], LOSSES)
        if not _is_mapping(spec.get("kwargs", {})):
            raise ConfigError(f"{where}.kwargs={_show(spec['kwargs'])} must be a dict of hyper-parameters of "
                              f"loss {spec['name']!r}.")
        NON_NEGATIVE.check(f"{where}.weight", spec.get("weight", 1.0), 1.0)
    probes = []
    for section in _kwargs_sections(cfg):
        owner, params = hyper_parameter_owner(cfg, section)
        kwargs = dict(_get(cfg, section).get("kwargs", {}))
        for name, value in kwargs.items():
            check_hyper_parameter(f"{section}.kwargs.{name}", owner, params, value)
        probes.append((section, owner, _get(cfg, section)["name"], kwargs))
    try:
        make_objective(cfg.loss, num_classes=2, embedding_dim=cfg.model.embedding_dim,
                       batch_size=cfg.train.batch_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for section, owner, name, kwargs in probes:
        if kwargs:
            _probe(section, owner, name, kwargs)


def _probe(section: str, owner: str, name: str, kwargs: dict[str, Any]) -> None:
    """Traces the loss or miner on a 4-item batch (shapes only, nothing is computed) so that it rejects values of
    its hyper-parameters it cannot use (e.g. an unknown ``distance``) now rather than in the first train step."""

    def run() -> None:
        embeddings, labels = jnp.ones((4, 8), jnp.float32), jnp.array([0, 0, 1, 1])
        if section == "loss.miner":
            MINERS[name](embeddings, labels, None, None, pair_mask=None, **kwargs)
            return
        spec = LOSSES[name]
        params = spec.init(jax.random.key(0), 2, 8, **kwargs) if spec.init is not None else {}
        if spec.kind == "proxy":
            spec.fn(embeddings, labels, params, **kwargs)
        else:
            spec.fn(embeddings, labels, None, None, pair_mask=None, **{**kwargs, **params})

    try:
        jax.eval_shape(run)
    except (ValueError, TypeError) as error:
        text = " ".join(str(error).split())
        raise ConfigError(f"{section}.kwargs={_show_dict(kwargs)}: {owner} rejects them: {text}") from None


def _show_dict(kwargs: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={_show(v)}" for k, v in kwargs.items()) + "}"


# --------------------------------------------------------------------------------------------------- cross-key

@dataclasses.dataclass(frozen=True)
class Broken:
    """A rule between keys that a config breaks: the key to change, its value, the rule, a value that keeps it."""

    key: str
    value: Any
    requirement: str
    suggestion: Any

    def message(self) -> str:
        return _message(self.key, self.value, self.requirement, self.suggestion)


def _whole_groups(cfg: ml_collections.ConfigDict) -> Broken | None:
    d, b = cfg.data, cfg.train.batch_size
    if d.sampler not in GROUPED_SAMPLERS:
        return None
    group = d.samples_per_class * (d.super_classes_per_batch if d.sampler == "hierarchical" else 1)
    what = (f"data.super_classes_per_batch * data.samples_per_class = {group}" if d.sampler == "hierarchical"
            else f"data.samples_per_class={d.samples_per_class}")
    if b % group == 0:
        return None
    return Broken("train.batch_size", b, f"is not a multiple of {what}", max(1, b // group) * group)


def _eval_crop_fits(cfg: ml_collections.ConfigDict) -> Broken | None:
    d = cfg.data
    return None if d.resize_size >= d.image_size else Broken(
        "data.resize_size", d.resize_size, f"must be >= data.image_size={d.image_size} (evaluation resizes, then "
        f"centre-crops)", d.image_size)


def _gsp_memory_holds_prototypes(cfg: ml_collections.ConfigDict) -> Broken | None:
    g = cfg.model.gsp
    if cfg.model.pooling != "gsp" or g.prototypes_file or not 0 < g.memory_size < g.num_prototypes:
        return None
    return Broken("model.gsp.memory_size", g.memory_size, f"must be >= model.gsp.num_prototypes={g.num_prototypes} "
                  f"(the prototypes are picked from the memory), or 0", g.num_prototypes)


def _pooling_splits_embedding(cfg: ml_collections.ConfigDict) -> Broken | None:
    m = cfg.model
    key = {"netvlad": "model.netvlad.num_centers", "otp": "model.otp.support_size"}.get(m.pooling)
    if key is None:
        return None
    parts = m[m.pooling][key.rsplit(".", 1)[1]]
    if parts > 0 and m.embedding_dim % parts == 0:
        return None
    divisors = [k for k in range(1, m.embedding_dim + 1) if m.embedding_dim % k == 0]
    return Broken(key, parts, f"must divide model.embedding_dim={m.embedding_dim} (the embedding concatenates "
                  f"{parts} equal parts)", min(divisors, key=lambda k: abs(k - parts)))


def _zsr_needs_gsp(cfg: ml_collections.ConfigDict) -> Broken | None:
    w = cfg.loss.zsr.weight
    return None if w == 0 or cfg.model.pooling == "gsp" else Broken(
        "loss.zsr.weight", w, f"needs model.pooling='gsp' (the ZSR loss reads GSP's attributes), not "
        f"{cfg.model.pooling!r}", 0.0)


def _xbml_needs_its_head(cfg: ml_collections.ConfigDict) -> Broken | None:
    w = cfg.loss.xbml.weight
    if w and cfg.model.pooling != "xbml":
        return Broken("loss.xbml.weight", w, f"needs model.pooling='xbml' (the XBML loss reads its prototype "
                      f"coefficients), not {cfg.model.pooling!r}", 0.0)
    return None


def _pretrained_needs_weights(cfg: ml_collections.ConfigDict) -> Broken | None:
    m = cfg.model
    return None if not (m.pretrained and m.backbone == "small_cnn") else Broken(
        "model.pretrained", m.pretrained, "is set, but small_cnn has no pretrained weights (set model.backbone to "
        "one of resnet18/34/50/101 or bninception)", None)


def _boundaries_within_training(cfg: ml_collections.ConfigDict) -> Broken | None:
    o, steps = cfg.optim, cfg.train.num_steps
    if all(o.warmup_steps < b < steps for b in o.step_boundaries):
        return None
    return Broken("optim.step_boundaries", o.step_boundaries, f"must lie within (optim.warmup_steps="
                  f"{o.warmup_steps}, train.num_steps={steps})",
                  tuple(b for b in o.step_boundaries if o.warmup_steps < b < steps))


def _folds(cfg: ml_collections.ConfigDict) -> Broken | None:
    d = cfg.data
    if d.folds == 1:
        return Broken("data.folds", 1, "must be 0 (no folds) or >= 2 (one model per fold)", 4)
    if d.folds and d.val_fraction:
        return Broken("data.val_fraction", d.val_fraction, f"must be 0 with data.folds={d.folds} (each model is "
                      f"selected on its own fold)", 0.0)
    if d.fold >= max(d.folds, 1) or (d.fold >= 0 and not d.folds):
        return Broken("data.fold", d.fold, f"must be -1 (every fold) or a fold in 0..data.folds-1 (data.folds="
                      f"{d.folds})", -1)
    return None


def _folder_paths(cfg: ml_collections.ConfigDict) -> Broken | None:
    d = cfg.data
    if d.name == FOLDER and not d.path:
        return Broken("data.path", d.path, f"must be set with data.name={FOLDER!r}: {FOLDER_LAYOUT}",
                      "/path/to/images")
    if d.name != FOLDER and (d.path or d.test_path):
        key = "data.path" if d.path else "data.test_path"
        return Broken(key, d[key.split(".")[1]], f"is read only with data.name={FOLDER!r} (your own images), not "
                      f"{d.name!r}", None)
    return None


# Rules between keys, checked once every key has a valid value of its own.
CROSS_KEY_RULES: tuple[Callable[[ml_collections.ConfigDict], Broken | None], ...] = (
    _whole_groups, _eval_crop_fits, _gsp_memory_holds_prototypes, _pooling_splits_embedding, _zsr_needs_gsp,
    _xbml_needs_its_head, _pretrained_needs_weights, _boundaries_within_training, _folds, _folder_paths)


def _agreeing(cfg: ml_collections.ConfigDict, key: str, suggestion: Any) -> Any:
    """``suggestion`` for ``key``, or what the rules between keys suggest instead if they refuse it (e.g.
    ``train.batch_size=1`` with 4 samples per class -> 4)."""
    try:
        trial = copy.deepcopy(cfg)
        *parents, leaf = key.split(".")
        node = _get(trial, ".".join(parents)) if parents else trial
        with trial.unlocked():
            node[leaf] = suggestion
        for rule in CROSS_KEY_RULES:
            broken = rule(trial)
            if broken is not None and broken.key == key:
                return broken.suggestion
    except Exception:  # other keys may be invalid too: keep the key's own suggestion
        pass
    return suggestion


def validate(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises :class:`ConfigError` (one line: the key, the bad value, the rule, a valid value) for unknown keys,
    values of the wrong type, outside their range (``RULES``) or allowed set (``CHOICES``), loss and miner
    hyper-parameters their function does not take, and broken rules between keys; returns ``cfg``.

    ``trainer``, ``distill.method`` and the procedure-specific rules are checked by the trainers
    (:func:`jaxdml.trainers.resolve_config`), which also fill in ``eval.evaluator`` and ``eval.selection_metric``.
    """
    defaults = _flatten(default_config())
    bad = unknown_keys(cfg)
    if bad:
        msgs = [f"unknown config key '{k}'.{suggest(k, defaults)}" for k in bad]
        raise ConfigError("; ".join(msgs) + " Valid keys are listed in jaxdml/config.py (default_config).")
    values = _flatten(cfg)
    for key, default in defaults.items():
        if key not in values:
            raise ConfigError(f"config key '{key}' is missing; start experiment files from "
                              f"jaxdml.config.default_config().")
        if isinstance(default, ml_collections.ConfigDict):  # kwargs, extra_terms
            if not _is_mapping(values[key]):
                raise ConfigError(f"{key}={_show(values[key])} must be a dict; e.g. {key}={{}}.")
            continue
        problem = rule_of(key, default).problem(values[key], default)
        if problem is not None:
            requirement, suggestion = problem
            raise ConfigError(_message(key, values[key], requirement, _agreeing(cfg, key, suggestion)))
    for key, allowed in CHOICES.items():
        value = values[key]
        if key in OPTIONAL_CHOICES and not value:
            continue
        _check_choice(key, value, allowed)
    if cfg.eval.evaluator and cfg.eval.selection_metric:
        _check_choice("eval.selection_metric", cfg.eval.selection_metric,
                      EVALUATORS[cfg.eval.evaluator].metric_names(cfg.eval))
    for rule in CROSS_KEY_RULES:
        broken = rule(cfg)
        if broken is not None:
            raise ConfigError(broken.message())
    _check_loss_terms(cfg)
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
        if not has_key(cfg, key):
            raise ConfigError(f"unknown config key '{key}' in {arg.split('=', 1)[0]}.{suggest(key, valid)}")


def has_key(cfg: ml_collections.ConfigDict, dotted: str) -> bool:
    """Whether ``cfg`` has the dotted key ``a.b.c``."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            return False
        node = node[part]
    return True
