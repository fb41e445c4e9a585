"""``python -m jaxdml.evaluate``: a run's own numbers again from its checkpoint, another step, split or dataset, the
fold protocol's concatenation, the model :func:`jaxdml.embed.load_trained` restores for inference, the retrieval
pictures of a real run against a NumPy kNN, and the refusals (one line, naming the fix)."""

import io
import json
import shutil
import struct
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from train_helpers import tiny_config, worker_env

from jaxdml.data import transforms
from jaxdml.data.datasets import load_data
from jaxdml.embed import load_trained
from jaxdml.errors import UserError
from jaxdml.eval import pictures as pic
from jaxdml.evaluate import evaluate_run
from jaxdml.trainers import train_and_evaluate
from jaxdml.trainers.folds import fold_workdir


def untimed(metrics):
    return {k: v for k, v in metrics.items() if k != "eval_seconds"}


def files(workdir):
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts and "evaluations" not in p.parts}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("evaluate") / "run"
    return workdir, train_and_evaluate(tiny_config(), workdir)


def test_same_step_and_split_give_the_runs_own_numbers_and_change_nothing(run):
    workdir, summary = run
    before = files(workdir)
    result = evaluate_run(workdir)  # default: the newest checkpoint on the test set, as summary["final"]
    assert result["step"] == 12
    assert untimed(result["metrics"]) == untimed(summary["final"])
    saved = json.loads((workdir / "evaluations" / "digit_pairs_test_step12.json").read_text())
    assert untimed(saved["metrics"]) == untimed(summary["final"]) and saved["split"] == "test"
    assert files(workdir) == before  # summary.json, checkpoints, metrics: untouched


def test_another_step_split_and_dataset(run):
    workdir, _ = run
    best = json.loads((workdir / "summary.json").read_text())["best_step"]
    result = evaluate_run(workdir, step="best", split="train", overrides=[("eval.ks", "(1, 4)")], picture=True)
    assert result["step"] == best
    assert set(result["metrics"]) == {"precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_4",
                                      "eval_seconds"}
    name = f"digit_pairs_train_step{best}"
    assert (workdir / "evaluations" / f"{name}.json").is_file()
    picture = np.asarray(Image.open(workdir / "evaluations" / f"{name}.png"))
    assert picture.shape[2] == 3 and picture.shape[0] > 8 * 16
    other = evaluate_run(workdir, step="8", overrides=[("data.name", "digit_collage")], name="collage")
    assert other["step"] == 8 and other["dataset"] == "digit_collage"
    assert 0 <= other["metrics"]["map_at_r"] <= 1
    assert (workdir / "evaluations" / "collage.json").is_file()


def test_load_trained_restores_the_model_for_inference(run):
    workdir, _ = run
    trained = load_trained(workdir, 12)
    config, variables = trained.config, trained.variables
    assert trained.step == 12 and config.model.embedding_dim == 16 and config.trainer == "metric_learning"
    assert "loss" not in variables["params"]
    images = np.zeros((3, 16, 16, 3), np.uint8)
    assert trained.model.apply(variables, images, train=False)["embedding"].shape == (3, 16)
    assert load_trained(workdir, "latest").step == 12


def numpy_knn(x, rows, k):
    out = []
    for row in rows:
        d = ((x - x[row]) ** 2).sum(axis=1).astype(np.float64)
        d[row] = np.inf
        out.append(np.argsort(d, kind="stable")[:k])
    return np.asarray(out)


def image_tags(directory):
    """(step, tag) of every image summary in TensorBoard's event files."""
    from tensorboardX.proto import event_pb2

    found = []
    for path in sorted(directory.iterdir()):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            found += [(event.step, v.tag, np.asarray(Image.open(io.BytesIO(v.image.encoded_image_string))))
                      for v in event.summary.value if v.HasField("image")]
            at += 12 + length + 4
    return found


def test_training_pictures_show_the_numpy_knn_and_reach_tensorboard(run):
    workdir, _ = run
    assert sorted(p.name for p in (workdir / "pictures").iterdir()) == [
        "retrieval_step0.png", "retrieval_step12.png", "retrieval_step6.png"]
    trained = load_trained(workdir, 12)
    config, model, variables = trained.config, trained.model, trained.variables
    test = load_data(config.data).query
    images = np.stack([transforms.eval_transform(test.image(i), resize_size=16, size=16) for i in range(len(test))])
    x = np.asarray(jax.jit(lambda v, b: model.apply(v, b, train=False)["embedding"])(variables, images))
    n, k = config.eval.pictures, config.eval.picture_k
    rows = pic.choose_queries(test.labels, np.ones(len(test), bool), None, None, n)
    correct = test.labels[numpy_knn(x, rows, k)] == test.labels[rows][:, None]
    picture = np.asarray(Image.open(workdir / "pictures" / "retrieval_step12.png"))
    tile = 16 * pic.tile_scale(16) + 2 * pic.BORDER
    assert picture.shape == (pic.GAP + n * (tile + pic.GAP), pic.GAP + (k + 1) * (tile + pic.GAP) + 2 * pic.GAP, 3)
    for i in range(n):
        y = pic.GAP + i * (tile + pic.GAP) + 1
        query = picture[y + pic.BORDER - 1:y + pic.BORDER - 1 + 16 * pic.tile_scale(16):pic.tile_scale(16),
                        pic.GAP + pic.BORDER::pic.tile_scale(16)][:, :16]
        np.testing.assert_array_equal(query, images[rows[i]])
        for j in range(k):
            x0 = pic.GAP + (j + 1) * (tile + pic.GAP) + 3 * pic.GAP + 1
            want = pic.CORRECT_COLOUR if correct[i, j] else pic.WRONG_COLOUR
            assert tuple(picture[y, x0]) == want, (i, j)
    tags = image_tags(workdir / "tensorboard")
    assert [(s, t) for s, t, _ in tags] == [(0, "retrieval"), (6, "retrieval"), (12, "retrieval")]
    np.testing.assert_array_equal(tags[-1][2], picture)


def test_refusals_name_the_fix(run, tmp_path):
    workdir, _ = run
    with pytest.raises(UserError, match="holds no jaxdml run"):
        evaluate_run(tmp_path)
    with pytest.raises(UserError, match=r"no checkpoint of step 5 .*saved steps: .*12"):
        evaluate_run(workdir, step="5")
    with pytest.raises(UserError, match="give a step number, best or latest"):
        evaluate_run(workdir, step="last")
    with pytest.raises(UserError, match=r"model\.width would change the model; .*only data\.\* and eval\.\*"):
        evaluate_run(workdir, overrides=[("model.width", "4")])
    with pytest.raises(UserError, match=r"data\.folds cannot be overridden"):
        evaluate_run(workdir, overrides=[("data.folds", "2")])
    with pytest.raises(UserError, match=r"unknown config key 'data\.nme'.*data\.name"):
        evaluate_run(workdir, overrides=[("data.nme", "x")])
    with pytest.raises(UserError, match="holds out no validation classes"):
        evaluate_run(workdir, split="val")
    with pytest.raises(UserError, match=r"python -m jaxdml\.data\.prepare"):
        evaluate_run(workdir, overrides=[("data.name", "caltech_birds2011"), ("data.data_dir", str(tmp_path))])
    other = tmp_path / "other"
    shutil.copytree(workdir, other, ignore=shutil.ignore_patterns("tensorboard", "evaluations"))
    cfg = json.loads((other / "config.json").read_text())
    cfg["model"]["embedding_dim"] = 32
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"does not fit.*params/head.*16.*32.*another model"):
        evaluate_run(other)
    assert not (other / "evaluations").exists()


def test_command_line(run):
    workdir, summary = run
    base = [sys.executable, "-m", "jaxdml.evaluate", f"--workdir={workdir}"]
    bad = subprocess.run([*base, "--config.model.embedding_dim=8"], capture_output=True, text=True,
                         env=worker_env())
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: --config.model.embedding_dim would change the model")
    assert len(bad.stderr.strip().splitlines()) == 1
    good = subprocess.run([*base, "--step=12", "--config.eval.ks=(1,2)", "--name", "cli"], capture_output=True,
                          text=True, env=worker_env())
    assert good.returncode == 0, good.stderr
    assert "step 12 (digit_pairs test): P@1=" in good.stdout
    saved = json.loads((workdir / "evaluations" / "cli.json").read_text())
    assert saved["overrides"] == {"eval.ks": "(1,2)"}
    assert saved["metrics"]["map_at_r"] == summary["final"]["map_at_r"]


def test_fold_protocol_is_evaluated_like_the_trainer(tmp_path):
    cfg = tiny_config(**{"data.folds": 2, "train.num_steps": 8, "train.eval_every": 4})
    summary = train_and_evaluate(cfg, tmp_path)
    result = evaluate_run(tmp_path)  # each fold's best checkpoint, alone and concatenated
    assert untimed(result["metrics"]) == untimed(summary["concatenated"])
    for fold, (mine, theirs) in enumerate(zip(result["folds"], summary["folds"])):
        assert mine["step"] == theirs["best_step"]
        assert untimed(mine["metrics"]) == untimed(theirs["test"]), fold
    assert result["concatenated_dim"] == 2 * cfg.model.embedding_dim
    assert (tmp_path / "evaluations" / "digit_pairs_test_best.json").is_file()
    with pytest.raises(UserError, match="only on the test set"):
        evaluate_run(tmp_path, split="val")
    single = evaluate_run(fold_workdir(tmp_path, 1), split="val")  # one model, on its own held-out fold
    assert single["split"] == "val"


def ccp_config():
    return tiny_config(**{"trainer": "ccp", "data.val_fraction": 0.25, "train.num_steps": 4, "train.eval_every": 2,
                          "ccp.proxies_per_class": 2, "ccp.pool_per_class": 3, "model.embedding_norm": "lipschitz"})


def classifier_config():
    from test_distill_train import TEACHER, tiny

    from jaxdml.config import load_config_file

    cfg = tiny(load_config_file(TEACHER))
    cfg.model.backbone = "resnet8"
    return cfg


@pytest.mark.parametrize("make_config", [ccp_config, classifier_config], ids=["ccp", "classifier"])
def test_ccp_and_classification_runs_give_their_own_numbers(make_config, tmp_path):
    summary = train_and_evaluate(make_config(), tmp_path)
    assert untimed(evaluate_run(tmp_path)["metrics"]) == untimed(summary["final"])
    if "best" in summary:  # selected on validation classes: the best checkpoint's test numbers
        assert untimed(evaluate_run(tmp_path, step="best")["metrics"]) == untimed(summary["best"])
    else:
        assert set(summary["final"]) >= {"accuracy", "top5_accuracy"}
