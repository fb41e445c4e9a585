"""Metric-learning losses as pure functions ``loss(embeddings, labels, **hyper_parameters) -> scalar``.

``LOSSES`` maps the names experiment files use (``config.loss.name``) to the functions;
:func:`make_loss` binds ``config.loss.kwargs`` and rejects unknown hyper-parameters by name.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import jax.numpy as jnp

from jaxdml.losses.objective import Objective, make_objective
from jaxdml.losses.pair import contrastive_loss, multi_similarity_loss
from jaxdml.losses.zsr import zero_shot_loss

LOSSES: dict[str, Callable[..., jnp.ndarray]] = {
    "contrastive": contrastive_loss,
    "multi_similarity": multi_similarity_loss,
}


def make_loss(name: str, kwargs: Mapping[str, Any] | None = None) -> Callable[[jnp.ndarray, jnp.ndarray],
                                                                                   jnp.ndarray]:
    """``LOSSES[name]`` with its hyper-parameters bound; clear errors for unknown names and keys."""
    if name not in LOSSES:
        close = difflib.get_close_matches(name, LOSSES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown loss {name!r}.{hint} Available: {sorted(LOSSES)}.")
    fn = LOSSES[name]
    kwargs = dict(kwargs or {})
    accepted = [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name != "pair_mask"]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"loss {name!r} has no hyper-parameter {key!r} (config.loss.kwargs.{key}).{hint} "
                             f"It accepts: {accepted}.")
    return functools.partial(fn, **kwargs)


__all__ = ["LOSSES", "Objective", "contrastive_loss", "make_loss", "make_objective", "multi_similarity_loss",
           "zero_shot_loss"]
