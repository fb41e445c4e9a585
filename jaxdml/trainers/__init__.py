"""Trainers: one per procedure, selected by ``config.trainer``, all on the training core (``jaxdml.train``).

A new procedure is a :class:`~jaxdml.trainers.base.Trainer` subclass in its own module, added to ``TRAINERS``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import ml_collections

from jaxdml.config import suggest, validate
from jaxdml.errors import ConfigError
from jaxdml.eval import EVALUATORS
from jaxdml.trainers.base import Procedure, Trainer, TrainingSetup, setup_training
from jaxdml.trainers.ccp import CCPTrainer, ccp_procedure
from jaxdml.trainers.distillation import DistillationTrainer, distillation_procedure
from jaxdml.trainers.folds import FoldProtocol, fold_workdir
from jaxdml.trainers.metric_learning import MetricLearningTrainer, metric_learning_procedure
from jaxdml.trainers.workdir import RESUME_SAFE_KEYS, Resume

# config.trainer -> trainer class; the one list of valid names.
TRAINERS: dict[str, type[Trainer]] = {"metric_learning": MetricLearningTrainer, "distillation": DistillationTrainer,
                                      "ccp": CCPTrainer}


def resolve_config(cfg: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, type[Trainer]]:
    """A validated copy of ``cfg`` with the trainer's defaults filled in (evaluator, selection metric), and the
    trainer class; raises :class:`ConfigError` naming the fix."""
    if cfg.get("trainer") not in TRAINERS:
        raise ConfigError(f"trainer={cfg.get('trainer')!r}: use one of {', '.join(TRAINERS)}."
                          f"{suggest(str(cfg.get('trainer')), TRAINERS)}")
    trainer = TRAINERS[cfg.trainer]
    cfg = copy.deepcopy(cfg)
    if not cfg.eval.evaluator:
        cfg.eval.evaluator = trainer.default_evaluator
    if not cfg.eval.selection_metric and cfg.eval.evaluator in EVALUATORS:
        cfg.eval.selection_metric = EVALUATORS[cfg.eval.evaluator].default_selection_metric
    validate(cfg)
    trainer.check_config(cfg)
    return cfg, trainer


def create_trainer(cfg: ml_collections.ConfigDict, workdir: str | Path, *, resume: Resume | None = None) -> Trainer:
    """The trainer ``cfg.trainer`` names, set up in ``workdir`` (resuming from its newest checkpoint if the run
    there has the same config; ``resume`` allows an extension or a fork, see :mod:`jaxdml.trainers.workdir`)."""
    cfg, trainer = resolve_config(cfg)
    return trainer(cfg, workdir, resume=resume)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path, *, resume: Resume | None = None
                       ) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir`` (resuming if it holds checkpoints of the same run); returns the summary.

    With ``data.folds`` the workdir holds one run per fold and their joint evaluation (:class:`FoldProtocol`)."""
    cfg, trainer = resolve_config(cfg)
    if cfg.data.folds:
        return FoldProtocol(cfg, workdir, trainer, resume).run()
    if fold_workdir(workdir, 0).exists():
        raise ConfigError(f"--workdir {workdir} holds a fold protocol ({fold_workdir(workdir, 0).name}/ ...); a "
                          f"single run (data.folds=0) needs a workdir of its own.")
    return trainer(cfg, workdir, resume=resume).run()


__all__ = ["RESUME_SAFE_KEYS", "TRAINERS", "CCPTrainer", "DistillationTrainer", "FoldProtocol", "MetricLearningTrainer",
           "Procedure", "Resume", "Trainer", "TrainingSetup", "ccp_procedure", "create_trainer",
           "distillation_procedure", "metric_learning_procedure", "resolve_config", "setup_training",
           "train_and_evaluate"]
