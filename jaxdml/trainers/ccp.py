"""CCP-DML: metric learning with chance constraints, as rounds of proximal proxy problems on the training core.

The step (``jaxdml/train/step.py``) optimises ``ccp.pair_weight * L(batch) + ccp.proxy_weight * L(batch, proxies)
+ lambda / 2 ||theta - theta_bar||^2`` (:mod:`jaxdml.losses.ccp`; the base loss L is ``loss.name``). Everything
else is the hook :class:`ProxyRounds`, which after each evaluation (a CCP "epoch" is ``train.eval_every`` steps:
25 CUB/Cars, 250 SOP/In-Shop) does what the release's ``AlternatingProjectionCallback`` does:

* a gain of the selection metric (validation MAP@R) above ``ccp.min_gain`` over the round's best records the
  network weights and proxies as the round's best;
* after ``ccp.round_patience`` evaluations without a gain a new round starts: theta_bar <- the round's best
  weights (theta itself is kept), lambda <- ``ccp.proximal`` (0 in the first round), and each class's proxies
  are re-picked by greedy k-center over a pool of fresh embeddings of the class (the network in inference mode,
  the evaluation transform), seeded with the round's best proxies; the counters restart.

The first proxies come from the same pick seeded with the zero vector, before the first step. Training ends
through ``train.patience`` (60 evaluations without a new best) and the best checkpoint is the result, as for any
metric-learning run. theta_bar, the best weights and proxies and lambda are arrays of the train state
(``state.extra["ccp"]``), the round counters are the hook's checkpointed state, and each round's pool is a pure
function of (seed, round): an interrupted run resumes to the uninterrupted result, bit for bit.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxdml import distributed
from jaxdml.data.sources import SubsetSource
from jaxdml.errors import ConfigError
from jaxdml.eval.evaluators import predict_source
from jaxdml.losses import LOSSES, make_loss, pair
from jaxdml.losses import ccp as ccp_math
from jaxdml.models import build_model
from jaxdml.models.model import has_refresh
from jaxdml.train.loop import Hook, Loop
from jaxdml.train.state import LOSS_GROUP, TrainState
from jaxdml.train.step import StepContext, refresh_fn
from jaxdml.trainers.base import Procedure
from jaxdml.trainers.metric_learning import MetricLearningTrainer

log = logging.getLogger(__name__)

EXTRA = "ccp"  # key of the hook's arrays in TrainState.extra


def network(params: dict[str, Any]) -> dict[str, Any]:
    """The network's parameter groups (everything but the proxies): what the proximal term and theta_bar cover."""
    return {group: value for group, value in params.items() if group != LOSS_GROUP}


def ccp_procedure(cfg: ml_collections.ConfigDict, num_classes: int) -> Procedure:
    """The model of ``cfg.model``, M proxies per class under ``params["loss"]["proxies"]`` and the CCP loss."""
    model = build_model(cfg.model)
    base = make_loss(cfg.loss.name, cfg.loss.kwargs.to_dict())
    c, per_class, dim = cfg.ccp, cfg.ccp.proxies_per_class, cfg.model.embedding_dim
    rng = jax.random.key(cfg.seed)
    sample = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3), jnp.uint8)

    def init_fn() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        model_rng, proxy_rng = jax.random.split(rng)
        variables = dict(model.init(model_rng, sample, train=False))
        params = dict(variables.pop("params"))
        # Replaced by the first k-center pick before the first step; He-normal as the release's makeProxy.
        params[LOSS_GROUP] = {"proxies": jax.nn.initializers.he_normal()(proxy_rng, (per_class * num_classes, dim),
                                                                          jnp.float32)}
        return params, variables, {}

    def extra_fn(params: dict[str, Any], model_state: dict[str, Any]) -> dict[str, Any]:
        del model_state
        net = network(params)
        return {EXTRA: {"anchor": net, "best": net, "best_proxies": jnp.zeros_like(params[LOSS_GROUP]["proxies"]),
                        "lam": jnp.zeros((), jnp.float32)}}

    def loss_fn(params: dict[str, Any], outputs: dict[str, jnp.ndarray], batch: dict[str, jnp.ndarray],
                context: StepContext):
        mine = context.extra[EXTRA]
        embeddings = outputs["embedding"].astype(jnp.float32)
        loss, terms = ccp_math.ccp_loss(base, embeddings, batch["labels"], params[LOSS_GROUP]["proxies"], per_class,
                                        num_classes, pair_weight=c.pair_weight, proxy_weight=c.proxy_weight)
        proximal = ccp_math.proximal_penalty(network(params), mine["anchor"], mine["lam"])
        norms = jnp.linalg.norm(embeddings, axis=-1)
        return loss + proximal, {}, {**terms, "proximal": proximal, "lambda": mine["lam"],
                                     "embedding_norm": jnp.mean(norms)}

    return Procedure(model, init_fn, loss_fn, post_update=refresh_fn(model) if has_refresh(model) else None,
                     extra_fn=extra_fn)


@dataclasses.dataclass
class RoundTracker:
    """When a CCP round ends: the release's per-epoch rule, as plain bookkeeping (JSON state).

    ``update(value)`` after each evaluation: a gain is ``value > best + min_gain`` over the round's best (the first
    evaluation of a round always gains); the round ends after ``patience`` evaluations in a row without one.
    """

    patience: int
    min_gain: float
    round: int = 0
    epochs: int = 0  # evaluations in this round
    bad: int = 0  # evaluations in a row without a gain
    best: float | None = None  # the round's best value

    def update(self, value: float) -> tuple[bool, bool]:
        """(a gain: record the weights and proxies, a new round starts now)."""
        self.epochs += 1
        gained = self.best is None or value > self.best + self.min_gain
        if gained:
            self.best, self.bad = float(value), 0
        else:
            self.bad += 1
        new_round = self.bad >= self.patience
        if new_round:
            self.round += 1
            self.epochs, self.bad, self.best = 0, 0, None
        return gained, new_round

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "epochs": self.epochs, "bad": self.bad, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.epochs, self.bad = int(state["round"]), int(state["epochs"]), int(state["bad"])
        self.best = state["best"]


def _replicated(mesh: Any, array: np.ndarray) -> jax.Array:
    """A host array (the same on every process) placed on every device of ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


class ProxyRounds(Hook):
    """The rounds of CCP (see the module docstring): records the round's best after a gain, and after
    ``ccp.round_patience`` evaluations without one starts a new round (theta_bar, lambda, re-picked proxies)."""

    name = "ccp"

    def __init__(self, trainer: CCPTrainer):
        cfg = trainer.cfg
        self.cfg, self.mesh, self.metric = cfg, trainer.mesh, cfg.eval.selection_metric
        self.train_source, self.num_classes = trainer.data.train, trainer.num_classes
        self.per_class = cfg.ccp.proxies_per_class
        self.pool = ccp_math.pool_size(cfg.ccp.pool_per_class, self.per_class)
        self.tracker = RoundTracker(cfg.ccp.round_patience, cfg.ccp.min_gain)
        self.initialised = False
        self.predict = trainer.setup.predict("raw_embedding")
        self.writer = trainer.writer
        replicated = NamedSharding(self.mesh, PartitionSpec())
        shardings = (trainer.state_sharding, replicated, replicated)

        def record_best(state: TrainState) -> TrainState:
            mine = {**state.extra[EXTRA], "best": network(state.params),
                    "best_proxies": state.params[LOSS_GROUP]["proxies"]}
            return state.replace(extra={**state.extra, EXTRA: mine})

        def start_round(state: TrainState, proxies: jax.Array, lam: jax.Array) -> TrainState:
            mine = state.extra[EXTRA]
            params = {**state.params, LOSS_GROUP: {**state.params[LOSS_GROUP], "proxies": proxies}}
            return state.replace(params=params, extra={**state.extra, EXTRA: {**mine, "anchor": mine["best"],
                                                                              "lam": lam}})

        self._record_best = jax.jit(record_best, in_shardings=shardings[:1], out_shardings=trainer.state_sharding,
                                    donate_argnums=0)
        self._start_round = jax.jit(start_round, in_shardings=shardings, out_shardings=trainer.state_sharding,
                                    donate_argnums=0)

    def state_dict(self) -> dict[str, Any]:
        return {**self.tracker.state_dict(), "initialised": self.initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state)
        self.initialised = bool(state["initialised"])

    def pool_embeddings(self, state: TrainState, round_index: int) -> np.ndarray:
        """(C, P, D) raw embeddings of round ``round_index``'s pool, by the network of ``state`` in inference mode."""
        indices = ccp_math.pool_indices(self.train_source.labels, self.num_classes, self.pool, self.cfg.seed,
                                        round_index)
        source = SubsetSource(f"{self.train_source.name}[ccp pool {round_index}]", self.train_source,
                              indices.reshape(-1))
        values = distributed.gather(predict_source(self.predict, state, source, self.cfg, self.mesh).values)
        return values[:indices.size].reshape(self.num_classes, self.pool, -1)

    def repick(self, state: TrainState, round_index: int, lam: float, *, zero_seeds: bool = False) -> TrainState:
        """The state with each class's proxies re-picked from round ``round_index``'s pool (seeded with the best
        proxies, or the zero vector), theta_bar <- the best weights and lambda <- ``lam``."""
        pool = self.pool_embeddings(state, round_index)
        best = np.asarray(jax.device_get(state.extra[EXTRA]["best_proxies"].addressable_data(0)))
        seeds = ccp_math.by_class(jnp.asarray(np.zeros_like(best) if zero_seeds else best), self.per_class)
        proxies = np.asarray(ccp_math.flat(ccp_math.pick_proxies(jnp.asarray(pool), seeds)))
        return self._start_round(state, _replicated(self.mesh, proxies), _replicated(self.mesh, np.float32(lam)))

    def before_train(self, loop: Loop) -> None:
        if self.initialised:
            return
        # The first proxies: k-center seeded with the zero vector; lambda 0 (also for a run forked from another).
        loop.state = self.repick(loop.state, 0, 0.0, zero_seeds=True)
        self.initialised = True
        loop.echo(f"ccp: round 0, {self.per_class} proxies per class picked from {self.pool} embeddings each")

    def after_step(self, loop: Loop, step: int) -> None:
        if "eval" not in loop.events:
            return
        gained, new_round = self.tracker.update(loop.events["eval"][self.metric])
        if gained:
            loop.state = self._record_best(loop.state)
        if new_round and "early_stop" not in loop.events:
            r = self.tracker.round
            loop.state = self.repick(loop.state, r, self.cfg.ccp.proximal)
            loop.echo(f"ccp: round {r} from step {step}: theta_bar <- the best of round {r - 1}, lambda = "
                      f"{self.cfg.ccp.proximal:g}, proxies re-picked")
        if self.writer is not None:
            self.writer.write(step, "ccp", {"round": self.tracker.round, "gained": float(gained)})


class CCPTrainer(MetricLearningTrainer):
    """CCP-DML (``trainer="ccp"``): a metric-learning run whose objective is the CCP loss over ``loss.name`` and
    whose proxies are re-picked in rounds by :class:`ProxyRounds`."""

    @classmethod
    def check_config(cls, cfg: ml_collections.ConfigDict) -> None:
        super().check_config(cfg)  # a backbone of jaxdml.models.backbones, the retrieval evaluator
        spec = LOSSES[cfg.loss.name]
        if spec.kind != "pair" or spec.init is not None or spec.fn is pair.n_pairs_loss:
            usable = sorted(n for n, s in LOSSES.items() if s.kind == "pair" and s.init is None
                            and s.fn is not pair.n_pairs_loss)
            raise ConfigError(f"trainer='ccp' pairs the batch with its proxies through a pair loss without "
                              f"parameters; loss.name={cfg.loss.name!r} is not one; use one of {usable}.")
        loss = cfg.loss
        extras = [("loss.miner.name", loss.miner.name, ""), ("loss.xbm.batches", loss.xbm.batches, 0),
                  ("loss.zsr.weight", loss.zsr.weight, 0.0), ("loss.xbml.weight", loss.xbml.weight, 0.0),
                  ("loss.extra_terms", dict(loss.extra_terms), {})]
        for key, value, off in extras:
            if value != off:
                raise ConfigError(f"trainer='ccp' builds its own objective (ccp.pair_weight * L(batch) + "
                                  f"ccp.proxy_weight * L(batch, proxies)); {key}={value!r} is not used by it: set "
                                  f"{key}={off!r}.")
        if not cfg.data.folds and not cfg.data.val_fraction:
            raise ConfigError("trainer='ccp' ends its rounds on validation MAP@R; hold out validation classes with "
                              "data.val_fraction (e.g. 0.25) or data.folds=4 (the MLRC protocol).")

    def build(self) -> Procedure:
        return ccp_procedure(self.cfg, self.num_classes)

    def extra_hooks(self) -> list[Hook]:
        return [ProxyRounds(self)]
