"""The linear probe of a classifier's block (python -m jaxdml.probe; the letKD supplement's Table 4).

The LDA classifier is checked against the textbook rule computed here in NumPy; the pooled features against the
block's and the inserted layer's outputs captured by Flax itself (not by the networks' own recording); the
command end to end on a template-block student of the embedded digits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_distill_train import STUDENT, tiny
from train_helpers import REPO, tiny_config, worker_env

from jaxdml.config import load_config_file
from jaxdml.data.sources import as_rgb_uint8
from jaxdml.data.transforms import eval_transform
from jaxdml.errors import UserError
from jaxdml.models.cifar import Insert, cifar_network
from jaxdml.probe import lda_accuracy, probe_run
from jaxdml.train.state import model_variables
from jaxdml.trainers import create_trainer, train_and_evaluate


def numpy_lda_predict(train_x, train_y, test_x):
    """Fisher's linear discriminant rule: argmax_k x' S^-1 m_k - m_k' S^-1 m_k / 2 + log p_k, with the pooled
    within-class covariance S (divided by n - K) and the class means m_k and frequencies p_k."""
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == k].mean(0) for k in classes])
    centred = train_x - means[np.searchsorted(classes, train_y)]
    covariance = centred.T @ centred / (len(train_x) - len(classes))
    w = np.linalg.solve(covariance, means.T)  # (D, K)
    priors = np.array([np.mean(train_y == k) for k in classes])
    scores = test_x @ w - 0.5 * np.sum(means.T * w, axis=0) + np.log(priors)
    return classes[np.argmax(scores, axis=1)]


def test_lda_accuracy_is_fishers_rule():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8)) * 0.6
    mixing = rng.normal(size=(8, 8)) / 3 + np.eye(8)  # a shared, non-spherical covariance

    def draw(n):
        y = rng.integers(0, 5, n)
        return centres[y] + rng.normal(size=(n, 8)) @ mixing, y

    (train_x, train_y), (test_x, test_y) = draw(400), draw(300)
    expected = np.mean(numpy_lda_predict(train_x, train_y, test_x) == test_y)
    assert 0.4 < expected < 0.99  # neither trivial nor hopeless
    assert lda_accuracy(train_x, train_y, test_x, test_y) == pytest.approx(expected, abs=1e-12)
    # Separable classes are classified without error; a relabelled training set is not learnable.
    assert lda_accuracy(centres[train_y] + 0.01 * rng.normal(size=(400, 8)), train_y, centres[test_y], test_y) == 1.0
    assert lda_accuracy(train_x, rng.permutation(train_y), test_x, test_y) < expected


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_the_networks_report_the_inserted_layers_output(alpha):
    net = cifar_network("resnet8", 10, inserts=(Insert("layer3_0", "letkd", 12, alpha),))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = net.init(jax.random.key(1), x, train=False)
    out, captured = net.apply(variables, x, train=False, capture_intermediates=True)
    block = captured["intermediates"]["layer3_0"]["__call__"][0]
    layer_out, _ = captured["intermediates"]["letkd_layer3_0"]["__call__"][0]
    np.testing.assert_array_equal(out["features"]["layer3_0"], block)
    np.testing.assert_array_equal(out["inserted"]["layer3_0"], layer_out)
    if alpha == 0.0:  # the layer's output is its input: x-hat = x
        np.testing.assert_array_equal(out["inserted"]["layer3_0"], block)
    else:
        assert float(np.abs(out["inserted"]["layer3_0"] - block).max()) > 1e-3
    assert set(out["inserted"]) == {"layer3_0"} and "layer2_0" in out["features"]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A template-block student (a layer after layer3_0, no teacher) trained 6 steps."""
    cfg = tiny(load_config_file(f"{STUDENT}:template"), steps=6)
    cfg.model.backbone = "resnet8"
    workdir = tmp_path_factory.mktemp("probe") / "run"
    train_and_evaluate(cfg, workdir)
    return workdir, cfg


def by_hand(workdir, cfg, block):
    """The probe's inputs computed directly: the restored model on every image, the block's output and the template
    block's output captured by Flax, averaged over the locations."""
    trainer = create_trainer(cfg, workdir)  # restores the newest checkpoint
    trainer.close()
    variables = model_variables(trainer.state.params, trainer.state.model_state)
    names = (block, f"template_{block}")

    def pooled(source):
        images = np.stack([eval_transform(as_rgb_uint8(source.image(i)), resize_size=cfg.data.resize_size,
                                          size=cfg.data.image_size) for i in range(len(source))])
        _, captured = trainer.model.apply(variables, images, train=False,
                                          capture_intermediates=lambda m, _: m.name in names)
        inner = captured["intermediates"]["backbone"]
        x = np.asarray(inner[block]["__call__"][0]).mean((1, 2))
        x_hat = np.asarray(inner[f"template_{block}"]["__call__"][0][0]).mean((1, 2))
        return x, x_hat, np.asarray(source.labels)

    return pooled(trainer.data.train), pooled(trainer.data.query)


def test_the_probe_fits_lda_on_the_pooled_block_and_layer_outputs(student):
    workdir, cfg = student
    result = probe_run(workdir)
    assert result["block"] == "layer3_0" and result["step"] == 6
    (tx, th, ty), (qx, qh, qy) = by_hand(workdir, cfg, "layer3_0")
    assert result["train_images"] == len(ty) and result["test_images"] == len(qy)
    assert set(result["metrics"]) == {"lda_x", "lda_x_hat"}
    assert result["metrics"]["lda_x"] == pytest.approx(lda_accuracy(tx, ty, qx, qy), abs=1.5 / len(qy))
    assert result["metrics"]["lda_x_hat"] == pytest.approx(lda_accuracy(th, ty, qh, qy), abs=1.5 / len(qy))
    assert result["metrics"]["lda_x"] > 3 / 100  # above chance over 100 classes after 6 steps
    saved = json.loads((workdir / "evaluations" / "probe_layer3_0_step6.json").read_text())
    assert saved["metrics"] == result["metrics"] and saved["channels"] == tx.shape[1]
    # Another block, with no layer after it: x alone.
    other = probe_run(workdir, block="layer2_0")
    assert set(other["metrics"]) == {"lda_x"}


def test_refusals_name_the_fix(student, tmp_path):
    workdir, _ = student
    with pytest.raises(UserError, match=r"--block=layer9_0: the network resnet8 has no block .* layer3_0"):
        probe_run(workdir, block="layer9_0")
    embedding = tmp_path / "embedding"
    train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.eval_every": 2}), embedding)
    with pytest.raises(UserError, match="trains an embedding; the probe measures a classifier"):
        probe_run(embedding)
    plain = tmp_path / "plain"
    cfg = tiny(load_config_file(f"{STUDENT}:none"), steps=2)
    cfg.model.backbone = "resnet8"
    train_and_evaluate(cfg, plain)
    with pytest.raises(UserError, match="name one with --block"):
        probe_run(plain)
    assert not (plain / "evaluations").exists()


def test_command_line(student):
    workdir, _ = student
    result = subprocess.run([sys.executable, "-m", "jaxdml.probe", f"--workdir={workdir}", "--step=latest"],
                            capture_output=True, text=True, cwd=REPO, env=worker_env(devices=2))
    assert result.returncode == 0, result.stderr
    assert "LDA probe of layer3_0 (x, x-hat), step 6: LDA(x)=" in result.stdout and "LDA(x-hat)=" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "jaxdml.probe", f"--workdir={workdir / 'nothing'}"],
                         capture_output=True, text=True, cwd=REPO, env=worker_env())
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: --workdir")
