"""Computes LeTKD's teacher artefacts for an experiment, once, into its workdir (training reuses them).

    python -m jaxdml.distill.prepare --config experiments/letkd_cifar100_rn56_rn20.py --workdir runs/rn56_rn20 \\
        [--config.distill.teacher=weights/resnet56]

Writes ``<workdir>/artefacts/``: ``codebook.npy`` (K x C k-means words of the teacher's last-stage features)
and, for letKD-2, ``lda_scalings.npy`` / ``lda_mean.npy`` (LDA), ``centres.npy`` (classes x sub-classes
centres) and ``scores.npy`` (the score matrix), plus ``meta.json`` (the settings they were computed for and a
SHA-256). ``python -m jaxdml.main`` with the same config and workdir loads them instead of recomputing;
changing any setting they depend on recomputes them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from absl import app

from jaxdml.cli import WORKDIR, config_from_flags, parse_flags, run_user_errors
from jaxdml.config import validate
from jaxdml.errors import ConfigError


def prepare(cfg, workdir: Path) -> dict[str, np.ndarray]:
    """Loads (or computes and saves) the artefacts of ``cfg`` in ``workdir/artefacts``."""
    from jaxdml.data.datasets import load_data
    from jaxdml.data.sources import num_classes
    from jaxdml.distill.teacher import artefact_names, letkd_artefacts, load_teacher

    cfg = validate(cfg)
    if not artefact_names(cfg.distill):
        raise ConfigError(f"distill.method={cfg.distill.method!r}: no supervised LeTKD layer, so no teacher "
                          f"artefacts; they exist for methods with the 'letkd' term (e.g. letkd, fitnet+letkd).")
    data = load_data(cfg.data)
    classes = num_classes(data.train)
    return letkd_artefacts(cfg, load_teacher(cfg, classes), data.train, classes, workdir / "artefacts")


def main(argv: list[str]) -> None:
    del argv
    start = time.perf_counter()
    out = run_user_errors(lambda: prepare(config_from_flags(), Path(WORKDIR.value)))
    sizes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items())
    print(f"artefacts in {Path(WORKDIR.value) / 'artefacts'} ({time.perf_counter() - start:.1f} s): {sizes}")


if __name__ == "__main__":
    from absl import flags

    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=parse_flags)
