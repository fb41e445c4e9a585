"""The fold protocol of "A Metric Learning Reality Check" (Musgrave et al., 2020), around any embedding trainer.

With ``data.folds = F`` (MLRC: 4) the training classes are cut into F class-disjoint folds
(:func:`jaxdml.data.sources.fold_classes`) and model k trains on the other folds and is selected on fold k by
``eval.selection_metric`` (MAP@R). Each model is an ordinary run of ``config.trainer`` (``metric_learning``,
``ccp``) in ``<workdir>/fold_<k>``, with its checkpoints, resume and refusals. Then the test set is embedded by
every model's best checkpoint and reported three ways (``<workdir>/summary.json``):

* per model (its ``model.embedding_dim``-d embedding, 128 in MLRC), and the mean and spread over the models;
* ``concatenated``: each model's embedding normalised (``model.embedding_norm``: L2 as MLRC, or Lipschitz as the
  GSP/CCP release), concatenated (F x 128 = 512-d) and normalised again.

``data.fold = -1`` (default) trains the folds in sequence (a rerun resumes the unfinished one and skips finished
ones) and then evaluates the concatenation; ``data.fold = k`` trains only model k, so that F machines can train
the folds in parallel into one workdir (or copies merged into one), after which the ``data.fold = -1`` command
only evaluates. Repeats are runs with other seeds in other workdirs.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdml import distributed
from jaxdml.errors import ConfigError
from jaxdml.eval.evaluators import Outputs, RetrievalEvaluator
from jaxdml.models.heads import EMBEDDING_NORMS
from jaxdml.train.checkpoint import abstract_like
from jaxdml.train.hooks import format_metrics
from jaxdml.trainers.base import Trainer
from jaxdml.trainers.workdir import CONFIG_FILE, Resume, RunRecord

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


def fold_config(cfg: ml_collections.ConfigDict, fold: int) -> ml_collections.ConfigDict:
    """The config of model ``fold``: ``cfg`` with ``data.fold = fold``."""
    out = copy.deepcopy(cfg)
    out.data.fold = fold
    return out


def fold_workdir(workdir: str | Path, fold: int) -> Path:
    return Path(workdir) / f"fold_{fold}"


def concatenate(parts: list[jax.Array], norm: str) -> jax.Array:
    """Each (n, d_k) embedding normalised (``norm``: l2 | lipschitz), concatenated and normalised again; the rows
    keep their sharding."""
    normalize = EMBEDDING_NORMS[norm]
    return jax.jit(lambda *xs: normalize(jnp.concatenate([normalize(x) for x in xs], axis=-1)))(*parts)


def concatenated_outputs(parts: list[Outputs], norm: str) -> Outputs:
    """Several models' outputs over the same source as one: their values joined by :func:`concatenate`."""
    return Outputs(concatenate([p.values for p in parts], norm), parts[0].labels, parts[0].valid)


def summarize(per_model: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, standard deviation) over the models of every metric they all report."""
    keys = [k for k in per_model[0] if all(k in m for m in per_model) and k != "eval_seconds"]
    values = {k: np.asarray([m[k] for m in per_model], np.float64) for k in keys}
    return {k: float(v.mean()) for k, v in values.items()}, {k: float(v.std()) for k, v in values.items()}


class FoldProtocol:
    """Trains the folds of ``cfg`` (one run each, in ``<workdir>/fold_<k>``) and evaluates them together."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | Path, trainer: type[Trainer],
                 resume: Resume | None = None):
        """Checks every fold's run record before any work: a config that may not continue a fold's run is refused
        here, with nothing written."""
        resume = resume or Resume()
        self.cfg, self.workdir, self.trainer, self.resume = cfg, Path(workdir), trainer, resume
        if resume.fork_from:
            raise ConfigError(f"--fork_from starts one run from another; with data.folds={cfg.data.folds} fork a "
                              f"single fold instead: --config.data.fold=<k> --workdir=<new> with --fork_from="
                              f"<workdir>/fold_<k>.")
        if (self.workdir / CONFIG_FILE).exists():
            raise ConfigError(f"--workdir {self.workdir} holds a single run (its {CONFIG_FILE}); a fold protocol "
                              f"(data.folds={cfg.data.folds}) needs a workdir of its own.")
        self.folds = [cfg.data.fold] if cfg.data.fold >= 0 else list(range(cfg.data.folds))
        self.changes = {k: RunRecord(fold_workdir(self.workdir, k)).check(fold_config(cfg, k), resume)
                        for k in range(cfg.data.folds)}

    def finished(self, fold: int) -> bool:
        """Whether model ``fold`` has its summary and this config asks for no more steps."""
        return ((fold_workdir(self.workdir, fold) / SUMMARY).exists()
                and "train.num_steps" not in self.changes[fold])

    def echo(self, message: str) -> None:
        if distributed.is_primary():
            print(message, flush=True)

    def run(self) -> dict[str, Any]:
        """Trains the requested folds (skipping finished ones); with ``data.fold = -1`` then evaluates all of them
        and writes ``<workdir>/summary.json``."""
        f = self.cfg.data.folds
        for fold in self.folds:
            if self.finished(fold):
                self.echo(f"fold {fold}/{f}: finished already ({fold_workdir(self.workdir, fold)})")
                continue
            self.echo(f"fold {fold}/{f}: training in {fold_workdir(self.workdir, fold)}")
            self.trainer(fold_config(self.cfg, fold), fold_workdir(self.workdir, fold), resume=self.resume).run()
        if self.cfg.data.fold >= 0:
            done = [k for k in range(f) if self.finished(k)]
            self.echo(f"fold {self.cfg.data.fold}/{f} trained; {len(done)} of {f} folds are finished. Once all are, "
                      f"run the command without --config.data.fold to evaluate them together.")
            return json.loads((fold_workdir(self.workdir, self.cfg.data.fold) / SUMMARY).read_text())
        return self.evaluate()

    def evaluate(self) -> dict[str, Any]:
        """Every model's best checkpoint on the test set, alone and concatenated (see the module docstring)."""
        f, cfg = self.cfg.data.folds, self.cfg
        fold_summaries, queries, references = [], [], []
        scorer: RetrievalEvaluator | None = None
        for fold in range(f):
            summary = json.loads((fold_workdir(self.workdir, fold) / SUMMARY).read_text())
            run = self.trainer(fold_config(cfg, fold), fold_workdir(self.workdir, fold), resume=self.resume)
            try:
                best_step = summary.get("best_step")
                state = run.state
                if best_step is not None and best_step != int(state.step):
                    state, _ = run.checkpointer.restore(best_step, abstract_like(state))
                data = run.data
                queries.append(run.evaluator.outputs(state, data.query))
                references.append(run.evaluator.outputs(state, data.reference) if data.reference is not None
                                  else None)
                scorer = scorer or run.evaluator
            finally:
                run.close()
            fold_summaries.append({"best_step": best_step, "test": summary.get("best", summary["final"])})
        mean, std = summarize([s["test"] for s in fold_summaries])
        query = concatenated_outputs(queries, cfg.model.embedding_norm)
        reference = None if references[0] is None else concatenated_outputs(references, cfg.model.embedding_norm)
        concatenated = scorer.score(query, reference)
        dim = cfg.model.embedding_dim
        result = {"folds": fold_summaries, "mean": mean, "std": std, "concatenated": concatenated,
                  "embedding_dim": dim, "concatenated_dim": dim * f}
        for fold, s in enumerate(fold_summaries):
            self.echo(f"fold {fold} ({dim}-d, best step {s['best_step']}), test: {format_metrics(s['test'])}")
        self.echo(f"mean of the {f} models ({dim}-d), test: {format_metrics(mean)}")
        self.echo(f"concatenated ({dim * f}-d), test: {format_metrics(concatenated)}")
        if distributed.is_primary():
            (self.workdir / SUMMARY).write_text(json.dumps(result, indent=2) + "\n")
        return result
