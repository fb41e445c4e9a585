"""GSP end to end: the real-dataset recipe on mock data, the unprepared-dataset message, exact resumption with
GSP memory, XBM memory and ZSR parameters in the checkpoint."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from train_helpers import REPO

from jaxdml.config import load_config_file
from jaxdml.train.writers import read_metrics
from jaxdml.trainers import Resume, create_trainer, train_and_evaluate

GSP_CARS = REPO / "experiments" / "gsp_cars.py"

# The recipe as users run it, shrunk: small CNN, 32x32, GSP active after two steps, XBM from step 0.
TINY_GSP = {
    "model.backbone": "small_cnn", "model.pretrained": None, "model.width": 8, "model.embedding_dim": 16,
    "model.gsp.num_prototypes": 4, "data.cache_dir": None,
    "model.gsp.memory_size": 16, "data.image_size": 32, "data.resize_size": 36, "data.num_workers": 0,
    "data.samples_per_class": 2, "train.batch_size": 8, "train.num_steps": 4, "train.log_every": 1,
    "train.eval_every": 4, "train.checkpoint_every": 2, "train.progress_bar": False, "loss.xbm.batches": 2,
    "loss.xbm.start_step": 0, "eval.batch_size": 16, "eval.clustering": False, "optim.lr": 1e-3,
}


def configure(path, overrides):
    cfg = load_config_file(path)
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        setattr(node, leaf, value)
    return cfg


def restored_state(cfg, workdir):
    trainer = create_trainer(cfg, workdir)
    trainer.close()
    return jax.device_get(trainer.state)


def test_gsp_cars_trains_and_evaluates_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    cfg = configure(GSP_CARS, {**TINY_GSP, "data.cache_dir": str(tmp_path / "image_cache")})
    with tfds.testing.mock_data(num_examples=60):
        summary = train_and_evaluate(cfg, tmp_path)
        state = restored_state(cfg, tmp_path)
    assert 0.0 <= summary["final"]["map_at_r"] <= 1.0
    train = [r for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert len(train) == 4 and all(np.isfinite(r["zsr_loss"]) and np.isfinite(r["dml_loss"]) for r in train)
    assert bool(state.model_state["gsp"]["head"]["ready"]), "prototypes initialised from the GAP memory"
    assert state.params["loss"]["class_embeddings"].shape[1] == 16
    assert int(state.loss_state["position"]) == (4 * 8) % 16
    assert len(list((tmp_path / "image_cache").glob("*.u8"))) == 2  # train and test decoded once


def test_gsp_cars_without_data_prints_the_prepare_command(tmp_path):
    args = [sys.executable, "-m", "jaxdml.main", f"--config={GSP_CARS}", f"--workdir={tmp_path / 'run'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}"]
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1
    assert "python -m jaxdml.data.prepare --dataset cars196" in result.stderr and "Traceback" not in result.stderr


def test_resuming_restores_gsp_xbm_and_zsr_state_exactly(tmp_path):
    overrides = {**TINY_GSP, "data.name": "digit_collage", "data.resize_size": 32, "train.num_steps": 6,
                 "train.eval_every": 100, "optim.schedule": "constant", "eval.at_start": False}
    collage = REPO / "experiments" / "gsp_digits_collage.py"
    straight = configure(collage, overrides)
    train_and_evaluate(straight, tmp_path / "straight")
    first_half = configure(collage, {**overrides, "train.num_steps": 3})
    train_and_evaluate(first_half, tmp_path / "resumed")
    train_and_evaluate(configure(collage, overrides), tmp_path / "resumed", resume=Resume(extend_steps=True))
    a, b = restored_state(straight, tmp_path / "straight"), restored_state(straight, tmp_path / "resumed")
    assert int(a.step) == int(b.step) == 6
    for part in ("params", "model_state", "loss_state", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, getattr(a, part), getattr(b, part))
    assert bool(a.model_state["gsp"]["head"]["ready"])
