"""The optimiser: optax with parameter groups, LR multipliers and weight decay only where it belongs.

Parameters are grouped by their top-level key (``backbone``, ``head``, ``loss``); each group's learning
rate is the schedule times ``optim.lr_mult.<group>`` (proxy losses use e.g. 100 for ``loss``), and
``optim.freeze_backbone_steps`` keeps the backbone still while the head and proxies warm up. Weight decay
(which follows the group's rate) never touches BatchNorm parameters or
biases (any parameter with fewer than two dimensions), unless ``optim.decay_all`` (torch's SGD ``weight_decay``
over ``model.parameters()``, as the letKD release trains). With ``model.freeze_bn`` the backbone's BatchNorm
scale and offset are frozen along with its running statistics (as the original TF framework and the
Proxy-Anchor code do).

Gradients are clipped as the GSP/CCP release clips them: to global norm ``optim.grad_clip_norm``, then each entry to
``[-optim.grad_clip_value, optim.grad_clip_value]``. With ``optim.plateau.factor`` the updates are multiplied by a
factor that lives in the optimiser state (:func:`scale_by_plateau`), which the reduce-on-plateau hook
(``jaxdml.train.hooks.ReduceOnPlateau``) lowers when the evaluation metric stalls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

# optim.schedule -> the decay after warm-up; the one list of valid names.
SCHEDULES: dict[str, Callable[[ml_collections.ConfigDict, int], optax.Schedule]] = {
    "constant": lambda cfg, steps: optax.constant_schedule(cfg.lr),
    "cosine": lambda cfg, steps: optax.cosine_decay_schedule(cfg.lr, max(1, steps - cfg.warmup_steps)),
    "step": lambda cfg, steps: optax.piecewise_constant_schedule(
        cfg.lr, {int(b) - cfg.warmup_steps: cfg.step_factor for b in cfg.step_boundaries}),
}


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Base schedule (before group multipliers): linear warm-up, then constant / cosine / step decay."""
    decay = SCHEDULES[cfg.schedule](cfg, num_steps)
    if cfg.warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _l2(cfg: ml_collections.ConfigDict, mask: Any, base: optax.GradientTransformation) -> optax.GradientTransformation:
    """L2 weight decay added to the gradient (torch's ``weight_decay`` for Adam, SGD, RMSprop)."""
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay, mask), base) if cfg.weight_decay else base


# optim.name -> optax optimiser of (config, learning rate, weight-decay mask); the one list of valid names.
OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule, Any], optax.GradientTransformation]] = {
    "adam": lambda cfg, lr, mask: _l2(cfg, mask, optax.adam(lr, b1=cfg.b1, b2=cfg.b2)),
    "adamw": lambda cfg, lr, mask: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask),
    "sgd": lambda cfg, lr, mask: _l2(cfg, mask, optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)),
    "rmsprop": lambda cfg, lr, mask: _l2(cfg, mask, optax.rmsprop(lr, momentum=cfg.momentum)),
}


class PlateauScale(NamedTuple):
    """The optimiser state of :func:`scale_by_plateau`: the factor on every update (1 until a plateau)."""

    lr_factor: jax.Array


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies the updates by ``lr_factor`` from the optimiser state. Placed last in the chain, this scales the
    learning rate of every group (and AdamW's decoupled decay, which follows the rate), as Keras'
    ``ReduceLROnPlateau`` does; the factor is changed only by :func:`set_lr_factor`, between steps."""

    def init(params: Any) -> PlateauScale:
        del params
        return PlateauScale(lr_factor=jnp.ones((), jnp.float32))

    def update(updates: Any, state: PlateauScale, params: Any = None) -> tuple[Any, PlateauScale]:
        del params
        return jax.tree.map(lambda u: u * state.lr_factor.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def lr_factor(opt_state: Any) -> float | None:
    """The reduce-on-plateau factor in ``opt_state`` (None without :func:`scale_by_plateau`)."""
    found = optax.tree_utils.tree_get(opt_state, "lr_factor")
    return None if found is None else float(found)


def set_lr_factor(opt_state: Any, factor: jax.Array) -> Any:
    """``opt_state`` with the reduce-on-plateau factor replaced (traceable: use it under ``jit``)."""
    return optax.tree_utils.tree_set(opt_state, lr_factor=jnp.asarray(factor, jnp.float32))


def batchnorm_param_mask(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> Any:
    """True for parameters of BatchNorm layers: the layers that own an entry in ``batch_stats``."""

    def mark(p: Any, stats: Any) -> Any:
        if not isinstance(p, Mapping):
            return False
        is_bn = isinstance(stats, Mapping) and "mean" in stats and "var" in stats
        return {k: (jax.tree.map(lambda _: True, v) if is_bn else
                    mark(v, stats.get(k) if isinstance(stats, Mapping) else None)) for k, v in p.items()}

    return mark(params, batch_stats)


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int, params: Mapping[str, Any],
                   batch_stats: Mapping[str, Any], freeze_bn: bool = False) -> optax.GradientTransformation:
    """The optax transformation for ``params`` (a dict keyed by parameter group)."""
    schedule = learning_rate_schedule(cfg, num_steps)
    decay_mask = jax.tree.map(lambda p: cfg.decay_all or p.ndim > 1, params)
    is_bn = batchnorm_param_mask(params, batch_stats)
    groups = list(params)
    unknown = [g for g in groups if g not in cfg.lr_mult]
    if unknown:
        raise ValueError(f"parameter groups {unknown} have no optim.lr_mult entry")

    def label(group: str, bn: Any) -> Any:
        if freeze_bn and group == "backbone":
            return jax.tree.map(lambda b: "frozen" if b else group, bn)
        return jax.tree.map(lambda _: group, bn)

    labels = {g: label(g, is_bn[g]) for g in groups}
    def group_schedule(group: str) -> optax.Schedule:
        multiplier = cfg.lr_mult[group]
        if group == "backbone" and cfg.freeze_backbone_steps > 0:  # warm-up with a frozen backbone
            return lambda step: schedule(step) * multiplier * (step >= cfg.freeze_backbone_steps)
        return lambda step: schedule(step) * multiplier

    # multi_transform hands each transform the whole tree (other groups masked), so masks are whole-tree.
    transforms = {g: OPTIMIZERS[cfg.name](cfg, group_schedule(g), decay_mask) for g in groups}
    transforms["frozen"] = optax.set_to_zero()
    chain = []
    if cfg.grad_clip_norm > 0:  # the release: the global norm first, then the value
        chain.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.grad_clip_value > 0:
        chain.append(optax.clip(cfg.grad_clip_value))
    chain.append(optax.multi_transform(transforms, labels))
    if cfg.plateau.factor > 0:
        chain.append(scale_by_plateau())
    return optax.chain(*chain)

