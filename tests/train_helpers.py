"""Shared settings for the end-to-end tests: the digits experiment, shrunk to seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
DIGIT_PAIRS = str(REPO / "experiments" / "digit_pairs.py")

# Overrides that make the embedded experiment tiny (16x16 images, 8-channel CNN).
TINY = {
    "data.image_size": 16, "data.resize_size": 16, "model.width": 8, "model.embedding_dim": 16,
    "train.num_steps": 12, "train.log_every": 1, "train.eval_every": 6, "train.checkpoint_every": 4,
    "train.progress_bar": False, "eval.clustering": False,
}


def tiny_config(**overrides):
    from jaxdml.config import load_config_file

    cfg = load_config_file(DIGIT_PAIRS)
    for key, value in {**TINY, **overrides}.items():
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            node = node[part]
        setattr(node, name, value)
    return cfg


def cli(workdir: Path, **overrides) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
    return [sys.executable, "-m", "jaxdml.main", f"--config={DIGIT_PAIRS}", f"--workdir={workdir}", *flags]


def worker_env(devices: int | None = None) -> dict[str, str]:
    """The environment of a child process that imports the jaxdml of this checkout (and tests/), whatever the
    environment has installed; with ``devices``, on that many emulated CPU devices."""
    path = os.pathsep.join([str(TESTS), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path}
    if devices is not None:
        env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    return env


def start_worker(script: str, devices: int, *args: str) -> subprocess.Popen:
    """``python tests/<script> *args`` on ``devices`` emulated CPU devices, its output piped."""
    return subprocess.Popen([sys.executable, str(TESTS / script), *args], env=worker_env(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
