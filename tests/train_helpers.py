"""Shared settings for the end-to-end tests: the digits experiment, shrunk to seconds."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
        section, name = key.split(".")
        setattr(cfg[section], name, value)
    return cfg


def cli(workdir: Path, **overrides) -> list[str]:
    flags = [f"--config.{k}={v}" for k, v in {**TINY, **overrides}.items()]
    return [sys.executable, "-m", "jaxdml.main", f"--config={DIGIT_PAIRS}", f"--workdir={workdir}", *flags]
