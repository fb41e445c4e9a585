"""Classification with optional distillation: a CIFAR network trained with cross-entropy, plus Hinton KD,
FitNet and/or LeTKD terms from a frozen teacher (``distill.method``, e.g. ``"fitnet+letkd"``: each term with its
own weight, :mod:`jaxdml.distill.terms`), or the label-supervised template-matching block; top-1 accuracy.

Without a teacher (``distill.method = "none"``) this trains a plain classifier (e.g. a teacher), and a finished
run exports its network to ``<workdir>/export`` so that ``distill.teacher = <workdir>`` can use it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxdml.distill import artefacts as art
from jaxdml.distill.model import CLASSIFIERS, build_classifier, student_inserts
from jaxdml.distill.teacher import (
    EXPORT_DIR,
    Teacher,
    artefact_names,
    export_network,
    letkd_artefacts,
    load_teacher,
    needs_teacher,
    sample_images,
    teacher_map,
)
from jaxdml.distill.terms import check_terms, has_term, letkd_parts, terms_of
from jaxdml.errors import ConfigError
from jaxdml.losses import distill as kd
from jaxdml.train.step import StepContext
from jaxdml.trainers.base import Procedure, Trainer


def distillation_loss(cfg: ml_collections.ConfigDict, out: dict[str, Any], teacher_out: dict[str, Any] | None,
                      labels: jnp.ndarray, arts: dict[str, jnp.ndarray]) -> tuple[jnp.ndarray, dict[str, Any]]:
    """CE plus every configured term times its own weight (``distill.method`` may join several with "+");
    returns (loss, metrics), one metric per term."""
    d = cfg.distill
    logits = out["logits"].astype(jnp.float32)
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    metrics = {"ce": ce, "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    total = d.ce_weight * ce
    terms, parts = terms_of(d), letkd_parts(d)
    if "kd" in terms:
        metrics["kd"] = kd.hinton_kd(logits, teacher_out["logits"], d.kd_temperature)
        total += d.kd_weight * metrics["kd"]
    if "fitnet" in terms:
        metrics["hint"] = kd.fitnet_hint(out["hint"], teacher_out["features"][d.teacher_hint_block])
        total += d.fitnet_weight * metrics["hint"]
    if "letkd" in terms:
        ld, scores = d.letkd, out["scores"]
        if parts["supervised_penultimate"]:  # a layer with weight 0 is inserted, not supervised (Table 6)
            t_final = teacher_map(teacher_out["features"]["final"], scores["final"].shape[1])
            targets = art.soft_assignment(t_final, arts["codebook"], ld.temperature)
            metrics["letkd_penultimate"] = kd.location_kl(scores["final"], targets)
            total += ld.penultimate_weight * metrics["letkd_penultimate"]
        if parts["supervised_intermediate"]:
            student_scores = scores[ld.student_block]
            t_mid = teacher_map(teacher_out["features"][ld.teacher_block], student_scores.shape[1])
            projected = (t_mid.astype(jnp.float32) - arts["lda_mean"]) @ arts["lda_scalings"]
            targets = art.subclass_targets(projected, labels, arts["centres"], arts["scores"], ld.subclasses)
            metrics["letkd_intermediate"] = kd.location_kl(student_scores, targets)
            total += ld.intermediate_weight * metrics["letkd_intermediate"]
    if d.template.block:
        metrics["template"] = kd.template_matching_loss(out["scores"][d.template.block], labels,
                                                        d.template.templates_per_class)
        total += d.template.weight * metrics["template"]
    return total, metrics


def fitnet_hint_shape(cfg: ml_collections.ConfigDict, teacher: Teacher, num_classes: int) -> tuple[int, str]:
    """(teacher channels, same|down|up): how FitNet's regressor maps the student's hint map onto the teacher's."""
    t_maps = jax.eval_shape(lambda: teacher.model.apply(teacher.variables, sample_images(cfg)))["features"]
    plain = build_classifier(cfg, num_classes)
    s_maps = jax.eval_shape(lambda: plain.init_with_output(jax.random.key(0), sample_images(cfg))[0])["features"]
    t_size = t_maps[cfg.distill.teacher_hint_block].shape[1]
    s_size = s_maps[cfg.distill.hint_block].shape[1]
    scale = {1: "same", 2: "down"}.get(s_size // t_size, "up" if 2 * s_size == t_size else None)
    if scale is None:
        raise ConfigError(f"FitNet: the student's {cfg.distill.hint_block} map ({s_size}x{s_size}) and the teacher's "
                          f"{cfg.distill.teacher_hint_block} ({t_size}x{t_size}) must have equal sizes or differ by a "
                          f"factor 2; choose other distill hint blocks")
    return t_maps[cfg.distill.teacher_hint_block].shape[-1], scale


def distillation_procedure(cfg: ml_collections.ConfigDict, num_classes: int, teacher: Teacher | None,
                           artefacts: dict[str, Any]) -> Procedure:
    """The student (with its inserts and FitNet regressor) and its loss; the teacher and artefacts are frozen."""
    hint = fitnet_hint_shape(cfg, teacher, num_classes) if has_term(cfg.distill, "fitnet") else None
    model = build_classifier(cfg, num_classes, inserts=student_inserts(cfg, num_classes), hint=hint)
    rng = jax.random.key(cfg.seed)

    def init_fn() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        variables = dict(model.init(rng, sample_images(cfg)))
        return variables.pop("params"), variables, {}

    def loss_fn(params: dict[str, Any], outputs: dict[str, Any], batch: dict[str, jnp.ndarray],
                context: StepContext):
        del params
        teacher_out = None
        if teacher is not None:
            teacher_out = jax.lax.stop_gradient(teacher.model.apply(context.frozen["teacher"], batch["images"]))
        loss, metrics = distillation_loss(cfg, outputs, teacher_out, batch["labels"], context.frozen["artefacts"])
        return loss, context.loss_state, metrics

    frozen = {"teacher": teacher.variables if teacher else None,
              "artefacts": {k: jnp.asarray(v) for k, v in artefacts.items()}}
    return Procedure(model, init_fn, loss_fn, frozen=frozen)


class DistillationTrainer(Trainer):
    """Trains a classifier, optionally distilled; exports the finished network (a teacher for later runs)."""

    default_evaluator = "accuracy"

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        d = cfg.distill
        if cfg.model.backbone not in CLASSIFIERS:
            raise ConfigError(f"trainer='distillation' trains the networks of jaxdml.models.cifar and "
                              f"jaxdml.models.imagenet; model.backbone={cfg.model.backbone!r} is not one of "
                              f"{sorted(CLASSIFIERS)}.")
        check_terms(d)  # unknown / repeated terms, a term without its weight or blocks: one line, before any work
        if needs_teacher(d) and not (d.teacher and d.teacher_arch):
            raise ConfigError(f"distill.method={d.method!r} needs a teacher: set distill.teacher_arch (e.g. resnet56) "
                              f"and distill.teacher (a converted checkpoint, a .pth or a jaxdml classification "
                              f"workdir).")
        if cfg.eval.evaluator != "accuracy":
            raise ConfigError(f"trainer='distillation' reports accuracy; set eval.evaluator='accuracy' (or leave it "
                              f"empty), not {cfg.eval.evaluator!r}.")

    def build(self) -> Procedure:
        teacher = load_teacher(self.cfg, self.num_classes)
        artefacts: dict[str, Any] = {}
        if artefact_names(self.cfg.distill):
            artefacts = letkd_artefacts(self.cfg, teacher, self.data.train, self.num_classes,
                                        self.workdir / "artefacts")
        return distillation_procedure(self.cfg, self.num_classes, teacher, artefacts)

    def finish(self, summary: dict[str, Any]) -> None:
        export_network(self.cfg, self.state.params, self.state.model_state, self.num_classes, self.workdir)
        summary["export"] = str(self.workdir / EXPORT_DIR)
