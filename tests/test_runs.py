"""Runs you can trust: a run's identity on resume (refused, extended, forked), verified checkpoints, a full disk,
one metrics record per step after a kill, and nothing written by a refused or failed invocation."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import REPO, cli, tiny_config

from jaxdml.data.sources import DatasetNotPreparedError
from jaxdml.errors import ConfigError, UserError
from jaxdml.train import checkpoint as ckpt
from jaxdml.train.checkpoint import Checkpointer, CheckpointMismatchError, DiskFullError, abstract_like
from jaxdml.train.writers import read_metrics
from jaxdml.trainers import Resume, create_trainer, train_and_evaluate

BASE = {"train.num_steps": 8, "train.checkpoint_every": 4, "train.eval_every": 4, "train.keep_checkpoints": 5,
        "optim.schedule": "constant"}


def config(**overrides):
    cfg = tiny_config(**{**BASE, **{k: v for k, v in overrides.items() if k.count(".") == 1}})
    if "seed" in overrides:
        cfg.seed = overrides["seed"]
    return cfg


def snapshot(workdir: Path) -> dict[str, bytes]:
    """Every file's bytes (TensorBoard's event files aside: an open writer may flush them)."""
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


def train_steps(workdir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]


def params_of(workdir: Path, cfg) -> dict:
    """The newest checkpoint's parameters (a trainer that restores but never begins writes nothing)."""
    trainer = create_trainer(cfg, workdir)
    trainer.close()
    return jax.device_get(trainer.state.params)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 8-step run (checkpoints 4 and 8), shared by the refusal tests: a refusal must not change it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    train_and_evaluate(config(), workdir)
    return workdir


@pytest.mark.parametrize("key, value", [("optim.lr", 0.01), ("seed", 1), ("train.batch_size", 32),
                                        ("model.embedding_dim", 8), ("train.num_steps", 4),
                                        ("train.num_steps", 12), ("loss.name", "multi_similarity")])
def test_rerun_with_another_config_is_refused_before_touching_anything(finished, key, value):
    before = snapshot(finished)
    cfg = config(**{key: value})
    if key == "loss.name":
        cfg.loss.kwargs = type(cfg.loss.kwargs)()
    with pytest.raises(ConfigError) as error:
        train_and_evaluate(cfg, finished, resume=Resume(extend_steps=key == "train.num_steps" and value < 8))
    message = str(error.value)
    assert key in message and "\n" not in message
    if (key, value) == ("train.num_steps", 4):
        assert "never shortened" in message and f"--fork_from={finished}:<step>" in message
    elif key == "train.num_steps":
        assert "--extend_steps" in message
    else:
        assert "--fork_from" in message and "--extend_steps" not in message
    assert snapshot(finished) == before
    assert not list((finished / "checkpoints").glob("*.unreadable"))


def test_cli_refusal_is_one_line_and_writes_nothing(finished):
    before = snapshot(finished)
    result = subprocess.run(cli(finished, **{**BASE, "optim.lr": 0.5}), capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "optim.lr=0.5 (the run has 0.001)" in lines[0]
    assert snapshot(finished) == before


def test_safe_keys_may_change_and_the_older_config_is_kept(tmp_path):
    workdir = tmp_path / "run"
    train_and_evaluate(config(**{"train.num_steps": 4}), workdir)
    first = (workdir / "config.json").read_text()
    again = config(**{"train.num_steps": 4, "train.log_every": 2, "eval.batch_size": 64})
    train_and_evaluate(again, workdir)
    assert (workdir / "config.1.json").read_text() == first
    assert json.loads((workdir / "config.json").read_text())["train"]["log_every"] == 2
    history = json.loads((workdir / "run.json").read_text())["history"]
    assert [h["event"] for h in history] == ["start", "resume"]
    assert history[1]["changes"] == {"eval.batch_size": [256, 64], "train.log_every": [1, 2]}
    assert train_steps(workdir) == [1, 2, 3, 4]


def test_extended_run_equals_the_longer_run(tmp_path):
    train_and_evaluate(config(), tmp_path / "extended")
    train_and_evaluate(config(**{"train.num_steps": 12}), tmp_path / "extended", resume=Resume(extend_steps=True))
    train_and_evaluate(config(**{"train.num_steps": 12}), tmp_path / "straight")
    cfg = config(**{"train.num_steps": 12})
    jax.tree.map(np.testing.assert_array_equal, params_of(tmp_path / "extended", cfg),
                 params_of(tmp_path / "straight", cfg))
    assert train_steps(tmp_path / "extended") == list(range(1, 13))
    history = json.loads((tmp_path / "extended" / "run.json").read_text())["history"]
    assert history[-1]["event"] == "extend" and history[-1]["changes"]["train.num_steps"] == [8, 12]


def test_fork_starts_a_new_run_from_a_checkpoint_and_leaves_the_parent(finished, tmp_path):
    before = snapshot(finished)
    child = tmp_path / "child"
    train_and_evaluate(config(**{"optim.lr": 1e-4}), child, resume=Resume(fork_from=f"{finished}:4"))
    assert snapshot(finished) == before
    assert train_steps(child) == [5, 6, 7, 8]
    history = json.loads((child / "run.json").read_text())["history"]
    assert history[0]["event"] == "fork" and history[0]["forked_from"] == {"workdir": str(finished), "step": 4}
    # Step 4's state is the parent's: the child's first step from it differs only by the learning rate.
    assert json.loads((child / "config.json").read_text())["optim"]["lr"] == 1e-4


def test_fork_refusals_name_the_problem(finished, tmp_path):
    with pytest.raises(CheckpointMismatchError, match="not shapes"):
        train_and_evaluate(config(**{"model.embedding_dim": 8}), tmp_path / "a", resume=Resume(fork_from=str(finished)))
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="saved steps: 4, 8"):
        train_and_evaluate(config(), tmp_path / "b", resume=Resume(fork_from=f"{finished}:5"))
    with pytest.raises(ConfigError, match="already holds one"):
        train_and_evaluate(config(), finished, resume=Resume(fork_from=f"{finished}:4"))
    with pytest.raises(ConfigError, match="holds no checkpoints"):
        train_and_evaluate(config(), tmp_path / "c", resume=Resume(fork_from=str(tmp_path / "nowhere")))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


def test_failed_invocation_writes_nothing(tmp_path):
    cfg = config(**{"data.name": "cars196", "data.data_dir": str(tmp_path / "tfds")})
    with pytest.raises(DatasetNotPreparedError):
        train_and_evaluate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_workdir_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory") as error:
        train_and_evaluate(config(), tmp_path / "file" / "run")
    assert "\n" not in str(error.value)


# --- checkpoint integrity -------------------------------------------------------------------------------------


def _small_state():
    rng = np.random.default_rng(0)
    return {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32), "b": jnp.arange(16, dtype=jnp.int32)}


def _data_files(step_dir: Path) -> list[Path]:
    return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file() and "/d/" in str(p)),
                  key=lambda p: -p.stat().st_size)


@pytest.mark.parametrize("position", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_bit_flips_in_a_checkpoint_never_load_silently(tmp_path, position, caplog):
    state = _small_state()
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    checkpointer.save(1, state, {"step": 1})
    checkpointer.save(2, state, {"step": 2})
    checkpointer.close()
    target = _data_files(tmp_path / "2")[0]
    data = bytearray(target.read_bytes())
    data[int(position * len(data))] ^= 0x10
    target.write_bytes(bytes(data))
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    restored, meta = checkpointer.restore_latest(abstract_like(state))
    checkpointer.close()
    if meta["step"] == 2:  # the flip hit bytes that do not carry data: the arrays must be exactly the saved ones
        jax.tree.map(np.testing.assert_array_equal, restored, state)
    else:
        assert meta["step"] == 1 and ((tmp_path / "2.corrupt").exists() or (tmp_path / "2.unreadable").exists())
        assert "checkpoint step 2" in caplog.text


def test_checksum_mismatch_is_detected_even_when_orbax_reads_the_step(tmp_path, caplog):
    state = _small_state()
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    checkpointer.save(1, state, {"step": 1})
    changed = {**state, "w": state["w"].at[3, 5].add(1e-3)}  # the bytes of one value differ from its checksum
    checkpointer.save(2, changed, {"step": 2})
    checkpointer.close()
    meta_file = next((tmp_path / "2" / "meta").glob("metadata"))
    meta = json.loads(meta_file.read_text())
    meta["checksums"] = ckpt.checksums(state)  # as if the stored w had rotted to `changed`
    meta_file.write_text(json.dumps(meta))
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    _, meta = checkpointer.restore_latest(abstract_like(state))
    checkpointer.close()
    assert meta["step"] == 1 and (tmp_path / "2.corrupt").exists()
    assert "checksum mismatch in w" in caplog.text


def test_nan_in_a_restored_checkpoint_is_reported_as_damage(tmp_path, caplog):
    state = _small_state()
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    checkpointer.save(1, state, {"step": 1})
    checkpointer.save(2, {**state, "w": state["w"].at[0, 0].set(jnp.nan)}, {"step": 2})
    checkpointer.close()
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    _, meta = checkpointer.restore_latest(abstract_like(state))
    checkpointer.close()
    assert meta["step"] == 1 and (tmp_path / "2.corrupt").exists()
    assert "is damaged (NaN/inf in w)" in caplog.text


def test_run_resumes_from_the_last_verified_checkpoint(finished, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(finished, workdir)
    for f in _data_files(workdir / "checkpoints" / "8"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    (workdir / "summary.json").unlink()
    summary = train_and_evaluate(config(), workdir)
    assert "checkpoint step 8" in caplog.text
    assert (workdir / "checkpoints" / "8.corrupt").exists() or (workdir / "checkpoints" / "8.unreadable").exists()
    assert train_steps(workdir) == list(range(1, 9))
    expected = json.loads((finished / "summary.json").read_text())["final"]
    assert {k: v for k, v in summary["final"].items() if k != "eval_seconds"} == {
        k: v for k, v in expected.items() if k != "eval_seconds"}


# --- disk space -------------------------------------------------------------------------------------------------


def test_too_little_space_stops_before_the_save_and_keeps_the_checkpoints(tmp_path, monkeypatch):
    real = shutil.disk_usage

    def usage(path):
        total, used, free = real(path)
        return type(real(path))(total, used, free if not list((tmp_path / "checkpoints").glob("4")) else 1000)

    monkeypatch.setattr(ckpt.shutil, "disk_usage", usage)
    with pytest.raises(DiskFullError) as error:
        train_and_evaluate(config(), tmp_path)
    message = str(error.value)
    assert "for checkpoint step 8" in message and "checkpoints up to step 4 are intact" in message
    assert "MiB needed" in message and "\n" not in message
    monkeypatch.undo()
    assert Checkpointer(tmp_path / "checkpoints", keep=5, selection_metric="map_at_r").steps() == [4]
    train_and_evaluate(config(), tmp_path)  # space freed: the same command resumes
    assert train_steps(tmp_path) == list(range(1, 9))


def test_disk_full_during_an_asynchronous_save_is_one_error(tmp_path):
    state = _small_state()
    checkpointer = Checkpointer(tmp_path, keep=5, selection_metric="m")
    checkpointer.save(1, state, {"step": 1})
    checkpointer.wait()

    def failing_save(*args, **kwargs):
        raise RuntimeError("write failed") from OSError(errno.ENOSPC, "No space left on device")

    checkpointer.manager.save = failing_save
    with pytest.raises(DiskFullError, match=r"checkpoint step 2: .*checkpoints up to step 1 are intact"):
        checkpointer.save(2, state, {"step": 2})

    def failing_wait():
        raise OSError(errno.ENOSPC, "No space left on device")

    checkpointer._pending = (3, 100)
    checkpointer.manager.wait_until_finished = failing_wait
    with pytest.raises(DiskFullError, match="checkpoint step 3"):
        checkpointer.wait()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_is_one_line_from_the_cli(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux); the patched tests above cover the logic")
    try:
        workdir = disk / "run"
        first = subprocess.run(cli(workdir, **{**BASE, "train.num_steps": 4}), capture_output=True, text=True,
                               cwd=REPO)
        assert first.returncode == 0, first.stderr
        free = shutil.disk_usage(disk).free
        (disk / "filler").write_bytes(b"\0" * (free - 256 * 1024))
        before = snapshot(workdir / "checkpoints")
        result = subprocess.run([*cli(workdir, **BASE), "--extend_steps"], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: not enough disk space"), result.stderr
        assert snapshot(workdir / "checkpoints") == before
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- metrics.jsonl after a kill -----------------------------------------------------------------------------------


def test_sigkill_and_resume_leave_one_record_per_step(tmp_path):
    workdir = tmp_path / "run"
    overrides = {**BASE, "train.num_steps": 30, "train.eval_every": 10, "train.checkpoint_every": 10}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(cli(workdir, **overrides), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if any(r["split"] == "train" and r["step"] >= 14 for r in read_metrics(workdir)):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert max(train_steps(workdir)) > 10, "killed after the step-10 checkpoint"
    resumed = subprocess.run(cli(workdir, **overrides), cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    records = read_metrics(workdir)
    counts = Counter((r["step"], r["split"]) for r in records)
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert train_steps(workdir) == list(range(1, 31))
    assert [r["step"] for r in records if r["split"] == "test"] == [0, 10, 20, 30]
