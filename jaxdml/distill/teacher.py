"""The frozen teacher and LeTKD's teacher artefacts; the export that makes a finished run a teacher.

The teacher's variables are loaded once (``distill.teacher``), passed to the jitted step as an argument, never
optimised and never written into the student's checkpoints. LeTKD's teacher artefacts are computed once per
workdir (``<workdir>/artefacts``, also by ``python -m jaxdml.distill.prepare``) and reused.
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

from jaxdml import distributed
from jaxdml.data import pipeline
from jaxdml.data.sources import Source
from jaxdml.distill import artefacts as art
from jaxdml.distill.model import build_classifier, classifier_layer, student_inserts
from jaxdml.distill.terms import letkd_parts
from jaxdml.errors import ConfigError
from jaxdml.layers.template import downscale_2x2
from jaxdml.models.convert import ConversionError, check_fits, load_pretrained, save_converted
from jaxdml.models.model import Model

log = logging.getLogger(__name__)
EXPORT_DIR = "export"  # a finished classification run's network, loadable as a teacher


@dataclasses.dataclass(frozen=True)
class Teacher:
    model: Model
    variables: dict[str, Any]  # {"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}


def needs_teacher(d: ml_collections.ConfigDict) -> bool:
    return d.method != "none" or d.kd_weight > 0


def load_teacher(cfg: ml_collections.ConfigDict, num_classes: int) -> Teacher | None:
    """The frozen teacher of ``cfg.distill`` (None without one); its classifier must have ``num_classes`` outputs."""
    d = cfg.distill
    if not needs_teacher(d):
        return None
    source = teacher_source(d.teacher)
    raw = load_pretrained(source, d.teacher_arch, key="distill.teacher", arch_key="distill.teacher_arch")
    classes = int(raw["params"][classifier_layer(d.teacher_arch)]["kernel"].shape[-1])
    if classes != num_classes:
        raise ConversionError(f"the teacher {d.teacher!r} classifies {classes} classes, the data has {num_classes}")
    model = build_classifier(cfg, num_classes, arch=d.teacher_arch)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), sample_images(cfg)))
    check_fits(raw, {"params": expected["params"]["backbone"],
                     "batch_stats": expected["batch_stats"]["backbone"]}, d.teacher)
    variables = {"params": {"backbone": raw["params"]}, "batch_stats": {"backbone": raw["batch_stats"]}}
    return Teacher(model, jax.tree.map(jnp.asarray, variables))


TEACHER_KINDS = (f"a teacher is a converted directory (python -m jaxdml.models.convert), a PyTorch .pth of the KD "
                 f"code base, or the workdir of a finished jaxdml classification run (trainer='distillation', e.g. "
                 f"experiments/kd_digits_teacher.py), which exports <workdir>/{EXPORT_DIR} when it finishes")


def teacher_source(teacher: str) -> Path:
    """What ``distill.teacher`` points at, to load: the export of a jaxdml workdir, else the path itself.

    Raises :class:`ConversionError` naming ``distill.teacher`` when it does not exist, is an unfinished run or
    is the workdir of a run that trains no classifier (a retrieval run: it has no export to load)."""
    path = Path(teacher)
    if not path.exists():
        raise ConversionError(f"distill.teacher = {teacher!r} does not exist; {TEACHER_KINDS}.")
    if not path.is_dir():
        return path
    if (path / EXPORT_DIR).is_dir():  # a finished jaxdml classification workdir
        return path / EXPORT_DIR
    trainer = _workdir_trainer(path)
    if trainer not in (None, "distillation") or (trainer is None and (path / "summary.json").is_file()):
        ran = f"trainer={trainer!r}" if trainer else f"summary.json but no {EXPORT_DIR}/"
        trains = "an embedding" if trainer in (None, "metric_learning") else "no classifier"
        raise ConversionError(f"distill.teacher = {teacher!r} is the workdir of a finished run ({ran}) that trains "
                              f"{trains}, not a classifier, so it cannot be a teacher: a teacher must be a "
                              f"classification run (trainer='distillation', e.g. experiments/kd_digits_teacher.py), "
                              f"which exports <workdir>/{EXPORT_DIR} when it finishes; or a converted directory or a "
                              f".pth.")
    if trainer is not None or (path / "checkpoints").is_dir():
        raise ConversionError(f"distill.teacher = {teacher!r} is a jaxdml workdir whose run has not finished "
                              f"(no {EXPORT_DIR}/); rerun its command to complete it")
    return path  # a converted directory (load_pretrained says what is missing if it is not one)


def _workdir_trainer(path: Path) -> str | None:
    """The ``trainer`` of a jaxdml workdir's config.json; None when it has none (or no readable config.json)."""
    try:
        trainer = json.loads((path / "config.json").read_text()).get("trainer")
    except (OSError, ValueError, AttributeError):
        return None
    return trainer if isinstance(trainer, str) and trainer else None


def sample_images(cfg: ml_collections.ConfigDict) -> jnp.ndarray:
    return jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3), jnp.uint8)


# ------------------------------------------------------------------------------------------------- artefacts


def teacher_map(teacher_features: jnp.ndarray, student_size: int) -> jnp.ndarray:
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
    maker = pipeline.EvalBatches(source=source, device_batch=cfg.eval.batch_size, image_size=d.image_size,
                                  resize_size=d.resize_size, skip_corrupt=d.skip_corrupt)

    @jax.jit
    def forward(images):
        features = teacher.model.apply(teacher.variables, images)["features"]
        return {b: teacher_map(features[b].astype(jnp.float32), size) for b, size in blocks.items()}

    shapes = jax.eval_shape(forward, sample_images(cfg))
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
    key = {"teacher": str(Path(d.teacher).absolute()), "teacher_arch": d.teacher_arch, "data": cfg.data.name,
           "num_words": ld.num_words, "temperature": ld.temperature, "intermediate": ld.intermediate,
           "teacher_block": ld.teacher_block, "student_block": ld.student_block, "lda_dims": ld.lda_dims,
           "subclasses": ld.subclasses, "max_points": ld.max_points, "seed": cfg.seed}
    names = artefact_names(d)
    if names != ["codebook"] + (_LETKD2_NAMES[1:] if ld.intermediate else []):  # not plain letKD-1 / letKD-2
        key["artefacts"] = names  # (so letKD-1/-2 keys stay as they were: their existing artefacts remain valid)
    return key


_LETKD2_NAMES = ["codebook", "lda_scalings", "lda_mean", "centres", "scores"]


def artefact_names(d: ml_collections.ConfigDict) -> list[str]:
    """The artefacts the supervised LeTKD layers need: the codebook (penultimate), LDA, centres and score
    matrix (intermediate); none for a layer with weight 0 (inserted without supervision)."""
    parts = letkd_parts(d)
    return ((["codebook"] if parts["supervised_penultimate"] else [])
            + (_LETKD2_NAMES[1:] if parts["supervised_intermediate"] else []))


def letkd_artefacts(cfg: ml_collections.ConfigDict, teacher: Teacher, train: Source, num_classes: int,
                    directory: Path) -> dict[str, np.ndarray]:
    """The codebook (and, for letKD-2, LDA, sub-class centres and score matrix): loaded from ``directory`` when
    it holds them for this configuration, else computed from the teacher and saved there."""
    key = _artefact_key(cfg)
    meta_file = directory / "meta.json"
    names = artefact_names(cfg.distill)
    if not names:
        return {}
    if meta_file.is_file() and json.loads(meta_file.read_text()).get("key") == key:
        return {n: np.load(directory / f"{n}.npy") for n in names}
    ld = cfg.distill.letkd
    student = build_classifier(cfg, num_classes, inserts=student_inserts(cfg, num_classes))
    outputs = jax.eval_shape(lambda: student.init_with_output(jax.random.key(0), sample_images(cfg))[0])
    student_maps = outputs["features"]
    blocks = {"final": student_maps["final"].shape[1]} if "codebook" in names else {}
    if "centres" in names:
        blocks[ld.teacher_block] = student_maps[ld.student_block].shape[1]
    log.info("computing LeTKD teacher artefacts in %s", directory)
    features, labels = collect_teacher_features(cfg, teacher, train, blocks)
    out = {}
    if "codebook" in names:
        out["codebook"] = art.kmeans_codebook(features["final"], ld.num_words, seed=cfg.seed)
    if "centres" in names:
        lda = art.fit_lda(features[ld.teacher_block], labels[ld.teacher_block], ld.lda_dims)
        projected = lda.project(features[ld.teacher_block])
        sub = art.subclass_centres(projected, labels[ld.teacher_block], num_classes, ld.subclasses, seed=cfg.seed)
        out.update(lda_scalings=lda.scalings, lda_mean=lda.mean, centres=sub.centres,
                   scores=art.score_matrix(projected, sub.assignment, sub.centres))
    if not distributed.is_primary():  # every process computed the same artefacts; process 0 keeps them
        return out
    directory.mkdir(parents=True, exist_ok=True)
    for name, value in out.items():
        np.save(directory / f"{name}.npy", value)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(out[n]).tobytes() for n in names)).hexdigest()
    meta_file.write_text(json.dumps({"key": key, "sha256": digest,
                                     "rows": {b: len(f) for b, f in features.items()}}, indent=2) + "\n")
    return out


def export_network(cfg: ml_collections.ConfigDict, params: dict[str, Any], model_state: dict[str, Any],
                   num_classes: int, workdir: Path) -> Path:
    """Writes the trained network (params + BN statistics) where ``distill.teacher = <workdir>`` finds it."""
    variables = jax.device_get({"params": params["backbone"],
                                "batch_stats": model_state.get("batch_stats", {}).get("backbone", {})})
    meta = {"arch": cfg.model.backbone, "source": str(workdir.absolute()), "num_classes": num_classes,
            "sha256": None, "num_params": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
            "dropped_keys": []}
    return save_converted(variables, workdir / EXPORT_DIR, meta)
