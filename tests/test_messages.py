"""Error messages name the setting that is wrong and what it should be; low-precision embeddings are evaluated."""

from __future__ import annotations

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from train_helpers import REPO, tiny_config

from jaxdml.config import load_config_file
from jaxdml.distill.teacher import EXPORT_DIR, load_teacher, teacher_source
from jaxdml.eval.retrieval import knn, retrieval_metrics
from jaxdml.models.convert import ConversionError, save_converted
from jaxdml.trainers import resolve_config

STUDENT = REPO / "experiments" / "kd_digits_student.py"


def student_config(teacher) -> object:
    cfg = load_config_file(f"{STUDENT}:kd")
    cfg.distill.teacher_arch, cfg.distill.teacher = "resnet8", str(teacher)
    cfg, _ = resolve_config(cfg)
    return cfg


def teacher_error(teacher) -> str:
    with pytest.raises(ConversionError) as info:
        load_teacher(student_config(teacher), num_classes=100)
    return str(info.value)


# ------------------------------------------------------------------------------------------ distill.teacher


def test_a_missing_teacher_is_reported_as_distill_teacher_with_what_a_teacher_can_be(tmp_path):
    message = teacher_error(tmp_path / "nowhere")
    assert message.startswith(f"distill.teacher = {str(tmp_path / 'nowhere')!r} does not exist")
    assert "model.pretrained" not in message
    for kind in ("converted directory", ".pth", "finished jaxdml classification run", "trainer='distillation'"):
        assert kind in message, kind


def test_a_finished_retrieval_run_is_not_a_teacher_and_the_message_says_why(tmp_path):
    # A finished trainer=metric_learning workdir: the config.json its Trainer writes, checkpoints, summary.json
    # and no export/ (training one takes a minute on two cores; the layout is all load_teacher reads).
    cfg, _ = resolve_config(tiny_config())
    assert cfg.trainer == "metric_learning"
    (tmp_path / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")  # as Trainer.__init__
    (tmp_path / "checkpoints" / "12").mkdir(parents=True)
    (tmp_path / "summary.json").write_text(json.dumps({"final": {"precision_at_1": 0.5}}) + "\n")
    message = teacher_error(tmp_path)
    assert "has not finished" not in message
    assert "trainer='metric_learning'" in message and "trains an embedding" in message
    assert "trainer='distillation'" in message and f"<workdir>/{EXPORT_DIR} when it finishes" in message


def test_a_finished_run_without_export_or_config_is_not_reported_as_unfinished(tmp_path):
    (tmp_path / "summary.json").write_text("{}\n")  # no config.json (an older or copied workdir), no export/
    (tmp_path / "checkpoints").mkdir()
    message = teacher_error(tmp_path)
    assert "has not finished" not in message and "trains an embedding" in message
    assert "trainer='distillation'" in message


def test_an_unfinished_classification_run_is_reported_as_unfinished(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"trainer": "distillation"}) + "\n")
    (tmp_path / "checkpoints").mkdir()
    message = teacher_error(tmp_path)
    assert "has not finished" in message and "rerun its command" in message
    assert "trains an embedding" not in message


def test_a_finished_classification_workdir_loads_its_export(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"trainer": "distillation"}) + "\n")
    (tmp_path / EXPORT_DIR).mkdir()
    assert teacher_source(str(tmp_path)) == tmp_path / EXPORT_DIR
    converted = tmp_path / "converted"
    converted.mkdir()
    assert teacher_source(str(converted)) == converted  # a converted directory is loaded as it is


def test_a_teacher_of_another_architecture_names_distill_teacher_arch(tmp_path):
    save_converted({"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}}, tmp_path,
                   {"arch": "resnet20", "num_classes": 100})
    message = teacher_error(tmp_path)
    assert "holds a resnet20 backbone, but distill.teacher_arch = 'resnet8'" in message
    assert "model." not in message


# ------------------------------------------------------------------------------------------ low precision


@pytest.mark.parametrize("make", [lambda x: jnp.asarray(x, jnp.bfloat16), lambda x: x.astype(ml_dtypes.bfloat16),
                                  lambda x: jnp.asarray(x, jnp.float16), lambda x: x.astype(np.float16)],
                         ids=["jax-bfloat16", "numpy-bfloat16", "jax-float16", "numpy-float16"])
def test_retrieval_metrics_accept_half_precision_embeddings(make):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    x = (rng.normal(size=(60, 16)) + 2.0 * rng.normal(size=(10, 16))[labels]).astype(np.float32)
    low = make(x)
    upcast = np.asarray(low).astype(np.float32)  # the values the low-precision array holds
    assert not np.array_equal(upcast, x)  # rounded: the comparison below is against these, not the originals
    got = retrieval_metrics(low, labels, ks=(1, 4, 32))
    assert got == retrieval_metrics(upcast, labels, ks=(1, 4, 32))
    assert got["precision_at_1"] > 0.5  # a real result, not NaN
    got_ref = retrieval_metrics(low[::2], labels[::2], low[1::2], labels[1::2], clustering=False)
    assert got_ref == retrieval_metrics(upcast[::2], labels[::2], upcast[1::2], labels[1::2], clustering=False)
    for a, b in zip(knn(low, k=5), knn(upcast, k=5), strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_numeric_embeddings_are_still_rejected():
    with pytest.raises(TypeError, match="real numeric dtype"):
        retrieval_metrics(np.ones((4, 2), np.complex64), np.arange(4))
    with pytest.raises(TypeError, match="real numeric dtype"):
        retrieval_metrics(np.ones((4, 2), bool), np.arange(4))
