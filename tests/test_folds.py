"""The MLRC fold protocol: class-disjoint folds that cover the training classes, the concatenation against NumPy, and
a two-fold run end to end (per-model, mean and concatenated metrics against a brute-force computation; resume,
single folds, refusals)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess

import jax
import numpy as np
import pytest
from retrieval_worker import brute_metrics
from train_helpers import REPO, cli, tiny_config

from jaxdml.config import validate
from jaxdml.data.sources import fold_classes, split_fold
from jaxdml.errors import ConfigError
from jaxdml.train.checkpoint import abstract_like
from jaxdml.trainers import Resume, create_trainer, train_and_evaluate
from jaxdml.trainers.folds import concatenate, fold_config, fold_workdir


@dataclasses.dataclass
class Labels:
    labels: np.ndarray
    name: str = "toy"

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        return np.zeros((2, 2, 3), np.uint8)


@pytest.mark.parametrize("classes", [100, 98, 11318, 7])
def test_folds_are_class_disjoint_cover_the_classes_and_cut_where_the_release_cuts(classes):
    ids = np.arange(classes) * 3 + 5  # any sorted class ids
    folds = [fold_classes(ids, 4, k) for k in range(4)]
    np.testing.assert_array_equal(np.concatenate(folds), ids)
    bounds = np.linspace(0, classes, 5).astype(int)  # dataset_base._datasetFromText
    assert [len(f) for f in folds] == list(np.diff(bounds))
    for block, fold in zip(np.split(ids, bounds[1:-1]), folds):  # contiguous blocks of the sorted classes
        np.testing.assert_array_equal(block, fold)


def test_split_fold_holds_out_one_fold_and_keeps_every_record():
    labels = np.repeat(np.arange(10), 3)[np.random.default_rng(0).permutation(30)]
    source = Labels(labels)
    seen = []
    for k in range(4):
        train, val = split_fold(source, 4, k)
        a, b = set(labels[train.indices]), set(labels[val.indices])
        assert not a & b and a | b == set(range(10))
        assert len(train) + len(val) == 30
        np.testing.assert_array_equal(sorted(b), fold_classes(labels, 4, k))
        seen += sorted(b)
    assert seen == list(range(10)), "each class is validated by exactly one model"
    with pytest.raises(ValueError, match="more than its 10"):
        split_fold(source, 11, 0)


@pytest.mark.parametrize("norm", ["l2", "lipschitz"])
def test_concatenation_equals_numpy(norm):
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=(5, 3)).astype(np.float32) * s for s in (0.1, 1.0, 3.0, 10.0)]

    def normalise(x):
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / (n if norm == "l2" else np.maximum(n, 1.0))

    expected = normalise(np.concatenate([normalise(p) for p in parts], axis=1))
    np.testing.assert_allclose(np.asarray(concatenate([jax.numpy.asarray(p) for p in parts], norm)), expected,
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("overrides, key", [({"data.folds": 1}, "data.folds"),
                                            ({"data.fold": 0}, "data.fold"),
                                            ({"data.folds": 4, "data.fold": 4}, "data.fold"),
                                            ({"data.folds": 4, "data.val_fraction": 0.2}, "data.val_fraction")])
def test_fold_settings_are_checked(overrides, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        validate(tiny_config(**overrides))


FOLDS = {"data.folds": 2, "train.num_steps": 8, "train.eval_every": 4}


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("folds")
    cfg = tiny_config(**FOLDS)
    return cfg, workdir, train_and_evaluate(cfg, workdir)


def test_two_folds_end_to_end_against_numpy(protocol):
    cfg, workdir, summary = protocol
    assert json.loads((workdir / "summary.json").read_text()) == json.loads(json.dumps(summary))
    per_model, parts = [], []
    for k in range(2):
        fold_summary = json.loads((fold_workdir(workdir, k) / "summary.json").read_text())
        assert summary["folds"][k]["test"] == fold_summary["best"]
        per_model.append(fold_summary["best"])
        trainer = create_trainer(fold_config(cfg, k), fold_workdir(workdir, k))
        state, _ = trainer.checkpointer.restore(fold_summary["best_step"], abstract_like(trainer.state))
        out = trainer.evaluator.outputs(state, trainer.data.query)
        trainer.close()
        n = len(trainer.data.query)
        parts.append(np.asarray(out.values)[:n])
        labels = out.labels[:n]
        assert set(trainer.data.train.original_labels) | set(trainer.data.val.original_labels) == set(range(50))
    for key in ("precision_at_1", "map_at_r", "r_precision"):
        assert summary["mean"][key] == pytest.approx(np.mean([m[key] for m in per_model]), abs=1e-12)
        assert summary["std"][key] == pytest.approx(np.std([m[key] for m in per_model]), abs=1e-12)
    unit = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts]
    joint = np.concatenate(unit, axis=1)
    joint /= np.linalg.norm(joint, axis=1, keepdims=True)
    expected = brute_metrics(joint, labels)
    for key in ("precision_at_1", "map_at_r", "r_precision", "recall_at_1", "recall_at_8"):
        assert summary["concatenated"][key] == pytest.approx(expected[key], abs=1e-6), key
    assert summary["concatenated_dim"] == 2 * cfg.model.embedding_dim


def untimed(tree):
    """A summary without its evaluation times."""
    if isinstance(tree, dict):
        return {k: untimed(v) for k, v in tree.items() if k != "eval_seconds"}
    return tree


def test_rerun_only_evaluates_and_single_folds_train_alone(protocol, tmp_path):
    cfg, workdir, summary = protocol
    before = {k: (fold_workdir(workdir, k) / "metrics.jsonl").read_text() for k in range(2)}
    again = train_and_evaluate(cfg, workdir)
    assert again["concatenated"] == summary["concatenated"]
    assert before == {k: (fold_workdir(workdir, k) / "metrics.jsonl").read_text() for k in range(2)}

    single = tiny_config(**FOLDS, **{"data.fold": 1})
    result = train_and_evaluate(single, tmp_path)
    assert not fold_workdir(tmp_path, 0).exists() and not (tmp_path / "summary.json").exists()
    assert untimed(result) == untimed(json.loads((fold_workdir(workdir, 1) / "summary.json").read_text()))


def test_refusals_write_nothing(protocol, tmp_path):
    cfg, workdir, _ = protocol
    listing = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
    changed = tiny_config(**FOLDS, **{"optim.lr": 0.5})
    with pytest.raises(ConfigError, match="another config"):
        train_and_evaluate(changed, workdir)
    with pytest.raises(ConfigError, match="fork a single fold"):
        train_and_evaluate(cfg, tmp_path / "new", resume=Resume(fork_from=str(fold_workdir(workdir, 0))))
    with pytest.raises(ConfigError, match="holds a fold protocol"):
        train_and_evaluate(tiny_config(), workdir)
    assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == listing
    result = subprocess.run(cli(workdir, **FOLDS, **{"optim.lr": 0.5}), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_single_run_workdir_refuses_folds(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds a single run"):
        train_and_evaluate(tiny_config(**FOLDS), tmp_path)
