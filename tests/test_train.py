"""End to end: train + evaluate + checkpoint on the digits, divergence, corrupt checkpoints, CLI errors."""

import json
import os
import re
import subprocess

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict
from train_helpers import REPO, cli, tiny_config

from jaxdml.train.checkpoint import Checkpointer, abstract_like
from jaxdml.train.loop import TrainingDivergedError
from jaxdml.train.writers import read_metrics
from jaxdml.trainers import Resume, create_trainer, train_and_evaluate


def final_params(workdir, cfg):
    trainer = create_trainer(cfg, workdir)  # restores the newest checkpoint
    trainer.close()
    return jax.device_get(trainer.state)


def test_short_run_writes_everything(tmp_path):
    summary = train_and_evaluate(tiny_config(), tmp_path)
    assert set(summary) >= {"initial", "final", "best_step"}
    for key in ("precision_at_1", "map_at_r", "r_precision", "recall_at_8"):
        assert 0.0 <= summary["final"][key] <= 1.0
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in records if r["split"] == "test"] == [0, 6, 12]
    assert all(np.isfinite(r["loss"]) and r["images_per_second"] > 0 for r in records if r["split"] == "train")
    assert list((tmp_path / "tensorboard").iterdir()), "TensorBoard event files"
    assert json.loads((tmp_path / "summary.json").read_text())["final"] == summary["final"]
    assert Checkpointer(tmp_path / "checkpoints", keep=2, selection_metric="map_at_r").steps()[-1] == 12


def test_rerun_of_finished_run_trains_nothing_more(tmp_path):
    first = train_and_evaluate(tiny_config(), tmp_path)
    again = train_and_evaluate(tiny_config(), tmp_path)
    assert again["final"]["map_at_r"] == first["final"]["map_at_r"]
    assert [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"] == list(range(1, 13))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"train.checkpoint_every": 2, "train.eval_every": 100, "train.keep_checkpoints": 10})
    # From step 5 on the learning rate is 1e35: the parameters overflow within a step or two.
    cfg.optim.schedule, cfg.optim.step_boundaries, cfg.optim.step_factor = "step", (5,), 1e38
    with pytest.raises(TrainingDivergedError, match=r"NaN/inf at step (\d+)") as error:
        train_and_evaluate(cfg, tmp_path)
    bad_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
    assert bad_step in (5, 6)
    saved = Checkpointer(tmp_path / "checkpoints", keep=9, selection_metric="map_at_r").steps()
    assert saved == [s for s in (2, 4, 6) if s <= bad_step]
    assert f"Last good checkpoint: step {saved[-1]} " in str(error.value)
    restored = final_params(tmp_path, cfg)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored.params))


def test_half_written_checkpoint_is_set_aside(tmp_path, caplog):
    cfg = tiny_config(**{"train.num_steps": 8, "train.eval_every": 100})
    train_and_evaluate(cfg, tmp_path)
    broken = tmp_path / "checkpoints" / "10"
    (broken / "state").mkdir(parents=True)
    (broken / "state" / "half_written").write_bytes(b"\x00" * 10)
    (broken / "_CHECKPOINT_METADATA").write_text("{}")
    cfg.train.num_steps = 12
    train_and_evaluate(cfg, tmp_path, resume=Resume(extend_steps=True))
    assert "checkpoint step 10" in caplog.text and (tmp_path / "checkpoints" / "10.unreadable").exists()
    steps = [r["step"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert steps == list(range(1, 13)), "resumed from step 8, the newest complete checkpoint"


def test_unknown_override_key_is_named_by_the_cli(tmp_path):
    result = subprocess.run(cli(tmp_path, **{"train.batch_sizee": 8}), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert "unknown config key 'train.batch_sizee'" in result.stderr and "train.batch_size" in result.stderr


def test_unprepared_dataset_prints_the_prepare_command(tmp_path):
    args = cli(tmp_path / "run", **{"data.name": "cars196", "data.data_dir": tmp_path / "tfds"})
    result = subprocess.run(args, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1, result.stderr
    assert "python -m jaxdml.data.prepare --dataset cars196" in result.stderr
    assert "Traceback" not in result.stderr


def test_same_params_and_metrics_after_sigterm_and_resume(tmp_path):
    overrides = {"train.num_steps": 30, "train.eval_every": 10, "train.checkpoint_every": 1000}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = subprocess.run(cli(tmp_path / "reference", **overrides), cwd=REPO, env=env, capture_output=True)
    assert reference.returncode == 0, reference.stderr.decode()

    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(cli(workdir, **overrides), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    import time

    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(r["split"] == "train" and r["step"] >= 12 for r in read_metrics(workdir)):
            break
        time.sleep(0.05)
    process.terminate()  # SIGTERM
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + 15, err.decode()
    assert "Rerun the same command to resume" in err.decode()
    stopped_at = Checkpointer(workdir / "checkpoints", keep=9, selection_metric="map_at_r").steps()
    assert stopped_at and 12 <= stopped_at[-1] < 30, stopped_at

    resumed = subprocess.run(cli(workdir, **overrides), cwd=REPO, env=env, capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()

    a = json.loads((tmp_path / "reference" / "summary.json").read_text())
    b = json.loads((workdir / "summary.json").read_text())
    for key in ("precision_at_1", "map_at_r", "r_precision"):
        assert a["final"][key] == b["final"][key]
    def untimed(metrics):
        return {k: v for k, v in metrics.items() if k != "eval_seconds"}

    assert untimed(a["initial"]) == untimed(b["initial"])
    cfg = tiny_config(**overrides)
    pa, pb = final_params(tmp_path / "reference", cfg), final_params(workdir, cfg)
    jax.tree.map(np.testing.assert_array_equal, pa.params, pb.params)
    jax.tree.map(np.testing.assert_array_equal, pa.model_state, pb.model_state)
    np.testing.assert_array_equal(pa.step, 30)


def test_bfloat16_compute_trains(tmp_path):
    cfg = tiny_config(**{"model.compute_dtype": "bfloat16", "train.num_steps": 3, "eval.at_start": False})
    summary = train_and_evaluate(cfg, tmp_path)
    assert np.isfinite(summary["final"]["map_at_r"])
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_real_dataset_path_trains_and_evaluates_on_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    overrides = {"data.name": "cars196", "data.image_size": 32, "data.resize_size": 36, "train.batch_size": 8,
                 "data.samples_per_class": 2, "train.num_steps": 3, "eval.batch_size": 16}
    with tfds.testing.mock_data(num_examples=60):
        summary = train_and_evaluate(tiny_config(**overrides), tmp_path)
    for key in ("precision_at_1", "map_at_r", "recall_at_1"):
        assert 0.0 <= summary["final"][key] <= 1.0


def test_proxy_loss_with_one_per_class_batches_and_backbone_warm_up(tmp_path):
    cfg = tiny_config(**{"train.num_steps": 3, "train.batch_size": 16, "data.sampler": "one_per_class",
                         "eval.at_start": False, "train.checkpoint_every": 1, "train.keep_checkpoints": 5})
    cfg.loss.name, cfg.loss.kwargs = "proxy_anchor", ConfigDict()
    cfg.optim.freeze_backbone_steps, cfg.optim.lr_mult.loss = 2, 100.0
    initial = create_trainer(cfg, tmp_path / "init")
    initial.close()
    start = jax.device_get(initial.state)
    train_and_evaluate(cfg, tmp_path / "run")
    states = {}
    for step in (2, 3):
        checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", keep=5, selection_metric="map_at_r")
        states[step], _ = checkpointer.restore(step, abstract_like(initial.state))
        checkpointer.close()
    assert start.params["loss"]["proxy_anchor"]["proxies"].shape == (50, 16)
    kernel = lambda s: np.asarray(s.params["backbone"]["stage1_0_conv"]["kernel"])
    np.testing.assert_array_equal(kernel(states[2]), kernel(start))  # frozen for the first two steps
    assert not np.array_equal(kernel(states[3]), kernel(start))
    assert not np.array_equal(np.asarray(states[2].params["loss"]["proxy_anchor"]["proxies"]),
                              np.asarray(start.params["loss"]["proxy_anchor"]["proxies"]))
