"""Classification and distillation training: teacher, artefacts, objective, jitted step and evaluation.

The teacher is frozen: its variables are loaded once (``distill.teacher``), passed to the jitted step as an
argument, never optimised and never written into the student's checkpoints. LeTKD's teacher artefacts are
computed once per workdir (``<workdir>/artefacts``, also by ``python -m jaxdml.distill.prepare``) and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdml.config import ConfigError
from jaxdml.data import pipeline
from jaxdml.data.sources import Source
from jaxdml.distill import artefacts as art
from jaxdml.distill.model import ClassificationModel, build_classifier, student_inserts
from jaxdml.layers.template import downscale_2x2
from jaxdml.losses import distill as kd
from jaxdml.models.cifar import classifier_name
from jaxdml.models.convert import ConversionError, check_fits, load_pretrained, save_converted
from jaxdml.train.optim import make_optimizer
from jaxdml.train.step import TrainState, _apply, guarded_update

log = logging.getLogger(__name__)
EXPORT_DIR = "export"  # a finished classification run's network, loadable as a teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
    model: ClassificationModel
    variables: dict[str, Any]  # {"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}


def needs_teacher(d: ml_collections.ConfigDict) -> bool:
    return d.method != "none" or d.kd_weight > 0


def load_teacher(cfg: ml_collections.ConfigDict, num_classes: int) -> Teacher | None:
    """The frozen teacher of ``cfg.distill`` (None without one); its classifier must have ``num_classes`` outputs."""
    d = cfg.distill
    if not needs_teacher(d):
        return None
    path = Path(d.teacher)
    if (path / EXPORT_DIR).is_dir():  # a jaxdml classification workdir
        path = path / EXPORT_DIR
    elif (path / "checkpoints").is_dir():
        raise ConversionError(f"distill.teacher = {d.teacher!r} is a jaxdml workdir whose run has not finished "
                              f"(no {EXPORT_DIR}/); rerun its command to complete it")
    raw = load_pretrained(path, d.teacher_arch)
    classes = int(raw["params"][classifier_name(d.teacher_arch)]["kernel"].shape[-1])
    if classes != num_classes:
        raise ConversionError(f"the teacher {d.teacher!r} classifies {classes} classes, the data has {num_classes}")
    model = build_classifier(cfg, num_classes, arch=d.teacher_arch)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), _sample(cfg)))
    check_fits(raw, {"params": expected["params"]["backbone"],
                     "batch_stats": expected["batch_stats"]["backbone"]}, d.teacher)
    variables = {"params": {"backbone": raw["params"]}, "batch_stats": {"backbone": raw["batch_stats"]}}
    return Teacher(model, jax.tree.map(jnp.asarray, variables))


def _sample(cfg: ml_collections.ConfigDict) -> jnp.ndarray:
    return jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3), jnp.uint8)


# ------------------------------------------------------------------------------------------------- artefacts


def _teacher_map(teacher_features: jnp.ndarray, student_size: int) -> jnp.ndarray:
    """The teacher map at the student's spatial size (2x2 average pooling when it is twice as large)."""
    size = teacher_features.shape[1]
    if size == student_size:
        return teacher_features
    if size == 2 * student_size:
        return downscale_2x2(teacher_features)
    raise ConfigError(f"teacher map {size}x{size} vs student map {student_size}x{student_size}: LeTKD matches equal "
                      f"sizes or a teacher twice as large; choose other distill.letkd blocks")


def collect_teacher_features(cfg: ml_collections.ConfigDict, teacher: Teacher, source: Source,
                             blocks: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Teacher feature rows at ``blocks`` ({block: student map size}) over ``source`` (evaluation transform),
    each location one row labelled by its image (the labels per block are returned next to the rows); at most
    about ``distill.letkd.max_points`` rows per block, sampled uniformly."""
    d = cfg.data
    maker = pipeline.EvalBatches(source, cfg.eval.batch_size, d.image_size, d.resize_size, d.skip_corrupt)

    @jax.jit
    def forward(images):
        features = teacher.model.apply(teacher.variables, images)["features"]
        return {b: _teacher_map(features[b].astype(jnp.float32), size) for b, size in blocks.items()}

    shapes = jax.eval_shape(forward, _sample(cfg))
    locations = {b: s.shape[1] * s.shape[2] for b, s in shapes.items()}
    keep = {b: min(1.0, cfg.distill.letkd.max_points / (len(source) * n)) for b, n in locations.items()}
    rng = np.random.default_rng(cfg.seed)
    rows: dict[str, list[np.ndarray]] = {b: [] for b in blocks}
    labels: dict[str, list[np.ndarray]] = {b: [] for b in blocks}
    for batch in pipeline.iterate(maker, 0, len(maker), d.num_workers):
        out = jax.device_get(forward(jnp.asarray(batch["images"])))
        for b, maps in out.items():
            valid = np.repeat(batch["valid"], locations[b])
            flat = maps.reshape(-1, maps.shape[-1])
            pick = valid & (rng.random(len(flat)) < keep[b])
            rows[b].append(flat[pick])
            labels[b].append(np.repeat(batch["labels"], locations[b])[pick])
    return ({b: np.concatenate(r) for b, r in rows.items()},
            {b: np.concatenate(lab) for b, lab in labels.items()})


def _artefact_key(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    d, ld = cfg.distill, cfg.distill.letkd
    return {"teacher": str(Path(d.teacher).absolute()), "teacher_arch": d.teacher_arch, "data": cfg.data.name,
            "num_words": ld.num_words, "temperature": ld.temperature, "intermediate": ld.intermediate,
            "teacher_block": ld.teacher_block, "student_block": ld.student_block, "lda_dims": ld.lda_dims,
            "subclasses": ld.subclasses, "max_points": ld.max_points, "seed": cfg.seed}


def letkd_artefacts(cfg: ml_collections.ConfigDict, teacher: Teacher, train: Source, num_classes: int,
                    directory: Path) -> dict[str, np.ndarray]:
    """The codebook (and, for letKD-2, LDA, sub-class centres and score matrix): loaded from ``directory`` when
    it holds them for this configuration, else computed from the teacher and saved there."""
    key = _artefact_key(cfg)
    meta_file = directory / "meta.json"
    names = ["codebook"] + (["lda_scalings", "lda_mean", "centres", "scores"] if cfg.distill.letkd.intermediate
                            else [])
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("key") == key:
        return {n: np.load(directory / f"{n}.npy") for n in names}
    ld = cfg.distill.letkd
    student = build_classifier(cfg, num_classes, inserts=student_inserts(cfg, num_classes))
    student_maps = jax.eval_shape(lambda: student.init_with_output(jax.random.key(0), _sample(cfg))[0])["features"]
    blocks = {"final": student_maps["final"].shape[1]}
    if ld.intermediate:
        blocks[ld.teacher_block] = student_maps[ld.student_block].shape[1]
    log.info("computing LeTKD teacher artefacts in %s", directory)
    features, labels = collect_teacher_features(cfg, teacher, train, blocks)
    out = {"codebook": art.kmeans_codebook(features["final"], ld.num_words, seed=cfg.seed)}
    if ld.intermediate:
        lda = art.fit_lda(features[ld.teacher_block], labels[ld.teacher_block], ld.lda_dims)
        projected = lda.project(features[ld.teacher_block])
        sub = art.subclass_centres(projected, labels[ld.teacher_block], num_classes, ld.subclasses, seed=cfg.seed)
        out.update(lda_scalings=lda.scalings, lda_mean=lda.mean, centres=sub.centres,
                   scores=art.score_matrix(projected, sub.assignment, sub.centres))
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in out.items():
        np.save(directory / f"{name}.npy", value)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(out[n]).tobytes() for n in names)).hexdigest()
    meta_file.write_text(json.dumps({"key": key, "sha256": digest,
                                     "rows": {b: len(f) for b, f in features.items()}}, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------------- objective


def distillation_loss(cfg: ml_collections.ConfigDict, out: dict[str, Any], teacher_out: dict[str, Any] | None,
                      labels: jnp.ndarray, arts: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, dict[str, Any]]:
    """CE plus the configured terms; returns (loss, metrics)."""
    d = cfg.distill
    logits = out["logits"].astype(jnp.float32)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    metrics = {"ce": ce, "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    total = d.ce_weight * ce
    if d.kd_weight > 0:
        metrics["kd"] = kd.hinton_kd(logits, teacher_out["logits"], d.kd_temperature)
        total += d.kd_weight * metrics["kd"]
    if d.method == "fitnet":
        metrics["hint"] = kd.fitnet_hint(out["hint"], teacher_out["features"][d.teacher_hint_block])
        total += d.fitnet_weight * metrics["hint"]
    if d.method == "letkd":
        ld, scores = d.letkd, out["scores"]
        t_final = _teacher_map(teacher_out["features"]["final"], scores["final"].shape[1])
        targets = art.soft_assignment(t_final, arts["codebook"], ld.temperature)
        metrics["letkd_penultimate"] = kd.location_kl(scores["final"], targets)
        total += ld.penultimate_weight * metrics["letkd_penultimate"]
        if ld.intermediate:
            student_scores = scores[ld.student_block]
            t_mid = _teacher_map(teacher_out["features"][ld.teacher_block], student_scores.shape[1])
            projected = (t_mid.astype(jnp.float32) - arts["lda_mean"]) @ arts["lda_scalings"]
            targets = art.subclass_targets(projected, labels, arts["centres"], arts["scores"], ld.subclasses)
            metrics["letkd_intermediate"] = kd.location_kl(student_scores, targets)
            total += ld.intermediate_weight * metrics["letkd_intermediate"]
    if d.template.block:
        metrics["template"] = kd.template_matching_loss(out["scores"][d.template.block], labels,
                                                        d.template.templates_per_class)
        total += d.template.weight * metrics["template"]
    return total, metrics


def make_classification_step(cfg: ml_collections.ConfigDict, model: ClassificationModel, teacher: Teacher | None,
                             tx: optax.GradientTransformation):
    """``step(state, batch, frozen) -> (state, metrics)``; ``frozen`` = {"teacher", "artefacts"} (not optimised)."""

    def step(state: TrainState, batch: dict[str, jnp.ndarray], frozen: dict[str, Any]):
        images, labels = batch["images"], batch["labels"]
        teacher_out = None
        if teacher is not None:
            teacher_out = jax.lax.stop_gradient(teacher.model.apply(frozen["teacher"], images, train=False))

        def loss_fn(params):
            out, model_state = _apply(model, {"params": params, **state.model_state}, images, train=True,
                                      mutable=list(state.model_state))
            loss, metrics = distillation_loss(cfg, out, teacher_out, labels, frozen["artefacts"])
            return loss, (model_state, metrics)

        (loss, (model_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = guarded_update(state, loss, grads, params, model_state, state.loss_state, opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}

    return step


@dataclasses.dataclass(frozen=True)
class ClassificationSetup:
    model: ClassificationModel
    state: TrainState
    state_sharding: Any
    batch_sharding: NamedSharding
    train_step: Any  # (state, batch) -> (state, metrics), the frozen teacher and artefacts bound


def build_classification_training(cfg: ml_collections.ConfigDict, mesh: Mesh, num_classes: int, train: Source,
                                  workdir: Path) -> ClassificationSetup:
    """Student model, frozen teacher (+ artefacts), optimiser, initial state and the jitted step."""
    teacher = load_teacher(cfg, num_classes)
    hint = None
    if cfg.distill.method == "fitnet":
        t_maps = jax.eval_shape(lambda: teacher.model.apply(teacher.variables, _sample(cfg)))["features"]
        plain = build_classifier(cfg, num_classes)
        s_maps = jax.eval_shape(lambda: plain.init_with_output(jax.random.key(0), _sample(cfg))[0])["features"]
        t_size = t_maps[cfg.distill.teacher_hint_block].shape[1]
        s_size = s_maps[cfg.distill.hint_block].shape[1]
        scale = {1: "same", 2: "down"}.get(s_size // t_size, "up" if 2 * s_size == t_size else None)
        if scale is None:
            raise ConfigError(f"FitNet: the student's {cfg.distill.hint_block} map ({s_size}x{s_size}) and the "
                              f"teacher's {cfg.distill.teacher_hint_block} ({t_size}x{t_size}) must have equal "
                              f"sizes or differ by a factor 2; choose other distill hint blocks")
        hint = (t_maps[cfg.distill.teacher_hint_block].shape[-1], scale)
    model = build_classifier(cfg, num_classes, inserts=student_inserts(cfg, num_classes), hint=hint)
    arts: dict[str, Any] = {}
    if cfg.distill.method == "letkd":
        arts = letkd_artefacts(cfg, teacher, train, num_classes, workdir / "artefacts")
    rng = jax.random.key(cfg.seed)
    variables = jax.eval_shape(lambda: model.init(rng, _sample(cfg)))
    params_shape = variables["params"]
    tx = make_optimizer(cfg.optim, cfg.train.num_steps, params_shape, variables.get("batch_stats", {}),
                        cfg.model.freeze_bn)

    def create() -> TrainState:
        v = dict(model.init(rng, _sample(cfg)))
        params = v.pop("params")
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=v, loss_state={},
                          opt_state=tx.init(params), nonfinite_step=jnp.full((), -1, jnp.int32))

    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(create))
    state = jax.jit(create, out_shardings=state_sharding)()
    frozen = jax.device_put({"teacher": teacher.variables if teacher else None,
                             "artefacts": {k: jnp.asarray(v) for k, v in arts.items()}}, replicated)
    step = jax.jit(make_classification_step(cfg, model, teacher, tx), donate_argnums=(0,),
                   in_shardings=(state_sharding, batch_sharding, replicated),
                   out_shardings=(state_sharding, replicated))
    return ClassificationSetup(model, state, state_sharding, batch_sharding,
                               lambda state, batch: step(state, batch, frozen))


class ClassificationEvaluator:
    """Top-1 and top-5 accuracy (fractions, like the retrieval metrics) of the current state on a source."""

    def __init__(self, cfg: ml_collections.ConfigDict, model: ClassificationModel, mesh: Mesh, state_sharding: Any):
        self.cfg = cfg
        devices = mesh.devices.size
        self.batch_size = -(-cfg.eval.batch_size // devices) * devices
        self.batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self._logits = jax.jit(lambda state, images: model.apply({"params": state.params, **state.model_state},
                                                                 images)["logits"],
                               in_shardings=(state_sharding, self.batch_sharding),
                               out_shardings=NamedSharding(mesh, PartitionSpec()))

    def __call__(self, state: TrainState, query: Source, reference: Source | None = None) -> dict[str, float]:
        d = self.cfg.data
        maker = pipeline.EvalBatches(query, self.batch_size, d.image_size, d.resize_size, d.skip_corrupt)
        correct1 = correct5 = total = 0
        for batch in pipeline.iterate(maker, 0, len(maker), d.num_workers):
            images = jax.make_array_from_process_local_data(self.batch_sharding, batch["images"])
            logits = np.asarray(self._logits(state, images))[batch["valid"]]
            labels = batch["labels"][batch["valid"]]
            top5 = np.argsort(-logits, axis=1)[:, :5]
            correct1 += int(np.sum(top5[:, 0] == labels))
            correct5 += int(np.sum(np.any(top5 == labels[:, None], axis=1)))
            total += len(labels)
        return {"accuracy": correct1 / total, "top5_accuracy": correct5 / total}


def export_network(cfg: ml_collections.ConfigDict, state: TrainState, num_classes: int, workdir: Path) -> Path:
    """Writes the trained network (params + BN statistics) where ``distill.teacher = <workdir>`` finds it."""
    variables = jax.device_get({"params": state.params["backbone"],
                                "batch_stats": state.model_state.get("batch_stats", {}).get("backbone", {})})
    meta = {"arch": cfg.model.backbone, "source": str(workdir.absolute()), "num_classes": num_classes,
            "sha256": None, "num_params": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
            "dropped_keys": []}
    return save_converted(variables, workdir / EXPORT_DIR, meta)
