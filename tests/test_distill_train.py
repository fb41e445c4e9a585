"""End to end on the embedded digits: teacher -> artefacts -> students (KD, FitNet, LeTKD, template block)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxdml.config import ConfigError, load_config_file, validate
from jaxdml.distill.prepare import prepare
from jaxdml.models.convert import ConversionError
from jaxdml.trainers import Resume, create_trainer, resolve_config, train_and_evaluate

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "experiments" / "kd_digits_teacher.py"
STUDENT = REPO / "experiments" / "kd_digits_student.py"


def tiny(cfg, steps: int = 4):
    cfg.train.num_steps, cfg.train.batch_size = steps, 32
    cfg.train.eval_every = cfg.train.checkpoint_every = steps
    cfg.train.log_every, cfg.train.progress_bar = 1, False
    cfg.optim.step_boundaries = ()
    cfg.eval.batch_size = 500
    return cfg


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    cfg = tiny(load_config_file(TEACHER))
    cfg.model.backbone = "resnet8"
    workdir = tmp_path_factory.mktemp("teacher")
    summary = train_and_evaluate(cfg, workdir)
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0
    assert (workdir / "export" / "jaxdml_pretrained.json").is_file()
    return workdir


def student(method: str, teacher_dir: Path):
    cfg = tiny(load_config_file(f"{STUDENT}:{method}"))
    cfg.distill.teacher_arch = "resnet8"
    cfg.distill.teacher = str(teacher_dir)
    return cfg


def train_metrics(workdir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


def test_letkd_student_computes_artefacts_once_and_never_checkpoints_the_teacher(teacher_dir, tmp_path):
    cfg = student("letkd", teacher_dir)
    cfg.distill.letkd.num_words, cfg.distill.letkd.lda_dims, cfg.distill.letkd.subclasses = 16, 12, 2
    art = tmp_path / "artefacts"
    out = prepare(validate(cfg), tmp_path)  # the separate artefact command's work
    assert out["codebook"].shape == (16, 64) and out["lda_scalings"].shape == (64, 12)
    assert out["centres"].shape == (200, 12) and out["scores"].shape == (200, 200)
    np.testing.assert_allclose(out["scores"].sum(1), 1.0, rtol=1e-5)
    stamp = (art / "codebook.npy").stat().st_mtime_ns

    summary = train_and_evaluate(cfg, tmp_path)
    assert (art / "codebook.npy").stat().st_mtime_ns == stamp  # reused, not recomputed
    rows = train_metrics(tmp_path)
    assert len(rows) == 4 and all(np.isfinite(r["letkd_penultimate"]) and np.isfinite(r["letkd_intermediate"])
                                  for r in rows)
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0

    trainer = create_trainer(cfg, tmp_path)  # restores the student's checkpoint
    trainer.close()
    params = jax.device_get(trainer.state.params)
    assert set(params) == {"backbone"}  # the teacher is not in the student's state
    assert {"letkd_final", "letkd_layer3_0"} <= set(params["backbone"])  # kept for inference

    cfg.distill.letkd.num_words = 8  # another setting: recomputed
    prepare(validate(cfg), tmp_path)
    assert np.load(art / "codebook.npy").shape == (8, 64)


@pytest.mark.parametrize("method", ["kd", "fitnet"])
def test_kd_and_fitnet_students_train(teacher_dir, tmp_path, method):
    cfg = student(method, teacher_dir)
    if method == "fitnet":
        cfg.distill.method = "fitnet"
    summary = train_and_evaluate(cfg, tmp_path)
    rows = train_metrics(tmp_path)
    term = "kd" if method == "kd" else "hint"
    assert all(np.isfinite(r[term]) and r[term] >= 0 for r in rows)
    assert 0.0 <= summary["final"]["accuracy"] <= 1.0


def test_template_block_is_supervised_by_the_labels(tmp_path):
    cfg = tiny(load_config_file(f"{STUDENT}:none"))
    cfg.distill.template.block = "layer2_0"
    cfg.distill.template.templates_per_class = 2
    train_and_evaluate(cfg, tmp_path)
    rows = train_metrics(tmp_path)
    assert all(np.isfinite(r["template"]) for r in rows)
    assert rows[0]["template"] > 0.5 * np.log(100)  # starts near chance over 100 classes


def test_configuration_errors_name_the_fix(teacher_dir):
    cfg = load_config_file(f"{STUDENT}:letkd")
    cfg.distill.teacher = None
    with pytest.raises(ConfigError, match=r"distill\.teacher"):
        resolve_config(cfg)
    cfg = load_config_file(f"{STUDENT}:none")
    cfg.model.backbone = "small_cnn"
    with pytest.raises(ConfigError, match=r"jaxdml\.models\.cifar"):
        resolve_config(cfg)
    cfg = student("kd", teacher_dir)
    cfg.distill.teacher_arch = "resnet20"  # the teacher was trained as a resnet8
    with pytest.raises(ConversionError, match="resnet8"):
        create_trainer(cfg, teacher_dir.parent / "wrong_arch")


@pytest.mark.parametrize(("scale", "size"), [("same", 8), ("down", 4), ("up", 16)])
def test_fitnet_regressor_maps_the_student_hint_onto_the_teacher_map(scale, size):
    import jax.numpy as jnp

    from jaxdml.distill.model import HintRegressor

    regressor = HintRegressor(24, scale)
    x = jnp.ones((2, 8, 8, 16))
    out, _ = regressor.init_with_output(jax.random.key(0), x, train=False)
    assert out.shape == (2, size, size, 24)


def test_an_interrupted_classification_run_resumes_exactly(tmp_path):
    straight = tiny(load_config_file(f"{STUDENT}:none"), steps=4)
    straight.optim.schedule = "constant"
    train_and_evaluate(straight, tmp_path / "straight")
    half = tiny(load_config_file(f"{STUDENT}:none"), steps=2)
    half.optim.schedule, half.train.eval_every = "constant", 4  # the same run, stopped at step 2
    train_and_evaluate(half, tmp_path / "resumed")
    # The same run trained on to 4 steps: resumes at 2.
    train_and_evaluate(straight, tmp_path / "resumed", resume=Resume(extend_steps=True))

    def state(workdir):
        trainer = create_trainer(straight, workdir)
        trainer.close()
        return jax.device_get(trainer.state)

    a, b = state(tmp_path / "straight"), state(tmp_path / "resumed")
    assert int(a.step) == int(b.step) == 4
    for part in ("params", "model_state", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(a, part), getattr(b, part))
