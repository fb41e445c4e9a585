"""What every trainer shares: the run's lifecycle in a workdir, on the one training core.

A trainer (one per procedure: ``metric_learning``, ``distillation``, ...) says what is trained (its
:class:`Procedure`: model, initial variables, loss function, frozen arrays) and which hooks run; this class does
the rest in the same way for all: data, sampler, optimiser, sharded state and jitted step
(:func:`setup_training`), restore, the loop with its hooks, the final evaluation and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import jax
import ml_collections
import optax
from absl import logging as absl_logging
from flax import linen as nn
from jax.sharding import Mesh

from jaxdml import distributed
from jaxdml.data import pipeline
from jaxdml.data.datasets import DataSplits, load_data
from jaxdml.data.sampler import build_sampler
from jaxdml.data.sources import num_classes
from jaxdml.errors import ConfigError, UserError
from jaxdml.eval import EVALUATORS, RetrievalEvaluator
from jaxdml.train import hooks as hk
from jaxdml.train.checkpoint import Checkpointer, CorruptCheckpointError, abstract_like
from jaxdml.train.loop import Hook, Loop, prefetch
from jaxdml.train.optim import make_optimizer, set_lr_factor
from jaxdml.train.state import ExtraFn, InitFn, TrainState, create_mesh, create_state
from jaxdml.train.step import LossFn, batch_sharding, make_predict_step, make_train_step
from jaxdml.train.writers import MetricWriter, NullWriter
from jaxdml.trainers.workdir import Resume, RunRecord, check_writable, parse_fork, saved_steps

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Procedure:
    """What a trainer trains: the pieces the core turns into a state and a jitted step."""

    model: nn.Module
    init_fn: InitFn  # () -> (params, model_state, loss_state) of a fresh run
    loss_fn: LossFn
    frozen: Any = None  # arrays the step reads but never optimises nor checkpoints (a teacher, its artefacts)
    post_update: Callable[..., Any] | None = None  # (params, model_state) -> (params, model_state) after each update
    extra_fn: ExtraFn | None = None  # (params, model_state) -> the initial arrays the procedure's hooks own


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """A procedure on the devices: the initial state (replicated), its sharding and the jitted steps."""

    model: nn.Module
    state: TrainState
    state_sharding: Any
    tx: optax.GradientTransformation
    train_step: Callable[[TrainState, Any], tuple[TrainState, Any]]  # (state, batch) -> (state, metrics); donates
    mesh: Mesh

    def predict(self, output: str) -> Callable[[TrainState, jax.Array], jax.Array]:
        """The jitted inference function ``(state, images) -> outputs[output]``."""
        return make_predict_step(self.model, output, self.mesh, self.state_sharding)


def setup_training(cfg: ml_collections.ConfigDict, procedure: Procedure, mesh: Mesh) -> TrainingSetup:
    """Optimiser (parameter groups, frozen BatchNorm), sharded initial state and the jitted, donated train step of
    ``procedure``: the one place where every task and every benchmark gets them."""
    params, model_state, _ = jax.eval_shape(procedure.init_fn)
    tx = make_optimizer(cfg.optim, cfg.train.num_steps, params, model_state.get("batch_stats", {}),
                        cfg.model.freeze_bn)
    state, sharding = create_state(procedure.init_fn, tx, mesh, procedure.extra_fn)
    step = make_train_step(procedure.model, procedure.loss_fn, tx, mesh, sharding, frozen=procedure.frozen,
                           post_update=procedure.post_update)
    return TrainingSetup(procedure.model, state, sharding, tx, step, mesh)


class Trainer:
    """One run in one workdir: builds everything from the config, then :meth:`run` trains and evaluates.

    Subclasses define :meth:`build` (and optionally :meth:`check_config`, :meth:`prepare_state`,
    :meth:`extra_hooks`, :meth:`finish`).
    """

    default_evaluator: ClassVar[str] = "retrieval"

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        """Procedure-specific checks (raise :class:`ConfigError`); the schema checks are done already."""

    def build(self) -> Procedure:
        raise NotImplementedError

    def prepare_state(self, state: TrainState) -> TrainState:
        """The fresh state before training (e.g. with pretrained backbone weights)."""
        return state

    def extra_hooks(self) -> list[Hook]:
        """The procedure's own hooks, run after evaluation and before the checkpoint."""
        return []

    def finish(self, summary: dict[str, Any]) -> None:
        """After the final evaluation (e.g. export the trained network)."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | Path, *, resume: Resume | None = None):
        """Checks the workdir and the run in it, loads the data, builds the state, restores the newest checkpoint
        (or the ``resume.fork_from`` one) and only then writes ``config.json``: a refused or failed invocation
        writes nothing."""
        resume = resume or Resume()
        self.cfg = cfg
        self.workdir = Path(workdir)
        check_writable(self.workdir)
        self.record = RunRecord(self.workdir)
        changes = self.record.check(cfg, resume)
        fork = parse_fork(resume.fork_from) if resume.fork_from else None
        if fork is not None and not saved_steps(fork[0]):
            raise ConfigError(f"--fork_from={resume.fork_from}: {fork[0]} holds no checkpoints (a jaxdml workdir has "
                              f"them in <workdir>/checkpoints).")

        self.mesh = create_mesh()
        devices = self.mesh.devices.size
        if cfg.train.batch_size % devices:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {devices} devices; "
                              f"use a multiple of {devices}.")
        self._build_setup()
        setup = self.setup
        self.sampler = build_sampler(cfg.data, self.data.train, cfg.train.batch_size, cfg.seed)
        # Model selection on the held-out training classes if there are any, else on the test set.
        if self.data.val is not None:
            self.selection_split, query, reference = "val", self.data.val, None
        else:
            self.selection_split, query, reference = "test", self.data.query, self.data.reference

        t = cfg.train
        state, meta = self.prepare_state(setup.state), {}
        checkpoints = self.workdir / "checkpoints"
        self.checkpointer: Checkpointer | None = None
        if fork is not None:
            state, step = self._restore_fork(fork, abstract_like(state))
            parent = {"workdir": str(fork[0].absolute()), "step": step}
            event, details, resume_step = "fork", {"forked_from": parent}, None
        else:
            event, details, resume_step = "start", {}, None
            if saved_steps(self.workdir):
                self.checkpointer = Checkpointer(checkpoints, keep=t.keep_checkpoints,
                                                 selection_metric=cfg.eval.selection_metric)
                restored = self.checkpointer.restore_latest(abstract_like(state))
                if restored is not None:
                    (state, meta), resume_step = restored, int(restored[0].step)
                    event = "extend" if "train.num_steps" in changes else "resume"
                    log.info("resumed from %s at step %d", checkpoints, resume_step)
            if changes:
                details["changes"] = {k: list(v) for k, v in changes.items()}

        self._state, self._meta, self._start = state, meta, (event, details, resume_step)
        self._train_step, self._selection_data = setup.train_step, (query, reference)
        self.writer: MetricWriter | None = None
        self.loop: Loop | None = None
        distributed.barrier("jaxdml: run checked")  # every process has read the workdir before process 0 writes it

    def _build_setup(self) -> None:
        """Data, model, initial state, jitted steps and evaluator of ``self.cfg`` on ``self.mesh``."""
        self.data: DataSplits = load_data(self.cfg.data)
        self.num_classes = num_classes(self.data.train)
        self.setup = setup_training(self.cfg, self.build(), self.mesh)
        self.model, self.state_sharding = self.setup.model, self.setup.state_sharding
        evaluator = EVALUATORS[self.cfg.eval.evaluator]
        self.evaluator = evaluator(self.cfg, self.setup.predict(evaluator.output), self.mesh)

    @classmethod
    def for_inference(cls, cfg: ml_collections.ConfigDict, workdir: str | Path) -> Trainer:
        """The trainer of the run in ``workdir`` (``cfg``: its config) built for inference: data, model, state
        structure and evaluator as for training, but nothing in the workdir is checked against, created or written
        (its checkpoints are opened read-only; :meth:`restore` reads one). Close it after use."""
        self = cls.__new__(cls)
        self.cfg, self.workdir, self.mesh = cfg, Path(workdir), create_mesh()
        self.writer, self.loop, self.checkpointer = None, None, None
        self._build_setup()
        self._state = self.setup.state
        verbosity = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)  # orbax warns that a read-only manager saves nothing
        try:
            self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                             selection_metric=cfg.eval.selection_metric, read_only=True)
        finally:
            absl_logging.set_verbosity(verbosity)
        return self

    def restore(self, step: int) -> TrainState:
        """The state of this run's checkpoint ``step``, checked to fit this run's state (a
        :class:`~jaxdml.train.checkpoint.CheckpointMismatchError` names the arrays that differ) and verified."""
        abstract = abstract_like(self.setup.state)
        self.checkpointer.check_fits(step, abstract, fix=(
            f"it was saved by another model than {self.workdir / 'config.json'} describes (model.backbone="
            f"{self.cfg.model.backbone!r}, model.embedding_dim={self.cfg.model.embedding_dim}); evaluate checkpoints "
            f"with the config.json of the run that saved them"))
        try:
            state, _ = self.checkpointer.restore(step, abstract)
        except CorruptCheckpointError as error:
            raise UserError(f"checkpoint step {step} in {self.checkpointer.directory} is damaged ({error}); use "
                            f"another step.") from None
        return state

    def begin(self) -> Loop:
        """The run really starts: writes ``config.json`` / ``run.json``, opens the metric files and the
        checkpoints, and builds the loop with its hooks (done by :meth:`train`; once)."""
        if self.loop is not None:
            return self.loop
        cfg, t = self.cfg, self.cfg.train
        (event, details, resume_step), (query, reference) = self._start, self._selection_data
        primary = distributed.is_primary()
        try:
            if primary:
                self.record.start(cfg, int(self._state.step), event, **details)
            if self.checkpointer is None:
                self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=t.keep_checkpoints,
                                                 selection_metric=cfg.eval.selection_metric)
            self.writer = MetricWriter(self.workdir, resume_step=resume_step) if primary else NullWriter()
        except OSError as error:
            raise UserError(f"cannot write to --workdir {self.workdir}: {error.strerror or error} "
                            f"({error.filename or self.workdir}).") from None
        self.eval_hook = hk.EvalHook(lambda state: self.evaluator(state, query, reference), self.writer,
                                     split=self.selection_split, metric=cfg.eval.selection_metric,
                                     every=t.eval_every, num_steps=t.num_steps, at_start=cfg.eval.at_start)
        hooks: list[Hook] = [hk.SignalHook(), hk.LogHook(self.writer, every=t.log_every, num_steps=t.num_steps,
                                                         batch_size=t.batch_size, progress_bar=t.progress_bar),
                             self.eval_hook]
        self.picture_hook: hk.PictureHook | None = None
        if cfg.eval.pictures and isinstance(self.evaluator, RetrievalEvaluator):
            self.evaluator.keep_outputs = True
            self.picture_hook = hk.PictureHook(self.evaluator.picture, self.writer, self.workdir / "pictures")
            hooks.append(self.picture_hook)
        plateau = cfg.optim.plateau
        if plateau.factor > 0:
            set_factor = jax.jit(lambda state, factor: state.replace(opt_state=set_lr_factor(state.opt_state, factor)),
                                 out_shardings=self.state_sharding, donate_argnums=0)
            hooks.append(hk.ReduceOnPlateau(set_factor, self.writer, metric=cfg.eval.selection_metric,
                                            factor=plateau.factor, patience=plateau.patience,
                                            min_delta=plateau.min_delta, cooldown=plateau.cooldown,
                                            min_factor=plateau.min_lr / cfg.optim.lr))
        if t.patience:
            hooks.append(hk.EarlyStopping(t.patience))
        hooks += [*self.extra_hooks(), hk.CheckpointHook(self.checkpointer, every=t.checkpoint_every,
                                                          num_steps=t.num_steps)]
        self.loop = Loop(self._state, self._train_step, hooks, last_good_checkpoint=self._last_good_checkpoint)
        self.loop.load_hook_states(self._meta.get("hooks", {}))
        return self.loop

    def _restore_fork(self, fork: tuple[Path, int | None], abstract: Any) -> tuple[TrainState, int]:
        """The state of another run's checkpoint (its newest, or the given step), checked to fit this run."""
        directory, step = fork
        source = Checkpointer(directory / "checkpoints", keep=1, selection_metric=self.cfg.eval.selection_metric,
                              read_only=True)
        try:
            steps = source.steps()
            if step is None and steps:
                step = steps[-1]
            if step not in steps:
                raise ConfigError(f"--fork_from={directory}:{step}: no complete checkpoint of step {step} there; "
                                  f"saved steps: {', '.join(map(str, steps)) or 'none'}.")
            source.check_fits(step, abstract, fix="a fork may change values such as optim.lr or loss weights, not "
                                                   "shapes (model sizes, the optimiser, the dataset's classes)")
            try:
                state, _ = source.restore(step, abstract)
            except CorruptCheckpointError as error:
                raise UserError(f"--fork_from: checkpoint step {step} in {source.directory} is damaged ({error}); "
                                f"fork from another step.") from None
        finally:
            source.close()
        log.info("forked from %s step %d", source.directory, step)
        return state, step

    @property
    def state(self) -> TrainState:
        """The current state: restored (or fresh) before :meth:`begin`, then the loop's."""
        return self._state if self.loop is None else self.loop.state

    def _last_good_checkpoint(self) -> str:
        saved = self.checkpointer.steps()
        if not saved:
            return "none"
        return (f"step {saved[-1]} in {self.checkpointer.directory} (to retry from it with another config, e.g. a "
                f"lower optim.lr: --fork_from={self.workdir}:{saved[-1]} --workdir=<new>)")

    def close(self) -> None:
        """Closes the metric files and waits for the last checkpoint (raises if that save failed)."""
        try:
            if self.writer is not None:
                self.writer.close()
        finally:
            if self.checkpointer is not None:
                self.checkpointer.close()

    def _close_after_error(self) -> None:
        """Like :meth:`close`, while another error is on its way out: failures here are only logged."""
        try:
            self.close()
        except Exception as error:  # the original error is the one to report
            log.warning("while closing after an error: %s: %s", type(error).__name__, error)

    def train(self) -> None:
        """Steps from the restored position to ``train.num_steps`` (or an earlier stop) through the loop."""
        loop = self.begin()
        cfg, start, stop = self.cfg, int(self.state.step), self.cfg.train.num_steps
        make_batch = pipeline.TrainBatches.from_config(cfg.data, self.data.train, self.sampler, cfg.seed,
                                                       shard_index=jax.process_index(),
                                                       shard_count=jax.process_count())
        batches = prefetch(pipeline.iterate(make_batch, start, max(start, stop), cfg.data.num_workers),
                           batch_sharding(self.mesh))
        loop.run(batches, start, stop)

    def run(self) -> dict[str, Any]:
        """Trains, evaluates on the test set (and the best-on-validation checkpoint), saves ``summary.json``."""
        data = self.data
        try:
            self.train()
            step = int(self.state.step)
            last_step, last = self.eval_hook.last
            if self.selection_split == "test" and last_step == step:
                final = last  # the loop has just evaluated this state on the test set
            else:
                final = self.evaluator(self.state, data.query, data.reference)
                self.writer.write(step, "test", final)
                if self.picture_hook is not None:
                    self.picture_hook.show(step, "retrieval_test")
            self.loop.echo(f"trained, step {step} (test): {hk.format_metrics(final)}")
            summary: dict[str, Any] = {"initial": self.eval_hook.initial, "final": final,
                                       "best_step": self.eval_hook.best_step}
            best_step = self.eval_hook.best_step
            if data.val is not None and best_step is not None:
                self.checkpointer.wait()
                best_state, _ = self.checkpointer.restore(best_step, abstract_like(self.state))
                summary["best"] = self.evaluator(best_state, data.query, data.reference)
                self.evaluator.last = None  # no picture of it
                self.writer.write(best_step, "test_at_best_val", summary["best"])
                self.loop.echo(f"best on val (step {best_step}), test: {hk.format_metrics(summary['best'])}")
            hk.save(self.loop, self.checkpointer, step)
            self.finish(summary)
            if distributed.is_primary():
                (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        except BaseException:
            self._close_after_error()
            raise
        self.close()
        return summary
