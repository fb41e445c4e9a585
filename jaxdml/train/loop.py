"""The train-and-evaluate loop: data -> jitted, sharded train step -> periodic evaluation -> checkpoints.

Everything a run produces goes to ``workdir``: ``config.json``, ``metrics.jsonl``, TensorBoard events,
``checkpoints/`` and ``summary.json``. Rerunning the same command resumes from the newest checkpoint, and
because batches and augmentations are pure functions of (seed, step), the resumed run ends with the same
parameters and metrics as an uninterrupted one. SIGINT/SIGTERM save a checkpoint before exiting.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdml.config import ConfigError, validate
from jaxdml.data import pipeline
from jaxdml.data.datasets import DataSplits, load_data
from jaxdml.data.sampler import HierarchicalSampler, MPerClassSampler, OnePerClassSampler, ShuffleSampler
from jaxdml.data.sources import Source, num_classes
from jaxdml.distill.setup import ClassificationEvaluator, build_classification_training, export_network
from jaxdml.eval import retrieval_metrics
from jaxdml.losses import make_objective
from jaxdml.models import build_model
from jaxdml.models.convert import check_fits, load_pretrained
from jaxdml.train.checkpoint import Checkpointer, abstract_like
from jaxdml.train.optim import make_optimizer
from jaxdml.train.step import TrainState, init_state, init_variables, make_embed_step, make_train_step
from jaxdml.train.writers import MetricWriter

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss or a gradient became NaN/inf; the message names the step."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag the loop polls; a second one interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, no graceful stop
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        if self.signum is not None:
            self.restore()
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint after this step", signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def create_mesh() -> Mesh:
    """All devices on one ``data`` axis: batches are split over it, the state is replicated."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def _to_device(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    return {k: jax.make_array_from_process_local_data(sharding, batch[k]) for k in ("images", "labels")}


def _prefetch(batches: Iterator[dict[str, np.ndarray]], sharding: NamedSharding, size: int = 2
              ) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray]]]:
    """Keeps ``size`` batches in flight to the devices while the current step runs."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append((_to_device(batch, sharding), batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


class Evaluator:
    """Embeds sources with the current state and computes retrieval metrics."""

    def __init__(self, cfg: ml_collections.ConfigDict, model: Any, mesh: Mesh, state_sharding: Any):
        self.cfg = cfg
        num_devices = mesh.devices.size
        self.batch_size = -(-cfg.eval.batch_size // num_devices) * num_devices
        self.batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self._embed = jax.jit(make_embed_step(model), in_shardings=(state_sharding, self.batch_sharding),
                              out_shardings=NamedSharding(mesh, PartitionSpec()))

    def embed(self, state: TrainState, source: Source) -> tuple[np.ndarray, np.ndarray]:
        d = self.cfg.data
        maker = pipeline.EvalBatches(source, self.batch_size, d.image_size, d.resize_size, d.skip_corrupt)
        embeddings, labels = [], []
        for batch in pipeline.iterate(maker, 0, len(maker), d.num_workers):
            images = jax.make_array_from_process_local_data(self.batch_sharding, batch["images"])
            out = np.asarray(self._embed(state, images))
            embeddings.append(out[batch["valid"]])
            labels.append(batch["labels"][batch["valid"]])
        skipped = len(source) - sum(len(x) for x in labels)
        if skipped:
            log.warning("%s: %d corrupt records left out of the evaluation", source.name, skipped)
        return np.concatenate(embeddings), np.concatenate(labels)

    def __call__(self, state: TrainState, query: Source, reference: Source | None) -> dict[str, float]:
        start = time.perf_counter()
        q, ql = self.embed(state, query)
        r, rl = self.embed(state, reference) if reference is not None else (None, None)
        metrics = retrieval_metrics(q, ql, r, rl, ks=tuple(self.cfg.eval.ks), clustering=self.cfg.eval.clustering,
                                    seed=self.cfg.seed)
        metrics["eval_seconds"] = time.perf_counter() - start
        return metrics


def _format(metrics: dict[str, float]) -> str:
    keys = [k for k in ("accuracy", "top5_accuracy", "precision_at_1", "map_at_r", "r_precision", "nmi")
            if k in metrics]
    keys += sorted(k for k in metrics if k.startswith("recall_at_"))
    names = {"precision_at_1": "P@1", "map_at_r": "MAP@R", "r_precision": "RP", "nmi": "NMI", "accuracy": "top-1",
             "top5_accuracy": "top-5"}
    return "  ".join(f"{names.get(k, k.replace('recall_at_', 'R@'))}={100 * metrics[k]:.2f}" for k in keys)


def build_sampler(cfg: ml_collections.ConfigDict, train: Source):
    """The batch sampler ``cfg.data.sampler`` names, over the training source."""
    d, batch_size = cfg.data, cfg.train.batch_size
    if d.sampler == "shuffle":
        return ShuffleSampler(train.labels, batch_size, seed=cfg.seed)
    if d.sampler == "one_per_class":
        return OnePerClassSampler(train.labels, batch_size, seed=cfg.seed)
    if d.sampler == "hierarchical":
        super_labels = getattr(train, "super_labels", None)
        if super_labels is None:
            raise ConfigError(f"data.sampler='hierarchical' needs super-class labels, which {train.name} does not "
                              f"have (stanford_online_products has them, with data.val_fraction=0).")
        return HierarchicalSampler(train.labels, super_labels, batch_size, d.samples_per_class,
                                   d.super_classes_per_batch, seed=cfg.seed)
    return MPerClassSampler(train.labels, batch_size // d.samples_per_class, d.samples_per_class, seed=cfg.seed)


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """What a config trains: its model, the initial state and the jitted, sharded train step."""

    model: Any
    state: TrainState
    state_sharding: Any
    batch_sharding: NamedSharding
    train_step: Any  # (state, {"images", "labels"}) -> (state, metrics); the state argument is donated


def build_training(cfg: ml_collections.ConfigDict, mesh: Mesh, num_train_classes: int) -> TrainingSetup:
    """Model, objective and optimiser of ``cfg``; the state replicated on ``mesh``, batches split over ``data``."""
    model = build_model(cfg.model)
    objective = make_objective(cfg.loss, num_classes=num_train_classes, embedding_dim=cfg.model.embedding_dim,
                               batch_size=cfg.train.batch_size)
    rng = jax.random.key(cfg.seed)
    sample = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3), jnp.uint8)
    params, model_state, _ = jax.eval_shape(lambda: init_variables(model, objective, rng, sample))
    tx = make_optimizer(cfg.optim, cfg.train.num_steps, params, model_state.get("batch_stats", {}),
                        cfg.model.freeze_bn)
    create = lambda: init_state(model, objective, tx, rng, sample)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    state_sharding = jax.tree.map(lambda _: replicated, jax.eval_shape(create))
    state = jax.jit(create, out_shardings=state_sharding)()
    if cfg.model.pretrained:
        state = _with_pretrained_backbone(state, cfg.model, state_sharding)
    train_step = jax.jit(make_train_step(model, objective, tx), in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, replicated), donate_argnums=(0,))
    return TrainingSetup(model, state, state_sharding, batch_sharding, train_step)


def _with_pretrained_backbone(state: TrainState, model_cfg: ml_collections.ConfigDict, sharding: Any
                              ) -> TrainState:
    """``state`` with the backbone's parameters and BatchNorm statistics from ``model.pretrained``.

    Only the values change, so the optimiser state (zeros at step 0) stays valid.
    """
    loaded = load_pretrained(model_cfg.pretrained, model_cfg.backbone)
    expected = {"params": state.params["backbone"], "batch_stats": state.model_state["batch_stats"]["backbone"]}
    check_fits(loaded, expected, model_cfg.pretrained)
    params = {**state.params, "backbone": loaded["params"]}
    model_state = {**state.model_state,
                   "batch_stats": {**state.model_state["batch_stats"], "backbone": loaded["batch_stats"]}}
    state = state.replace(params=params, model_state=model_state)
    log.info("backbone weights from %s", model_cfg.pretrained)
    return jax.device_put(state, sharding)


class Trainer:
    """One run in one workdir: builds everything from the config, then :meth:`run` trains and evaluates."""

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | Path):
        self.cfg = cfg = validate(cfg)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.json").write_text(cfg.to_json_best_effort(indent=2) + "\n")

        mesh = create_mesh()
        if cfg.train.batch_size % mesh.devices.size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the "
                              f"{mesh.devices.size} devices; use a multiple of {mesh.devices.size}.")
        self.data: DataSplits = load_data(cfg.data)
        self.sampler = build_sampler(cfg, self.data.train)
        self.num_classes = num_classes(self.data.train)
        if cfg.task == "classification":
            setup = build_classification_training(cfg, mesh, self.num_classes, self.data.train, self.workdir)
        else:
            setup = build_training(cfg, mesh, self.num_classes)
        self.state: TrainState = setup.state
        self.train_step, self.batch_sharding = setup.train_step, setup.batch_sharding

        self.checkpointer = Checkpointer(self.workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                         selection_metric=cfg.eval.selection_metric)
        self.meta: dict[str, Any] = {"best_metric": None, "best_step": None, "initial_metrics": None}
        restored = self.checkpointer.restore_latest(abstract_like(self.state))
        if restored is not None:
            self.state, self.meta = restored
            log.info("resumed from %s at step %d", self.checkpointer.directory, int(self.state.step))

        if cfg.task == "classification":
            self.evaluator = ClassificationEvaluator(cfg, setup.model, mesh, setup.state_sharding)
        else:
            self.evaluator = Evaluator(cfg, setup.model, mesh, setup.state_sharding)
        # Model selection on the held-out training classes if there are any, else on the test set.
        if self.data.val is not None:
            self.selection = ("val", self.data.val, None)
        else:
            self.selection = ("test", self.data.query, self.data.reference)
        self.writer = MetricWriter(self.workdir)
        self.last_eval: tuple[int, dict[str, float]] = (-1, {})

    def run(self) -> dict[str, Any]:
        """Trains to ``train.num_steps``, evaluates, saves ``summary.json`` and returns it."""
        cfg, data = self.cfg, self.data
        try:
            if int(self.state.step) == 0 and cfg.eval.at_start:
                initial = self.evaluate_selection(0)
                self.meta["initial_metrics"] = initial
                print(f"untrained network ({self.selection[0]}): {_format(initial)}", flush=True)
            self._train()
            if self.selection[0] == "test" and self.last_eval[0] == cfg.train.num_steps:
                final = self.last_eval[1]  # the loop has just evaluated this state on the test set
            else:
                final = self.evaluator(self.state, data.query, data.reference)
                self.writer.write(cfg.train.num_steps, "test", final)
            print(f"trained, step {cfg.train.num_steps} (test): {_format(final)}", flush=True)
            summary: dict[str, Any] = {"initial": self.meta.get("initial_metrics"), "final": final,
                                       "best_step": self.meta.get("best_step")}
            if data.val is not None and self.meta.get("best_step") is not None:
                best_step = int(self.meta["best_step"])
                self.checkpointer.wait()
                best_state, _ = self.checkpointer.restore(best_step, abstract_like(self.state))
                summary["best"] = self.evaluator(best_state, data.query, data.reference)
                self.writer.write(best_step, "test_at_best_val", summary["best"])
                print(f"best on val (step {best_step}), test: {_format(summary['best'])}", flush=True)
            self.save(cfg.train.num_steps)
            if cfg.task == "classification":
                export_network(cfg, self.state, self.num_classes, self.workdir)
            (self.workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            return summary
        finally:
            self.writer.close()
            self.checkpointer.close()

    def evaluate_selection(self, step: int) -> dict[str, float]:
        name, query, reference = self.selection
        metrics = self.evaluator(self.state, query, reference)
        self.writer.write(step, name, metrics)
        self.last_eval = (step, metrics)
        return metrics

    def save(self, step: int, metrics: dict[str, float] | None = None) -> None:
        self.check_finite(step)
        self.checkpointer.save(step, self.state, {**self.meta, "step": step, "data_position": step}, metrics)

    def check_finite(self, step: int) -> None:
        bad = int(self.state.nonfinite_step)
        if bad >= 0:
            saved = self.checkpointer.steps()
            raise TrainingDivergedError(
                f"the loss or its gradients became NaN/inf at step {bad} (detected at step {step}); the "
                f"parameters were not updated from that step on. Last good checkpoint: step "
                f"{saved[-1] if saved else 'none'} in {self.checkpointer.directory}. Lower optim.lr, set "
                f"optim.grad_clip_norm, or use model.compute_dtype='float32'.")

    def _train(self) -> None:
        """Steps from the restored position to ``num_steps``: log, evaluate, checkpoint, obey signals."""
        cfg, t = self.cfg, self.cfg.train
        start = int(self.state.step)
        if start >= t.num_steps:
            return
        d = cfg.data
        make_batch = pipeline.TrainBatches(
            self.data.train, self.sampler, cfg.seed, d.image_size, tuple(d.crop_area), tuple(d.crop_aspect),
            d.flip, d.skip_corrupt, jax.process_index(), jax.process_count(), d.augment,
            d.crop_padding, d.rotation_degrees)
        batches = _prefetch(pipeline.iterate(make_batch, start, t.num_steps, d.num_workers), self.batch_sharding)
        progress = _progress(t, start)
        stop = _StopFlag()
        window_start, window_images, skipped = time.perf_counter(), 0, 0
        try:
            for step in range(start, t.num_steps):
                device_batch, host_batch = next(batches)
                self.state, metrics = self.train_step(self.state, device_batch)
                skipped += int(host_batch["skipped"])
                window_images += t.batch_size
                done = step + 1
                if done % t.log_every == 0 or done == t.num_steps:
                    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    self.check_finite(done)
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    values.update(images_per_second=window_images / elapsed, skipped_records=skipped)
                    self.writer.write(done, "train", values)
                    if progress is not None:
                        progress.set_postfix(loss=f"{values['loss']:.4f}",
                                             img_s=f"{values['images_per_second']:.0f}")
                    window_start, window_images = time.perf_counter(), 0
                if progress is not None:
                    progress.update(1)
                if done % t.eval_every == 0 or done == t.num_steps:
                    self.check_finite(done)
                    result = self.evaluate_selection(done)
                    value = result[cfg.eval.selection_metric]
                    if self.meta.get("best_metric") is None or value > self.meta["best_metric"]:
                        self.meta.update(best_metric=value, best_step=done)
                    _echo(progress, f"step {done} ({self.selection[0]}): {_format(result)}")
                    self.save(done, result)
                elif done % t.checkpoint_every == 0:
                    self.save(done)
                if stop.signum is not None:
                    self.save(done)
                    raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} after step {done}; "
                                      f"checkpoint saved. Rerun the same command to resume.", stop.signum)
        finally:
            stop.restore()
            if progress is not None:
                progress.close()


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains ``cfg`` in ``workdir`` (resuming if it holds checkpoints); returns the saved summary."""
    return Trainer(cfg, workdir).run()


def _progress(t: ml_collections.ConfigDict, start_step: int):
    if not t.progress_bar or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=t.num_steps, initial=start_step, unit="step", dynamic_ncols=True, mininterval=1.0)


def _echo(progress: Any, message: str) -> None:
    if progress is not None:
        progress.write(message)
    else:
        print(message, flush=True)
