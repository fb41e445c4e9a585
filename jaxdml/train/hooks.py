"""Hooks of the training loop: logging and progress, evaluation with model selection, reduce-on-plateau, early
stopping, checkpoints and graceful stops on signals. Trainers choose and order them; each keeps its counters in
``state_dict()`` (saved in every checkpoint) so that an interrupted run resumes to the uninterrupted result.

Order matters: :class:`SignalHook` first (a signal must be seen before the checkpoint decision of the same step),
then :class:`LogHook`, :class:`EvalHook` (with :class:`PictureHook`), :class:`ReduceOnPlateau`,
:class:`EarlyStopping`, and :class:`CheckpointHook` last (it saves what the others decided and raises
:class:`~jaxdml.train.loop.Interrupted` after a signal).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdml import distributed
from jaxdml.eval.pictures import save_png
from jaxdml.train.checkpoint import Checkpointer
from jaxdml.train.loop import Hook, Interrupted, Loop
from jaxdml.train.optim import lr_factor
from jaxdml.train.writers import MetricWriter

log = logging.getLogger(__name__)

METRIC_NAMES = {"precision_at_1": "P@1", "map_at_r": "MAP@R", "r_precision": "RP", "nmi": "NMI",
                "accuracy": "top-1", "top5_accuracy": "top-5", "lda_x": "LDA(x)", "lda_x_hat": "LDA(x-hat)"}


def format_metrics(metrics: dict[str, float]) -> str:
    """``P@1=97.87  MAP@R=90.50 ...`` (percent) for the metrics a run reports."""
    keys = [k for k in ("accuracy", "top5_accuracy", "precision_at_1", "map_at_r", "r_precision", "nmi", "lda_x",
                        "lda_x_hat") if k in metrics]
    keys += sorted(k for k in metrics if k.startswith("recall_at_"))
    return "  ".join(f"{METRIC_NAMES.get(k, k.replace('recall_at_', 'R@'))}={100 * metrics[k]:.2f}" for k in keys)


def due(step: int, every: int, last: int) -> bool:
    """Whether a periodic action runs after ``step``: every ``every`` steps and at the ``last`` one."""
    return step % every == 0 or step == last


class SignalHook(Hook):
    """Turns the first SIGINT/SIGTERM into a graceful stop (checkpoint, then exit 128 + signal); a second one
    interrupts at once.

    On many hosts a stop must happen at the same step everywhere (the checkpoint is saved by all processes
    together): SIGTERM, the pre-emption notice of a TPU VM or a cluster, is left to JAX's pre-emption notifier, a
    SIGINT is passed on to it as a SIGTERM, and every step asks :func:`jaxdml.distributed.preemption_point`, which
    answers True on all processes at the same step once any of them was signalled.
    """

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._signum: int | None = None
        self._multi = False

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self._signum is not None:
            self._restore()
            raise KeyboardInterrupt
        self._signum = signum
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)
        if self._multi:  # the other processes learn of it through JAX's pre-emption sync
            os.kill(os.getpid(), signal.SIGTERM)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def before_train(self, loop: Loop) -> None:
        self._multi = distributed.multi_process()
        for sig in (signal.SIGINT,) if self._multi else (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass

    def after_step(self, loop: Loop, step: int) -> None:
        if self._multi:  # stop where every process stops, however early this one was signalled
            if not distributed.preemption_point(step):
                return
            self._signum = self._signum or signal.SIGTERM
        if self._signum is not None:
            loop.signum = self._signum
            loop.request_stop(f"stopped by {signal.Signals(self._signum).name}")

    def after_train(self, loop: Loop) -> None:
        self._restore()


class LogHook(Hook):
    """Every ``every`` steps: the train metrics (loss, gradient norm, the objective's terms), images/s and skipped
    records to ``metrics.jsonl`` / TensorBoard, after checking that the state is finite; a progress bar."""

    def __init__(self, writer: MetricWriter, *, every: int, num_steps: int, batch_size: int, progress_bar: bool):
        self.writer, self.every, self.num_steps, self.batch_size = writer, every, num_steps, batch_size
        self.progress_bar = progress_bar and distributed.is_primary()
        self._window_start, self._images, self._skipped = 0.0, 0, 0

    def before_train(self, loop: Loop) -> None:
        self._window_start, self._images, self._skipped = time.perf_counter(), 0, 0
        if self.progress_bar:
            from tqdm import tqdm

            loop.progress = tqdm(total=self.num_steps, initial=int(loop.state.step), unit="step", dynamic_ncols=True,
                                 mininterval=1.0)

    def after_step(self, loop: Loop, step: int) -> None:
        self._images += self.batch_size
        self._skipped += int(loop.host_batch.get("skipped", 0))
        if due(step, self.every, self.num_steps):
            values = {k: float(v) for k, v in jax.device_get(loop.metrics).items()}
            loop.check_finite(step)
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            values.update(images_per_second=self._images / elapsed, skipped_records=self._skipped)
            self.writer.write(step, "train", values)
            if loop.progress is not None:
                loop.progress.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{values['images_per_second']:.0f}")
            self._window_start, self._images = time.perf_counter(), 0
        if loop.progress is not None:
            loop.progress.update(1)

    def after_train(self, loop: Loop) -> None:
        if loop.progress is not None:
            loop.progress.close()
            loop.progress = None


class EvalHook(Hook):
    """Evaluates for model selection every ``every`` steps (and, on a fresh run, the untrained network first);
    remembers the best value of ``metric`` and its step, and the untrained network's metrics."""

    name = "eval"

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], writer: MetricWriter, *, split: str,
                 metric: str, every: int, num_steps: int, at_start: bool):
        self.evaluate, self.writer, self.split, self.metric = evaluate, writer, split, metric
        self.every, self.num_steps, self.at_start = every, num_steps, at_start
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.initial: dict[str, float] | None = None
        self.last: tuple[int, dict[str, float]] = (-1, {})  # this process's last evaluation (not checkpointed)

    def state_dict(self) -> dict[str, Any]:
        return {"best_metric": self.best_metric, "best_step": self.best_step, "initial": self.initial}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_metric, self.best_step = state.get("best_metric"), state.get("best_step")
        self.initial = state.get("initial")

    def run(self, loop: Loop, step: int) -> dict[str, float]:
        metrics = self.evaluate(loop.state)
        self.writer.write(step, self.split, metrics)
        self.last = (step, metrics)
        return metrics

    def before_train(self, loop: Loop) -> None:
        if int(loop.state.step) == 0 and self.at_start and self.initial is None:
            self.initial = self.run(loop, 0)
            loop.echo(f"untrained network ({self.split}): {format_metrics(self.initial)}")

    def after_step(self, loop: Loop, step: int) -> None:
        if not due(step, self.every, self.num_steps):
            return
        loop.check_finite(step)
        metrics = self.run(loop, step)
        value = metrics[self.metric]
        improved = self.best_metric is None or value > self.best_metric
        if improved:
            self.best_metric, self.best_step = value, step
        loop.events["eval"] = metrics
        loop.events["improved"] = improved
        loop.echo(f"step {step} ({self.split}): {format_metrics(metrics)}")


class PictureHook(Hook):
    """After each evaluation (the untrained network's too): the picture ``draw()`` returns (None: nothing to show)
    goes to TensorBoard (``tag``) and to ``<directory>/<tag>_step<k>.png``. ``draw`` runs on every process (it may
    be a collective); process 0 writes. Keeps nothing: the picture depends only on the state and the config."""

    def __init__(self, draw: Callable[[], tuple[np.ndarray, Any] | None], writer: MetricWriter, directory: Path, *,
                 tag: str = "retrieval"):
        self.draw, self.writer, self.directory, self.tag = draw, writer, Path(directory), tag

    def show(self, step: int, tag: str | None = None) -> Path | None:
        """Draws the picture of the last evaluation and writes it under ``tag`` (default: the hook's); returns the
        PNG's path (None: no picture)."""
        drawn = self.draw()
        if drawn is None or not distributed.is_primary():
            return None
        tag = tag or self.tag
        self.writer.write_image(step, tag, drawn[0])
        return save_png(drawn[0], self.directory / f"{tag}_step{step}.png")

    def before_train(self, loop: Loop) -> None:
        self.show(int(loop.state.step))  # the untrained network's evaluation, if there was one

    def after_step(self, loop: Loop, step: int) -> None:
        if "eval" in loop.events:
            self.show(step)


class ReduceOnPlateau(Hook):
    """Keras' ``ReduceLROnPlateau`` (mode max) on the evaluation metric ``metric``, as the GSP release uses it.

    After each evaluation: during a cooldown the counter of bad evaluations is reset and the cooldown shortened;
    a value above ``best + min_delta`` is the new best (counter reset); otherwise, out of cooldown, the counter
    grows, and at ``patience`` the learning-rate factor (the optimiser state's ``lr_factor``,
    :func:`jaxdml.train.optim.scale_by_plateau`) is multiplied by ``factor``, not below ``min_factor``, if it is
    above it; then the cooldown starts and the counter is reset. The factor is part of the train state and the
    counters are this hook's checkpointed state, so a resumed run reduces at the same evaluations.
    """

    name = "reduce_on_plateau"

    def __init__(self, set_factor: Callable[[Any, float], Any], writer: MetricWriter, *, metric: str, factor: float,
                 patience: int, min_delta: float, cooldown: int, min_factor: float):
        self.set_factor, self.writer, self.metric = set_factor, writer, metric
        self.factor, self.patience, self.min_delta = factor, patience, min_delta
        self.cooldown, self.min_factor = cooldown, min_factor
        self.best: float | None = None
        self.wait = 0
        self.cooldown_counter = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state.get("best"), int(state.get("wait", 0))
        self.cooldown_counter = int(state.get("cooldown_counter", 0))

    def after_step(self, loop: Loop, step: int) -> None:
        if "eval" not in loop.events:
            return
        value = loop.events["eval"][self.metric]
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        current = lr_factor(loop.state.opt_state)
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.wait = float(value), 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            # compared in float32, as Keras compares the rates: a factor already at its floor stays there quietly
            if self.wait >= self.patience and np.float32(current) > np.float32(self.min_factor):
                current = max(current * self.factor, self.min_factor)
                loop.state = self.set_factor(loop.state, current)
                loop.echo(f"step {step}: {self.metric} on a plateau; learning rate x {current:g}")
                self.cooldown_counter, self.wait = self.cooldown, 0
        self.writer.write(step, "plateau", {"lr_factor": current, "wait": self.wait})


class EarlyStopping(Hook):
    """Ends training after ``patience`` evaluations in a row without a new best (the best checkpoint is kept)."""

    name = "early_stopping"

    def __init__(self, patience: int):
        self.patience = patience
        self.bad_evaluations = 0

    def state_dict(self) -> dict[str, Any]:
        return {"bad_evaluations": self.bad_evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bad_evaluations = int(state.get("bad_evaluations", 0))

    def before_train(self, loop: Loop) -> None:
        if self.bad_evaluations >= self.patience:  # a finished run: nothing more to train
            loop.request_stop("early stopping")

    def after_step(self, loop: Loop, step: int) -> None:
        if "eval" not in loop.events:
            return
        self.bad_evaluations = 0 if loop.events["improved"] else self.bad_evaluations + 1
        if self.bad_evaluations >= self.patience:
            loop.request_stop(f"early stopping: {self.patience} evaluations without improvement")
            loop.events["early_stop"] = step


class CheckpointHook(Hook):
    """Saves the state and every hook's ``state_dict`` every ``every`` steps, after each evaluation (ranked by
    its metrics for keep-best), at the last step, and when a signal or early stopping ends training; after a
    signal it raises :class:`~jaxdml.train.loop.Interrupted` once the checkpoint is saved."""

    def __init__(self, checkpointer: Checkpointer, *, every: int, num_steps: int):
        self.checkpointer, self.every, self.num_steps = checkpointer, every, num_steps

    def after_step(self, loop: Loop, step: int) -> None:
        if (due(step, self.every, self.num_steps) or "eval" in loop.events or loop.stop_reason is not None):
            save(loop, self.checkpointer, step, loop.events.get("eval"))
        if loop.signum is not None:
            raise Interrupted(f"{loop.stop_reason} after step {step}; checkpoint saved. Rerun the same command to "
                              f"resume.", loop.signum)


def save(loop: Loop, checkpointer: Checkpointer, step: int, metrics: dict[str, float] | None = None) -> None:
    """Checks that the state is finite, then saves it with the hooks' states (``metrics`` rank it for keep-best)."""
    loop.check_finite(step)
    checkpointer.save(step, loop.state, {"step": step, "data_position": step, "hooks": loop.hook_states()}, metrics)
